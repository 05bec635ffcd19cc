"""The checks on real rows: the default model's demo-style generation carries flags (real vLLM engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from constitution.loader import load_constitution
from generation.checks import ROW_CHECKS, RowChecker
from generation.config import GenerateConfig
from generation.run import generate

REPO = Path(__file__).parent.parent
pytestmark = pytest.mark.engine


@pytest.mark.parametrize("revision_style", ["chain", "direct", "no_critique"])
def test_default_model_rows_carry_their_flags(tmp_path, vllm_backend, revision_style):
    prompts = tmp_path / "prompts.jsonl"
    source = (REPO / "prompts" / "demo.jsonl").read_text().splitlines()
    prompts.write_text("\n".join(source[:2] + source[20:22]) + "\n")
    # The demo's sampling with fewer tokens: a 48-token limit cuts some revisions off, so flags are certain.
    cfg = GenerateConfig(prompts=str(prompts), out=str(tmp_path / "out.jsonl"), constitution=str(REPO / "principles.yaml"),
                         max_tokens=48, temperature=0.7, rounds=1, examples=0, revision_style=revision_style)
    result = generate(cfg, backend=vllm_backend)
    rows = [json.loads(line) for line in Path(cfg.out).read_text().splitlines()]
    checker = RowChecker(load_constitution(cfg.constitution))
    assert len(rows) == 4
    for row in rows:
        assert row["flags"] == checker.flags(row)
        for flag in row["flags"]:
            assert set(flag) == {"check", "reason"} and flag["check"] in ROW_CHECKS and flag["reason"]
    flagged = [row for row in rows if row["flags"]]
    assert flagged and result["counts"]["flagged"] == len(flagged)
    cut = [row for row in rows if row["calls"][-1]["finish_reason"] == "length"]
    assert all(any(f["check"] == "cut_off" for f in row["flags"]) for row in cut)
