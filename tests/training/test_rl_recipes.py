"""`cai run` of the shipped RL recipes end to end on the default model, sized down: a reward model then RLOO
(recipes/rlaif_rloo.yaml) and RLOO with the judge as the live reward (recipes/direct_rlaif.yaml).  Generation,
the judge and eval run in real vLLM engines as the recipes have them; what is checked is what a user looks at:
the trained model folder loads, the trainer's log has the reward and KL of every step, the run's manifest and
report record the training, and a second `cai run` of the same recipe trains nothing again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cai.cli import main as cai_main

pytestmark = [pytest.mark.rl, pytest.mark.engine]
REPO = Path(__file__).resolve().parents[2]
#: demo prompts the default model answers briefly: their drafts and revisions end before the token limit, so the
#: judge makes pairs of them (a cut-off response is never chosen)
SHORT_ANSWERS = ("harmful-07", "helpful-18", "harmful-12")
RL_STEPS = {"max_steps": 2, "num_generations": 2, "per_device_train_batch_size": 2, "max_completion_length": 8,
            "disable_tqdm": True}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _recipe(tmp_path: Path, name: str, train: dict) -> Path:
    """The shipped recipe with its run folder in ``tmp_path``, three prompts, two held-out ones and ``train``."""
    recipe = yaml.safe_load((REPO / "recipes" / name).read_text())
    prompts = [row for row in _rows(REPO / "prompts" / "demo.jsonl") if row["id"] in SHORT_ANSWERS]
    heldout = _rows(REPO / "prompts" / "heldout.jsonl")[:2]
    recipe.update(run_dir=str(tmp_path / "run"), constitution=str(REPO / "principles.yaml"), seed=0)
    # 8% of the RAM for each engine in cai's plan (the CPU default reserves ~4 GiB) and a 2,048-token context;
    # the KV cache itself is set by ``kv_cache_of_one_gib``
    small = {"gpu_memory_utilization": 0.08, "max_model_len": 2048}
    recipe["generate"].update(prompts=_write_rows(tmp_path / "prompts.jsonl", prompts), max_tokens=128, **small)
    recipe["judge"]["keep_flagged"] = True  # the row checks' verdict on three rows is not what is tested here
    recipe["train"] = train
    recipe["eval"].update(prompts=_write_rows(tmp_path / "heldout.jsonl", heldout), max_tokens=8, **small)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _step_logs(folder: Path) -> list[dict]:
    summary = json.loads((folder / "cai_training.json").read_text())
    return [entry for entry in summary["log_history"] if "loss" in entry]


def _check_run(run_dir: Path, method_folder: str, source: str, reward_name: str) -> dict:
    """What a user checks after `cai run`: the model loads, its log, the manifest, eval and the report."""
    from transformers import AutoModelForCausalLM

    folder = run_dir / method_folder
    AutoModelForCausalLM.from_pretrained(folder)
    summary = json.loads((folder / "cai_training.json").read_text())
    assert summary["method"] == "rloo" and summary["global_step"] == 2 and summary["rewards"] == [source]
    assert summary["reward_names"] == [reward_name]
    logs = _step_logs(folder)
    assert [entry["beta"] for entry in logs] == pytest.approx([0.05, 0.2])  # the recipe's beta -> beta_final
    for entry in logs:
        assert {"reward", "kl", f"rewards/{reward_name}/mean"} <= set(entry), entry
    manifest = json.loads((run_dir / "run.json.manifest.json").read_text())
    assert "training" in manifest["ledger"]["stages"] and manifest["counts"]["timings"]["train_s"] > 0
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["win_rate"]["all"]["n"] + evaluation["unjudged"] == 2
    report = (run_dir / "report.html").read_text()
    assert f"plot-training-{method_folder}" in report and f"plot-rewards-{method_folder}" in report
    return summary


def _rerun_trains_nothing(recipe: Path, folders: list[Path], capsys) -> None:
    """A second `cai run`: every stage is found done, no model folder is written again."""
    written = {folder: (folder / "model.safetensors").stat().st_mtime_ns for folder in folders}
    capsys.readouterr()
    assert cai_main(["run", "--recipe", str(recipe)]) == 0
    err = capsys.readouterr().err
    for folder in folders:
        assert f"{folder} is up to date, skipped" in err
        assert (folder / "model.safetensors").stat().st_mtime_ns == written[folder]
    assert "eval.json is up to date, skipped" in err


@pytest.fixture(scope="module", autouse=True)
def kv_cache_of_one_gib():
    """Each engine's KV cache is 1 GiB (vLLM's VLLM_CPU_KVCACHE_SPACE), whatever its share of the RAM: with a
    share alone, the KV cache is what the worker's RSS leaves of it, and that RSS differs between CPUs (1.5 GiB of
    8% of 24 GiB in float32 on one), so a small share can leave no KV cache and the engine refuses to start."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        yield


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory, kv_cache_of_one_gib) -> Path:
    """`cai run` of recipes/rlaif_rloo.yaml: generate, judge, reward model, RLOO against it, eval."""
    tmp_path = tmp_path_factory.mktemp("rlaif_rloo")
    recipe = yaml.safe_load((REPO / "recipes" / "rlaif_rloo.yaml").read_text())
    train = {"method": "reward+rloo", "reward": {"max_steps": 1, "disable_tqdm": True},
             "rloo": {**recipe["train"]["rloo"], **RL_STEPS}}
    path = _recipe(tmp_path, "rlaif_rloo.yaml", train)
    assert cai_main(["run", "--recipe", str(path)]) == 0
    return path


def test_cai_run_trains_a_reward_model_then_rloo_and_resumes_without_retraining(chain_run, capsys):
    run_dir = chain_run.parent / "run"
    assert _rows(run_dir / "preferences.jsonl"), "the judge made no pair"
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(run_dir / "reward")
    _check_run(run_dir, "rloo", "model", "reward")  # the reward model's folder names its source
    _rerun_trains_nothing(chain_run, [run_dir / "reward", run_dir / "rloo"], capsys)


def test_cai_run_of_direct_rlaif_scores_with_the_live_judge_and_resumes(chain_run, tmp_path, capsys):
    recipe = yaml.safe_load((REPO / "recipes" / "direct_rlaif.yaml").read_text())
    path = _recipe(tmp_path, "direct_rlaif.yaml", {**recipe["train"], **RL_STEPS})
    # The same generate and judge sections as the chain's recipe: its finished files are this run's too, so
    # generation and judging resume with nothing left to do and load no model.
    run_dir = tmp_path / "run"
    shutil.copytree(chain_run.parent / "run", run_dir,
                    ignore=lambda _, names: [n for n in names if not n.startswith(("revisions", "preferences", "sft"))])
    assert cai_main(["run", "--recipe", str(path)]) == 0
    summary = _check_run(run_dir, "rloo", "judge", "judge")
    judged = _rows(run_dir / "rloo" / "judge_rewards.jsonl")
    assert len(judged) == 2 * 2 and all(0.0 <= row["reward"] <= 1.0 for row in judged)  # 2 steps x 2 completions
    assert len(summary["reward_values"]["judge"]) == 4 and (run_dir / "rloo" / "judge_judgements.jsonl").stat().st_size
    _rerun_trains_nothing(path, [run_dir / "rloo"], capsys)
