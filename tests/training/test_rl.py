"""`cai train rloo|grpo`: reward sources (a reward model, any module:function, several with weights), the KL
coefficient moved step by step, non-finite rewards refused, resume from a checkpoint, `cai run` chains, and
`cai train ppo` without its TRL.  The judge as the live reward: tests/judging/test_judge_reward.py."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from cai.cli import main as cai_main
from core.errors import UserError
from training.cli import train
from training.methods import get_method

pytestmark = pytest.mark.rl
QUIET = ["--disable-tqdm", "true"]
SHORT = ["--max-completion-length", "8", "--learning-rate", "1e-3", *QUIET]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def toy_rewards(tmp_path, monkeypatch) -> str:
    """A module of reward sources, importable by name as `cai train --rewards module:function` finds them."""
    folder = tmp_path / "sources"
    folder.mkdir()
    (folder / "toy_rewards.py").write_text(textwrap.dedent('''
        def length(config, policy_memory_bytes=0):
            def length(prompts, completions, **kwargs):
                return [len(completion[-1]["content"]) / 10 for completion in completions]
            return length

        def broken(config, policy_memory_bytes=0):
            def broken(prompts, completions, **kwargs):
                return [float("nan")] + [0.0] * (len(completions) - 1)
            return broken
    '''))
    monkeypatch.syspath_prepend(str(folder))
    return "toy_rewards"


def _summary(out: Path) -> dict:
    return json.loads((out / "cai_training.json").read_text())


def _step_logs(summary: dict) -> list[dict]:
    return [entry for entry in summary["log_history"] if "loss" in entry]


def _weights(folder: str | Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def test_rloo_trains_on_a_reward_model_with_beta_rising_step_by_step(tmp_path, tiny_model_dir, tiny_reward_dir,
                                                                      preference_file):
    out = tmp_path / "rloo"
    assert train(["rloo", "--data", preference_file, "--output-dir", str(out), "--model", tiny_model_dir,
                  "--reward-model", tiny_reward_dir, "--max-steps", "3", "--beta", "0.05", "--beta-final", "0.25",
                  *SHORT]) == 0
    summary = _summary(out)
    logs = _step_logs(summary)
    assert [entry["beta"] for entry in logs] == pytest.approx([0.05, 0.15, 0.25])  # the value each step used
    assert summary["beta_start"] == 0.05 and summary["beta_end"] == pytest.approx(0.25)
    name = Path(tiny_reward_dir).name
    assert all("kl" in entry and f"rewards/{name}/mean" in entry for entry in logs)
    assert len(summary["reward_values"][name]) == 3 * 4  # 3 steps of one prompt's 4 completions
    before, after = _weights(tiny_model_dir), _weights(out)
    assert any(not (before[key] == after[key]).all() for key in after)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)


def test_grpo_sums_weighted_sources_and_moves_its_beta(tmp_path, tiny_model_dir, tiny_reward_dir, preference_file,
                                                       toy_rewards):
    out = tmp_path / "grpo"
    assert train(["grpo", "--data", preference_file, "--output-dir", str(out), "--model", tiny_model_dir,
                  "--rewards", f"model,{toy_rewards}:length", "--reward-model", tiny_reward_dir,
                  "--reward-weights", "1.0", "0.5", "--max-steps", "2", "--beta", "0.1", "--beta-final", "0.3",
                  *SHORT]) == 0
    logs = _step_logs(_summary(out))
    assert [entry["beta"] for entry in logs] == pytest.approx([0.1, 0.3])
    model = Path(tiny_reward_dir).name
    for entry in logs:
        combined = entry[f"rewards/{model}/mean"] + 0.5 * entry["rewards/length/mean"]
        assert entry["reward"] == pytest.approx(combined, rel=1e-4)


def test_the_beta_schedule_is_set_on_the_trainer_before_each_step():
    from types import SimpleNamespace

    from training.rl import BetaSchedule

    schedule = BetaSchedule(0.05, 0.2)
    schedule.trainer = SimpleNamespace(beta=None)
    seen = []
    for done in range(4):
        schedule.on_step_begin(None, SimpleNamespace(global_step=done, max_steps=4), None)
        seen.append(schedule.trainer.beta)
    assert seen == pytest.approx([0.05, 0.1, 0.15, 0.2])


def test_a_reward_that_is_not_finite_stops_training_and_saves_nothing(tmp_path, tiny_model_dir, preference_file,
                                                                     toy_rewards, capsys):
    out = tmp_path / "rloo"
    code = cai_main(["train", "rloo", "--data", preference_file, "--output-dir", str(out), "--model", tiny_model_dir,
                     "--rewards", f"{toy_rewards}:broken", "--max-steps", "2", *SHORT])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "reward source 'broken' gave 1 reward(s) that are not finite numbers (e.g. nan) at step 0" in err
    assert not (out / "model.safetensors").exists()


def test_training_resumes_from_its_last_checkpoint(tmp_path, tiny_model_dir, tiny_reward_dir, preference_file):
    out = tmp_path / "rloo"
    common = ["rloo", "--data", preference_file, "--output-dir", str(out), "--model", tiny_model_dir,
              "--reward-model", tiny_reward_dir, "--beta", "0.05", "--beta-final", "0.25", "--save-strategy", "steps",
              "--save-steps", "1", *SHORT]
    with pytest.raises(UserError, match="no checkpoint-N folder in"):
        train([*common, "--max-steps", "2", "--resume-from-checkpoint", "true"])
    assert train([*common, "--max-steps", "2"]) == 0
    assert (out / "checkpoint-2").is_dir()
    assert train([*common, "--max-steps", "3", "--resume-from-checkpoint", "true"]) == 0
    summary = _summary(out)
    assert summary["global_step"] == 3
    # Steps 1 and 2 come from the checkpoint (a schedule over 2 steps), step 3 from the resumed run: a fresh
    # run of 3 steps would have used 0.05, 0.15, 0.25.
    assert [entry["beta"] for entry in _step_logs(summary)] == pytest.approx([0.05, 0.25, 0.25])


def test_rl_options_are_checked_before_any_model_loads(tmp_path, preference_file):
    from core.config import parse_config

    def parse(*argv):
        return parse_config(get_method("rloo").config_class, ["--data", preference_file, "--output-dir",
                                                                str(tmp_path / "o"), *argv], "cai train rloo")

    with pytest.raises(UserError, match="--rewards model needs --reward-model DIR"):
        parse()
    with pytest.raises(UserError, match="--rewards 'jugde' is unknown; did you mean 'judge'"):
        parse("--rewards", "jugde")
    with pytest.raises(UserError, match="2 weights for 1 reward sources"):
        parse("--rewards", "judge", "--reward-weights", "1", "2")
    with pytest.raises(UserError, match="--beta 0.0 must be > 0 with --beta-final"):
        parse("--rewards", "judge", "--beta", "0", "--beta-final", "0.1")
    with pytest.raises(UserError, match="--num-generations 1 must be at least 2"):
        parse("--rewards", "judge", "--num-generations", "1")
    with pytest.raises(UserError, match=r"--judge-mode 'pointwis' is unknown.*did you mean 'pointwise'"):
        parse("--rewards", "judge", "--judge-mode", "pointwis")


def test_pointwise_judging_needs_a_reference_answer_named_by_file_and_line(tmp_path):
    from training.data import load_prompt_rows

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a", "chosen": "b"}\n{"prompt": "c", "id": 7}\n')
    with pytest.raises(UserError, match=r"prompts.jsonl:2: no reference answer in column 'chosen'"):
        load_prompt_rows(prompts, reference_column="chosen")
    assert load_prompt_rows(prompts)[1] == {"prompt": [{"role": "user", "content": "c"}], "id": "7"}


@pytest.mark.skipif(get_method("ppo").installed, reason="this TRL has PPO (test_ppo_trains_with_rising_kl_and_logs)")
def test_ppo_without_its_trl_names_the_extra_and_rloo(tmp_path, preference_file, capsys):
    code = cai_main(["train", "ppo", "--data", preference_file, "--output-dir", str(tmp_path / "ppo"),
                     "--reward-model", "r"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert "pip install 'cai-engine[ppo]'" in err and "cai train rloo" in err


# ---------------------------------------------------------------- from `cai run`


@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_cai_run_chains_a_reward_model_into_rl(tmp_path, tiny_model_dir, preference_file, method):
    """The recipe's chain as `cai run` plans and trains it, on the judge's pairs (here the fixture's)."""
    from cai.pipeline import _train, plan_run

    recipe = yaml.safe_load((REPO / "recipes" / "rlaif_rloo.yaml").read_text())
    recipe.update(run_dir=str(tmp_path / "run"), model=tiny_model_dir)
    recipe["train"] = {"method": f"reward+{method}", "reward": {"max_steps": 2, "disable_tqdm": True},
                       method: {**recipe["train"]["rloo"], "max_steps": 2, "max_completion_length": 8,
                                "disable_tqdm": True}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    steps = plan_run(path).train
    (tmp_path / "run").mkdir()
    shutil.copy(preference_file, steps[0].config.data)
    keys = {}
    for step in steps:
        keys[step.method.name] = _train(step, keys)
    summary = _summary(tmp_path / "run" / method)
    assert summary["method"] == method and summary["global_step"] == 2
    assert summary["rewards"] == ["model"] and [e["beta"] for e in _step_logs(summary)] == pytest.approx([0.05, 0.2])
