"""`cai generate` against a simulated GPU server (part 2, ``sim``), and the driver's ceiling (part 3, ``driver``).

    python -m bench.gpu_sim --mode full --out bench/results/gpu_sim.json              # both parts
    python -m bench.gpu_sim --mode full --part sim --out X.json                       # 2 only
    python -m bench.gpu_sim --mode full --part driver --out X.json                    # 3 only
    python -m bench.run --mode full --only gpu_sim --update                           # into full.json

2. **A GPU-like server** (``bench/gpu_server.py``, its cost model and figures in its docstring):
   for S in the mode's sizes, a fresh server with ``--max-active S``, then the real CLI
   (``cai generate --backend openai``, a subprocess) over N synthesized prompts, one round.
   Efficiency = the ideal time (every output token at the full-batch rate S / (a + b S), plus
   the prefill the run was charged) / the time the server was serving (first request in to
   last reply out).  Also rows/s and output tokens/s over that window, the process's wall
   time (with its start-up), and the server's mean active sequences.  Each engine setting in
   ``SETTINGS`` that the installed CLI accepts is run: the lockstep design's defaults and its
   best setting, and the streaming design's default and wider settings.
3. **Driver ceiling**: calls/s of one `cai generate` process against a zero-latency server
   (``gpu_server --zero-latency``) over HTTP, and in process against a zero-latency backend
   (``ZeroBackend``, no HTTP), each with a cProfile top list; and the zero-latency servers'
   own capacity (``gpu_server --zero-latency`` vs ``tests/reliability/servers.py``'s
   ``StandinServer``) under a load generator, so the server is known not to be the limit.

Run it on an otherwise idle machine: no model, but it loads the CPU for minutes and times it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import itertools
import json
import os
import pstats
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import MODES, REPO, log, measure, write_json

PYTHON = sys.executable
DEMO_PROMPTS = REPO / "prompts" / "demo.jsonl"

#: name -> (design, flags); a setting runs only when the installed `cai generate` is of that design.
#: lockstep: the batch design (--batch-size prompts per batch, --concurrency requests in flight);
#: streaming: every row on its own (--concurrency rows in flight, no --batch-size).
SETTINGS = {
    "lockstep_default": ("lockstep", ["--batch-size", "64", "--concurrency", "32"]),
    "lockstep_b256_c256": ("lockstep", ["--batch-size", "256", "--concurrency", "256"]),
    "streaming_default": ("streaming", []),
    "streaming_c_2S": ("streaming", ["--concurrency", "{2S}"]),
}
#: fewer prompts for a slow setting (its figures are per batch, so they hold for more prompts)
PROMPT_CAPS = {"lockstep_default": 512}
#: per mode: prompts, server sizes, settings per size, driver prompts
SIM_MODES = {
    "quick": {"prompts": 500, "sizes": [256], "driver_prompts": 500, "driver_repeats": 1, "load_seconds": 3},
    "full": {"prompts": 2000, "sizes": [256, 1024], "driver_prompts": 1000, "driver_repeats": 3, "load_seconds": 5},
}


def cli_design() -> str:
    """'lockstep' if `cai generate` still takes --batch-size, else 'streaming'."""
    out = subprocess.run([PYTHON, "-m", "cai", "generate", "--help"], cwd=REPO, capture_output=True, text=True,
                         env=_env()).stdout
    return "lockstep" if "--batch_size" in out or "--batch-size" in out else "streaming"


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OPENAI_API_KEY="sim", PYTHONUNBUFFERED="1")


def synthesize_prompts(n: int, path: Path) -> Path:
    """N distinct prompts: the demo's prompts in turn, each with its own id and a varied ending."""
    demo = [json.loads(line) for line in DEMO_PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            base = demo[i % len(demo)]
            f.write(json.dumps({"id": f"{base['id']}-{i:05d}", "tag": base.get("tag"),
                                "prompt": f"{base['prompt']} (Request {i} of {n}.)"}) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def wait_ready(url: str, process: subprocess.Popen, name: str, seconds: float = 30) -> None:
    """Until ``url`` answers ``GET /v1/models``; a server that exits or stays silent is an error."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            _get(url + "/v1/models", timeout=1)
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start (exit {process.poll()})") from None
            time.sleep(0.1)


@contextlib.contextmanager
def gpu_server(*args: str):
    """``python -m bench.gpu_server`` on a free port; yields its base URL (…/v1)."""
    port = free_port()
    process = subprocess.Popen([PYTHON, "-m", "bench.gpu_server", "--port", str(port), *args], cwd=REPO, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, "gpu_server")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


class ThreadProfiles:
    """cProfile of the calling thread and of ``core.aio``'s event-loop thread, where the streaming engine's
    requests run (cProfile sees one thread; ``python -m cProfile`` would miss the client's work)."""

    def __init__(self):
        self.main, self.loop_thread, self.loop = cProfile.Profile(), cProfile.Profile(), None

    def _in_loop(self, method: str) -> None:
        import threading

        done = threading.Event()
        self.loop.call_soon_threadsafe(lambda: (getattr(self.loop_thread, method)(), done.set()))
        done.wait(10)

    def __enter__(self):
        try:
            from core import aio
        except ImportError:  # the lockstep design: everything runs in the main thread
            aio = None
        if aio is not None:
            self.loop = aio.loop()
            self._in_loop("enable")
        self.main.enable()
        return self

    def __exit__(self, *exc):
        self.main.disable()
        if self.loop is not None:
            self._in_loop("disable")

    def stats(self) -> pstats.Stats:
        stats = pstats.Stats(self.main, stream=io.StringIO())
        if self.loop is not None and getattr(self.loop_thread, "getstats", None) and self.loop_thread.getstats():
            stats.add(self.loop_thread)
        return stats


def profiled_cli(argv: list[str], out: str) -> int:
    """``cai ARGV`` in this process under ``ThreadProfiles``; the merged profile goes to ``out``."""
    from cai.cli import main as cai_main

    with ThreadProfiles() as profiles:
        try:
            code = cai_main(argv)
        except SystemExit as exc:
            code = exc.code
    profiles.stats().dump_stats(out)
    return code or 0


def run_generate(base_url: str, prompts: Path, out: Path, flags: list[str], profile: Path | None = None) -> dict:
    """The real CLI, one round, over ``prompts``; returns its wall time and exit status."""
    head = [PYTHON, "-c", "import sys; from bench.gpu_sim import profiled_cli; "
            f"sys.exit(profiled_cli(sys.argv[2:], {str(profile)!r}))", "cai"] if profile else [PYTHON, "-m", "cai"]
    command = head + ["generate", "--prompts", str(prompts), "--out", str(out), "--backend", "openai",
                      "--base-url", base_url + "/v1", "--model", "sim-7b", "--rounds", "1", "--examples", "0",
                      "--overwrite", *flags]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"cai generate exited {done.returncode}: {done.stderr[-3000:]}")
    rows = sum(1 for line in out.read_text(encoding="utf-8").splitlines() if line.strip())
    return {"wall_s": wall, "rows": rows, "command": "cai " + " ".join(command[len(head):])}


# -- 2: the simulated GPU server --------------------------------------------------------------------------------------

def sim_part(settings: dict, tmp: Path) -> dict:
    design = cli_design()
    n = settings["prompts"]
    prompts = synthesize_prompts(n, tmp / "prompts.jsonl")
    results: dict = {}
    for size in settings["sizes"]:
        for name, (setting_design, flags) in SETTINGS.items():
            if setting_design != design:
                continue
            flags = [f.replace("{2S}", str(2 * size)) for f in flags]
            count = min(n, PROMPT_CAPS.get(name, n))
            log(f"-- S={size}, {name} ({' '.join(flags) or 'defaults'}), {count} prompts")
            with gpu_server("--max-active", str(size)) as url:
                run = run_generate(url, prompts, tmp / f"out-{size}-{name}.jsonl", flags + ["--limit", str(count)])
                stats = _get(url + "/stats")
            window = stats["window_s"]
            entry = {
                "design": design, "flags": flags, "prompts": count, "rows": run["rows"], "calls": stats["requests"],
                "efficiency": stats["efficiency"], "window_s": window, "ideal_s": stats["ideal_s"],
                "process_wall_s": run["wall_s"], "efficiency_process_wall": stats["ideal_s"] / run["wall_s"],
                "rows_per_s": run["rows"] / window, "output_tokens_per_s": stats["output_tokens"] / window,
                "full_batch_tokens_per_s": stats["full_batch_tokens_per_s"], "mean_active": stats["mean_active"],
                "mean_active_while_busy": stats["mean_active_while_busy"], "output_tokens": stats["output_tokens"],
                "prefill_tokens": stats["prefill_tokens"], "prompt_tokens": stats["prompt_tokens"],
                "prefill_s": stats["prefill_s"], "server_max_lag_s": stats["max_lag_s"], "by_step": stats["by_step"],
                "a": stats["a"], "b": stats["b"], "c": stats["c"],
            }
            log(f"   efficiency {entry['efficiency']:.3f} (window {window:.1f} s, ideal {entry['ideal_s']:.1f} s, "
                f"process {run['wall_s']:.1f} s), {entry['rows_per_s']:.1f} rows/s, "
                f"{entry['output_tokens_per_s']:,.0f} tokens/s, mean active {entry['mean_active']:.0f}, "
                f"server lag max {stats['max_lag_s'] * 1000:.0f} ms")
            label = f"s{size}" if name.endswith("_default") else f"s{size}_{name.split('_', 1)[1]}"
            results[f"gpu_sim_efficiency_{design}_{label}"] = measure(
                entry["efficiency"], ">= 0.9" if name.endswith("_default") else None,
                f"x (ideal time / served time), S={size}, {count} prompts, one run",
                spread=[entry["efficiency"]] * 2, runs=[entry["efficiency"]],
                note=f"{entry['rows_per_s']:.1f} rows/s, {entry['output_tokens_per_s']:,.0f} tok/s, "
                     f"mean active {entry['mean_active']:.0f}", **entry)
    return results


# -- 2, without the driver: the same cost model in virtual time ---------------------------------------------------------

def model_efficiency(n: int, size: int, design: str, concurrency: int, batch: int | None = None, seed: int = 0) -> dict:
    """Efficiency a driver with no overhead at all would reach: rows whose next call is sent the instant the
    previous one ends, against gpu_server's cost model, in virtual time (no HTTP, no sleeping).

    ``design`` "streaming": at most ``concurrency`` rows in flight, each row's calls back to back.
    "lockstep": ``batch`` prompts at a time, stage by stage (all drafts, all critiques, all revisions),
    at most ``concurrency`` requests in flight.  Output lengths are drawn from the demo's as the server
    draws them; uncached prompt tokens per call as the server's prefix cache charges them (the prompt's
    words and the turns added since the row's previous call).
    """
    import heapq
    import random

    from bench.gpu_server import A_STEP_S, B_PER_SEQ_S, C_PER_PROMPT_TOKEN_S, LENGTHS, STEPS, full_batch_rate

    lengths = json.loads(LENGTHS.read_text(encoding="utf-8"))["lengths"]
    rng = random.Random(seed)
    rows = [[rng.choice(lengths[step]) for step in STEPS] for _ in range(n)]
    prompt_words, request_words = 25, 35  # a demo prompt with its id suffix; a critique or revision request

    def uncached(row: int, stage: int) -> int:
        if stage == 0:
            return prompt_words + 8
        return (prompt_words if stage == 1 else 0) + rows[row][stage - 1] + request_words + 8

    a, b, c = A_STEP_S, B_PER_SEQ_S, C_PER_PROMPT_TOKEN_S
    waiting: list[tuple[int, int]] = []  # FCFS queue of (row, stage); a list used as a queue via an index
    head = 0
    active: list[tuple[int, int, int, int]] = []  # heap of (last step, order, row, stage)
    order = itertools.count()
    clock = step = 0
    tokens = prefill_tokens = 0
    active_x_s = 0.0

    if design == "streaming":
        next_row = min(concurrency, n)
        waiting.extend((r, 0) for r in range(next_row))

        def finished(row: int, stage: int) -> None:
            nonlocal next_row
            if stage < 2:
                waiting.append((row, stage + 1))
            elif next_row < n:
                waiting.append((next_row, 0))
                next_row += 1
    else:
        batches = [list(range(i, min(i + batch, n))) for i in range(0, n, batch)]
        state = {"batch": 0, "stage": 0, "sent": 0, "done": 0}

        def send() -> None:
            members = batches[state["batch"]]
            while state["sent"] < len(members) and state["sent"] - state["done"] < concurrency:
                waiting.append((members[state["sent"]], state["stage"]))
                state["sent"] += 1

        def finished(row: int, stage: int) -> None:
            state["done"] += 1
            members = batches[state["batch"]]
            if state["done"] == len(members):
                state.update(stage=state["stage"] + 1, sent=0, done=0)
                if state["stage"] == 3:
                    state.update(batch=state["batch"] + 1, stage=0)
                    if state["batch"] == len(batches):
                        return
            send()
        send()

    while head < len(waiting) or active:
        prefill = 0
        while head < len(waiting) and len(active) < size:
            row, stage = waiting[head]
            head += 1
            prefill += uncached(row, stage)
            heapq.heappush(active, (step + max(rows[row][stage], 1) - 1, next(order), row, stage))
        cost = a + b * len(active) + c * prefill
        clock += cost
        active_x_s += len(active) * cost
        prefill_tokens += prefill
        while active and active[0][0] <= step:
            _, _, row, stage = heapq.heappop(active)
            tokens += rows[row][stage]
            finished(row, stage)
        step += 1
    ideal = tokens / full_batch_rate(a, b, size) + c * prefill_tokens
    return {"efficiency": ideal / clock, "seconds": clock, "ideal_s": ideal, "mean_active": active_x_s / clock,
            "output_tokens": tokens, "tokens_per_s": tokens / clock}


def model_part(settings: dict) -> dict:
    """``model_efficiency`` for each design and setting: what the design allows, the driver aside."""
    n = settings["prompts"]
    table = {}
    for size in settings["sizes"]:
        cases = {"lockstep b64 c32": ("lockstep", 32, 64), "lockstep b256 c256": ("lockstep", 256, 256)}
        for rows_in_flight in sorted({256, 512, size, 2 * size, 4 * size, n}):
            cases[f"streaming c{rows_in_flight}"] = ("streaming", rows_in_flight, None)
        for name, (design, concurrency, batch) in cases.items():
            result = model_efficiency(n, size, design, concurrency, batch)
            table[f"S={size} {name}"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
            log(f"   model S={size} {name}: efficiency {result['efficiency']:.3f}, mean active "
                f"{result['mean_active']:.0f}")
    return {"gpu_sim_model": measure(
        None, None, "x: efficiency with a zero-overhead driver, same cost model, virtual time (see by_setting)",
        prompts=n, by_setting=table)}


# -- 3: the driver's ceiling ------------------------------------------------------------------------------------------

#: where a thread waits (the main thread for results, the event loop for the network): not work
WAITS = ("<method 'acquire' of '_thread.lock' objects>", "<method 'poll' of 'select.epoll' objects>",
         "<method 'select' of 'select.epoll' objects>", "<built-in method time.sleep>")


def waiting_s(stats: pstats.Stats) -> float:
    return sum(tt for (_, _, name), (_, _, tt, _, _) in stats.stats.items() if name in WAITS)


def top_profile(stats: pstats.Stats, n: int = 15) -> list[dict]:
    """The ``n`` functions with the most own time (waits left out), with their cumulative time."""
    rows = []
    total = stats.total_tt - waiting_s(stats)
    for (file, line, name), (cc, nc, tt, ct, _) in stats.stats.items():
        if name in WAITS:
            continue
        rows.append({"function": f"{_short(file)}:{line}({name})", "calls": nc, "tottime_s": round(tt, 3),
                     "cumtime_s": round(ct, 3), "share_of_total": round(tt / total, 3) if total else None})
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    return rows[:n]


def top_cumulative(stats: pstats.Stats, n: int = 25) -> list[dict]:
    rows = []
    for (file, line, name), (cc, nc, tt, ct, _) in stats.stats.items():
        rows.append({"function": f"{_short(file)}:{line}({name})", "calls": nc, "cumtime_s": round(ct, 3),
                     "tottime_s": round(tt, 3)})
    rows.sort(key=lambda r: r["cumtime_s"], reverse=True)
    return rows[:n]


def by_package(stats: pstats.Stats) -> dict:
    """Own time summed by where the code lives (ours, the openai client, httpx/httpcore, asyncio, ...)."""
    groups: dict[str, float] = {}
    for (file, _, name), (_, _, tt, _, _) in stats.stats.items():
        if name in WAITS:
            continue
        groups[_package(file)] = groups.get(_package(file), 0.0) + tt
    total = sum(groups.values()) or 1.0
    return {k: {"tottime_s": round(v, 3), "share": round(v / total, 3)}
            for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}


def _short(file: str) -> str:
    for marker in ("site-packages/", "lib/python3", str(REPO) + "/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def _package(file: str) -> str:
    if file.startswith("~") or file.startswith("<"):
        return "builtins"
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1].split("/", 1)[0]
    if file.startswith(str(REPO)):
        return "cai: " + file[len(str(REPO)) + 1:].split("/", 1)[0]
    if "/lib/python3" in file:
        rest = file.split("/lib/python3", 1)[1].split("/", 2)
        return "stdlib: " + (rest[1].removesuffix(".py") if len(rest) > 1 else "?")
    return "other"


class ZeroBackend:
    """Answers every call at once with a fixed 6-word reply (tests/standins.py style): the driver alone."""

    @staticmethod
    def make():
        from core.backends.base import Backend, Completion, LabelLogprobs

        def reply():
            return Completion(text="Sure, here is a short reply.", finish_reason="stop", prompt_tokens=10,
                              completion_tokens=6)

        class _Zero(Backend):
            name = "zero"

            def chat(self, conversations, sampling, seeds=None):
                return [reply() for _ in conversations]

            async def achat(self, conversation, sampling, seed=None, session=None):  # the streaming contract
                return reply()

            def label_logprobs(self, conversations, labels):
                return [LabelLogprobs({label: -1.0 for label in labels}, floor=-5.0) for _ in conversations]

        return _Zero("zero")


def in_process_calls_per_s(prompts: Path, out: Path, flags: list[str], profile: bool) -> dict:
    """generation.run.generate with ZeroBackend: calls/s of the driver without HTTP."""
    from core.config import parse_config
    from generation.config import GenerateConfig
    from generation.run import generate

    argv = ["--prompts", str(prompts), "--out", str(out), "--backend", "openai", "--base-url", "http://unused/v1",
            "--model", "sim-7b", "--rounds", "1", "--examples", "0", "--overwrite", *flags]
    config = parse_config(GenerateConfig, argv, "cai generate")
    backend = ZeroBackend.make()
    profiles = ThreadProfiles() if profile else contextlib.nullcontext()
    started = time.perf_counter()
    with profiles:
        generate(config, backend=backend)
    elapsed = time.perf_counter() - started
    rows = sum(1 for line in out.read_text(encoding="utf-8").splitlines() if line.strip())
    result = {"rows": rows, "calls": 3 * rows, "seconds": elapsed, "calls_per_s": 3 * rows / elapsed}
    if profile:
        stats = profiles.stats()
        result.update(profile_waiting_s=round(waiting_s(stats), 3), profile_top=top_profile(stats),
                      profile_cumulative=top_cumulative(stats),
                      profile_by_package=by_package(stats), profile_total_s=round(stats.total_tt, 3))
    return result


async def _load(url: str, seconds: float, workers: int) -> int:
    import aiohttp

    body = json.dumps({"model": "x", "messages": [{"role": "user", "content": "hello there " * 20}],
                       "max_tokens": 64, "seed": 1}).encode()
    done = 0
    stop = time.monotonic() + seconds

    async def worker(session):
        nonlocal done
        while time.monotonic() < stop:
            async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
                await r.read()
                done += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=workers)) as session:
        await asyncio.gather(*(worker(session) for _ in range(workers)))
    return done


def load_test(url: str, seconds: float, workers: int = 64) -> float:
    """Requests/s a zero-latency server answers to an aiohttp load generator (in a child process)."""
    code = ("import asyncio, sys, json; from bench.gpu_sim import _load; "
            f"n = asyncio.run(_load({url!r}, {seconds}, {workers})); print(json.dumps(n))")
    done = subprocess.run([PYTHON, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]) / seconds


def standin_server_rate(seconds: float) -> float:
    """tests/reliability/servers.py's StandinServer, in its own process, under the same load."""
    port = free_port()
    process = subprocess.Popen([PYTHON, "tests/reliability/servers.py", "standin", "--port", str(port)], cwd=REPO,
                               env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process, "StandinServer")
        return load_test(url + "/v1/chat/completions", seconds)
    finally:
        process.terminate()
        process.wait(10)


def chain_bodies(prompts: Path, out: Path, reply: str = "Sure, here is a short reply.") -> int:
    """The chat requests `cai generate` sends for ``prompts`` (one round) when every reply is ``reply``."""
    from constitution.loader import load_constitution
    from core.backends.base import Sampling
    from generation.critique_revise import ChainSettings, CritiqueReviseTask
    from generation.prompt_files import iter_prompts

    task = CritiqueReviseTask(load_constitution(REPO / "principles.yaml"),
                              ChainSettings("sim-7b", Sampling(256, 0.7, 0.9), 0, 1))
    count = 0
    with out.open("w", encoding="utf-8") as f:
        for prompt in iter_prompts(prompts):
            principle = task.principles_for(prompt)[0]
            draft = task.draft_head + prompt.messages
            critique = task.head + task.few_shot + prompt.messages + [
                {"role": "assistant", "content": reply}, {"role": "user", "content": principle.critique_request}]
            revision = critique + [{"role": "assistant", "content": reply},
                                   {"role": "user", "content": principle.revision_request}]
            for messages in (draft, critique, revision):
                f.write(json.dumps({"model": "sim-7b", "messages": messages, "max_tokens": 256, "temperature": 0.7,
                                    "top_p": 0.9, "seed": count}) + "\n")
                count += 1
    return count


#: ways to send the same chat requests: the backend's own (``OpenAIBackend._call``: aiohttp, retries, semaphore),
#: the openai SDK's (``create``, and ``post`` with a plain dict body, on httpx and on aiohttp), and bare aiohttp
CLIENTS = ("cai_backend", "openai_create_httpx", "openai_create_aiohttp", "openai_post_httpx", "openai_post_aiohttp",
           "aiohttp_raw")


async def _client_rate(bodies_file: str, base_url: str, how: str, concurrency: int) -> dict:
    bodies = [json.loads(line) for line in Path(bodies_file).read_text(encoding="utf-8").splitlines()]
    semaphore = asyncio.Semaphore(concurrency)
    if how == "aiohttp_raw":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))

        async def one(body):
            async with semaphore:
                async with session.post(base_url + "/chat/completions", json=body) as r:
                    return json.loads(await r.read())["choices"][0]["message"]["content"]
        close = session.close
    elif how == "cai_backend":
        from core.backends.openai_backend import OpenAIBackend

        backend = OpenAIBackend("sim-7b", base_url=base_url, concurrency=concurrency)

        async def one(body):
            result = await backend._call(body, session=str(body["seed"]))
            return result["choices"][0]["message"]["content"]

        async def close():
            await backend._session_on_loop[0].close()
    else:
        import openai
        from openai.types.chat import ChatCompletion

        http_client = openai.DefaultAioHttpClient() if how.endswith("aiohttp") else None
        client = openai.AsyncOpenAI(base_url=base_url, api_key="sim", max_retries=0, http_client=http_client)
        if how.startswith("openai_create"):
            async def one(body):
                async with semaphore:
                    return (await client.chat.completions.create(**body)).choices[0].message.content
        else:  # the same request without the SDK's parameter transform (a plain dict body)
            async def one(body):
                async with semaphore:
                    result = await client.post("/chat/completions", cast_to=ChatCompletion, body=body)
                    return result.choices[0].message.content
        close = client.close
    started = time.perf_counter()
    replies = await asyncio.gather(*(one(b) for b in bodies))
    elapsed = time.perf_counter() - started
    await close()
    assert all(replies), "a request got no reply"
    return {"calls": len(bodies), "seconds": elapsed, "calls_per_s": len(bodies) / elapsed}


def client_rates(bodies_file: Path, base_url: str, concurrency: int = 256) -> dict:
    """Calls/s of each way in ``CLIENTS``, each in a fresh process, same requests, same server."""
    rates = {}
    for how in CLIENTS:
        code = ("import asyncio, json; from bench.gpu_sim import _client_rate; "
                f"print(json.dumps(asyncio.run(_client_rate({str(bodies_file)!r}, {base_url!r}, {how!r}, "
                f"{concurrency}))))")
        done = subprocess.run([PYTHON, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True)
        if done.returncode != 0:
            rates[how] = {"error": done.stderr[-1500:]}
            continue
        rates[how] = json.loads(done.stdout.strip().splitlines()[-1])
        log(f"   {how}: {rates[how]['calls_per_s']:,.0f} calls/s")
    return rates


def driver_part(settings: dict, tmp: Path) -> dict:
    design = cli_design()
    n = settings["driver_prompts"]
    prompts = synthesize_prompts(n, tmp / "driver-prompts.jsonl")
    flags = ["--batch-size", "256", "--concurrency", "256"] if design == "lockstep" else []
    results: dict = {}

    log("-- server capacity: zero-latency gpu_server vs StandinServer under a load generator")
    with gpu_server("--zero-latency") as url:
        sim_rate = load_test(url + "/v1/chat/completions", settings["load_seconds"])
    standin_rate = standin_server_rate(settings["load_seconds"])
    log(f"   gpu_server --zero-latency {sim_rate:,.0f} req/s, StandinServer {standin_rate:,.0f} req/s")
    results["zero_latency_server_requests_per_s"] = measure(
        sim_rate, None, "requests/s (gpu_server --zero-latency under a 64-connection aiohttp load generator)",
        standin_server_requests_per_s=standin_rate, spread=[sim_rate] * 2, runs=[sim_rate])

    log(f"-- driver over HTTP: cai generate ({design}, {' '.join(flags) or 'defaults'}) vs zero-latency server, {n} prompts")
    runs, served = [], []
    for _ in range(settings.get("driver_repeats", 3)):
        with gpu_server("--zero-latency") as url:
            run = run_generate(url, prompts, tmp / "driver-http.jsonl", flags)
            stats = _get(url + "/stats")
        served.append(stats["requests"] / stats["window_s"])
        runs.append(run)
    with gpu_server("--zero-latency") as url:  # cProfile slows it ~3x: a fifth of the prompts
        profile_file = tmp / "driver-http.prof"
        profiled = run_generate(url, prompts, tmp / "driver-http-prof.jsonl", flags + ["--limit", str(n // 5)],
                                profile=profile_file)
    stats = pstats.Stats(str(profile_file), stream=io.StringIO())
    calls = 3 * runs[0]["rows"]
    wall_rates = sorted(calls / r["wall_s"] for r in runs)
    served_rates = sorted(served)
    log(f"   {served_rates[len(served_rates) // 2]:,.0f} calls/s while serving, "
        f"{wall_rates[len(wall_rates) // 2]:,.0f} calls/s over the process's wall time")
    results["driver_calls_per_s_http"] = measure(
        served_rates[len(served_rates) // 2], ">= 1500",
        "calls/s (one cai generate process, openai backend, zero-latency server; first request to last reply)",
        spread=[served_rates[0], served_rates[-1]], runs=served_rates, design=design, flags=flags, prompts=n,
        calls=calls, process_wall_calls_per_s=wall_rates, process_wall_s=[r["wall_s"] for r in runs],
        profiled_prompts=n // 5, profiled_wall_s=profiled["wall_s"], profile_total_s=round(stats.total_tt, 3),
        profile_waiting_s=round(waiting_s(stats), 3), profile_top=top_profile(stats),
        profile_cumulative=top_cumulative(stats), profile_by_package=by_package(stats))

    log("-- the client alone: the chain's requests sent by several clients, 256 in flight, one process each")
    bodies = tmp / "bodies.jsonl"
    chain_bodies(prompts, bodies)
    with gpu_server("--zero-latency") as url:
        rates = client_rates(bodies, url + "/v1")
    best = max((r.get("calls_per_s", 0), how) for how, r in rates.items())
    results["client_calls_per_s"] = measure(
        rates.get("cai_backend", {}).get("calls_per_s"), ">= 1500",
        "calls/s (the chain's requests through the openai backend's own request path, OpenAIBackend._call; "
        "no driver)", by_client=rates, best_client=best[1], note=f"best: {best[1]} {best[0]:,.0f} calls/s")

    log("-- driver in process: generate() with ZeroBackend (no HTTP)")
    inproc = [in_process_calls_per_s(prompts, tmp / "driver-inproc.jsonl", flags, profile=False) for _ in range(3)]
    profiled_in = in_process_calls_per_s(prompts, tmp / "driver-inproc-prof.jsonl", flags, profile=True)
    rates = sorted(r["calls_per_s"] for r in inproc)
    log(f"   {rates[1]:,.0f} calls/s in process")
    results["driver_calls_per_s_in_process"] = measure(
        rates[1], ">= 1500", "calls/s (generation.run.generate with a zero-latency in-process backend)",
        spread=[rates[0], rates[-1]], runs=rates, design=design, flags=flags, prompts=n,
        **{k: v for k, v in profiled_in.items() if k.startswith("profile")})
    return results


def save_lengths(rows_file: Path, out: Path) -> dict:
    """The per-step ``completion_tokens`` of a real `cai generate` output, for gpu_server's length draws."""
    from bench.gpu_server import STEPS

    lengths: dict[str, list[int]] = {step: [] for step in STEPS}
    prompts: dict[str, list[int]] = {step: [] for step in STEPS}
    max_tokens = None
    for line in Path(rows_file).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        max_tokens = (row.get("sampling") or {}).get("max_tokens", max_tokens)
        for call in row.get("calls") or []:
            step = call["step"].split()[0]
            if step in lengths:
                lengths[step].append(int(call["completion_tokens"]))
                prompts[step].append(int(call["prompt_tokens"]))
    data = {"source": "completion_tokens of every call of `cai generate --prompts prompts/demo.jsonl` "
                      "(default model SmolLM2-135M-Instruct, defaults: one round, temperature 0.7, top-p 0.9)",
            "max_tokens": max_tokens, "rows": sum(1 for line in Path(rows_file).read_text().splitlines() if line.strip()),
            "mean": {k: round(sum(v) / len(v), 1) for k, v in lengths.items() if v},
            "prompt_tokens_mean": {k: round(sum(v) / len(v), 1) for k, v in prompts.items() if v}, "lengths": lengths}
    write_json(out, data)
    return data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--out", default=None)
    parser.add_argument("--lengths-from", default=None,
                        help="write bench/data/demo_lengths.json from this `cai generate` output, then stop")
    parser.add_argument("--part", choices=["all", "model", "sim", "driver"], default="all")
    parser.add_argument("--prompts", type=int, default=None, help="override the mode's number of prompts (sim)")
    parser.add_argument("--sizes", default=None, help="override the mode's server sizes, e.g. 256,1024")
    parser.add_argument("--settings", default=None, help=f"comma-separated subset of {', '.join(SETTINGS)}")
    args = parser.parse_args(argv)
    if args.lengths_from:
        from bench.gpu_server import LENGTHS

        data = save_lengths(Path(args.lengths_from), LENGTHS)
        print(f"wrote {LENGTHS}: means {data['mean']}")
        return 0
    if not args.out:
        parser.error("--out is required")
    settings = dict(SIM_MODES[args.mode])
    if args.prompts:
        settings["prompts"] = args.prompts
    if args.sizes:
        settings["sizes"] = [int(s) for s in args.sizes.split(",")]
    if args.settings:
        keep = set(args.settings.split(","))
        for name in list(SETTINGS):
            if name not in keep:
                del SETTINGS[name]
    results: dict = {}
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cai-gpu-sim-") as tmp:
        for part, function in (("model", lambda s, t: model_part(s)), ("sim", sim_part), ("driver", driver_part)):
            if args.part not in ("all", part):
                continue
            try:
                results.update(function(settings, Path(tmp)))
            except Exception as exc:  # noqa: BLE001 - one part failing must not lose the other's figures
                log(f"error in {part}: {exc}")
                errors.append(f"gpu_sim {part}: {exc}")
            _write(args.out, results, errors, settings, parts_done=part)  # each part's figures as soon as it ends
    return 1 if errors else 0


def _write(out: str, results: dict, errors: list[str], settings: dict, parts_done: str) -> None:
    results["_gpu_sim"] = {"mode_settings": settings, "design": cli_design(), "last_part": parts_done,
                           "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "load_average": os.getloadavg()}
    if errors:
        results["_errors"] = list(errors)
    write_json(out, results)


if __name__ == "__main__":
    sys.exit(main())
