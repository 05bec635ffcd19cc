"""Failing endpoints: a fault-injecting proxy (429 + Retry-After, 500, 503, hangs, resets, cut bodies),
final 4xx errors, and an endpoint that stays down."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from cai.cli import main as cai_main
from core.backends.registry import create_backend
from generation.config import GenerateConfig
from generation.run import generate
from harness import REPO, compare, generate_args, manifest_of, rows_of, run_cli, wait_for, write_prompts
from servers import FAULT_KINDS, FaultProxy, StandinServer

MAX_ATTEMPTS = 6  # OpenAIBackend's default retry cap


@pytest.fixture
def standin():
    with StandinServer() as server:
        yield server


def errors_of(out: Path) -> list[dict]:
    return rows_of(str(out) + ".errors.jsonl")


def test_twenty_percent_faults_complete_every_row(standin, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 30)
    assert cai_main(generate_args(prompts, tmp_path / "ref.jsonl", standin.base_url)) == 0
    reference = rows_of(tmp_path / "ref.jsonl")

    with FaultProxy(standin.url, rate=0.2, seed=5, retry_after=1, hang_seconds=2.0) as proxy:
        code = cai_main(generate_args(prompts, tmp_path / "out.jsonl", proxy.base_url, "--request-timeout", "1",
                                      concurrency=16))
    summary = proxy.summary()
    assert code == 0, capsys.readouterr().err[-3000:]
    assert compare(reference, rows_of(tmp_path / "out.jsonl"))["differing"] == 0
    assert rows_of(tmp_path / "out.jsonl") == reference  # every row, exactly as without faults
    assert summary["requests"] == 30 * 3 and proxy.unanswered() == []
    assert 0.12 <= summary["fault_rate"] <= 0.3, summary
    assert set(summary["by_kind"]) == {"ok", *FAULT_KINDS}, summary  # every kind of fault happened
    assert summary["max_attempts_per_request"] <= MAX_ATTEMPTS  # each request within the retry cap
    gaps = proxy.retry_after_gaps()
    assert gaps and min(gaps) >= 0.95, gaps  # Retry-After: 1 honoured
    assert not Path(str(tmp_path / "out.jsonl") + ".errors.jsonl").exists()


def test_faults_in_front_of_a_real_vllm_server(vllm_server, served_model, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Name a fruit."}\n{"id": "b", "prompt": "Say hi."}\n')
    upstream = vllm_server.removesuffix("/v1")
    # Hangs are left to the stand-in tests: on CPU a real reply takes seconds, so a hang past the timeout costs minutes.
    with FaultProxy(upstream, rate=0.5, seed=3, kinds=("429", "500", "503", "reset", "truncate"), retry_after=1,
                    upstream_timeout=120) as proxy:
        args = generate_args(prompts, tmp_path / "out.jsonl", proxy.base_url, model=served_model)
        args[args.index("--max-tokens") + 1] = "8"
        assert cai_main(args) == 0
    rows = rows_of(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in rows) == ["a", "b"] and all(r["final_response"] for r in rows)
    summary = proxy.summary()
    assert summary["faults"] >= 1 and proxy.unanswered() == [] and summary["max_attempts_per_request"] <= MAX_ATTEMPTS


def test_context_length_400_is_not_retried_and_recorded_then_retried_alone(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"short {i}"}) + "\n" for i in range(5))
                       + json.dumps({"id": "long", "prompt": "word " * 3000}) + "\n")
    out = tmp_path / "out.jsonl"
    with StandinServer(context_chars=5000) as small, FaultProxy(small.url, rate=0.0) as proxy:
        assert cai_main(generate_args(prompts, out, proxy.base_url)) == 1  # failed rows: non-zero exit
    assert sorted(r["id"] for r in rows_of(out)) == [f"p{i}" for i in range(5)]  # the rest of the run went on
    [error] = errors_of(out)
    assert error["id"] == "long" and error["line"] == 6 and error["step"] == "draft"
    assert "HTTP 400" in error["error"] and "maximum context length" in error["error"]
    assert max(e["attempt"] for e in proxy.events) == 1  # never retried
    assert manifest_of(out)["counts"]["failed"] == 1
    assert "1 row(s) failed" in capsys.readouterr().err

    with StandinServer(context_chars=50000) as big:  # a later run (a bigger context) retries just that row
        assert cai_main(generate_args(prompts, out, big.base_url)) == 0
        assert big.requests == 3  # draft, critique, revision of the one failed row
    assert sorted(r["id"] for r in rows_of(out)) == sorted([f"p{i}" for i in range(5)] + ["long"])
    assert not errors_of(out)


@pytest.mark.parametrize("status", [401, 404])
def test_401_and_404_are_not_retried_and_every_row_is_recorded(tmp_path, monkeypatch, status):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-0000")
    prompts = write_prompts(tmp_path / "prompts.jsonl", 4)
    out = tmp_path / "out.jsonl"
    with StandinServer(api_key="sk-right-key-1111") as server, FaultProxy(server.url, rate=0.0) as proxy:
        url = proxy.base_url if status == 401 else proxy.url + "/wrong/v1"
        assert cai_main(generate_args(prompts, out, url)) == 1
    assert not rows_of(out)
    errors = errors_of(out)
    assert sorted(e["id"] for e in errors) == [f"p{i}" for i in range(4)]
    assert all(e["error"].startswith(f"HTTP {status}") for e in errors)
    assert max(e["attempt"] for e in proxy.events) == 1 and len(proxy.events) == 4
    saved = Path(str(out) + ".errors.jsonl").read_text() + Path(str(out) + ".manifest.json").read_text()
    assert "sk-wrong-key-0000" not in saved  # the 401 echoed the key; the errors file does not


def test_endpoint_that_stays_down_stops_in_bounded_time_with_a_clear_message(tmp_path):
    """Nothing listens on the port; CLI defaults (6 attempts, 0.5 s backoff, 32 in flight), 500 prompts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    prompts = write_prompts(tmp_path / "prompts.jsonl", 500)
    out = tmp_path / "out.jsonl"
    args = generate_args(prompts, out, f"http://127.0.0.1:{port}/v1", concurrency=32)
    done = run_cli(args, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"error: the endpoint http://127.0.0.1:{port}/v1 is not answering" in done.stderr
    assert "run the same command again to resume" in done.stderr
    assert "Traceback" not in done.stderr
    counts = manifest_of(out)["counts"]
    assert counts["rows"] == 0 and counts["stopped"] == "error"
    # Stopped after the rows in flight failed (the breaker trips at 16 failed requests in a row), not after 500.
    assert 1 <= counts["failed"] <= 32 + 16, counts
    assert len(errors_of(out)) == counts["failed"]


def test_endpoint_going_down_mid_run_keeps_finished_batches_and_resumes(standin, tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 40)
    assert cai_main(generate_args(prompts, tmp_path / "ref.jsonl", standin.base_url)) == 0
    reference = rows_of(tmp_path / "ref.jsonl")
    out = tmp_path / "out.jsonl"
    with StandinServer(delay=0.01) as slow, FaultProxy(slow.url, rate=0.0) as proxy:
        cfg = GenerateConfig(prompts=str(prompts), out=str(out), constitution=str(REPO / "principles.yaml"),
                             backend="openai", base_url=proxy.base_url, model="standin", temperature=0.0,
                             max_tokens=32, concurrency=8, examples=0)

        def quick():  # small backoff so the test is quick; the breaker is what is under test
            return create_backend("openai", "standin", base_url=cfg.base_url, concurrency=8,
                                  backoff_initial=0.01, backoff_max=0.02, timeout=2)

        def pull_the_plug():
            wait_for(lambda: out.exists() and out.read_bytes().count(b"\n") >= 10, 30)
            proxy.down = True

        threading.Thread(target=pull_the_plug, daemon=True).start()
        with pytest.raises(Exception, match="is not answering") as info:
            generate(cfg, backend=quick())
        assert type(info.value).__name__ == "EndpointDownError"
        kept = rows_of(out)
        assert 10 <= len(kept) < 40
        assert kept == [row for row in reference if row["id"] in {k["id"] for k in kept}]  # whole, each as without faults
        assert manifest_of(out)["counts"]["rows"] == len(kept)
        proxy.down = False
        generate(cfg, backend=quick())
    assert rows_of(out) == reference
