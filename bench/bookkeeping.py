"""Measure 5: bookkeeping at scale, with a fast stand-in backend (no model).

* Resume: ``generation.run.generate`` over an output of 50,000 done rows whose
  fingerprints are the real ones from ``CritiqueReviseTask`` (so every row
  counts as done and nothing is generated); seconds per run, median of several.
  One extra run under cProfile names where the time goes.
* Memory: a generation run of N prompts (1,000 ... 10,000) from scratch, and a
  rerun that adds 100 new prompts over those N done rows, each in a fresh child
  process; peak Python heap (tracemalloc) and peak RSS.  ``memory_growth`` is
  peak(N max) / peak(N min) (it follows the run's prompts: ids, fingerprints and
  prompt text); ``memory_per_done_row`` is what the rerun over more done rows adds
  to the peak per MB those rows take on disk (a design that held them: >= 1).

Rows are realistic in size (about 800 characters per draft, critique and revision).
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench.common import REPO, child_args, log, measure, run_child, summary, write_json

TEXT = ("This is a synthetic reply of realistic length for the bookkeeping benchmark. " * 11)[:800]


def _prompts_file(path: Path, count: int, start: int = 0) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(start, start + count):
            handle.write(json.dumps({"id": f"p{i:06d}", "prompt": f"Question number {i}: how do I do task {i}?"}) + "\n")


def _config(prompts: Path, out: Path):
    from generation.config import GenerateConfig

    return GenerateConfig(prompts=str(prompts), out=str(out), constitution=str(REPO / "principles.yaml"), examples=0)


class _FatScripted:
    """tests/standins.ScriptedBackend with replies of realistic length."""

    def __new__(cls):
        sys.path.insert(0, str(REPO))
        from core.backends.base import Completion
        from tests.standins import ScriptedBackend

        class Fat(ScriptedBackend):
            def chat(self, conversations, sampling, seeds=None):
                return [
                    Completion(text=TEXT, finish_reason="stop", prompt_tokens=len(c) * 40, completion_tokens=180)
                    for c in conversations
                ]

        return Fat()


def synthesize_done_output(prompts: Path, out: Path, count: int) -> None:
    """``count`` done rows for ``prompts``, keyed by the fingerprints generate will compute."""
    from constitution.loader import load_constitution
    from generation.critique_revise import CritiqueReviseTask
    from generation.prompt_files import read_prompts
    from generation.run import chain_settings
    from core.store import write_manifest

    config = _config(prompts, out)
    settings = chain_settings(config)
    task = CritiqueReviseTask(load_constitution(config.constitution), settings)
    calls = [
        {"step": step, "finish_reason": "stop", "prompt_tokens": 400, "completion_tokens": 180}
        for step in ("draft", "critique 1", "revision 1")
    ]
    with open(out, "w", encoding="utf-8") as handle:
        for prompt in read_prompts(prompts)[:count]:
            principles = task.principles_for(prompt)
            draft_fp = task.draft_fingerprint(prompt)
            round_fps = task.round_fingerprints(draft_fp, principles)
            rounds = [
                {"principle_id": p.id, "critique_request": p.critique_request, "critique": TEXT,
                 "revision_request": p.revision_request, "revision": TEXT, "fingerprint": fp}
                for p, fp in zip(principles, round_fps)
            ]
            row = {
                "id": prompt.id, "tag": prompt.tag, "prompt": prompt.messages, "initial_response": TEXT,
                "rounds": rounds, "final_response": TEXT, "model": settings.model,
                "sampling": settings.sampling.as_dict(), "seed": settings.seed, "calls": calls,
                "token_counts": {"prompt": 1200, "completion": 540}, "constitution_version": "1",
                "draft_fingerprint": draft_fp, "fingerprint": round_fps[-1] if round_fps else draft_fp,
                "source": {"line": prompt.line, "file": str(prompts)}, "reused_calls": 0, "flags": [],
            }
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    write_manifest(out, "generate", {"settings": settings.as_dict()}, {"rows": count},
                   checks_version=task.checker.version)


def _what_a_fix_gives(out: Path, records, task) -> dict:
    """Prototypes of the two fixes the profile points at, timed on the same data (not used by the engine).

    1. Resume needs only each row's key: find the row-level ``"fingerprint"`` (the last one on the
       line, after the rounds') instead of decoding the whole row.
    2. Principle assignment: hash ``seed, key`` once per prompt and extend a copy per principle,
       instead of joining and hashing a new string per principle.  Checked equal to the engine's.
    """
    import hashlib
    import math

    from constitution.assignment import assign_principles

    found = {}
    started = time.perf_counter()
    marker = b'"fingerprint": "'
    keys = set()
    with open(out, "rb") as handle:
        for line in handle:
            at = line.rfind(marker)
            if at >= 0:
                end = line.index(b'"', at + len(marker))
                keys.add(line[at + len(marker): end].decode())
    found["fix_scan_fingerprints_only_s"] = time.perf_counter() - started

    principles = task.constitution.principles
    seed, rounds = task.settings.seed, task.settings.rounds
    suffixes = [("\x1f" + str(p.id)).encode("utf-8") for p in principles]

    def fast_assign(key: str):
        base = hashlib.sha256(f"{seed}\x1f{key}".encode("utf-8"))
        scored = []
        for principle, suffix in zip(principles, suffixes):
            h = base.copy()
            h.update(suffix)
            u = (int.from_bytes(h.digest()[:8], "big") + 0.5) / 2**64
            scored.append(((-principle.weight / math.log(u), principle.id), principle))
        ranked = [p for _, p in sorted(scored, key=lambda item: item[0], reverse=True)]
        return [ranked[i % len(ranked)] for i in range(rounds)]

    same = all(
        [p.id for p in fast_assign(r.id)] == [p.id for p in assign_principles(r.id, principles, rounds, seed)]
        for r in records[:2000]
    )
    started = time.perf_counter()
    for record in records:
        fast_assign(record.id)
    found["fix_fast_assignment_s"] = time.perf_counter() - started
    found["fix_fast_assignment_matches"] = same
    found["fix_scan_found_all_rows"] = len(keys) == len(records)
    return found


def bench_resume(settings: dict, results: dict) -> None:
    from generation.run import generate

    count = settings["resume_rows"]
    with tempfile.TemporaryDirectory(prefix="cai-bench-resume-") as tmp:
        prompts, out = Path(tmp) / "prompts.jsonl", Path(tmp) / "out.jsonl"
        _prompts_file(prompts, count)
        started = time.perf_counter()
        synthesize_done_output(prompts, out, count)
        log(f"  synthesized {count} done rows ({out.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.0f} s")
        config = _config(prompts, out)
        backend = _FatScripted()
        times = []
        for repeat in range(settings["resume_repeats"]):
            started = time.perf_counter()
            result = generate(config, backend=backend)
            times.append(time.perf_counter() - started)
            assert result["counts"]["generated"] == 0 and result["counts"]["already_done"] == count, result["counts"]
            log(f"  resume {repeat + 1}: {times[-1]:.2f} s")
        # Phases without a profiler: reading the done rows, and keying the prompts.
        from constitution.loader import load_constitution
        from generation.critique_revise import CritiqueReviseTask
        from generation.prompt_files import read_prompts
        from generation.run import chain_settings
        from core.store import JsonlStore

        phases = {}
        started = time.perf_counter()
        rows = JsonlStore(out).load()
        phases["load_done_rows_s"] = time.perf_counter() - started
        del rows
        started = time.perf_counter()
        records = read_prompts(prompts)
        phases["read_prompts_s"] = time.perf_counter() - started
        task = CritiqueReviseTask(load_constitution(config.constitution), chain_settings(config))
        started = time.perf_counter()
        for record in records:
            task.principles_for(record)
        phases["assign_principles_s"] = time.perf_counter() - started
        started = time.perf_counter()
        for record in records:
            task.fingerprint(record)
        phases["fingerprints_incl_assignment_s"] = time.perf_counter() - started
        phases.update(_what_a_fix_gives(out, records, task))
        phases = {k: round(v, 2) if isinstance(v, float) else v for k, v in phases.items()}
        log(f"  resume phases: {phases}")
        profile = cProfile.Profile()
        profile.enable()
        generate(config, backend=backend)
        profile.disable()
        stream = io.StringIO()
        stats = pstats.Stats(profile, stream=stream).sort_stats("tottime")
        top = []
        for (file, line, name), (_, calls, tottime, cumtime, _) in sorted(
            stats.stats.items(), key=lambda kv: kv[1][2], reverse=True
        )[:8]:
            top.append(f"{tottime:.2f}s self, {calls} calls: {Path(file).name}:{line} {name}")
        results["resume_50k_seconds"] = measure(
            **summary(times), goal="< 5", unit="s to resume over 50,000 done rows (nothing to generate)",
            rows=count, file_mb=round(out.stat().st_size / 1e6, 1), phases=phases, profile_top_self_time=top,
        )


def memory_run(size: int) -> dict:
    """Peak heap and RSS of a fresh run over ``size`` prompts, then of a rerun adding 100 over them."""
    from generation.run import generate

    with tempfile.TemporaryDirectory(prefix="cai-bench-memory-") as tmp:
        prompts, out = Path(tmp) / "prompts.jsonl", Path(tmp) / "out.jsonl"
        _prompts_file(prompts, size)
        backend = _FatScripted()
        tracemalloc.start()
        generate(_config(prompts, out), backend=backend)
        _, fresh_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        _prompts_file(prompts, size + 100)
        result = generate(_config(prompts, out), backend=backend)
        _, rerun_peak = tracemalloc.get_traced_memory()
        # What is still held when generate returns (its result keeps every row alive): the biggest allocation sites.
        snapshot = tracemalloc.take_snapshot()
        tracemalloc.stop()
        held = [
            f"{stat.size / 1e6:.1f} MB: {Path(stat.traceback[0].filename).name}:{stat.traceback[0].lineno}"
            for stat in snapshot.statistics("lineno")[:5]
        ]
        assert result["counts"]["generated"] == 100, result["counts"]
        rows_mb = out.stat().st_size / 1e6
    return {
        "fresh_peak_mb": fresh_peak / 1e6,
        "rerun_peak_mb": rerun_peak / 1e6,
        "rows_on_disk_mb": rows_mb,
        "peak_rss_mb": _peak_rss_mb(),
        "held_after_rerun": held,
    }


def _peak_rss_mb() -> float:
    # VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the parent's peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def bench_memory(settings: dict, mode: str, results: dict) -> None:
    per_size = {}
    with tempfile.TemporaryDirectory(prefix="cai-bench-memory-out-") as tmp:
        for size in settings["memory_sizes"]:
            data = run_child("bench.bookkeeping", ["--mode", mode, "--memory-size", str(size)],
                             Path(tmp) / f"{size}.json", timeout=900, log=log)
            if "memory" in data:
                per_size[size] = data["memory"]
                log(f"  {size} prompts: {data['memory']}")
    if len(per_size) >= 2:
        small, large = min(per_size), max(per_size)
        growth = per_size[large]["fresh_peak_mb"] / per_size[small]["fresh_peak_mb"]
        rerun_growth = per_size[large]["rerun_peak_mb"] / per_size[small]["rerun_peak_mb"]
        results["memory_growth"] = measure(
            round(growth, 2), goal=None,
            unit=f"x peak Python heap, {large} vs {small} prompts (fresh run; follows the run's prompts)",
            rerun_growth=round(rerun_growth, 2),
            per_size={str(k): {a: (round(b, 1) if isinstance(b, float) else b) for a, b in v.items()}
                      for k, v in per_size.items()},
            kb_per_prompt=round(
                (per_size[large]["fresh_peak_mb"] - per_size[small]["fresh_peak_mb"]) / (large - small) * 1000, 2
            ),
        )
        # Against the requirement that memory not grow with done rows: what a rerun over more done
        # rows adds to the peak, per MB those rows take on disk.  Holding the rows would cost >= 1.
        held = per_size[large]["rerun_peak_mb"] - per_size[small]["rerun_peak_mb"]
        on_disk = per_size[large]["rows_on_disk_mb"] - per_size[small]["rows_on_disk_mb"]
        results["memory_per_done_row"] = measure(
            round(held / on_disk, 3), goal="< 0.5 (holding the done rows would be >= 1)",
            unit=f"MB of peak heap added per MB of done rows (rerun over {large} vs {small} done rows)",
            added_heap_mb=round(held, 2), added_rows_on_disk_mb=round(on_disk, 1),
            bytes_per_done_row=round(held * 1e6 / (large - small)),
            bytes_per_row_on_disk=round(on_disk * 1e6 / (large - small)),
        )


def main(argv=None) -> None:
    args, settings = child_args(argv)
    if args.memory_size:
        import contextlib
        import os

        with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):  # per-batch progress lines
            data = memory_run(args.memory_size)
        write_json(args.out, {"memory": data})
        return
    results: dict = {}
    bench_memory(settings, args.mode, results)
    bench_resume(settings, results)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
