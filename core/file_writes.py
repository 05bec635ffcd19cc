"""Writing files safely: an OSError while writing (a full disk, a read-only folder) becomes the user's error naming
the file and the fix, and a whole file is replaced atomically (a temporary file, fsync, rename)."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from core.errors import UserError


@contextlib.contextmanager
def writing(path: str | Path, flag: str = "--out"):
    """Turn an OSError while writing ``path`` (a full disk, a read-only folder) into a UserError naming it."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, (BlockingIOError, InterruptedError)):
            raise
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = "free some space (finished rows are kept) and run the same command again"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = f"choose a writable place for {flag}"
        elif exc.errno == errno.EISDIR:
            fix = f"{flag} must be a file, not a folder"
        else:
            fix = f"check the path or choose another {flag}"
        raise UserError(f"{path}: cannot write: {reason}; {fix}") from None


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            tmp.replace(path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
