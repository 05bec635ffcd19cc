"""``cai status OUT``: how far a stage's output has got, summed over a folder's shard parts (or one file).

Per part: rows on file (counted from the file, so a running shard's progress shows), the rows it has to do
and the failures of its last run (from its manifest and errors file), and its state: finished (its manifest
says the run ended with nothing failed), running (its lock is held), stopped, failed rows to retry, or not
started (a part of the split that is not there yet).  For ``cai judge``'s output, the judge report too: a
folder's parts' reports merged into one (``judging.judge_report.merged_report``), saying which parts it leaves out.  And
the output's cost ledger (tokens per step, wall and device time; ``core.ledger``), its parts' summed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError
from core.ledger import format_ledger, output_ledger
from core.shards import Shard, folder_count, part_files, part_of
from core.store import count_lines, errors_path, is_being_written, read_manifest

#: the count in a stage's manifest of the rows its file holds when done (generate: one per prompt; judge: its pairs)
TOTAL_KEYS = {"generate": "prompts", "judge": "pairs"}


@dataclass
class StatusConfig:
    """What ``cai status`` reads."""

    out: str = field(default="", metadata={"help": "A stage's --out: a JSON Lines file or a folder of shard parts."})
    json: bool = field(default=False, metadata={"help": "Print the status as JSON (for scripts)."})


def part_status(out: Path, shard: Shard) -> dict:
    """One output file's progress and state."""
    entry = {"shard": str(shard), "file": str(out), "rows": None, "total": None, "failed": None, "stage": None,
             "finished": False, "state": "not started"}
    manifest = read_manifest(out) or {}
    if not out.exists() and not manifest and not is_being_written(out):
        return entry  # a run stopped before its first row still writes its manifest
    counts = manifest.get("counts") if isinstance(manifest.get("counts"), dict) else {}
    stage = manifest.get("stage")
    entry.update(rows=count_lines(out), stage=stage, failed=count_lines(errors_path(out)),
                 total=counts.get(TOTAL_KEYS.get(stage, ""), None))
    if stage == "generate":
        entry["failed"] = counts.get("failed", entry["failed"])
    if is_being_written(out):
        entry["state"] = "running"
    elif not manifest:
        entry["state"] = "no manifest yet (running, or killed before its first manifest)"
    elif counts.get("stopped"):
        entry["state"] = f"stopped ({counts['stopped']}): run the same command again to resume"
    elif not out.is_file():
        entry["state"] = "its file is missing (deleted?): run the same command again to write it"
    elif entry["failed"]:
        entry["state"] = f"{entry['failed']} failed: run the same command again to retry them"
    else:
        entry["state"], entry["finished"] = "finished", True
    return entry


def status(out: str | Path) -> dict:
    """The progress of a file, or of every part of a folder's split, and their sums."""
    out = Path(out)
    if out.is_dir():
        parts = part_files(out)
        if not parts:
            raise UserError(f"{out}: a folder with no part files (part-00000-of-0000N.jsonl); pass a stage's --out")
        count = folder_count(out, parts)
        entries = [part_status(out / Shard(index, count).part_name, Shard(index, count)) for index in range(count)]
    elif out.exists():
        entries = [part_status(out, part_of(out) or Shard())]
    else:
        raise UserError(f"{out}: no such file or folder; pass a stage's --out (a JSON Lines file or a folder of parts)")
    totals = [e["total"] for e in entries]
    judge_report = None
    if any(e["stage"] == "judge" for e in entries):
        from judging.judge_report import merged_report

        judge_report = merged_report(out)
    return {
        "out": str(out),
        "parts": entries,
        "rows": sum(e["rows"] or 0 for e in entries),
        "total": sum(totals) if all(isinstance(t, int) for t in totals) else None,
        "failed": sum(e["failed"] or 0 for e in entries),
        "finished": sum(e["finished"] for e in entries),
        "all_finished": all(e["finished"] for e in entries),
        "judge_report": judge_report,
        "ledger": output_ledger(out),
    }


def format_status(result: dict) -> str:
    entries = result["parts"]
    stages = sorted({e["stage"] for e in entries if e["stage"]})
    lines = [f"{result['out']}: {len(entries)} part(s)" + (f" of `cai {', '.join(stages)}`" if stages else "")]
    lines.append(f"  {'shard':<11} {'rows':>9} {'of':>9} {'failed':>7}  state")

    def number(value) -> str:
        return "-" if value is None else str(value)

    for e in entries:
        lines.append(f"  {e['shard']:<11} {number(e['rows']):>9} {number(e['total']):>9} {number(e['failed']):>7}  "
                     f"{e['state']}")
    lines.append(f"  {'total':<11} {result['rows']:>9} {number(result['total']):>9} {result['failed']:>7}  "
                 f"{result['finished']} of {len(entries)} finished")
    if result.get("ledger"):
        lines += ["", "what it cost (core/ledger.py; wall and device time summed over the runs that wrote it):",
                  format_ledger(result["ledger"])]
    if result.get("judge_report"):
        from judging.judge_report import format_judge_report

        lines += ["", format_judge_report(result["judge_report"])]
    return "\n".join(lines)


def status_command(argv: list[str]) -> int:
    """Entry point of ``cai status OUT [--json]``."""
    from core.config import parse_config

    if argv and not argv[0].startswith("-"):
        argv = ["--out", argv[0], *argv[1:]]
    config = parse_config(StatusConfig, argv, prog="cai status")
    if not config.out:
        raise UserError("cai status: name a stage's output: cai status OUT (a JSON Lines file or a folder of parts)")
    result = status(config.out)
    print(json.dumps(result, indent=2) if config.json else format_status(result))
    return 0
