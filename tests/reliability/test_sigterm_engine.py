"""SIGTERM with the real in-process engine: no engine process outlives the command, at start-up or mid-run.

vLLM runs its engine core in child processes; a SIGTERM while the engine is still starting used to
leave them orphaned (one grew to 4.2 GB).  It starts vLLM: run it alone on a small machine.
"""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from harness import cli_env, manifest_of, rows_of, start_cli, write_prompts


def _descendants(pid: int) -> set[int]:
    try:
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def _alive(pids: set[int]) -> list[str]:
    alive = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {' '.join(process.cmdline())[:80]}")
        except psutil.Error:
            pass
    return alive


@pytest.mark.engine
@pytest.mark.parametrize("moment", ["start-up", "generation"])
def test_sigterm_leaves_no_engine_process_behind(tmp_path, moment):
    prompts = write_prompts(tmp_path / "p.jsonl", 12)
    out = tmp_path / "out.jsonl"
    log = tmp_path / "run.log"
    process = start_cli(["generate", "--prompts", str(prompts), "--out", str(out), "--max-tokens", "48",
                         "--concurrency", "4", "--examples", "0"], log, env=cli_env(PYTHONFAULTHANDLER="1"))
    seen: set[int] = set()
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and process.poll() is None:
            seen |= _descendants(process.pid)
            if moment == "start-up" and seen and "to generate" in log.read_text():
                time.sleep(3)  # the engine's processes are starting (loading the model, profiling memory)
                seen |= _descendants(process.pid)
                if not out.exists():
                    break
            if moment == "generation" and out.exists() and out.read_text().count("\n") >= 4:
                break
            time.sleep(0.2)
        assert process.poll() is None, log.read_text()
        if moment == "start-up":
            assert not out.exists(), "the engine started before the signal; the trial is not of start-up"
        else:
            assert out.exists() and out.read_text().count("\n") >= 4, "no 4 rows in 400 s; the trial is not of mid-run"
        assert seen, "the engine started no child process"
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(120)
        except Exception:
            process.send_signal(signal.SIGABRT)  # faulthandler: where it hangs goes to the log
            time.sleep(2)
            raise AssertionError("still running 120 s after SIGTERM:\n" + log.read_text()[-6000:]) from None
    finally:
        if process.poll() is None:
            process.kill()
        left = _alive(seen)
        for pid in seen:  # a failed trial must not leave engines running on a shared machine
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        assert not left, f"engine processes outlived the command: {left}"
    text = log.read_text()
    assert code == 143, text[-3000:]
    assert "terminated (SIGTERM)" in text, text[-3000:]
    # No traceback of the command's own (an engine process may log its own shutdown).
    own = [line for line in text.splitlines() if not line.startswith(("(EngineCore", "(Worker", "(MainProcess"))]
    assert "Traceback" not in "\n".join(own), text[-3000:]
    time.sleep(1)
    assert not _alive(seen), _alive(seen)
    manifest = manifest_of(out)
    assert manifest["counts"]["stopped"] == "terminated"
    assert manifest["counts"]["rows"] == len(rows_of(out))
    if moment == "generation":
        assert rows_of(out) and out.read_bytes().endswith(b"\n")  # finished rows, each whole
