"""``cai generate`` through the fault-injecting proxy: does a run with 20% faults complete every row?

Starts the deterministic stand-in and, in front of it, the fault proxy (429 with Retry-After,
500, 503, hang past the timeout, connection reset, body cut short), runs ``cai generate`` on N
prompts through the proxy and once directly, and prints the proxy's counts, the largest number
of attempts any request needed, the shortest wait after a 429, and whether the output is
complete and equal to the fault-free run.  Exits 1 if a row is missing or differs.

    .venv/bin/python bench/reliability/fault_run.py                  # 1,000 prompts, 20% faults
    .venv/bin/python bench/reliability/fault_run.py --prompts 100 --rate 0.3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "tests" / "reliability"), str(Path(__file__).resolve().parents[2])]

from harness import compare, generate_args, rows_of, run_cli, write_prompts  # noqa: E402
from servers import FaultProxy, StandinServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retry-after", type=float, default=1)
    parser.add_argument("--request-timeout", type=float, default=2.0)
    parser.add_argument("--max-faults-per-request", type=int, default=3,
                        help="the proxy faults at most this many attempts of one request (the client's cap is 6)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cai-faults-") as tmp, StandinServer() as server:
        tmp = Path(tmp)
        prompts = write_prompts(tmp / "prompts.jsonl", args.prompts)
        done = run_cli(generate_args(prompts, tmp / "clean.jsonl", server.base_url, concurrency=32), timeout=1800)
        assert done.returncode == 0, done.stderr[-3000:]
        with FaultProxy(server.url, rate=args.rate, seed=args.seed, retry_after=args.retry_after,
                        hang_seconds=args.request_timeout + 1,
                        max_faults_per_request=args.max_faults_per_request) as proxy:
            started = time.monotonic()
            faulty = run_cli(generate_args(prompts, tmp / "faulty.jsonl", proxy.base_url, "--request-timeout",
                                           str(args.request_timeout), concurrency=32), timeout=1800)
            elapsed = time.monotonic() - started
        outcome = compare(rows_of(tmp / "clean.jsonl"), rows_of(tmp / "faulty.jsonl"))
        errors = rows_of(str(tmp / "faulty.jsonl") + ".errors.jsonl")
        summary = proxy.summary()
        gaps = proxy.retry_after_gaps()
    print(f"{args.prompts} prompts through the proxy at {args.rate:.0%} faults: exit {faulty.returncode} in {elapsed:.1f}s")
    print(f"proxy: {summary['attempts']} attempts for {summary['requests']} requests, {summary['faults']} faults "
          f"({summary['fault_rate']:.1%}): {json.dumps(summary['by_kind'], sort_keys=True)}")
    print(f"most attempts for one request: {summary['max_attempts_per_request']} (cap 6); requests never answered: "
          f"{len(proxy.unanswered())}; shortest wait after a 429 with Retry-After {args.retry_after:g}: "
          f"{min(gaps) if gaps else float('nan'):.3f}s over {len(gaps)} retries")
    print(f"output: {outcome['rows']} rows, lost {outcome['lost']}, duplicated {outcome['duplicated']}, "
          f"differing from the fault-free run {outcome['differing']}; errors file rows {len(errors)}")
    ok = faulty.returncode == 0 and outcome["lost"] == outcome["duplicated"] == outcome["differing"] == 0 and not errors
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
