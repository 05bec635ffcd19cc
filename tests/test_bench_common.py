"""A bench result file records the machine it was measured on, however its path is written."""

from __future__ import annotations

import json

import bench.common


def test_a_result_file_records_the_machine_with_a_relative_path(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.common, "RESULTS", tmp_path / "bench" / "results")
    monkeypatch.chdir(tmp_path)
    bench.common.write_json("bench/results/figure.json", {"figure": 1})  # as the README's commands write --out
    written = json.loads((tmp_path / "bench" / "results" / "figure.json").read_text())
    assert written["figure"] == 1
    assert written["machine"]["cpu"]["cores"] >= 1 and "native_bf16" in written["machine"]["cpu"]
    bench.common.write_json(tmp_path / "part.json", {"figure": 2})  # a child's part, outside the results folder
    assert "machine" not in json.loads((tmp_path / "part.json").read_text())
