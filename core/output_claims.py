"""Claiming an output before writing it: never an input, never another stage's file, one writer at a time."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from core.errors import UserError
from core.file_writes import writing
from core.jsonl_input import MAX_LINE_BYTES, parse_json_line
from core.manifest import manifest_path, read_manifest


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
