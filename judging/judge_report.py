"""The judge report of ``cai judge``'s output: where it is written, the report of a folder of shard parts, and
the yield of a run (``judge_stats``: the counts and figures; ``judge_report_text``: the lines a terminal shows).

Every figure is computed from counts, and a report keeps those counts (``sums``), so the
reports of a sharded run's parts merge into the report the unsharded run would have written:
the counts are summed and every rate and interval is computed again from the sums
(``merged_report``), never averaged from the parts' rates.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from core.shards import Shard, part_files, part_of
from core.store import is_being_written, read_json_object, read_manifest

# The counts and figures, and their text, live in their own modules; the stages import them from here too.
from .judge_report_text import format_judge_report, format_yield, judges_lines, principle_table
from .judge_stats import ComparisonStats, JudgeReport, RevisedRows, judges_agreement, revision_change


def report_path(out: Path) -> Path:
    """The report ``cai judge`` writes beside its output (or beside each shard's part)."""
    out = Path(out)
    return out.with_name(out.name + ".report.json")


# -- the report of a folder of shard parts ----------------------------------------------------------------------
#: the judge settings that decide which judged rows become pairs (recorded in each part's manifest)
PAIR_FILTERS = ("min_margin", "require_orders_agree", "principles_per_pair", "principle_ids", "keep_flagged",
                "keep_duplicates")


def merged_report(out: str | Path) -> dict | None:
    """The judge report of ``cai judge``'s ``--out``: a file's own report, or, for a folder of shard parts, the
    parts' reports merged into one; None when there is none yet.

    The merged report is the one the unsharded run writes over the same rows: the parts' counts are summed and
    every rate (and interval) is computed again from the sums.  Its ``parts`` say which parts it covers and
    which it does not: a part not judged yet, stopped, or with a report that cannot be merged (the reason is
    given, with the fix), and parts of another split (another N) in the folder; ``warnings`` name them too.
    """
    out = Path(out)
    if not out.is_dir():
        return read_json_object(report_path(out))
    parts = part_files(out)
    if not parts:
        return None
    splits = Counter(part_of(path).count for path in parts)
    count = max(splits, key=lambda n: (splits[n], n))  # the split most parts are of
    merged, judge, covered, missing = JudgeReport(), None, [], []
    filters: list[tuple[str, dict]] = []  # each merged part and the pair filters it was judged with
    for index in range(count):
        part = out / Shard(index, count).part_name
        why = None
        report = read_json_object(report_path(part))
        manifest = read_manifest(part) or {}
        counts = manifest.get("counts")
        if is_being_written(part):
            why = "running now; its report comes when it finishes"
        elif isinstance(counts, dict) and counts.get("stopped"):
            why = f"stopped ({counts['stopped']}); run shard {index}/{count} again"
        elif report is None:
            why = f"no report yet (not judged, or running); run shard {index}/{count}"
        else:
            try:
                part_report = JudgeReport.from_sums(report.get("sums"))
            except (ValueError, TypeError):
                part_report = None
                why = (f"its report has no counts to merge (written by an older cai); run shard {index}/{count} "
                       "again (its judgements are cached: no model loads)")
            if part_report is not None and judge is not None and report.get("judge") != judge:
                why = "judged with another judge than the other parts; judge it again with theirs"
            elif part_report is not None:
                judge = report.get("judge") if judge is None else judge
                merged.merge(part_report)
                covered.append(part.name)
                config = manifest.get("config") or {}
                filters.append((part.name, {key: config.get(key) for key in PAIR_FILTERS}))
        if why:
            missing.append({"part": part.name, "why": why})
    if not covered:
        return None
    other_split = [path.name for path in parts if part_of(path).count != count]
    result = merged.as_dict()
    result["judge"] = judge
    result["parts"] = {"folder": str(out), "count": count, "merged": covered, "missing": missing,
                       "other_split": other_split}
    notes = []
    if missing:
        notes.append(f"{len(missing)} of the {count} parts of {out} are not in this report "
                     f"({', '.join(m['part'] for m in missing[:4])}{', ...' if len(missing) > 4 else ''}): its "
                     f"figures leave their rows out (`cai status {out}` shows each part's state)")
    differ = [key for key in PAIR_FILTERS if len({repr(setting[key]) for _, setting in filters}) > 1]
    if differ:
        # Each part's counts are right for its own settings; their sum is of no single setting.
        groups: dict[str, list[str]] = defaultdict(list)
        for name, setting in filters:
            groups[", ".join(f"{key} {setting[key]!r}" for key in differ)].append(name)
        notes.append(f"the parts of {out} were judged with different pair filters ("
                     + "; ".join(f"{setting}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
                                 for setting, names in groups.items())
                     + "): the merged figures mix them; judge every part again with one setting")
    if other_split:
        notes.append(f"{out} also holds parts of another split ({', '.join(other_split[:4])}"
                     f"{', ...' if len(other_split) > 4 else ''}), left out: a folder holds one split; move them "
                     "to their own folder")
    result["warnings"] = notes + result["warnings"]
    return result


def yield_funnel(report: dict, prompts: int | None = None) -> dict:
    """Where the rows went, from the prompts to the pairs: the yield of a run (pairs per prompt).

    ``report``: a judge report (``as_dict`` or ``merged_report``); ``prompts``: how many prompts generation
    had (rows that failed to generate are the difference), else the judge's rows stand for them.
    """
    rows = report.get("rows") or 0
    prompts = rows if prompts is None else prompts
    left_out = {"flagged by the row checks": report.get("flagged_rows_left_out") or 0,
                "duplicates": report.get("duplicate_rows_left_out") or 0}
    judged = rows - sum(left_out.values())
    pairs = report.get("pairs_made") or 0
    return {"prompts": prompts, "rows": rows, "not_generated": max(0, prompts - rows),
            "left_out": {k: v for k, v in left_out.items() if v}, "judged": judged,
            "dropped": dict(report.get("dropped_by_reason") or {}), "pairs": pairs,
            "pairs_per_prompt": round(pairs / prompts, 3) if prompts else None}


__all__ = [
    "ComparisonStats", "JudgeReport", "PAIR_FILTERS", "RevisedRows", "format_judge_report", "format_yield",
    "judges_agreement", "judges_lines", "merged_report", "principle_table", "report_path", "revision_change",
    "yield_funnel",
]
