"""Two in-process engines on one GPU (core/backends/gpu_memory.py): shares that fit both, or a clear error
before any model loads.  GPU sizes are arguments (or a patched ``cuda_memory``): no GPU is needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.backends import gpu_memory
from core.backends.gpu_memory import GiB, EngineNeed, estimate_need, split_gpu_memory
from core.errors import UserError

H100 = 80 * GiB


def fake_model(folder: Path, weights_gib: float, layers=24, kv_heads=8, head_dim=128, context=4096) -> Path:
    """A model folder as vLLM would read it: config.json and a safetensors file of the given size (sparse)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "num_hidden_layers": layers, "num_attention_heads": 32, "num_key_value_heads": kv_heads,
        "head_dim": head_dim, "torch_dtype": "bfloat16", "max_position_embeddings": context}))
    with open(folder / "model.safetensors", "wb") as handle:
        handle.truncate(int(weights_gib * GiB))
    return folder


def test_the_estimate_is_weights_plus_the_kv_cache_of_a_few_full_sequences(tmp_path):
    need = estimate_need("--model m", fake_model(tmp_path / "m", 3.4))
    assert need.weights == int(3.4 * GiB)
    # keys and values: 2 x 24 layers x 8 KV heads x 128 dims x 2 bytes per token, 4 sequences of 4096 tokens
    assert need.kv_cache == 2 * 24 * 8 * 128 * 2 * 4096 * gpu_memory.KV_SEQUENCES
    assert need.total == need.weights + need.kv_cache + gpu_memory.ENGINE_OVERHEAD
    shorter = estimate_need("--model m", tmp_path / "m", max_model_len=1024)
    assert shorter.kv_cache == need.kv_cache // 4  # --max-model-len shortens what must fit


def test_two_engines_split_the_budget_by_need_and_each_gets_at_least_its_need():
    policy = EngineNeed("--model p", weights=4 * GiB, kv_cache=2 * GiB)      # 8 GiB with overhead
    judge = EngineNeed("--judge-model j", weights=14 * GiB, kv_cache=4 * GiB)  # 20 GiB
    shares = split_gpu_memory([policy, judge], total=H100, free=79 * GiB)
    assert sum(shares) <= 0.9
    assert sum(shares) >= 0.898  # the whole budget is used (rounded down to 0.001)
    for need, share in zip((policy, judge), shares):
        assert share * H100 >= need.total
    assert shares[1] / shares[0] == pytest.approx(20 / 8, rel=0.01)  # in proportion to the needs


def test_memory_another_process_holds_is_left_to_it():
    needs = [EngineNeed("a", 4 * GiB, 2 * GiB), EngineNeed("b", 4 * GiB, 2 * GiB)]
    shares = split_gpu_memory(needs, total=H100, free=30 * GiB)
    assert sum(shares) * H100 <= 30 * GiB  # vLLM refuses a share larger than what is free at its start
    assert shares[0] == shares[1]
    assert split_gpu_memory(needs, total=H100, free=79 * GiB, budget=0.5) == [0.25, 0.25]  # --gpu-memory-utilization


def test_engines_that_cannot_fit_are_a_clear_error():
    needs = [EngineNeed("--model big-policy", 14 * GiB, 4 * GiB),
             EngineNeed("--judge-model big-judge", 14 * GiB, 4 * GiB)]
    with pytest.raises(UserError) as caught:
        split_gpu_memory(needs, total=24 * GiB, free=23 * GiB)
    message = str(caught.value)
    assert "--model big-policy ~20.0 GiB" in message and "--judge-model big-judge ~20.0 GiB" in message
    assert "need 40.0 GiB together" in message and "21.6 GiB for them" in message
    assert "drop --judge-model" in message and "--judge-base-url" in message


def test_a_judge_beside_the_policy_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    """`cai judge --mode samples --judge-model BIG` on a (pretend) 16 GiB GPU: the error comes from the config,
    before a backend is built; on a (pretend) H100 both get shares that fit."""
    from judging.config import JudgeConfig
    from judging.engines import Engines, engine_memory_shares

    policy = fake_model(tmp_path / "policy", 3.4)
    judge = fake_model(tmp_path / "judge", 13.5)
    config = JudgeConfig(input="x.jsonl", out="y.jsonl", mode="samples", model=str(policy), judge_model=str(judge))
    built = []
    monkeypatch.setattr("judging.engines.build_backend", lambda *args: built.append(args))

    monkeypatch.setattr(gpu_memory, "cuda_memory", lambda: (15 * GiB, 16 * GiB))
    with pytest.raises(UserError, match=r"cannot share this GPU: --model .*policy ~.* and --judge-model .*judge ~"):
        Engines(config, policy_loads=True)
    assert built == []

    monkeypatch.setattr(gpu_memory, "cuda_memory", lambda: (79 * GiB, H100))
    policy_share, judge_share = engine_memory_shares(config)
    assert policy_share + judge_share <= 0.9 and judge_share > 2 * policy_share
    engines = Engines(config, policy_loads=True)
    engines.policy(), engines.judge()
    assert [options.gpu_memory_utilization for _, _, options in built] == [policy_share, judge_share]

    # One engine serves both (the same model), or no GPU (CPU: each engine sizes its own RAM): nothing is split.
    same = JudgeConfig(input="x.jsonl", out="y.jsonl", mode="samples", model=str(policy), judge_model=str(policy))
    assert engine_memory_shares(same) is None
    monkeypatch.setattr(gpu_memory, "cuda_memory", lambda: None)
    assert engine_memory_shares(config) is None


def demo_recipe(tmp_path, section: str = "eval", **values) -> Path:
    """recipes/demo.yaml (no judge check) with a run folder in ``tmp_path`` and ``values`` in ``section``."""
    import yaml

    recipe = yaml.safe_load((Path(__file__).parent.parent / "recipes" / "demo.yaml").read_text())
    recipe.pop("judge_check")
    recipe["run_dir"] = str(tmp_path / "run")
    recipe[section].update(values)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("section, beside", [("judge", "--model default"), ("eval", "--base-model default")])
def test_cai_run_with_a_judge_too_large_to_share_the_gpu_stops_before_any_work(tmp_path, monkeypatch, section,
                                                                               beside):
    """The recipe's judge beside the policy, or eval's judge beside the base: refused before any model loads."""
    from cai.pipeline import run_pipeline_from_recipe

    path = demo_recipe(tmp_path, section, judge_model=str(fake_model(tmp_path / "judge-30g", 30)))
    monkeypatch.setattr(gpu_memory, "cuda_memory", lambda: (23 * GiB, 24 * GiB))
    monkeypatch.setattr("core.backends.registry.build_backend", lambda *a, **k: pytest.fail("a model loaded"))
    with pytest.raises(UserError, match=rf"cannot share this GPU: {beside} ~.* and --judge-model .*judge-30g"):
        run_pipeline_from_recipe(path)
    assert not (tmp_path / "run").exists()  # nothing was written


# -- every place a second in-process engine starts beside another ---------------------------------------------
REPO = Path(__file__).parent.parent


def record_builds(monkeypatch) -> list[tuple[str, float | None]]:
    """Every backend built, as (model, gpu_memory_utilization), each a stand-in: nothing loads."""
    from standins import ScriptedBackend

    built = []

    def build(name, model, options=None):
        built.append((model, options.gpu_memory_utilization))
        return ScriptedBackend(model)

    monkeypatch.setattr("core.backends.registry.build_backend", build)
    monkeypatch.setattr("judging.engines.build_backend", build)
    return built


def test_cai_eval_loads_a_judge_of_another_model_beside_the_base_in_shares_that_fit(tmp_path, monkeypatch):
    """`cai eval --judge-model J`: the trained model answers alone, then the base and J load side by side (the
    base answers, J judges): on a (pretend) 16 GiB GPU a UserError before any model loads, on an H100 shares."""
    from evaluation.run import EvalConfig, eval_memory_shares, evaluate

    trained, base = fake_model(tmp_path / "trained", 3.4), fake_model(tmp_path / "base", 3.4)
    judge = fake_model(tmp_path / "judge", 13.5)
    config = EvalConfig(trained_model=str(trained), base_model=str(base), judge_model=str(judge), method="pairwise",
                        prompts=str(REPO / "prompts" / "heldout.jsonl"), limit=3, principles_per_pair=1,
                        constitution=str(REPO / "principles.yaml"), out=str(tmp_path / "eval.json"))
    built = record_builds(monkeypatch)
    monkeypatch.setattr(gpu_memory, "cuda_memory", lambda: (15 * GiB, 16 * GiB))
    with pytest.raises(UserError, match=r"cannot share this GPU: --base-model .*base ~.* and --judge-model .*judge ~"):
        evaluate(config)
    assert built == [] and not (tmp_path / "eval.json").exists()

    monkeypatch.setattr(gpu_memory, "cuda_memory", lambda: (79 * GiB, H100))
    base_share, judge_share = eval_memory_shares(config)
    assert base_share + judge_share <= 0.9 and judge_share > 2 * base_share
    assert evaluate(config)["win_rate"]["all"]["n"] == 3
    # the trained model alone (the default share), then the judge and the base with their shares
    assert built == [(str(trained), None), (str(judge), judge_share), (str(base), base_share)]

    # The judge is the base (the default): one engine answers for the base and judges; nothing is split.
    built.clear()
    same = EvalConfig(**{**config.__dict__, "judge_model": None})
    assert eval_memory_shares(same) is None
    evaluate(same)
    assert built == [(str(trained), None), (str(base), None)]


def test_a_judge_beside_the_runs_policy_keeps_the_shares_cai_run_gave_them(tmp_path, monkeypatch):
    """`cai run` splits the GPU once (policy, judge) and builds the policy itself: the judge stage, in samples
    mode too, uses that policy and the judge's share as they are (no second split of the judge's share)."""
    from judging.config import JudgeConfig
    from judging.engines import Engines, engine_memory_shares
    from standins import ScriptedBackend

    policy, judge = fake_model(tmp_path / "policy", 3.4), fake_model(tmp_path / "judge", 13.5)
    config = JudgeConfig(input="x.jsonl", out="y.jsonl", mode="samples", model=str(policy), judge_model=str(judge))
    built = record_builds(monkeypatch)
    monkeypatch.setattr(gpu_memory, "cuda_memory", lambda: (79 * GiB, H100))
    policy_share, judge_share = engine_memory_shares(config)
    config.gpu_memory_utilization = judge_share  # as cai run sets it
    runs_policy = ScriptedBackend(str(policy))
    engines = Engines(config, policy=runs_policy, policy_loads=True)
    assert engines.policy() is runs_policy and engines.judge() is not runs_policy
    assert built == [(str(judge), judge_share)]
    engines.close()

    same = JudgeConfig(input="x.jsonl", out="y.jsonl", mode="samples", model=str(policy))
    engines = Engines(same, policy=runs_policy, policy_loads=True)
    assert engines.judge() is runs_policy is engines.policy()  # one engine: the run's policy judges


def plan_with_trained_folder(tmp_path):
    from cai.pipeline import plan_run

    plan = plan_run(demo_recipe(tmp_path))
    fake_model(plan.train[-1].folder, 3.4)  # what training wrote, as large as a 1.7B model
    return plan


@pytest.mark.parametrize("free_gib, free_ram_gib, kept",
                         [(40, None, True), (5, None, False), (None, 12, True), (None, 1, False)])
def test_cai_runs_eval_loads_the_trained_model_beside_the_policy_only_where_it_fits(tmp_path, monkeypatch,
                                                                                    free_gib, free_ram_gib, kept):
    """The policy (the base, eval's judge) is still loaded at eval: the trained model's engine loads beside it
    with the memory left free (40 GiB), or the policy is closed first (5 GiB left); on CPU (no GPU) it stays
    where the RAM the engine reserves is free (12 GiB), else the policy is closed first (1 GiB)."""
    import psutil
    from cai import pipeline
    from core.backends.vllm_backend import VLLMBackend
    from core.model import resolve_model
    from standins import ScriptedBackend

    plan = plan_with_trained_folder(tmp_path)
    class EngineStandin(ScriptedBackend):
        """Names its model as the vllm backend does (an absolute folder; 'default' is the converted one)."""

        identity = VLLMBackend.identity

    policy = EngineStandin(resolve_model(plan.base))  # the run's policy engine, loaded
    closed = []
    policy.close = lambda: closed.append(True)
    calls = []
    monkeypatch.setattr(pipeline, "evaluate", lambda config, judge_backend=None: calls.append(
        (config.gpu_memory_utilization, judge_backend)) or {"win_rate": {}})
    monkeypatch.setattr(gpu_memory, "cuda_memory", lambda: None if free_gib is None else (free_gib * GiB, H100))
    if free_ram_gib is not None:
        ram = psutil.virtual_memory()._replace(total=24 * GiB, available=free_ram_gib * GiB)
        monkeypatch.setattr(psutil, "virtual_memory", lambda: ram)
    backend = policy
    pipeline._eval(plan, policy)
    [(share, judge_backend)] = calls
    assert (judge_backend is backend) == kept and bool(closed) == (not kept)
    if free_gib == 40:
        assert share == pytest.approx((40 * GiB - gpu_memory.CUDA_CONTEXT) / H100, abs=0.001)  # what is free
    else:
        assert share is None  # CPU: the engine sizes its own RAM; closed: eval's engines load one at a time

