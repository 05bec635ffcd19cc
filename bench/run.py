"""``make bench-quick`` / ``make bench``: every measure (bench/README.md), a table, and a JSON file.

    python -m bench.run --mode quick      # a few minutes, one engine start
    python -m bench.run --mode full       # the full version (two engine starts, more prompts and repeats)
    python -m bench.run --mode quick --only engine,bookkeeping   # a subset while developing
    python -m bench.run --mode full --only dpo --update          # remeasure one part, keep the others
    python -m bench.run --mode full --only peers   # peers side by side -> also results/peers.json

Each part runs in its own child process (vLLM on CPU spawns its workers, and no
two engines may run at once); see bench/README.md for what each measure means.
Writes bench/results/<mode>.json: {measure: {"value", "goal", "unit", "spread", "runs", ...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

from bench.common import MODES, RESULTS, log, measure, run_child, write_json

PARTS = ("engine", "naive", "prefix_off", "bookkeeping", "dpo", "gpu_sim", "peers")

ORDER = [
    "ceiling_ratio", "engine_tokens_per_s", "naive_tokens_per_s", "naive_speedup",
    "prefix_cache_hit_share", "engine_tokens_per_s_prefix_off", "prefix_caching_speedup",
    "judge_speedup", "judge_agreement", "resume_50k_seconds", "memory_growth", "memory_per_done_row",
    "dpo_pairs_per_s_cpu", "dpo_pairs_per_s_gpu",
    "driver_calls_per_s_http", "driver_calls_per_s_in_process", "zero_latency_server_requests_per_s",
    "peers_cpu_vs_llm_swarm", "peers_cpu_vs_distilabel", "peers_sim1024_vs_llm_swarm", "peers_sim1024_vs_distilabel",
]


def meets(value, goal) -> str:
    """'yes'/'NO' for goals like '>= 0.9', '< 5', '<= 1.2 (...)'; '' when there is no goal or value."""
    if value is None or not goal:
        return ""
    match = re.match(r"\s*(>=|<=|>|<)\s*([0-9.]+)", str(goal))
    if not match:
        return ""
    op, bound = match.group(1), float(match.group(2))
    ok = {">=": value >= bound, "<=": value <= bound, ">": value > bound, "<": value < bound}[op]
    return "yes" if ok else "NO"


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def table(results: dict) -> str:
    names = [n for n in ORDER if n in results] + [n for n in results if n not in ORDER and not n.startswith("_")]
    rows = [("measure", "value", "goal", "met", "spread (min..max)", "runs", "unit")]
    for name in names:
        m = results[name]
        spread = m.get("spread")
        rows.append((
            name, _fmt(m.get("value")), str(m.get("goal") or "-"), meets(m.get("value"), m.get("goal")),
            f"{_fmt(spread[0])}..{_fmt(spread[1])}" if spread else "-",
            str(len(m["runs"])) if m.get("runs") else "-",
            m.get("unit", "") + (f"  [{m['note']}]" if m.get("note") else ""),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 4)
    return "\n".join(lines)


def _ratio(top: dict, bottom: dict, goal, unit: str, **extra) -> dict:
    """Ratio of two medians; spread from the extremes of both sides."""
    a, b = top["value"], bottom["value"]
    lo_a, hi_a = top.get("spread", [a, a])
    lo_b, hi_b = bottom.get("spread", [b, b])
    return measure(a / b, goal, unit, spread=[lo_a / hi_b, hi_a / lo_b], **extra)


def machine() -> dict:
    from core.store import versions

    try:
        meminfo = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
        memory_gib = round(int(meminfo) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        memory_gib = None
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory_gib, "platform": platform.platform(),
            "versions": versions()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts: {', '.join(PARTS)}")
    parser.add_argument("--update", action="store_true",
                        help="merge these parts' measures into the existing results file instead of replacing it")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    settings = MODES[args.mode]
    mode = ["--mode", args.mode]
    started = time.perf_counter()
    load_before = os.getloadavg()
    results: dict = {}
    errors: list[str] = []

    def take(data: dict) -> dict:
        errors.extend(data.pop("_errors", []))
        return data

    with tempfile.TemporaryDirectory(prefix="cai-bench-") as tmp:
        tmp = Path(tmp)
        lengths = None
        if "engine" in parts:
            log("== 1, 3, 4: engine vs raw vLLM, prefix cache, judge (one engine) ==")
            data = take(run_child("bench.engine_bench", mode + ["--prefix-caching", "on"], tmp / "engine.json",
                                  timeout=3600, log=log))
            if "_lengths" in data:
                lengths = tmp / "lengths.json"
                lengths.write_text(json.dumps(data.pop("_lengths")))
            results.update(data)
        if "naive" in parts:
            log("== 2: the naive way (transformers generate, one prompt at a time) ==")
            extra = ["--lengths", str(lengths)] if lengths else []
            results.update(take(run_child("bench.naive", mode + extra, tmp / "naive.json", timeout=3600, log=log)))
        if "prefix_off" in parts and settings["prefix_off"]:
            log("== 3: a second engine with prefix caching off ==")
            results.update(take(run_child("bench.engine_bench", mode + ["--prefix-caching", "off"], tmp / "off.json",
                                          timeout=3600, log=log)))
        if "bookkeeping" in parts:
            log("== 5: bookkeeping at scale (stand-in backend) ==")
            results.update(take(run_child("bench.bookkeeping", mode, tmp / "bookkeeping.json", timeout=3600, log=log)))
        if "dpo" in parts:
            log("== 6: DPO training throughput ==")
            results.update(take(run_child("bench.dpo", mode, tmp / "dpo.json", timeout=3600, log=log)))
        if "gpu_sim" in parts:
            log("== a simulated GPU server and the driver's ceiling ==")
            data = take(run_child("bench.gpu_sim", mode, tmp / "gpu_sim.json", timeout=3600, log=log))
            data.pop("_gpu_sim", None)
            results.update(data)
        if "peers" in parts:
            log("== peers side by side (cai generate, llm-swarm's way, distilabel) on one server ==")
            peers = run_child("bench.peers", mode, tmp / "peers.json", timeout=3600, log=log)
            write_json(RESULTS / "peers.json", peers)
            peers.pop("_peers", None)
            results.update(take(peers))

    engine = results.get("engine_tokens_per_s")
    if engine and results.get("naive_tokens_per_s"):
        naive = results["naive_tokens_per_s"]
        results["naive_speedup"] = _ratio(
            engine, naive, ">= 10", "x (engine tokens/s / transformers one-at-a-time tokens/s)",
            note=f"naive side: {naive.get('prompts')} prompt(s), {naive.get('dtype')}, {naive.get('threads')} thread(s)",
        )
    if engine and results.get("engine_tokens_per_s_prefix_off"):
        results["prefix_caching_speedup"] = _ratio(
            engine, results["engine_tokens_per_s_prefix_off"], None, "x (engine tokens/s, prefix caching on / off)"
        )
    elif "prefix_off" in parts and not settings["prefix_off"]:
        results["prefix_caching_speedup"] = measure(None, None, "x (engine tokens/s, prefix caching on / off)",
                                                    note="full mode only: needs a second engine start")
    gpu_file = RESULTS / f"dpo_gpu_{args.mode}.json"
    if "dpo" in parts and "dpo_pairs_per_s_gpu" not in results:
        if gpu_file.exists():
            # Measured on a GPU machine by bench.dpo alone (vLLM need not be installed there).
            gpu = json.loads(gpu_file.read_text(encoding="utf-8"))["dpo_pairs_per_s_gpu"]
            gpu["note"] = f"from {gpu_file.relative_to(RESULTS.parent.parent)}, a separate GPU run"
            results["dpo_pairs_per_s_gpu"] = gpu
        else:
            results["dpo_pairs_per_s_gpu"] = measure(
                None, None, "preference pairs/s on a GPU",
                note=f"no GPU here; on a GPU machine: python -m bench.dpo --mode {args.mode} --out {gpu_file}",
            )

    run = {
        "mode": args.mode, "parts": parts, "settings": settings, "wall_seconds": round(time.perf_counter() - started),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(), "errors": errors,
    }
    out = RESULTS / f"{args.mode}.json"
    if args.update and out.exists():
        # Each measure keeps the run that made it: the first run in "_run", later ones in "_updates".
        merged = json.loads(out.read_text(encoding="utf-8"))
        merged.setdefault("_updates", []).append({**run, "measures": sorted(k for k in results if not k.startswith("_"))})
        merged.update({k: v for k, v in results.items() if not k.startswith("_")})
        results = merged
    else:
        results["_run"] = run
    write_json(out, results)
    print(f"\n{args.mode} benchmark, {run['wall_seconds']} s "
          f"(load average {load_before[0]:.1f} before, {run['load_average_after'][0]:.1f} after)\n")
    print(table(results))
    print(f"\nwrote {out}")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
