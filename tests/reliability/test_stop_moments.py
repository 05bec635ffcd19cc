"""Ctrl-C, SIGTERM and a second Ctrl-C at each moment of a run leave a whole output and a manifest that matches it.

The moments are reached deterministically, not by timing: blocking_cli.py runs ``cai`` with the openai
backend stopping at engine start-up, while the engine closes (waiting in pyzmq, as vLLM's shutdown does)
and while a manifest is written; the stand-in server (servers.py) holds replies to stop a run at its
first rows or mid-run.  The real engine's trials are in test_sigterm_engine.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cai.cli import main as cai_main
from harness import REPO, cli_env, default_sigint, generate_args, manifest_of, rows_of, wait_for, write_prompts
from servers import StandinServer

BLOCKING_CLI = Path(__file__).with_name("blocking_cli.py")
MESSAGES = {signal.SIGTERM: "terminated (SIGTERM): finished work is saved",
            signal.SIGINT: "interrupted: finished work is saved"}
CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}
STOPPED = {signal.SIGTERM: "terminated", signal.SIGINT: "interrupted"}


class Run:
    """One ``cai`` command under blocking_cli.py, stopping at ``moments``."""

    def __init__(self, tmp_path: Path, args: list[str], moments: tuple[str, ...], **env):
        self.folder = tmp_path / "moments"
        self.folder.mkdir(exist_ok=True)
        self.log = tmp_path / "run.log"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(BLOCKING_CLI), *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                env=cli_env(CAI_BLOCK_AT=",".join(moments), CAI_BLOCK_DIR=str(self.folder), **env),
                preexec_fn=default_sigint)

    def text(self) -> str:
        return self.log.read_text()

    def reach(self, moment: str) -> None:
        assert wait_for(lambda: (self.folder / f"at-{moment}").exists() or self.process.poll() is not None, 60)
        assert self.process.poll() is None, self.text()[-3000:]

    def release(self, moment: str) -> None:
        (self.folder / f"release-{moment}").touch()

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def end(self, signum: int) -> str:
        """Wait for the command; it exits as ``signum`` asks, says so once, and shows no traceback."""
        code = self.process.wait(60)
        text = self.text()
        assert code == CODES[signum], text[-3000:]
        assert text.count("finished work is saved") == 1 and MESSAGES[signum] in text, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        return text

    def engine_is_gone(self) -> bool:
        pid = int((self.folder / "engine-pid").read_text())
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        """A failed trial leaves neither the command nor its stand-in engine behind."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        pid_file = self.folder / "engine-pid"
        if pid_file.exists():
            try:
                psutil.Process(int(pid_file.read_text())).kill()
            except psutil.Error:
                pass


def assert_manifest_matches(out: Path, stopped: str | None) -> list[dict]:
    rows = rows_of(out)  # every line a whole row
    manifest = manifest_of(out)
    assert manifest is not None, f"no manifest beside {out}"
    assert manifest["counts"].get("stopped") == stopped
    assert manifest["counts"]["rows" if manifest["stage"] == "generate" else "pairs"] == len(rows)
    assert len({row["id"] for row in rows}) == len(rows)
    assert not out.exists() or not out.read_bytes() or out.read_bytes().endswith(b"\n")
    return rows


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_stop_during_engine_start_up_writes_the_manifest_and_ends_the_engine(tmp_path, signum):
    prompts = write_prompts(tmp_path / "p.jsonl", 6)
    out = tmp_path / "out.jsonl"
    with StandinServer() as server:
        with Run(tmp_path, generate_args(prompts, out, server.base_url), ("start-up",)) as run:
            run.reach("start-up")
            run.send(signum)
            run.end(signum)
            assert run.engine_is_gone()
    assert assert_manifest_matches(out, STOPPED[signum]) == []


def test_ctrl_c_twice_during_start_up_the_second_while_the_manifest_is_written(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 6)
    out = tmp_path / "out.jsonl"
    with StandinServer() as server:
        with Run(tmp_path, generate_args(prompts, out, server.base_url), ("start-up", "manifest")) as run:
            run.reach("start-up")
            run.send(signal.SIGINT)
            run.reach("manifest")
            run.send(signal.SIGINT)  # held until the manifest is whole
            time.sleep(0.3)
            run.release("manifest")
            run.end(signal.SIGINT)
            assert run.engine_is_gone()
    assert_manifest_matches(out, "interrupted")


def test_ctrl_c_twice_during_start_up_the_second_while_the_engine_is_ended(tmp_path):
    """The engine ignores SIGTERM, so ending it takes the grace period and a KILL: the second Ctrl-C lands then."""
    prompts = write_prompts(tmp_path / "p.jsonl", 6)
    out = tmp_path / "out.jsonl"
    with StandinServer() as server:
        args = generate_args(prompts, out, server.base_url)
    with Run(tmp_path, args, ("start-up",), CAI_ENGINE_IGNORES_TERM="1") as run:
            run.reach("start-up")
            run.send(signal.SIGINT)
            assert wait_for(lambda: "interrupted:" in run.text() or run.process.poll() is not None, 60)
            run.send(signal.SIGINT)
            run.end(signal.SIGINT)
            assert run.engine_is_gone()
    assert_manifest_matches(out, "interrupted")


def lines_in(path: Path) -> int:
    """Whole lines written so far (0 before the file exists)."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _revisions(tmp_path: Path, server: StandinServer) -> Path:
    revisions = tmp_path / "r.jsonl"
    assert cai_main(generate_args(write_prompts(tmp_path / "p.jsonl", 8), revisions, server.base_url)) == 0
    return revisions


@pytest.mark.parametrize("command", ["generate", "judge"])
@pytest.mark.parametrize("rows_before", [0, 3], ids=["first-rows", "mid-run"])
def test_sigterm_then_a_slow_engine_close_still_writes_the_manifest(tmp_path, command, rows_before):
    """On a slow CPU, closing the engine after a SIGTERM waits in pyzmq for seconds: the manifest is written all the same."""
    with StandinServer() as server:
        if command == "judge":
            out = tmp_path / "prefs.jsonl"
            args = ["judge", "--in", str(_revisions(tmp_path, server)), "--out", str(out), "--backend", "openai",
                    "--base-url", server.base_url, "--model", "standin", "--method", "pairwise", "--keep-flagged", "--keep-duplicates",
                    "--constitution", str(REPO / "principles.yaml"), "--concurrency", "1",
                    "--principles-per-pair", "1"]
            calls_per_row = 2  # both orders
        else:
            out = tmp_path / "out.jsonl"
            args = generate_args(write_prompts(tmp_path / "p.jsonl", 8), out, server.base_url, concurrency=1)
            calls_per_row = 3  # draft, critique, revision
        server.hold(after=rows_before * calls_per_row)
        with Run(tmp_path, args, ("close",)) as run:
            try:
                assert wait_for(lambda: server.held >= 1 or run.process.poll() is not None, 60), run.text()[-3000:]
                assert wait_for(lambda: lines_in(out) >= rows_before, 60)  # the rows whose replies came back
                run.send(signal.SIGTERM)
                run.reach("close")
                time.sleep(2.5)  # a slow shutdown: the signal watcher looks at the main thread once a second
                server.release()
                run.release("close")
                run.end(signal.SIGTERM)
                assert run.engine_is_gone()
            finally:
                server.release()
    rows = assert_manifest_matches(out, "terminated")
    assert len(rows) == rows_before


def test_ctrl_c_then_sigterm_while_the_engine_closes(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 8)
    out = tmp_path / "out.jsonl"
    with StandinServer() as server:
        server.hold(after=2 * 3)
        with Run(tmp_path, generate_args(prompts, out, server.base_url, concurrency=1), ("close",)) as run:
            try:
                assert wait_for(lambda: server.held >= 1 or run.process.poll() is not None, 60), run.text()[-3000:]
                assert wait_for(lambda: lines_in(out) >= 2, 60)  # the two rows whose replies came back
                run.send(signal.SIGINT)
                run.reach("close")
                run.send(signal.SIGTERM)  # held until the manifest is written; it ends the engine at once
                assert wait_for(run.engine_is_gone, 10)
                server.release()
                run.release("close")
                run.end(signal.SIGTERM)
            finally:
                server.release()
    assert len(assert_manifest_matches(out, "interrupted")) == 2


def test_sigterm_while_the_manifest_of_a_finished_run_is_written(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 5)
    out = tmp_path / "out.jsonl"
    with StandinServer() as server:
        with Run(tmp_path, generate_args(prompts, out, server.base_url), ("manifest",)) as run:
            run.reach("manifest")
            run.send(signal.SIGTERM)
            time.sleep(0.3)
            run.release("manifest")
            run.end(signal.SIGTERM)
    assert len(assert_manifest_matches(out, None)) == 5  # the run had finished: its manifest says so, whole
