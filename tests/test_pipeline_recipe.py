"""`cai run` recipes: every stage's config object is built from the recipe before any work, values keep their
YAML types, bad recipes fail at once naming the file, line and fix, and finished stages are skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cai.cli import main as cai_main
from cai.pipeline import _eval, _train, plan_run, run_pipeline_from_recipe
from core.errors import UserError
from standins import NeverLoads

REPO = Path(__file__).parent.parent


def _recipe(tmp_path: Path, change: dict) -> Path:
    recipe = yaml.safe_load((REPO / "recipes" / "demo.yaml").read_text())
    recipe["run_dir"] = str(tmp_path / "run")
    recipe.update(change)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _line_of(path: Path, text: str) -> int:
    return next(number for number, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_shipped_recipes_build_every_stage():
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        plan = plan_run(path)
        assert plan.train and plan.eval.trained_model == str(plan.train[-1].folder), path
        assert plan.generate.out == str(plan.run_dir / "revisions.jsonl")


def test_recipe_values_reach_the_trainer_configs_with_their_types(tmp_path):
    path = _recipe(tmp_path, {"seed": 7, "train": {
        "method": "dpo", "confidence": "none", "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5],
        "max_length": None, "max_steps": 3, "use_peft": True}})
    plan = plan_run(path)
    (step,) = plan.train
    config = step.config
    assert type(config).__name__ == "DPOStageConfig"
    assert config.loss_type == ["sigmoid", "sft"] and config.loss_weights == [1.0, 0.5]
    assert config.max_length is None and config.max_steps == 3 and config.use_peft is True
    assert config.seed == 7 and config.data == str(tmp_path / "run" / "preferences.jsonl")
    assert config.output_dir == str(tmp_path / "run" / "dpo") and config.model == "default"
    assert plan.eval.seed == 7 and plan.eval.trained_model == config.output_dir


def test_a_chain_links_the_reward_folder_and_keeps_nulls(tmp_path):
    path = _recipe(tmp_path, {"train": {"method": "reward+rloo", "reward": {"max_steps": 2},
                                        "rloo": {"beta_final": None, "max_steps": 1}}})
    reward, rloo = plan_run(path).train
    assert reward.config.max_steps == 2 and reward.config.eval_fraction == 0.1
    assert rloo.config.beta_final is None and rloo.config.reward_model == str(reward.folder)
    assert rloo.uses == {"reward_model": "reward"}


def test_sft_trains_on_the_judges_sft_file(tmp_path):
    (step,) = plan_run(_recipe(tmp_path, {"train": {"method": "sft"}})).train
    assert step.config.data == str(tmp_path / "run" / "sft.jsonl")


@pytest.mark.parametrize(
    ("change", "key_line", "message"),
    [
        ({"colour": "red"}, "colour:", "unknown key 'colour'"),
        ({"eval": {"promts": "x.jsonl"}}, "promts:", "unknown option 'promts'; did you mean 'prompts'?"),
        ({"generate": {"prompts": "prompts/demo.jsonl", "max_tokenz": 5}}, "max_tokenz:",
         "unknown option 'max_tokenz'; did you mean 'max_tokens'?"),
        ({"train": {"method": "dpoo"}}, "method: dpoo", "train.method 'dpoo' is unknown; did you mean 'dpo'?"),
        ({"train": {"method": "dpo", "betta": 0.2}}, "betta:", "unknown option 'betta'; did you mean 'beta'?"),
        ({"train": {"method": "dpo", "beta": "high"}}, "beta:", "beta: expected a number, got 'high'"),
        ({"train": {"method": "dpo", "beta": -1.0}}, "train:", "--beta -1.0 must be > 0"),
        ({"train": {"method": "rloo"}}, "train:", "--rewards model needs --reward-model DIR"),
        ({"train": {"method": "reward+rloo", "max_steps": 2}}, "max_steps:", "put each method's options under its name"),
    ],
)
def test_bad_recipes_fail_before_any_work_naming_file_and_line(tmp_path, change, key_line, message):
    path = _recipe(tmp_path, change)
    with pytest.raises(UserError) as info:
        run_pipeline_from_recipe(path)
    assert f"{path}:{_line_of(path, key_line)}:" in str(info.value) and message in str(info.value)
    assert not (tmp_path / "run").exists()


def test_malformed_recipe_names_the_line(tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text("run_dir: x\ngenerate: [\n")
    assert cai_main(["run", "--recipe", str(path)]) == 1
    assert f"{path}:3: malformed YAML" in capsys.readouterr().err


# ---------------------------------------------------------------- finished stages are skipped


def test_a_train_step_reruns_only_when_its_inputs_change(tmp_path, monkeypatch):
    import training.api

    path = _recipe(tmp_path, {"train": {"method": "reward+rloo", "reward": {"max_steps": 2}, "rloo": {"max_steps": 1}}})
    reward, rloo = plan_run(path).train
    pairs = Path(reward.config.data)
    pairs.parent.mkdir(parents=True)
    pairs.write_text('{"prompt": "a"}\n')
    trained = []

    def fake_train(config):
        trained.append(Path(config.output_dir).name)
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        return {"global_step": config.max_steps}

    monkeypatch.setattr(training.api, "train", fake_train)

    def run_chain():
        keys = {}
        for step in (reward, rloo):
            keys[step.method.name] = _train(step, keys)

    run_chain()
    run_chain()
    assert trained == ["reward", "rloo"]  # the second run found both up to date
    pairs.write_text('{"prompt": "b"}\n')
    run_chain()
    assert trained == ["reward", "rloo"] * 2  # new data: both retrain
    reward.config.learning_rate = 1e-3
    run_chain()
    assert trained == ["reward", "rloo"] * 3  # the reward step's settings changed: rloo, which uses it, reruns too


def test_eval_is_skipped_when_its_stamp_is_unchanged(tmp_path, monkeypatch):
    import cai.pipeline

    prompts = tmp_path / "heldout.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    plan = plan_run(_recipe(tmp_path, {"eval": {"prompts": str(prompts), "max_tokens": 8}}))
    folder = plan.train[-1].folder
    folder.mkdir(parents=True)
    (folder / "cai_stage.json").write_text('{"key": "a"}\n')
    calls = []

    def fake_evaluate(config, judge_backend=None):
        calls.append(config.max_tokens)
        result = {"win_rate": {"all": {"n": 1, "win_rate": 1.0, "ci95": [0.2, 1.0]}}, "call": len(calls)}
        Path(config.out).write_text(json.dumps(result))
        return result

    monkeypatch.setattr(cai.pipeline, "evaluate", fake_evaluate)
    idle = NeverLoads()  # the run's policy engine, not loaded: eval loads its own engines
    assert _eval(plan, idle)["call"] == 1
    assert _eval(plan, idle)["call"] == 1  # read back from eval.json, not rerun
    prompts.write_text('{"prompt": "hello"}\n')
    assert _eval(plan, idle)["call"] == 2  # the held-out prompts changed
    (folder / "cai_stage.json").write_text('{"key": "b"}\n')
    assert _eval(plan, idle)["call"] == 3  # the model was trained again
    plan.eval.max_tokens = 16
    assert _eval(plan, idle)["call"] == 4  # an eval option changed
    Path(plan.eval.out).unlink()
    assert _eval(plan, idle)["call"] == 5  # the result is gone
