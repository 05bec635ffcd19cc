"""`cai eval` with the real engine: a DPO-trained folder loads in vLLM and gets a win rate with intervals."""

from __future__ import annotations

import json
from pathlib import Path

from cai.cli import main as cai_main
from training.evaluate import EvalConfig, evaluate, format_eval

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
    result = evaluate(config, judge_backend=vllm_backend, log=lambda m: None)

    assert set(result["win_rate"]) == {"all", "harmful", "helpful"}
    overall = result["win_rate"]["all"]
    assert overall["n"] == 4 and 0.0 <= overall["win_rate"] <= 1.0
    low, high = overall["ci95"]
    assert 0.0 <= low <= overall["win_rate"] <= high <= 1.0
    for row in result["rows"]:
        assert row["trained"].strip() and row["base"].strip()  # the trained folder generated in vLLM
        assert 0.0 <= row["p_trained_better"] <= 1.0
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["win_rate"] == result["win_rate"]
    assert "95% CI" in format_eval(result)
