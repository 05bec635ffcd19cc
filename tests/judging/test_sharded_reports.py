"""The judge reports of a sharded `cai judge` (one per part) merge into the report of the unsharded run:
counts summed, every rate computed again from the sums; parts not merged are named (stand-in judge)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cai.report import load_run
from cai.status import format_status, status
from core.shards import Shard
from core.store import write_manifest
from judge_standins import PreferenceBackend
from judging.run import report_path, run_judge
from judging.judge_report import JudgeReport, format_judge_report, merged_report
from test_judging_logic import generate_row, judge_config, write_rows

ROWS = 40
PARTS = [f"part-0000{index}-of-00002.jsonl" for index in (0, 1)]


def revision_rows() -> list[dict]:
    """Revisions better, worse, identical (flagged, then dropped) or cut off, of varied lengths."""
    rows = []
    for i in range(ROWS):
        draft = "GOOD " * (i % 3) + "BAD " * (i % 4) + "draft " * (i % 5 + 1)
        if i % 7 == 0:
            rows.append(generate_row(i, draft, draft))
        elif i % 11 == 0:
            rows.append(generate_row(i, draft, "GOOD " * 3 + "cut", final_finish="length"))
        else:
            rows.append(generate_row(i, draft, "GOOD " * (i % 5) + "BAD " * (i % 2) + "revision " * (i % 6 + 1)))
    return rows


def judged(tmp_path: Path, out: str, shard: str | None = None, **overrides) -> dict:
    # A position bias: order consistency and first-option wins are neither 0 nor 1.
    config = judge_config(tmp_path, out=str(tmp_path / out), shard=shard, **overrides)
    return run_judge(config, backend=PreferenceBackend(position_bias=1.5))


@pytest.fixture
def sharded(tmp_path) -> tuple[Path, dict]:
    """The unsharded run's report, and a folder judged as shards 0/2 and 1/2."""
    write_rows(tmp_path / "revisions.jsonl", revision_rows())
    whole = judged(tmp_path, "all.jsonl")["report"]
    for index in (0, 1):
        judged(tmp_path, "prefs", f"{index}/2")
    return tmp_path / "prefs", whole


def flat(value, prefix="") -> dict:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def test_two_shards_reports_merged_equal_the_unsharded_report(sharded):
    folder, whole = sharded
    parts = [json.loads(report_path(folder / name).read_text()) for name in PARTS]
    assert all(part["rows"] for part in parts) and sum(part["rows"] for part in parts) == ROWS

    merged = merged_report(folder)
    assert merged["parts"] == {"folder": str(folder), "count": 2, "merged": PARTS, "missing": [], "other_split": []}
    assert merged["judge"] == whole["judge"]
    # Every count and every rate is the unsharded run's (the confidence sum up to float addition order).
    expected, got = flat({k: v for k, v in whole.items()}), flat({k: v for k, v in merged.items() if k != "parts"})
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), key
    assert whole["flagged_rows_left_out"] and whole["pairs_dropped"] and whole["pairs_made"]

    # Pooled, not averaged: the mean of the parts' rates is not the run's rate.
    for rate in ("order_consistency", "first_option_wins", "mean_confidence", "chosen_is_longer"):
        assert merged[rate] != pytest.approx((parts[0][rate] + parts[1][rate]) / 2, abs=1e-4), rate


def test_sums_round_trip_and_damaged_sums_are_refused():
    report = JudgeReport()
    report.rows, report.dropped["x"] = 3, 2
    again = JudgeReport.from_sums(json.loads(json.dumps(report.sums())))
    assert again.as_dict() == report.as_dict()
    for damaged in (None, {**report.sums(), "rows": "3"}, {**report.sums(), "overall": {"comparisons": "1"}},
                    {**report.sums(), "dropped": [1]}):
        with pytest.raises(ValueError):
            JudgeReport.from_sums(damaged)


def test_parts_not_merged_are_named_with_the_fix(sharded, tmp_path):
    folder, whole = sharded
    first, second = (folder / name for name in PARTS)
    # Part 1 is not there: the report covers part 0 and says so.
    half = tmp_path / "half"
    half.mkdir()
    for path in folder.glob(PARTS[0] + "*"):
        shutil.copy(path, half / path.name)
    report = merged_report(half)
    assert report["parts"]["merged"] == [PARTS[0]]
    assert report["parts"]["missing"] == [{"part": PARTS[1], "why": "no report yet (not judged, or running); "
                                                                    "run shard 1/2"}]
    assert report["rows"] == json.loads(report_path(first).read_text())["rows"] < whole["rows"]
    assert "1 of the 2 parts of" in report["warnings"][0] and "leave their rows out" in report["warnings"][0]
    assert "parts merged:            1 of 2 (not merged: part-00001-of-00002.jsonl: no report yet" in (
        format_judge_report(report))

    # A part of another split, a stopped part (its report is of an earlier run), a report from before sums.
    (folder / "part-00003-of-00004.jsonl").write_text("")
    manifest = json.loads((folder / f"{PARTS[1]}.manifest.json").read_text())
    write_manifest(second, "judge", manifest["config"], {**manifest["counts"], "stopped": "interrupted"})
    report = merged_report(folder)
    assert report["parts"]["other_split"] == ["part-00003-of-00004.jsonl"]
    assert report["parts"]["missing"][0]["why"] == "stopped (interrupted); run shard 1/2 again"
    assert any("holds parts of another split (part-00003-of-00004.jsonl)" in w for w in report["warnings"])
    (folder / "part-00003-of-00004.jsonl").unlink()
    old = json.loads(report_path(first).read_text())
    del old["sums"]
    report_path(first).write_text(json.dumps(old))
    assert merged_report(folder) is None  # nothing left to merge
    write_manifest(second, "judge", manifest["config"], manifest["counts"])
    why = merged_report(folder)["parts"]["missing"][0]["why"]
    assert why.startswith("its report has no counts to merge") and "run shard 0/2 again" in why

    # Judging the part again (everything cached) writes a report with its sums: the folder merges whole again.
    judged(tmp_path, "prefs", "0/2")
    assert merged_report(folder)["rows"] == whole["rows"]


def test_status_and_the_report_page_show_the_merged_report(sharded, tmp_path):
    folder, whole = sharded
    result = status(folder)
    assert result["judge_report"]["pairs_made"] == whole["pairs_made"]
    text = format_status(result)
    assert f"judge report of {folder}: {ROWS} rows -> {whole['pairs_made']} pairs" in text
    assert "parts merged:            2 of 2" in text

    # `cai report RUN_DIR` with a sharded judge's folder preferences/, and `cai report OUT` on that folder.
    run_dir = tmp_path / "run"
    shutil.copytree(folder, run_dir / "preferences")
    shutil.copy(tmp_path / "revisions.jsonl", run_dir / "revisions.jsonl")
    for run in (load_run(run_dir), load_run(run_dir / "preferences")):
        assert run.judge_report["pairs_made"] == whole["pairs_made"] == len(run.pairs)
        assert run.judge_report["order_consistency"] == whole["order_consistency"]
    assert len(load_run(run_dir).revisions) == ROWS and not load_run(run_dir / "preferences").revisions
    # An unsharded output: its own report.
    assert merged_report(tmp_path / "all.jsonl") == whole
    assert Shard.parse("1/2").part_name == PARTS[1]


def test_parts_judged_with_different_pair_filters_are_named(sharded, tmp_path):
    folder, _ = sharded
    assert not any("pair filters" in w for w in merged_report(folder)["warnings"])
    judged(tmp_path, "prefs", "1/2", min_margin=0.3)  # one part judged again with a stricter filter
    warning = next(w for w in merged_report(folder)["warnings"] if "pair filters" in w)
    assert "min_margin 0.0" in warning and "min_margin 0.3" in warning and PARTS[1] in warning
    assert "judge every part again with one setting" in warning
