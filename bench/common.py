"""Shared helpers for the benchmarks: settings per mode, statistics, child processes, results.

Every measure runs in its own child process (``python -m bench.<part> ...``) that
writes a JSON file of measures; ``bench.run`` collects them.  vLLM on CPU starts
its workers by spawn, and engines must be started one at a time, so each child
holds at most one engine and exits before the next one starts.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Settings per mode.  quick: one engine start, small N, few repeats (a few minutes).
MODES = {
    "quick": {
        "prompts": 48,           # prompts through the chain (engine vs vLLM's ceiling vs lockstep)
        "max_tokens": 32,        # per call
        "repeats": 3,            # timed runs per side, rotated, after one warm-up
        "naive_prompts": 1,      # prompts through the transformers loop
        "naive_repeats": 2,
        "naive_token_cap": None,  # or a cap on new tokens per naive call (None: the engine's lengths)
        "prefix_off": False,     # second engine (prefix caching off): full mode only
        "judge_pairs": 6,
        "judge_cot_tokens": 48,  # reasoning tokens of the text judge
        "judge_repeats": 3,      # runs per judge mode (three modes, rotated)
        "resume_rows": 50_000,
        "resume_repeats": 3,
        "memory_sizes": [1_000, 10_000],
        "dpo_steps": 3,
        "dpo_batch": 2,
        "dpo_length": 128,
    },
    "full": {
        "prompts": 200,
        "max_tokens": 128,
        "repeats": 3,
        "naive_prompts": 2,
        "naive_repeats": 3,
        "naive_token_cap": None,
        "prefix_off": True,
        "judge_pairs": 40,
        "judge_cot_tokens": 192,
        "judge_repeats": 3,
        "resume_rows": 50_000,
        "resume_repeats": 5,
        "memory_sizes": [1_000, 2_000, 5_000, 10_000],
        "dpo_steps": 10,
        "dpo_batch": 4,
        "dpo_length": 256,
    },
}


def summary(values: list[float]) -> dict:
    """Median and spread (min..max, and max/min - 1 as a share) of repeated measurements."""
    values = [float(v) for v in values]
    median = statistics.median(values)
    low, high = min(values), max(values)
    return {
        "value": median,
        "spread": [low, high],
        "spread_pct": round(100 * (high - low) / median, 1) if median else None,
        "runs": values,
    }


def measure(value, goal, unit: str, **extra) -> dict:
    """One measure as the results file stores it."""
    out = {"value": value, "goal": goal, "unit": unit}
    out.update(extra)
    return out


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.elapsed = time.perf_counter() - self.start


def machine() -> dict:
    """The machine a result was measured on: CPU model, the ISA flags that matter, cores, load."""
    from core.hardware import this_cpu

    return {"cpu": this_cpu().as_dict(), "loadavg": [round(x, 2) for x in os.getloadavg()]}


def write_json(path: str | Path, data: dict) -> None:
    """A result file; a top-level one (not a child's part) records the machine it was measured on."""
    path = Path(path)
    if path.resolve().parent == RESULTS and "machine" not in data:
        data = {"machine": machine(), **data}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def run_child(module: str, args: list[str], out: Path, timeout: float, log, env: dict | None = None) -> dict:
    """Run ``python -m module args --out out`` (in ``env``, default this process's); return its JSON, or an error entry."""
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", module, *args, "--out", str(out)]
    log(f"$ {' '.join(command[1:])}")
    started = time.perf_counter()
    env = dict(env or os.environ, PYTHONUNBUFFERED="1")
    try:
        # start_new_session so a timeout can end the child and every engine worker it spawned.
        process = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 15)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
            code = "timeout"
    except KeyboardInterrupt:
        os.killpg(process.pid, 15)
        raise
    elapsed = time.perf_counter() - started
    log(f"  ({module} took {elapsed:.0f} s, exit {code})")
    if out.exists():
        data = json.loads(out.read_text(encoding="utf-8"))
        if code != 0:
            data.setdefault("_errors", []).append(f"{module} exited with {code}")
        return data
    return {"_errors": [f"{module} exited with {code} and wrote no results"]}


def child_args(argv=None):
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--out", required=True)
    parser.add_argument("--prefix-caching", choices=["on", "off"], default="on")
    parser.add_argument("--engine-tps", type=float, default=None, help="engine tokens/s to compare against (naive)")
    parser.add_argument("--lengths", default=None, help="JSON file of per-call lengths from the engine run (naive)")
    parser.add_argument("--memory-size", type=int, default=None, help="bookkeeping: one memory run of N prompts")
    parser.add_argument("--prompts", type=int, default=None, help="override the mode's number of prompts")
    parser.add_argument("--max-tokens", type=int, default=None, help="override the mode's tokens per call")
    parser.add_argument("--repeats", type=int, default=None, help="override the mode's timed runs per side")
    args = parser.parse_args(argv)
    settings = dict(MODES[args.mode])
    if args.prompts:
        settings["prompts"] = args.prompts
    if args.max_tokens:
        settings["max_tokens"] = args.max_tokens
    if args.repeats:
        settings["repeats"] = args.repeats
    return args, settings


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
