"""Shards: one job split over N processes (``--shard i/N``), each writing its own part of one folder.

A row belongs to shard ``i`` of ``N`` when the stable hash of its id, mod N, is ``i`` (the id alone, so an
edited principle or prompt text keeps each row in its shard, and its drafts are reused there).  Shard ``i``
of ``N`` writes ``OUT/part-0000i-of-0000N.jsonl``; beside it, as ``core.store`` names them, its manifest
(``PART.manifest.json``) and its errors file (``PART.errors.ndjson``: newline-delimited JSON, like the part,
named so that ``OUT/*.jsonl`` matches the parts and nothing else).  Every reader of a stage's output (``cai
judge --in``, ``cai train --data``, ``cai run``, ``datasets.load_dataset("json", data_files="OUT/*.jsonl")``)
takes the folder as it takes a file.  A part written with another N, or another model, sampling or seed,
is refused: the parts of one folder must add up to one run.

This module names and parses parts (``core.store`` uses it); ``core.shard_folders`` checks a part against
the others of its folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from core.hashing import stable_hash

#: the name of shard ``index`` of ``count``'s part (numbered from 0, like Slurm's and Kubernetes' indexes)
PART_TEMPLATE = "part-{index:05d}-of-{count:05d}.jsonl"
PART_NAME = re.compile(r"^part-(\d{5,})-of-(\d{5,})\.jsonl$")
#: the example every shard message shows
SHARD_EXAMPLE = "--shard 0/4 (shards are numbered 0 to N-1)"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``; ``Shard(0, 1)`` is the whole job."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, value: str | None, flag: str = "--shard") -> Shard:
        """``"i/N"`` (``None``: the whole job); a bad value is a UserError quoting it."""
        if value is None:
            return cls()
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
        if not match:
            raise UserError(f"{flag} {value!r} is not INDEX/COUNT; pass e.g. {SHARD_EXAMPLE}")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1:
            raise UserError(f"{flag} {value!r}: the count must be >= 1; pass e.g. {SHARD_EXAMPLE}")
        if index >= count:
            raise UserError(f"{flag} {value!r}: the index must be below the count (0 to {count - 1}); "
                            f"pass e.g. {SHARD_EXAMPLE}")
        return cls(index, count)

    @property
    def whole(self) -> bool:
        return self.count == 1

    def owns(self, row_id: str) -> bool:
        """Whether the row with this id is this shard's: the stable hash of the id, mod the count."""
        return self.whole or shard_of(row_id, self.count) == self.index

    @property
    def part_name(self) -> str:
        return PART_TEMPLATE.format(index=self.index, count=self.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(row_id: str, count: int) -> int:
    """The shard (of ``count``) a row id belongs to; the same on every machine and Python."""
    return int(stable_hash(str(row_id)), 16) % count


def part_of(path: str | Path) -> Shard | None:
    """The shard a part file's name says it holds, or None for any other file."""
    match = PART_NAME.match(Path(path).name)
    if not match:
        return None
    index, count = int(match.group(1)), int(match.group(2))
    return Shard(index, count) if index < count else None


def side_file(out: str | Path, kind: str) -> Path:
    """A JSON Lines file kept beside an output (its errors, a cache): ``OUT.KIND.jsonl``; beside a shard's
    part ``PART.KIND.ndjson``, so that the folder's ``*.jsonl`` are its parts alone."""
    out = Path(out)
    return out.with_name(f"{out.name}.{kind}.{'ndjson' if part_of(out) else 'jsonl'}")


# -- a folder of parts -----------------------------------------------------------------------------------
def part_files(folder: str | Path) -> list[Path]:
    """The part files in a folder, by shard index (other files are not parts)."""
    folder = Path(folder)
    parts = [path for path in folder.iterdir() if path.is_file() and part_of(path) is not None]
    return sorted(parts, key=lambda path: (part_of(path).count, part_of(path).index))


def folder_count(folder: Path, parts: list[Path]) -> int:
    """The N every part of a folder was written with; parts of two splits are a UserError."""
    counts = sorted({part_of(path).count for path in parts})
    if len(counts) > 1:
        examples = ", ".join(next(p.name for p in parts if part_of(p).count == n) for n in counts)
        raise UserError(f"{folder} holds parts of {len(counts)} different splits ({examples}); a folder holds one "
                        "split: move the parts of the other split to their own folder")
    return counts[0]


def part_path(out: str | Path, shard: Shard, flag: str = "--out") -> Path:
    """Where this run writes: ``out`` itself for the whole job, else the shard's part in the folder ``out``.

    A sharded run refuses a folder that holds parts of another split (another N) before any work.
    """
    out = Path(out)
    if shard.whole:
        if out.is_dir() and any(part_of(path) for path in out.iterdir()):
            raise UserError(f"{flag} {out} is a folder of shard parts; pass --shard i/N to write one of its parts "
                            f"(see `cai status {out}`), or name a file")
        return out
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out}: with --shard, {flag} names a folder (each shard writes its own part "
                        "there); it is a file: choose a folder")
    if out.suffix == ".jsonl":
        raise UserError(f"{flag} {out}: with --shard, {flag} names a folder (each shard writes "
                        f"{out}/{shard.part_name}); drop the .jsonl, e.g. {flag} {out.with_suffix('')}")
    parts = part_files(out) if out.is_dir() else []
    if parts:
        count = folder_count(out, parts)
        if count != shard.count:
            raise UserError(f"{flag} {out} holds the parts of a {count}-way split ({parts[0].name}); this run is "
                            f"--shard {shard}, one of {shard.count}: pass --shard i/{count}, or choose another "
                            f"{flag} for a {shard.count}-way split")
    return out / shard.part_name


def record(shard: Shard, identity: dict) -> dict:
    """What a part's manifest records about its shard (``config.shard``): the split and what every part of the
    folder must share (model, sampling, seed, ...)."""
    return {"index": shard.index, "count": shard.count, "identity": identity}


def data_files(path: str | Path, flag: str, shard: Shard | None = None) -> list[Path]:
    """The files a reader reads for ``path``: the file itself, or a folder's parts.

    A folder must hold every part of its split (a missing one is a UserError naming it and the command that
    writes it), except that a reader that is itself shard i of the same N reads part i alone.
    """
    path = Path(path)
    if not path.is_dir():
        return [path]
    parts = part_files(path)
    if not parts:
        raise UserError(f"{flag} {path}: a folder with no part files (part-00000-of-0000N.jsonl); pass a JSON Lines "
                        "file, or the --out folder of sharded runs")
    count = folder_count(path, parts)
    if shard is not None and shard.count == count:
        mine = path / shard.part_name
        if not mine.is_file():
            raise UserError(f"{flag} {path}: no {shard.part_name} yet; run shard {shard} of the stage that writes "
                            f"{path} first (`cai status {path}` shows which parts are there)")
        return [mine]
    present = {part_of(p).index for p in parts}
    missing = [Shard(i, count).part_name for i in range(count) if i not in present]
    if missing:
        raise UserError(f"{flag} {path}: {len(missing)} of its {count} parts are missing ({', '.join(missing[:4])}"
                        f"{', ...' if len(missing) > 4 else ''}); run those shards (`cai status {path}`), or pass a "
                        "file")
    return parts


def stage_output(run_dir: str | Path, name: str) -> Path:
    """A run folder's output ``NAME``: the folder ``RUN_DIR/NAME`` where sharded jobs wrote their parts
    (``recipes/scale-out/README.md``), else the file ``RUN_DIR/NAME.jsonl``."""
    folder = Path(run_dir) / name
    return folder if folder.is_dir() and part_files(folder) else Path(run_dir) / f"{name}.jsonl"


def content_hash(path: str | Path | None) -> str | None:
    """The hash of a file's text, or of a folder's parts in order (None when there is nothing to read)."""
    if not path or not Path(path).exists():
        return None
    try:
        files = data_files(path, "data")
    except UserError:
        return None
    if not all(f.is_file() for f in files):
        return None
    return stable_hash([f.read_text(encoding="utf-8") for f in files])
