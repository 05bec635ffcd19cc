"""The parts of one folder must add up to one run: a new part is checked against its siblings' manifests (or
their first rows), and their dtypes are counted for the resume note."""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import UserError
from core.shards import Shard, part_files
from core.store import MAX_LINE_BYTES, parse_json_line, read_manifest


def _first_row(path: Path) -> dict:
    """The first complete row of a part (a part killed before its first manifest), or {}."""
    with open(path, "rb") as handle:
        line = handle.readline(MAX_LINE_BYTES)
    try:
        row = parse_json_line(line) if line.endswith(b"\n") else None
    except ValueError:
        row = None
    return row if isinstance(row, dict) else {}


def check_siblings(part: Path, shard: Shard, stage: str, identity: dict) -> None:
    """Refuse to add a part to a folder whose other parts were written with another model, sampling or seed:
    by their manifests, or by the first row of a part that has none yet (each part's own rows are checked
    by its stage as it resumes)."""
    if shard.whole or not part.parent.is_dir():
        return
    for other in part_files(part.parent):
        if other == part:
            continue
        manifest = read_manifest(other)
        if manifest is None:
            theirs = _first_row(other)  # rows record what wrote them (generate: model, sampling, seed)
        elif manifest.get("stage") != stage:
            continue
        else:
            recorded = (manifest.get("config") or {}).get("shard")
            theirs = recorded.get("identity") if isinstance(recorded, dict) else None
        if not isinstance(theirs, dict):
            continue
        changed = [key for key in identity if key in theirs and theirs[key] != identity[key]]
        if changed:
            detail = "; ".join(f"{key}: {json.dumps(theirs[key])} there, {json.dumps(identity[key])} now"
                               for key in changed)
            raise UserError(f"{other} was written with another configuration ({detail}); the parts of "
                            f"{part.parent} must add up to one run: use the same settings, or choose another --out")


def sibling_dtypes(part: Path, shard: Shard, stage: str) -> dict[str, int]:
    """The dtypes the other parts of a folder were made in (their manifests' ``dtype``) -> rows."""
    found: dict[str, int] = {}
    if shard.whole or not part.parent.is_dir():
        return found
    for other in part_files(part.parent):
        manifest = read_manifest(other) if other != part else None
        if manifest and manifest.get("stage") == stage and isinstance((manifest.get("config") or {}).get("dtype"), str):
            rows = (manifest.get("counts") or {}).get("rows") or (manifest.get("counts") or {}).get("pairs") or 0
            found[manifest["config"]["dtype"]] = found.get(manifest["config"]["dtype"], 0) + rows
    return found
