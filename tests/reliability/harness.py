"""Helpers shared by the reliability tests and bench/reliability: run ``cai generate`` and compare outputs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CAI = ["-m", "cai"]  # the console script, run with this interpreter


def write_prompts(path: Path, n: int, prefix: str = "p") -> Path:
    path.write_text("".join(
        json.dumps({"id": f"{prefix}{i}", "prompt": f"Question {i}: how do I do thing number {i}?", "tag": "t"}) + "\n"
        for i in range(n)))
    return path


def rows_of(path: str | Path, in_file_order: bool = False) -> list[dict]:
    """The rows of an output, sorted by id: rows are written as they finish, in no fixed order."""
    path = Path(path)
    if not path.exists():
        return []
    # split on \n only: rows may hold U+2028 and other characters that str.splitlines() would split on
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    return rows if in_file_order else sorted(rows, key=lambda row: str(row.get("id")))


def manifest_of(out: str | Path) -> dict | None:
    path = Path(str(out) + ".manifest.json")
    return json.loads(path.read_text()) if path.exists() else None


def generate_args(prompts, out, base_url, *extra, model: str = "standin", rounds: int = 1,
                  concurrency: int = 8) -> list[str]:
    """``cai generate`` arguments for a greedy openai-backend run (deterministic against the stand-in)."""
    return ["generate", "--prompts", str(prompts), "--out", str(out), "--backend", "openai", "--base-url", base_url,
            "--model", model, "--temperature", "0", "--max-tokens", "32", "--rounds", str(rounds),
            "--concurrency", str(concurrency), "--examples", "0",
            "--constitution", str(REPO / "principles.yaml"), *extra]


def cli_env(**extra) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def default_sigint() -> None:
    """For a child the tests interrupt: Ctrl-C acts even when the tests run where SIGINT is ignored
    (a shell's background job without job control passes SIG_IGN on, and Python then never raises
    KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(args: list[str], log_path: Path, env: dict | None = None) -> subprocess.Popen:
    log = open(log_path, "ab")
    try:
        return subprocess.Popen([sys.executable, *CAI, *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env=env or cli_env(), preexec_fn=default_sigint)
    finally:
        log.close()


def run_cli(args: list[str], timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *CAI, *args], cwd=REPO, capture_output=True, text=True,
                          env=env or cli_env(), timeout=timeout)


def compare(reference: list[dict], final: list[dict]) -> dict:
    """Lost, duplicated and differing rows of ``final`` against an uninterrupted run's ``reference``."""
    want = {row["id"]: row for row in reference}
    counts = Counter(row["id"] for row in final)
    got = {row["id"]: row for row in final}
    return {
        "rows": len(final),
        "lost": sum(1 for i in want if i not in got),
        "duplicated": sum(n - 1 for n in counts.values() if n > 1),
        "extra": sum(1 for i in got if i not in want),
        "differing": sum(1 for i in want if i in got and got[i] != want[i]),
    }


def kill_trial(args: list[str], out: Path, rng: random.Random, window: float, kills: int, log_path: Path,
               sig: int = signal.SIGKILL, finish_timeout: float = 300) -> dict:
    """Start ``cai generate``, send ``sig`` at a random moment in ``window`` seconds, ``kills`` times; then finish.

    Returns what happened at each kill (rows on file, whether its last line was torn) and the final exit code.
    """
    events = []
    for _ in range(kills):
        process = start_cli(args, log_path)
        moment = rng.uniform(0.0, window)
        try:
            process.wait(moment)
            events.append({"at": round(moment, 3), "exited_first": process.returncode})
            if process.returncode == 0:
                if any("code" in e for e in events) or window < 0.2:
                    break  # the run finished before this kill: nothing left to interrupt
                # No kill has landed yet (a busy machine made the run slower than the window): start over sooner.
                for path in out.parent.glob(out.name + "*"):
                    path.unlink()
                window /= 2
            continue
        except subprocess.TimeoutExpired:
            pass
        process.send_signal(sig)
        code = process.wait(60)
        data = out.read_bytes() if out.exists() else b""
        events.append({"at": round(moment, 3), "code": code, "rows_on_file": data.count(b"\n"),
                       "torn": bool(data) and not data.endswith(b"\n")})
    process = start_cli(args, log_path)
    code = process.wait(finish_timeout)
    return {"events": events, "final_code": code}


def wait_for(predicate, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False
