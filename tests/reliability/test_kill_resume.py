"""Killed and interrupted ``cai generate`` runs lose nothing and duplicate nothing.

``cai generate`` runs in a subprocess against the deterministic stand-in server
(greedy decoding), is killed with SIGKILL at seeded random moments, resumed,
killed again, and finally allowed to finish; its output must hold the same rows as
an uninterrupted run's (rows are written as they finish, so in any order).  Ctrl-C
(SIGINT) must stop cleanly: only the rows in flight are lost, every written row is
whole, and the manifest counts match the file.  The SIGINT test and one SIGKILL
test hold the stand-in's replies part-way through the run (rows in flight), so
the signal lands in the middle of the run for certain.
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
    process = start_cli(generate_args(prompts, out, standin.base_url), tmp / "log")
    assert process.wait(120) == 0, (tmp / "log").read_text()
    rows = rows_of(out)
    assert len(rows) == N_PROMPTS
    return {"prompts": prompts, "rows": rows, "seconds": time.monotonic() - started}


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_and_resume_equals_an_uninterrupted_run(standin, reference, tmp_path, seed):
    out = tmp_path / "out.jsonl"
    args = generate_args(reference["prompts"], out, standin.base_url)
    rng = random.Random(seed)
    trial = kill_trial(args, out, rng, window=reference["seconds"], kills=4, log_path=tmp_path / "log")
    assert trial["final_code"] == 0, (tmp_path / "log").read_text()[-3000:]
    assert any("code" in e for e in trial["events"]), trial  # at least one kill landed mid-run
    result = compare(reference["rows"], rows_of(out))
    assert result == {"rows": N_PROMPTS, "lost": 0, "duplicated": 0, "extra": 0, "differing": 0}, trial
    assert manifest_of(out)["counts"]["rows"] == N_PROMPTS


def hold_after(server: StandinServer, rows: int) -> None:
    """Hold ``server``'s replies once it has answered as many calls as ``rows`` rows take, so rows are in flight."""
    server.hold(after=rows * CALLS_PER_PROMPT)


def finished_rows_are_whole_and_exact(out, reference: dict) -> list[dict]:
    """The output's rows: each one exactly the uninterrupted run's row of its id, none twice; returns them."""
    rows = rows_of(out)
    assert out.read_bytes().endswith(b"\n")
    want = {row["id"]: row for row in reference["rows"]}
    assert len({row["id"] for row in rows}) == len(rows)
    assert all(row == want[row["id"]] for row in rows)
    return rows


def test_kill_9_with_rows_in_flight_loses_only_those_rows(reference, tmp_path):
    """SIGKILL while requests are held at the server (rows in flight): a deterministic point in the middle of the run."""
    out, log = tmp_path / "out.jsonl", tmp_path / "log"
    with StandinServer() as server:
        args = generate_args(reference["prompts"], out, server.base_url)
        hold_after(server, 12)
        process = start_cli(args, log)
        assert wait_for(lambda: server.held >= 1 or process.poll() is not None, 60), log.read_text()[-2000:]
        assert process.poll() is None, log.read_text()[-2000:]  # still running: the kill lands mid-run
        # Every row in flight (8) waits on a held reply, and a finished row is on disk: then the kill.
        assert wait_for(lambda: server.held >= 8 and out.exists() and out.read_bytes().count(b"\n") >= 1, 60)
        process.kill()
        process.wait(30)
        kept = finished_rows_are_whole_and_exact(out, reference)
        assert 0 < len(kept) <= 12  # the finished rows, and nothing of the rows in flight
        server.release()
        server.hold(None)
        process = start_cli(args, log)
        assert process.wait(120) == 0, log.read_text()[-2000:]
    assert rows_of(out) == reference["rows"]


def test_ctrl_c_keeps_finished_rows_and_a_matching_manifest(reference, tmp_path):
    """SIGINT while requests are held at the server, twice (the second time in a resumed run), then resume."""
    out, log = tmp_path / "out.jsonl", tmp_path / "log"
    with StandinServer() as server:
        args = generate_args(reference["prompts"], out, server.base_url)
        for more in (8, 4):
            before = len(rows_of(out))
            hold_after(server, more)
            process = start_cli(args, log)
            assert wait_for(lambda: server.held >= 1 or process.poll() is not None, 60), log.read_text()[-2000:]
            assert process.poll() is None, log.read_text()[-2000:]  # the run is waiting on the held requests
            assert wait_for(lambda: server.held >= 8, 60)  # every row in flight (8) waits on a held reply
            process.send_signal(signal.SIGINT)
            code = process.wait(60)
            server.release()
            assert code == 130, log.read_text()[-2000:]
            assert "interrupted: finished work is saved" in log.read_text()
            assert "Traceback" not in log.read_text()
            rows = finished_rows_are_whole_and_exact(out, reference)
            assert before <= len(rows) <= before + more and rows  # finished rows kept; those in flight not written
            manifest = manifest_of(out)
            assert manifest["counts"]["rows"] == len(rows) and manifest["counts"]["stopped"] == "interrupted"
        server.hold(None)
        process = start_cli(args, log)
        assert process.wait(120) == 0, log.read_text()[-2000:]
    assert rows_of(out) == reference["rows"]
    assert manifest_of(out)["counts"]["rows"] == N_PROMPTS and "stopped" not in manifest_of(out)["counts"]


def test_ctrl_c_while_a_row_is_written_is_held_until_the_row_is_whole(tmp_path, monkeypatch):
    """Deterministic: SIGINT arrives in the middle of writing the third row."""
    import os

    from generation.config import GenerateConfig
    from generation.run import generate
    from core.store import JsonlAppender
    from harness import REPO
    from standins import ScriptedBackend

    real_write = JsonlAppender.write
    written = []

    def write_with_ctrl_c(self, row):
        if self.path.name == "out.jsonl":
            written.append(row["id"])
            if len(written) == 3:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while this row is being written
        real_write(self, row)

    monkeypatch.setattr(JsonlAppender, "write", write_with_ctrl_c)
    prompts = write_prompts(tmp_path / "prompts.jsonl", 12)
    out = tmp_path / "out.jsonl"
    cfg = GenerateConfig(prompts=str(prompts), out=str(out), constitution=str(REPO / "principles.yaml"), concurrency=2)
    with pytest.raises(KeyboardInterrupt):
        generate(cfg, backend=ScriptedBackend())
    assert [row["id"] for row in rows_of(out, in_file_order=True)] == written[:3]  # that row whole, and no other
    assert manifest_of(out)["counts"]["rows"] == 3 and manifest_of(out)["counts"]["stopped"] == "interrupted"
    result = generate(cfg, backend=ScriptedBackend())
    assert result["counts"]["generated"] == 9 and len(rows_of(out)) == 12
