"""Killed and interrupted ``cai generate`` runs lose nothing and duplicate nothing.

``cai generate`` runs in a subprocess against the deterministic stand-in server
(greedy decoding), is killed with SIGKILL at seeded random moments, resumed,
killed again, and finally allowed to finish; its output must equal an
uninterrupted run's, row for row.  Ctrl-C (SIGINT) must stop cleanly: the batch
in flight is written whole or not at all and the manifest counts match the file.
The SIGINT test and one SIGKILL test hold the stand-in's replies part-way through
a batch, so the signal lands in the middle of the run for certain.
bench/reliability/kill_trials.py runs the long version (20 trials, 1,000 prompts).
"""

from __future__ import annotations

import random
import signal
import time

import pytest

from harness import compare, generate_args, kill_trial, manifest_of, rows_of, start_cli, wait_for, write_prompts
from servers import StandinServer

N_PROMPTS = 48
BATCH = 4
CALLS_PER_PROMPT = 3  # draft, critique, revision (one round)


@pytest.fixture(scope="module")
def standin():
    with StandinServer(delay=0.003) as server:
        yield server


@pytest.fixture(scope="module")
def reference(standin, tmp_path_factory):
    """An uninterrupted run: the rows every interrupted run must end with, and how long it takes."""
    tmp = tmp_path_factory.mktemp("reference")
    prompts = write_prompts(tmp / "prompts.jsonl", N_PROMPTS)
    out = tmp / "out.jsonl"
    started = time.monotonic()
    process = start_cli(generate_args(prompts, out, standin.base_url, batch_size=BATCH), tmp / "log")
    assert process.wait(120) == 0, (tmp / "log").read_text()
    rows = rows_of(out)
    assert len(rows) == N_PROMPTS
    return {"prompts": prompts, "rows": rows, "seconds": time.monotonic() - started}


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_and_resume_equals_an_uninterrupted_run(standin, reference, tmp_path, seed):
    out = tmp_path / "out.jsonl"
    args = generate_args(reference["prompts"], out, standin.base_url, batch_size=BATCH)
    rng = random.Random(seed)
    trial = kill_trial(args, out, rng, window=reference["seconds"], kills=4, log_path=tmp_path / "log")
    assert trial["final_code"] == 0, (tmp_path / "log").read_text()[-3000:]
    assert any("code" in e for e in trial["events"]), trial  # at least one kill landed mid-run
    result = compare(reference["rows"], rows_of(out))
    assert result == {"rows": N_PROMPTS, "lost": 0, "duplicated": 0, "extra": 0, "differing": 0, "order_same": True}, trial
    assert manifest_of(out)["counts"]["rows"] == N_PROMPTS


def held_mid_batch(server: StandinServer, rows_before: int, batches: int) -> int:
    """Hold ``server`` once ``batches`` more batches are done and the next is half answered; the rows that makes."""
    server.hold(after=batches * BATCH * CALLS_PER_PROMPT + BATCH // 2)
    return rows_before + batches * BATCH


def test_kill_9_in_the_middle_of_a_batch_loses_nothing(reference, tmp_path):
    """SIGKILL while the 4th batch's requests are held at the server: a deterministic point in the middle of a batch."""
    out, log = tmp_path / "out.jsonl", tmp_path / "log"
    with StandinServer() as server:
        args = generate_args(reference["prompts"], out, server.base_url, batch_size=BATCH)
        expected = held_mid_batch(server, 0, batches=3)
        process = start_cli(args, log)
        assert wait_for(lambda: server.held >= 1 or process.poll() is not None, 60), log.read_text()[-2000:]
        assert process.poll() is None, log.read_text()[-2000:]  # still running: the kill lands mid-run
        process.kill()
        process.wait(30)
        assert rows_of(out) == reference["rows"][:expected]  # the finished batches, and no part of the 4th
        server.release()
        server.hold(None)
        process = start_cli(args, log)
        assert process.wait(120) == 0, log.read_text()[-2000:]
    assert rows_of(out) == reference["rows"]


def test_ctrl_c_writes_whole_batches_and_a_matching_manifest(reference, tmp_path):
    """SIGINT while a batch's requests are held at the server, twice (the second time in a resumed run), then resume."""
    out, log = tmp_path / "out.jsonl", tmp_path / "log"
    with StandinServer() as server:
        args = generate_args(reference["prompts"], out, server.base_url, batch_size=BATCH)
        for batches in (2, 1):
            expected = held_mid_batch(server, len(rows_of(out)), batches)
            process = start_cli(args, log)
            assert wait_for(lambda: server.held >= 1 or process.poll() is not None, 60), log.read_text()[-2000:]
            assert process.poll() is None, log.read_text()[-2000:]  # the run is waiting on the held batch
            process.send_signal(signal.SIGINT)
            code = process.wait(60)
            server.release()
            assert code == 130, log.read_text()[-2000:]
            assert "interrupted: finished batches are saved" in log.read_text()
            assert "Traceback" not in log.read_text()
            assert out.read_bytes().endswith(b"\n")
            rows = rows_of(out)
            assert rows == reference["rows"][:expected]  # finished batches kept; the one in flight not written
            manifest = manifest_of(out)
            assert manifest["counts"]["rows"] == expected and manifest["counts"]["stopped"] == "interrupted"
        server.hold(None)
        process = start_cli(args, log)
        assert process.wait(120) == 0, log.read_text()[-2000:]
    assert rows_of(out) == reference["rows"]
    assert manifest_of(out)["counts"]["rows"] == N_PROMPTS and "stopped" not in manifest_of(out)["counts"]


def test_ctrl_c_in_the_middle_of_a_batch_write_is_held_until_the_batch_is_whole(tmp_path, monkeypatch):
    """Deterministic: SIGINT arrives between the first and the rest of a batch's rows."""
    import os

    from generation.config import GenerateConfig
    from generation.run import generate
    from core.store import JsonlStore
    from harness import REPO
    from standins import ScriptedBackend

    real_append = JsonlStore.append
    interrupted = []

    def append_with_ctrl_c(self, rows):
        rows = list(rows)
        if self.path.name == "out.jsonl" and rows and not interrupted:
            interrupted.append(True)
            real_append(self, rows[:1])
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C half-way through writing the batch
            real_append(self, rows[1:])
            return
        real_append(self, rows)

    monkeypatch.setattr(JsonlStore, "append", append_with_ctrl_c)
    prompts = write_prompts(tmp_path / "prompts.jsonl", 12)
    out = tmp_path / "out.jsonl"
    cfg = GenerateConfig(prompts=str(prompts), out=str(out), constitution=str(REPO / "principles.yaml"), batch_size=5)
    with pytest.raises(KeyboardInterrupt):
        generate(cfg, backend=ScriptedBackend())
    assert interrupted and len(rows_of(out)) == 5  # the whole batch, and not the next one
    assert manifest_of(out)["counts"]["rows"] == 5 and manifest_of(out)["counts"]["stopped"] == "interrupted"
    result = generate(cfg, backend=ScriptedBackend())
    assert result["counts"]["generated"] == 7 and len(rows_of(out)) == 12
