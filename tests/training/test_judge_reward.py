"""The constitutional judge as the live reward of `cai train rloo|grpo`: the rewards it gives inside training are
`cai judge`'s verdicts on the same texts (same requests, same cache keys), pointwise and groupwise; a failing
endpoint stops training with one message; a judge that does not fit beside the policy is refused first."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from cai.cli import main as cai_main
from core.errors import UserError

pytestmark = pytest.mark.rl
REPO = Path(__file__).resolve().parents[2]
QUIET = ["--disable-tqdm", "true"]


def _judge_samples(tmp_path: Path, rows: list[dict], url: str, model: str, seed: int) -> dict[str, dict]:
    """`cai judge --mode samples` on rows with their responses given: the pairs by row id."""
    from judging.config import JudgeConfig
    from judging.run import run_judge

    tmp_path.mkdir(parents=True, exist_ok=True)
    source = tmp_path / "samples.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = JudgeConfig(input=str(source), out=str(tmp_path / "judged.jsonl"), mode="samples", model=model,
                         backend="openai", base_url=url, method="likelihood", principles_per_pair=2,
                         constitution=str(REPO / "principles.yaml"), seed=seed)
    return {pair["id"]: pair for pair in run_judge(config)["pairs"]}


def _cache_keys(path: Path) -> set[str]:
    return {json.loads(line)["key"] for line in path.read_text().splitlines()}


def test_groupwise_rewards_inside_training_are_cai_judges_verdicts(tmp_path, tiny_model_dir, preference_file,
                                                                   vllm_server, served_model):
    out = tmp_path / "rloo"
    assert cai_main(["train", "rloo", "--data", preference_file, "--output-dir", str(out), "--model", tiny_model_dir,
                     "--rewards", "judge", "--judge-backend", "openai", "--judge-base-url", vllm_server,
                     "--judge-model", served_model, "--constitution", str(REPO / "principles.yaml"),
                     "--principles-per-pair", "2", "--num-generations", "2", "--per-device-train-batch-size", "2",
                     "--max-steps", "2", "--max-completion-length", "8", "--seed", "3", *QUIET]) == 0
    summary = json.loads((out / "cai_training.json").read_text())
    assert summary["rewards"] == ["judge"] and len(summary["reward_values"]["judge"]) == 4
    groups = defaultdict(list)
    for line in (out / "judge_rewards.jsonl").read_text().splitlines():
        row = json.loads(line)
        groups[(row["step"], row["id"])].append(row)
    assert len(groups) == 2 and all(len(group) == 2 for group in groups.values())
    prompts = {row["id"]: row["prompt"] for row in map(json.loads, Path(preference_file).read_text().splitlines())}
    samples = [{"id": row_id, "prompt": prompts[row_id], "responses": [row["completion"] for row in group]}
               for (_, row_id), group in groups.items()]
    pairs = _judge_samples(tmp_path, samples, vllm_server, served_model, seed=3)
    assert pairs, "cai judge made no pair of the training completions"
    for (_, row_id), group in groups.items():
        if row_id not in pairs:
            continue  # a tie or an empty completion makes no pair; its judgements are still compared below
        pair = pairs[row_id]
        rewards = {row["completion"]: row["reward"] for row in group}
        chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        assert rewards[chosen] == pytest.approx(pair["chosen_probability"], abs=1e-4)
        assert rewards[rejected] == pytest.approx(1 - pair["chosen_probability"], abs=1e-4)
    # The same requests: every judgement training made is one `cai judge` made, under the same key.
    from judging.run import judgements_path

    assert _cache_keys(out / "judge_judgements.jsonl") == _cache_keys(judgements_path(tmp_path / "judged.jsonl"))
    assert [e["beta"] for e in summary["log_history"] if "loss" in e] == [0.05, 0.05]
    assert all("rewards/judge/mean" in e for e in summary["log_history"] if "loss" in e)


def test_pointwise_rewards_are_cai_judges_verdicts_against_the_reference(tmp_path, preference_file, vllm_server,
                                                                         served_model):
    from judging.config import JudgeModelConfig
    from judging.reward import JudgeReward

    rows = [json.loads(line) for line in Path(preference_file).read_text().splitlines()[:2]]
    judge = JudgeReward(JudgeModelConfig(model=served_model, backend="openai", base_url=vllm_server,
                                         principles_per_pair=2, constitution=str(REPO / "principles.yaml"), seed=0),
                        "pointwise", tmp_path / "out")
    answers = [rows[0]["rejected"][0]["content"], rows[1]["chosen"][0]["content"], rows[1]["rejected"][0]["content"]]
    prompts = [rows[0]["prompt"], rows[1]["prompt"], rows[1]["prompt"]]
    references = [rows[0]["chosen"][0]["content"], "A short reference answer.", "A short reference answer."]
    ids = [rows[0]["id"], rows[1]["id"], rows[1]["id"]]
    try:
        rewards = judge(prompts, [[{"role": "assistant", "content": a}] for a in answers], id=ids,
                        reference=references)
    finally:
        judge.close()
    # cai judge assigns a row's principles by its id: each row has the id training saw (one run per row)
    samples = [{"id": row_id, "prompt": prompt, "responses": [answer, reference]}
               for row_id, prompt, answer, reference in zip(ids, prompts, answers, references)]
    for index, sample in enumerate(samples):
        pair = _judge_samples(tmp_path / str(index), [sample], vllm_server, served_model, seed=0)[sample["id"]]
        p_answer = pair["chosen_probability"] if pair["chosen"][0]["content"] == answers[index] \
            else 1 - pair["chosen_probability"]
        assert rewards[index] == pytest.approx(p_answer, abs=1e-4)


def test_a_failing_judge_endpoint_stops_training_with_one_message_and_no_model(tmp_path, tiny_model_dir,
                                                                               preference_file, monkeypatch, capsys):
    from reliability.servers import StandinServer

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "rloo"
    with StandinServer(api_key="sk-the-judge-wants-a-key") as server:  # every request: 401
        code = cai_main(["train", "rloo", "--data", preference_file, "--output-dir", str(out), "--model",
                         tiny_model_dir, "--rewards", "judge", "--judge-backend", "openai", "--judge-base-url",
                         server.base_url, "--judge-model", "standin", "--max-steps", "2",
                         "--max-completion-length", "8", *QUIET])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "the judge reward (standin) failed on" in err and "training stopped and no model was saved" in err
    assert "sk-the-judge-wants-a-key" not in err
    assert not (out / "model.safetensors").exists()


def test_a_judge_that_does_not_fit_beside_the_policy_is_refused_before_loading(default_model_dir):
    from judging.config import JudgeModelConfig
    from judging.reward import judge_memory_share

    gib = 2**30
    judge = JudgeModelConfig(model=default_model_dir)
    # A simulated 24 GiB GPU (free, total): the policy's training state of 20 GiB leaves no room for the judge.
    with pytest.raises(UserError, match=r"cannot share this GPU: the policy in training \(--model\) ~22.0 GiB"):
        judge_memory_share(judge, 20 * gib, memory=(24 * gib, 24 * gib))
    share = judge_memory_share(judge, 4 * gib, memory=(80 * gib, 80 * gib))
    assert 0 < share < 0.9  # the judge's part of the 0.9 both take
    endpoint = JudgeModelConfig(model="m", backend="openai", base_url="http://127.0.0.1:9/v1")
    assert judge_memory_share(endpoint, 10**15, memory=(gib, gib)) is None  # served elsewhere: nothing to split


def test_cai_train_refuses_a_judge_that_does_not_fit_before_any_model_loads(tmp_path, preference_file, monkeypatch,
                                                                            capsys):
    """The whole command on a simulated 2 GiB GPU: the default policy's training state and the judge's engine do
    not fit together, so it stops with one message before the policy or the judge loads."""
    import judging.reward
    import training.models

    def must_not_load(*args, **kwargs):
        raise AssertionError("a model loaded before the memory check")

    monkeypatch.setattr(judging.reward, "cuda_memory", lambda: (2 * 2**30, 2 * 2**30))
    monkeypatch.setattr(judging.reward, "make_judge_backend", must_not_load)
    monkeypatch.setattr(training.models, "load_causal_lm", must_not_load)
    out = tmp_path / "rloo"
    code = cai_main(["train", "rloo", "--data", preference_file, "--output-dir", str(out), "--rewards", "judge",
                     "--max-steps", "1", *QUIET])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "a model loaded" not in err
    assert "cannot share this GPU: the policy in training (--model)" in err
    assert not (out / "model.safetensors").exists()
