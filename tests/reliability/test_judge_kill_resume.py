"""Killed ``cai judge`` runs lose nothing and duplicate nothing (pairwise method against the stand-in's label log-probabilities)."""

from __future__ import annotations

import random
import time

import pytest

from cai.cli import main as cai_main
from harness import REPO, compare, generate_args, kill_trial, manifest_of, rows_of, start_cli, write_prompts
from servers import StandinServer

pytest.importorskip("judging.cli")

N_PROMPTS = 32


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("judge")
    with StandinServer(delay=0.002) as server:
        prompts = write_prompts(tmp / "prompts.jsonl", N_PROMPTS)
        assert cai_main(generate_args(prompts, tmp / "gen.jsonl", server.base_url)) == 0

        def args(out):
            return ["judge", "--in", str(tmp / "gen.jsonl"), "--out", str(out), "--backend", "openai",
                    "--base-url", server.base_url, "--model", "standin", "--method", "pairwise",
                    "--concurrency", "8", "--constitution", str(REPO / "principles.yaml"),
                    "--keep-flagged", "--keep-duplicates"]  # the stand-in's replies read like critiques to the row checks

        started = time.monotonic()
        process = start_cli(args(tmp / "reference.jsonl"), tmp / "reference.log")
        assert process.wait(120) == 0, (tmp / "reference.log").read_text()[-3000:]
        yield {"args": args, "reference": rows_of(tmp / "reference.jsonl"), "reference_sft": rows_of(tmp / "sft.jsonl"),
               "seconds": time.monotonic() - started}


@pytest.mark.parametrize("seed", [21])
def test_kill_9_and_resume_a_judge_run(judged, tmp_path, seed):
    out = tmp_path / "pairs.jsonl"
    trial = kill_trial(judged["args"](out), out, random.Random(seed), window=judged["seconds"], kills=4,
                       log_path=tmp_path / "log")
    assert trial["final_code"] == 0, (tmp_path / "log").read_text()[-3000:]
    assert any("code" in e for e in trial["events"]), trial
    assert len(judged["reference"]) == N_PROMPTS
    result = compare(judged["reference"], rows_of(out))
    assert result == {"rows": N_PROMPTS, "lost": 0, "duplicated": 0, "extra": 0, "differing": 0}, trial
    assert rows_of(tmp_path / "sft.jsonl") == judged["reference_sft"]
    assert manifest_of(out)["counts"]["pairs"] == N_PROMPTS


def test_empty_or_cut_off_replies_are_never_chosen(tmp_path):
    import json

    (tmp_path / "p.jsonl").write_text('{"id": "empty", "prompt": "[[empty]] say nothing"}\n{"id": "ok", "prompt": "Hello"}\n')
    with StandinServer() as server:
        for name, max_tokens in (("whole", "32"), ("cut", "3")):  # 3 tokens: every reply ends with finish_reason "length"
            args = generate_args(tmp_path / "p.jsonl", tmp_path / f"{name}.jsonl", server.base_url)
            args[args.index("--max-tokens") + 1] = max_tokens
            assert cai_main(args) == 0
            assert cai_main(["judge", "--in", str(tmp_path / f"{name}.jsonl"), "--out", str(tmp_path / f"{name}-pairs.jsonl"),
                             "--backend", "openai", "--base-url", server.base_url, "--model", "standin",
                             "--method", "pairwise", "--constitution", str(REPO / "principles.yaml"),
                             "--keep-flagged", "--keep-duplicates",  # what is tested holds for flagged rows too
                             "--sft-out", str(tmp_path / f"{name}-sft.jsonl")]) == 0
    generated = {r["id"]: r for r in rows_of(tmp_path / "whole.jsonl")}
    assert generated["empty"]["initial_response"] == ""
    pairs = {p["id"]: p for p in rows_of(tmp_path / "whole-pairs.jsonl")}
    # The stand-in's labels prefer the revision here; a judge preferring the empty draft drops the pair (the cut run).
    assert sorted(pairs) == ["empty", "ok"] and pairs["empty"]["source"]["chosen"] == "final_response"
    assert all(p["chosen"][0]["content"].strip() for p in pairs.values())
    assert rows_of(tmp_path / "cut-pairs.jsonl") == []  # every reply was cut off at the token limit
    report = json.loads((tmp_path / "cut-pairs.jsonl.report.json").read_text())
    assert report["dropped_by_reason"] == {"the better response was cut off or empty": 2}
