"""`cai eval` with the real engine: a DPO-trained folder loads in vLLM and gets a win rate with intervals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai.cli import main as cai_main
from judging.scoring import wilson_interval
from evaluation.run import EvalConfig, evaluate, format_eval

REPO = Path(__file__).parent.parent


def test_trained_folder_serves_in_vllm_and_eval_reports_win_rates(tmp_path, vllm_backend):
    trained = tmp_path / "dpo"
    assert cai_main(["train", "dpo", "--data", str(REPO / "tests" / "training" / "preferences.jsonl"),
                     "--output-dir", str(trained), "--max-steps", "2", "--learning-rate", "1e-4"]) == 0
    prompts = tmp_path / "heldout.jsonl"
    lines = (REPO / "prompts" / "heldout.jsonl").read_text().splitlines()
    prompts.write_text("\n".join(lines[:2] + lines[8:10]) + "\n")
    config = EvalConfig(trained_model=str(trained), prompts=str(prompts), out=str(tmp_path / "eval.json"),
                        max_tokens=24, principles_per_pair=1)
    result = evaluate(config, judge_backend=vllm_backend)

    assert set(result["win_rate"]) == {"all", "harmful", "helpful"}
    overall = result["win_rate"]["all"]
    wins = [row["win"] for row in result["rows"]]
    assert overall["n"] == 4 and None not in wins
    # every row's win follows from the judge's probability, and the rates are the mean wins per tag
    for row in result["rows"]:
        assert row["trained"].strip() and row["base"].strip()  # the trained folder generated in vLLM
        p = row["p_trained_better"]
        assert row["win"] == (1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0)
    assert overall["win_rate"] == pytest.approx(sum(wins) / 4)
    for tag in ("harmful", "helpful"):
        tagged = [row["win"] for row in result["rows"] if row["tag"] == tag]
        assert result["win_rate"][tag]["win_rate"] == pytest.approx(sum(tagged) / len(tagged))
    low, high = overall["ci95"]
    assert (low, high) == pytest.approx(wilson_interval(sum(wins), 4))
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["win_rate"] == result["win_rate"]
    assert "95% CI" in format_eval(result)
