"""Integration: the real vLLM engine (in-process) and a real vLLM OpenAI server, on the default model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from constitution.assignment import assign_principles
from constitution.loader import load_constitution
from core.backends.base import Sampling
from core.backends.registry import create_backend
from generation.config import GenerateConfig
from core.hardware import choose_dtype, this_cpu
from generation.run import generate
from standins import NeverLoads

REPO = Path(__file__).parent.parent
SHORT = Sampling(max_tokens=24, temperature=0.0)
ORIGINAL_GLIBC_TUNABLES = os.environ.get("GLIBC_TUNABLES")  # before any engine of this test run started


def rows_of(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory, vllm_backend):
    tmp = tmp_path_factory.mktemp("engine")
    prompts = tmp / "prompts.jsonl"
    source = (REPO / "prompts" / "demo.jsonl").read_text().splitlines()
    prompts.write_text("\n".join(source[:2] + source[20:22]) + "\n")
    constitution = tmp / "principles.yaml"
    constitution.write_text((REPO / "principles.yaml").read_text())
    cfg = GenerateConfig(prompts=str(prompts), out=str(tmp / "out.jsonl"), constitution=str(constitution),
                         max_tokens=32, temperature=0.0, rounds=1, examples=0)
    result = generate(cfg, backend=vllm_backend)
    return cfg, result


def test_chain_writes_complete_rows_with_assigned_principles(engine_run):
    cfg, result = engine_run
    assert result["counts"]["generated"] == 4 and result["counts"]["failed"] == 0
    constitution = load_constitution(cfg.constitution)
    for row in rows_of(cfg.out):
        for text in (row["initial_response"], row["rounds"][0]["critique"], row["final_response"]):
            assert text.strip()
        expected = assign_principles(row["id"], constitution.principles, 1, seed=0)[0]
        assert row["rounds"][0]["principle_id"] == expected.id
        assert row["rounds"][0]["critique_request"] == expected.critique_request
        assert all(c["completion_tokens"] > 0 and c["prompt_tokens"] > 0 for c in row["calls"])
        # vLLM says how many prompt tokens its prefix cache served (the ledger sums them)
        assert all(isinstance(c["cached_tokens"], int) and 0 <= c["cached_tokens"] <= c["prompt_tokens"]
                   for c in row["calls"])
        assert row["calls"][0]["finish_reason"] in ("stop", "length")
        assert row["dtype"] == choose_dtype("auto")  # float32 on a CPU without native bf16
    manifest = json.loads(Path(cfg.out + ".manifest.json").read_text())
    assert manifest["config"]["dtype"] == choose_dtype("auto")
    calls = [c for row in rows_of(cfg.out) for c in row["calls"]]
    assert sum(e["cached_tokens"] for e in manifest["ledger"]["stages"].values()) == sum(c["cached_tokens"] for c in calls)
    assert manifest["ledger"]["device"] == "cpu" and manifest["ledger"]["device_s"] == manifest["ledger"]["wall_s"]


def test_engine_runs_the_dtype_chosen_for_the_cpu_and_says_how_it_runs(vllm_backend):
    import torch

    assert vllm_backend.dtype == choose_dtype("auto")
    assert vllm_backend.engine.model_config.dtype == getattr(torch, vllm_backend.dtype)  # passed, not vLLM's own auto
    line = vllm_backend.describe(cpu=True, requested="auto")
    cpu = this_cpu()
    assert f"on cpu: {cpu.model}" in line and f"dtype {vllm_backend.dtype} (auto:" in line, line
    assert all(flag in line for flag in cpu.isa) and "threads " in line and "max_num_seqs " in line, line


def test_the_malloc_settings_stay_with_the_engines_processes(vllm_backend):
    """The engine's processes get them at their spawn (tests/test_malloc_kept.py); what this process starts after
    the engine (a server, a training subprocess) does not inherit them, and a GLIBC_TUNABLES the user set stays."""
    vllm_backend.load()
    assert os.environ.get("GLIBC_TUNABLES") == ORIGINAL_GLIBC_TUNABLES


def test_output_loads_with_datasets(engine_run):
    import datasets

    cfg, _ = engine_run
    dataset = datasets.load_dataset("json", data_files=cfg.out, split="train")
    assert dataset.num_rows == 4 and dataset[0]["prompt"][0]["role"] == "user"


def test_second_run_generates_nothing_and_loads_no_model(engine_run):
    cfg, _ = engine_run
    result = generate(cfg, backend=NeverLoads())
    assert result["counts"]["generated"] == 0 and result["counts"]["already_done"] == 4


def test_cli_rerun_loads_no_model(engine_run):
    cfg, _ = engine_run
    done = subprocess.run(
        [sys.executable, "-m", "cai", "generate", "--prompts", cfg.prompts, "--out", cfg.out,
         "--constitution", cfg.constitution, "--max-tokens", "32", "--temperature", "0.0", "--rounds", "1"],
        capture_output=True, text=True, cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "4 already done, 0 to generate" in done.stderr
    assert "Loading safetensors" not in done.stderr


def test_edited_principle_regenerates_only_its_rows(engine_run, vllm_backend):
    cfg, _ = engine_run
    before = {r["id"]: r for r in rows_of(cfg.out)}
    target = next(iter(before.values()))["rounds"][0]["principle_id"]
    document = yaml.safe_load(Path(cfg.constitution).read_text())
    for principle in document["principles"]:
        if principle["id"] == target:
            principle["revision_request"] = "Be brief. " + principle["revision_request"]
    Path(cfg.constitution).write_text(yaml.safe_dump(document, sort_keys=False))
    users = {i for i, r in before.items() if r["rounds"][0]["principle_id"] == target}
    result = generate(cfg, backend=vllm_backend)
    assert result["counts"]["generated"] == len(users)
    after = {r["id"]: r for r in rows_of(cfg.out)}
    assert set(after) == set(before)
    for i in before:
        if i in users:
            assert after[i]["initial_response"] == before[i]["initial_response"]  # the draft is reused
            assert after[i]["reused_calls"] == 1
        else:
            assert after[i] == before[i]


def test_label_logprobs_are_read_for_real(vllm_backend):
    question = [{"role": "user", "content": "Which is a fruit? (A) apple (B) car. Answer with the letter only."}]
    prefixed = question + [{"role": "assistant", "content": "The answer is ("}]
    plain, continued = vllm_backend.label_logprobs([question, prefixed], ["A", "B"])
    for scores in (plain, continued):
        assert scores.error is None and scores.floor is not None
        known = [v for v in scores.logprobs.values() if v is not None]
        assert known and all(v <= 0 and v >= scores.floor for v in known)
    assert continued.logprobs["A"] is not None and continued.logprobs["B"] is not None


def test_overlong_prompt_is_flagged_not_sent(vllm_backend):
    long = [{"role": "user", "content": "word " * (vllm_backend.max_model_len + 10)}]
    short = [{"role": "user", "content": "Say hi."}]
    too_long, fine = vllm_backend.chat([long, short], SHORT)
    assert too_long.error and "context" in too_long.error and not too_long.text
    assert fine.error is None and fine.text


def test_seeded_sampling_is_reproducible_per_request(vllm_backend):
    conversation = [{"role": "user", "content": "Name a colour."}]
    sampling = Sampling(max_tokens=12, temperature=1.0)
    a = vllm_backend.chat([conversation], sampling, seeds=[7])[0].text
    b = vllm_backend.chat([[{"role": "user", "content": "Other."}], conversation], sampling, seeds=[1, 7])[1].text
    assert a == b


def test_openai_backend_against_real_vllm_server(vllm_server, served_model, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-logged-123")
    backend = create_backend("openai", served_model, base_url=vllm_server, concurrency=4)
    replies = backend.chat([[{"role": "user", "content": "Say hello."}], [{"role": "user", "content": "Count to 3."}]], SHORT)
    assert all(r.error is None and r.text and r.completion_tokens > 0 for r in replies)
    [scores] = backend.label_logprobs(
        [[{"role": "user", "content": "Pick (A) or (B)."}, {"role": "assistant", "content": "I pick ("}]], ["A", "B"]
    )
    assert scores.error is None and any(v is not None for v in scores.logprobs.values())
    # A constrained reply (vLLM structured outputs through extra_body) is exactly one of the choices.
    [verdict] = backend.chat([[{"role": "user", "content": "Is the sky (A) green or (B) blue? Explain."}]],
                             Sampling(max_tokens=8, temperature=0.0, choices=("(A)", "(B)")))
    assert verdict.error is None and verdict.text in ("(A)", "(B)")

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "How do I boil an egg?"}\n{"id": "b", "prompt": "Write a haiku."}\n')
    cfg = GenerateConfig(prompts=str(prompts), out=str(tmp_path / "o.jsonl"), backend="openai", base_url=vllm_server,
                         model=served_model, max_tokens=24, temperature=0.0, concurrency=4)
    result = generate(cfg)
    assert result["counts"]["generated"] == 2
    rows = rows_of(cfg.out)
    assert all(r["final_response"].strip() and r["model"] == served_model for r in rows)
    saved = Path(cfg.out).read_text() + Path(cfg.out + ".manifest.json").read_text()
    assert "sk-never-logged-123" not in saved


def test_an_engine_that_cannot_start_is_one_error_line_and_no_output(tmp_path):
    """2% of the RAM is less than the worker's own memory on CPU: vLLM's core refuses to start, and `cai` says so
    in one line with what to change, keeps no half-written output and exits 1 (vLLM logs its reason above it)."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text((REPO / "prompts" / "demo.jsonl").read_text().splitlines()[0] + "\n")
    out = tmp_path / "out.jsonl"
    env = {key: value for key, value in os.environ.items() if key != "VLLM_CPU_KVCACHE_SPACE"}
    done = subprocess.run(
        [sys.executable, "-m", "cai", "generate", "--prompts", str(prompts), "--out", str(out), "--rounds", "1",
         "--max-tokens", "8", "--gpu-memory-utilization", "0.02"],
        capture_output=True, text=True, cwd=REPO, env=dict(env, HF_HUB_OFFLINE="1"), timeout=300,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the vLLM engine of ") and "did not start" in last, done.stderr[-3000:]
    assert "raise --gpu-memory-utilization" in last and "VLLM_CPU_KVCACHE_SPACE" in last
    assert "initialization failed" not in done.stderr.split("Available memory")[-1]  # no traceback of ours after
    assert not out.exists() or out.read_text() == ""
