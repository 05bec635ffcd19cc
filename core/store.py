"""Append-only JSON Lines outputs with resume: a whole store (``JsonlStore``) and a row-by-row writer (``JsonlAppender``).

A killed run leaves at most a torn last line, which is dropped and redone.
Rows are appended and flushed per batch; rewrites go through a temporary file
and an atomic rename, so nothing is ever half-written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from core.errors import UserError
# Reading inputs, writing files safely, the manifest and claiming an output live in their own modules; the
# stages import them from here too, as the one place for their files.
from core.file_writes import atomic_write_text, writing
from core.jsonl_input import (MAX_LINE_BYTES, count_lines, iter_lines, parse_json_line, read_json_object,
                              read_json_objects, read_json_rows, read_whole_file, require_regular_file)
from core.manifest import errors_path, manifest_path, read_manifest, versions, write_manifest
from core.output_claims import (check_outputs, check_own_json, check_own_output, exclusive_output,
                                is_being_written, same_file)


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


__all__ = [
    "MAX_LINE_BYTES", "JsonlAppender", "JsonlStore", "atomic_write_text", "check_outputs", "check_own_json",
    "check_own_output", "count_lines", "errors_path", "exclusive_output", "is_being_written", "iter_lines",
    "manifest_path", "parse_json_line", "read_json_object", "read_json_objects", "read_json_rows", "read_manifest",
    "read_whole_file", "require_regular_file", "same_file", "versions", "write_manifest", "writing",
]
