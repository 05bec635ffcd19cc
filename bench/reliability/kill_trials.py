"""Kill ``cai generate`` with SIGKILL at random moments, resume, repeat; count lost and duplicated rows.

Each trial: start ``cai generate`` (openai backend, greedy) on N prompts against the deterministic
stand-in server, SIGKILL it at a seeded random moment 2-4 times (each time resuming the same
output), then let it finish; compare with one uninterrupted run.  Prints one line per trial and
the totals; exits 1 if any row was lost, duplicated or differs.

    .venv/bin/python bench/reliability/kill_trials.py                # 20 trials, 1,000 prompts
    .venv/bin/python bench/reliability/kill_trials.py --trials 3 --prompts 200
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "tests" / "reliability"), str(Path(__file__).resolve().parents[2])]

from harness import compare, generate_args, kill_trial, rows_of, start_cli, write_prompts  # noqa: E402
from servers import StandinServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32, help="rows in flight")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="stand-in seconds per request")
    args = parser.parse_args()

    started_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cai-kill-") as tmp, StandinServer(delay=args.delay) as server:
        tmp = Path(tmp)
        prompts = write_prompts(tmp / "prompts.jsonl", args.prompts)
        reference_out = tmp / "reference.jsonl"
        started = time.monotonic()
        process = start_cli(generate_args(prompts, reference_out, server.base_url,
                                          concurrency=args.concurrency), tmp / "reference.log")
        if process.wait(900) != 0:
            print((tmp / "reference.log").read_text()[-3000:], file=sys.stderr)
            return 2
        window = time.monotonic() - started
        reference = rows_of(reference_out)
        print(f"uninterrupted run: {len(reference)} rows in {window:.1f}s; {server.requests} requests", flush=True)

        totals = {"lost": 0, "duplicated": 0, "extra": 0, "differing": 0, "kills": 0, "torn": 0}
        rng = random.Random(args.seed)
        for trial in range(args.trials):
            out = tmp / f"trial{trial}.jsonl"
            t0 = time.monotonic()
            result = kill_trial(generate_args(prompts, out, server.base_url, concurrency=args.concurrency),
                                out, rng, window=window, kills=rng.randint(2, 4), log_path=tmp / f"trial{trial}.log",
                                finish_timeout=900)
            outcome = compare(reference, rows_of(out))
            kills = [e for e in result["events"] if "code" in e]
            totals["kills"] += len(kills)
            totals["torn"] += sum(e["torn"] for e in kills)
            for key in ("lost", "duplicated", "extra", "differing"):
                totals[key] += outcome[key]
            print(f"trial {trial + 1:2d}: killed at rows {[e['rows_on_file'] for e in kills]}"
                  f" (torn last line: {sum(e['torn'] for e in kills)}); exit {result['final_code']}; "
                  f"rows {outcome['rows']}, lost {outcome['lost']}, duplicated {outcome['duplicated']}, "
                  f"differing {outcome['differing']} ({time.monotonic() - t0:.1f}s)", flush=True)
    print(f"\n{args.trials} trials x {args.prompts} prompts: {totals['kills']} kills mid-run "
          f"({totals['torn']} left a torn last line); lost {totals['lost']}, duplicated {totals['duplicated']}, "
          f"extra {totals['extra']}, differing {totals['differing']}; total {time.monotonic() - started_all:.0f}s")
    print(json.dumps(totals))
    return 0 if totals["lost"] == totals["duplicated"] == totals["extra"] == totals["differing"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
