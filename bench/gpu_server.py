"""An OpenAI-compatible stand-in for one GPU running a 7B model: continuous batching, simulated in time.

    python -m bench.gpu_server --port 8200 --max-active 256
    python -m bench.gpu_server --port 8200 --zero-latency        # answers at once (driver ceiling)

Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``POST /reset_prefix_cache``
(empties the simulated prefix cache), ``GET /stats`` (the counters below, for the benchmark).

The cost model (one scheduler coroutine, like vLLM's engine loop)
------------------------------------------------------------------
- Each decode step costs ``a + b * active`` seconds; at most ``S`` (``--max-active``) sequences
  are active.  Waiting requests are admitted first come, first served at the start of a step
  whenever a slot is free; a request admitted in step k emits one token in each of steps
  k .. k + n - 1 and is answered at the end of step k + n - 1 (n = its output length).
- Prefill: ``c`` seconds per *uncached* prompt token, added to the step that admits the request
  (no chunking, no token budget).
- Prefix cache: per conversation prefix, at message granularity.  Every message prefix of an
  admitted conversation is cached, and, when it is answered, the conversation plus its reply;
  a request's cached tokens are those of its longest cached message prefix.  So the shared
  system prompt and few-shot exemplars are read once, and a row's critique and revision read
  only what is new since its previous call, as vLLM's block cache does.  No eviction (an H100
  holds a 7B model's KV for hundreds of thousands of tokens).
- Tokens are whitespace-separated words, plus 4 per message for the chat template; a reply
  of n tokens is n words, so ``usage`` is exact under this count.
- Output lengths: the demo's real lengths by call step (``bench/data/demo_lengths.json``: the
  ``completion_tokens`` of every draft, critique and revision of ``cai generate`` on
  ``prompts/demo.jsonl``), one drawn per request from a hash of its messages and seed (reruns
  draw the same), capped at ``max_tokens`` with ``finish_reason: "length"``.  The step is
  read from the last user turn: one of the constitution's critique requests -> critique, one
  of its revision requests (or a turn starting with one) -> revision, anything else -> draft.
- Time runs at ``--time-scale`` x real time (1 = real time; the benchmark uses 1).

The figures (one H100 SXM, a 7B model; NVIDIA TensorRT-LLM's published H100 FP8 tables,
``docs/source/performance.md`` of NVIDIA/TensorRT-LLM, data of v0.5/v0.6.1):
- a = 7 ms: LLaMA 7B first-token latency at batch 1 with a 128-token input is 7 ms, one
  forward pass over few tokens (vLLM's own dashboard agrees: Llama-3.1-8B, batch 8, 32 in and
  128 out, 833 ms end to end on an H200, 6.5 ms a step).
- c = 15 us per prompt token: first-token latency 36 ms at 2,048 input tokens vs 7 ms at 128,
  (36 - 7) ms / 1,920 tokens = 15.1 us.
- b = 47 us per active sequence: LLaMA 7B peak throughput 19,694 output tokens/s at batch 768
  with 128 in / 128 out (a batch takes 768 * 128 / 19,694 = 4.99 s, of which 1.48 s prefill at c,
  so 27.4 ms a decode step: 26.6 us a sequence at a mean context of ~190 tokens), and 6,818
  tokens/s at batch 112 with 128 in / 2,048 out (16.3 ms a step: 83 us a sequence at a mean
  context of ~1,150 tokens).  Linear in context, 15.3 us + 0.059 us per context token.  The
  demo's calls (bench/data/demo_lengths.json's run) decode at a mean context of ~530 tokens
  (weighted by output tokens: drafts ~160, critiques ~765, revisions ~920), so b = 47 us.
So S = 256 gives 256 / (7 ms + 12.0 ms) = 13,450 output tokens/s and S = 1,024 gives
1,024 / 55.1 ms = 18,570 tokens/s: FP8 TensorRT-LLM, the fast end of one H100 (vLLM in bf16
is slower), which is the hard case for a driver that must keep the GPU fed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import heapq
import itertools
import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LENGTHS = REPO / "bench" / "data" / "demo_lengths.json"

A_STEP_S = 0.007
B_PER_SEQ_S = 0.000047
C_PER_PROMPT_TOKEN_S = 0.000015
TEMPLATE_TOKENS = 4  # per message
STEPS = ("draft", "critique", "revision")

_VOCAB = ("the answer takes care to stay helpful and honest while it explains each part of the request "
          "in plain words with a short reason for every choice it makes").split()


def full_batch_rate(a: float, b: float, s: int) -> float:
    """Output tokens/s with every one of ``s`` slots busy."""
    return s / (a + b * s)


def message_tokens(message: dict) -> int:
    return len(str(message.get("content") or "").split()) + TEMPLATE_TOKENS


def reply_text(n: int, key: int) -> str:
    start = key % len(_VOCAB)
    return " ".join(itertools.islice(itertools.cycle(_VOCAB), start, start + n))


def load_step_texts(constitution: str | Path) -> tuple[set[str], tuple[str, ...]]:
    """(critique requests, revision requests) of a constitution file, whitespace-normalised."""
    import yaml

    data = yaml.safe_load(Path(constitution).read_text(encoding="utf-8")) or {}
    norm = lambda text: " ".join(str(text).split())  # noqa: E731
    critiques, revisions = set(), set()
    for item in list(data.get("principles") or []) + list(data.get("few_shot") or []):
        if item.get("critique_request"):
            critiques.add(norm(item["critique_request"]))
        if item.get("revision_request"):
            revisions.add(norm(item["revision_request"]))
    return critiques, tuple(sorted(revisions))


@dataclass
class _Request:
    tokens_out: int
    uncached: int
    future: asyncio.Future
    prefixes: list[int] = field(default_factory=list)  # hashes to cache when answered (with the reply)


class GPUSimulator:
    """The scheduler loop and its counters (see module docstring)."""

    def __init__(self, max_active: int, a: float = A_STEP_S, b: float = B_PER_SEQ_S, c: float = C_PER_PROMPT_TOKEN_S,
                 time_scale: float = 1.0, prefix_cache: bool = True):
        self.max_active, self.a, self.b, self.c = max_active, a, b, c
        self.time_scale, self.prefix_cache = time_scale, prefix_cache
        self.waiting: deque[_Request] = deque()
        self.active: list[tuple[int, int, _Request]] = []  # heap of (last step, seq, request)
        self.cache: set[int] = set()
        self.wake = asyncio.Event()
        self.step = 0
        self.seq = itertools.count()
        self.stats = {
            "requests": 0, "output_tokens": 0, "prompt_tokens": 0, "prefill_tokens": 0, "prefill_s": 0.0,
            "steps": 0, "busy_s": 0.0, "active_x_s": 0.0, "first_arrival": None, "last_reply": None,
            "max_lag_s": 0.0, "by_step": {s: {"requests": 0, "output_tokens": 0} for s in STEPS},
        }

    def submit(self, prompt_hashes: list[int], prompt_tokens: list[int], tokens_out: int, step: str) -> asyncio.Future:
        """Queue one request; its future is set when its last token is out."""
        cached = 0
        if self.prefix_cache:
            for i in range(len(prompt_hashes) - 1, -1, -1):
                if prompt_hashes[i] in self.cache:
                    cached = sum(prompt_tokens[: i + 1])
                    break
            self.cache.update(prompt_hashes)
        total = sum(prompt_tokens)
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(_Request(tokens_out, total - cached, future))
        stats = self.stats
        stats["requests"] += 1
        stats["prompt_tokens"] += total
        stats["output_tokens"] += tokens_out
        stats["by_step"][step]["requests"] += 1
        stats["by_step"][step]["output_tokens"] += tokens_out
        if stats["first_arrival"] is None:
            stats["first_arrival"] = time.monotonic()
        self.wake.set()
        return future

    def reset_prefix_cache(self) -> None:
        self.cache.clear()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        base = loop.time()  # wall time of simulated time 0 of the current busy period
        simulated = 0.0
        stats = self.stats
        while True:
            if not self.active and not self.waiting:
                self.wake.clear()
                await self.wake.wait()
                base, simulated = loop.time(), 0.0
            prefill = 0
            while self.waiting and len(self.active) < self.max_active:
                request = self.waiting.popleft()
                prefill += request.uncached
                heapq.heappush(self.active, (self.step + max(request.tokens_out, 1) - 1, next(self.seq), request))
            active = len(self.active)
            cost = self.a + self.b * active + self.c * prefill
            simulated += cost
            stats["steps"] += 1
            stats["busy_s"] += cost
            stats["active_x_s"] += active * cost
            stats["prefill_tokens"] += prefill
            stats["prefill_s"] += self.c * prefill
            delay = base + simulated * self.time_scale - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                stats["max_lag_s"] = max(stats["max_lag_s"], -delay)
                await asyncio.sleep(0)  # let arrivals in even when behind
            while self.active and self.active[0][0] <= self.step:
                _, _, request = heapq.heappop(self.active)
                if not request.future.done():
                    request.future.set_result(None)
            self.step += 1
            if not self.active and not self.waiting:
                stats["last_reply"] = time.monotonic()

    def summary(self) -> dict:
        """Counters, the ideal time for the work served, and efficiency over the served window."""
        stats = dict(self.stats)
        rate = full_batch_rate(self.a, self.b, self.max_active)
        ideal = stats["output_tokens"] / rate + stats["prefill_s"]
        window = None
        if stats["first_arrival"] is not None and stats["last_reply"] is not None:
            window = (stats["last_reply"] - stats["first_arrival"]) / self.time_scale
        stats.update({
            "a": self.a, "b": self.b, "c": self.c, "max_active": self.max_active, "time_scale": self.time_scale,
            "full_batch_tokens_per_s": rate, "ideal_s": ideal, "window_s": window,
            "efficiency": ideal / window if window else None,
            "mean_active": stats["active_x_s"] / window if window else None,
            "mean_active_while_busy": stats["active_x_s"] / stats["busy_s"] if stats["busy_s"] else None,
        })
        return stats


class SimServer:
    """The HTTP side: parse a chat request, classify it, draw its length, wait for the simulator."""

    def __init__(self, max_active: int = 256, zero_latency: bool = False, lengths: Path = LENGTHS,
                 constitution: str | Path = REPO / "principles.yaml", model: str = "sim-7b", **sim_options):
        self.model, self.zero_latency = model, zero_latency
        self.sim = None if zero_latency else GPUSimulator(max_active, **sim_options)
        self.served = {"requests": 0, "first_arrival": None, "last_reply": None}  # zero-latency mode's counters
        if not zero_latency:
            self.lengths = json.loads(Path(lengths).read_text(encoding="utf-8"))["lengths"]
            self.critiques, self.revisions = load_step_texts(constitution)

    def step_of(self, messages: list[dict]) -> str:
        last_user = next((" ".join(str(m.get("content") or "").split()) for m in reversed(messages)
                          if m.get("role") == "user"), "")
        if last_user in self.critiques:
            return "critique"
        if last_user.startswith(self.revisions):
            return "revision"
        return "draft"

    async def chat(self, request: dict) -> dict:
        messages = request.get("messages") or []
        limit = int(request.get("max_tokens") or request.get("max_completion_tokens") or 256)
        key = int(hashlib.blake2b(json.dumps([messages, request.get("seed")], sort_keys=True).encode(),
                                  digest_size=8).hexdigest(), 16)
        prompt_tokens = [message_tokens(m) for m in messages]
        if self.zero_latency:
            n, finish = min(6, limit), "stop" if limit >= 6 else "length"
            served = self.served
            served["requests"] += 1
            served["last_reply"] = time.monotonic()
            if served["first_arrival"] is None:
                served["first_arrival"] = served["last_reply"]
        else:
            step = self.step_of(messages)
            choices = self.lengths[step]
            n = int(choices[key % len(choices)])
            finish = "stop"
            if n >= limit:
                n, finish = limit, "length"
            prefixes, h = [], 0
            for m in messages:
                h = hash((h, m.get("role"), str(m.get("content") or "")))
                prefixes.append(h)
            await self.sim.submit(prefixes, prompt_tokens, n, step)
        text = reply_text(n, key)
        if self.sim is not None and self.sim.prefix_cache:
            self.sim.cache.add(hash((prefixes[-1] if messages else 0, "assistant", text)))
        total = sum(prompt_tokens)
        return {
            "id": f"chatcmpl-{key:016x}", "object": "chat.completion", "created": int(time.time()),
            "model": request.get("model") or self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                         "logprobs": None}],
            "usage": {"prompt_tokens": total, "completion_tokens": n, "total_tokens": total + n},
        }

    def app(self):
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        async def completions(request: Request):
            try:
                body = json.loads(await request.body())
            except json.JSONDecodeError as exc:
                return JSONResponse({"error": {"message": f"bad JSON: {exc}"}}, status_code=400)
            return Response(json.dumps(await self.chat(body)), media_type="application/json")

        async def models(request: Request):
            return JSONResponse({"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "sim"}]})

        async def reset(request: Request):
            if self.sim is not None:
                self.sim.reset_prefix_cache()
            return Response(status_code=200)

        async def stats(request: Request):
            if self.sim is not None:
                return JSONResponse(self.sim.summary())
            served = dict(self.served, zero_latency=True)
            if served["first_arrival"] is not None:
                served["window_s"] = served["last_reply"] - served["first_arrival"]
            return JSONResponse(served)

        @contextlib.asynccontextmanager
        async def lifespan(app):
            task = asyncio.get_running_loop().create_task(self.sim.run()) if self.sim is not None else None
            yield
            if task is not None:
                task.cancel()

        return Starlette(routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/reset_prefix_cache", reset, methods=["POST"]),
            Route("/stats", stats, methods=["GET"]),
        ], lifespan=lifespan)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--max-active", type=int, default=256, help="S: sequences decoded at once")
    parser.add_argument("--zero-latency", action="store_true", help="answer at once with a fixed 6-word reply")
    parser.add_argument("--a", type=float, default=A_STEP_S, help="seconds per decode step, fixed part")
    parser.add_argument("--b", type=float, default=B_PER_SEQ_S, help="seconds per decode step per active sequence")
    parser.add_argument("--c", type=float, default=C_PER_PROMPT_TOKEN_S, help="seconds per uncached prompt token")
    parser.add_argument("--time-scale", type=float, default=1.0, help="wall seconds per simulated second")
    parser.add_argument("--no-prefix-cache", action="store_true")
    parser.add_argument("--lengths", default=str(LENGTHS))
    parser.add_argument("--constitution", default=str(REPO / "principles.yaml"))
    args = parser.parse_args(argv)
    import uvicorn

    server = SimServer(args.max_active, args.zero_latency, args.lengths, args.constitution, a=args.a, b=args.b,
                       c=args.c, time_scale=args.time_scale, prefix_cache=not args.no_prefix_cache)
    print(f"gpu_server on http://{args.host}:{args.port}/v1 "
          f"({'zero latency' if args.zero_latency else f'S={args.max_active}'})", flush=True)
    uvicorn.run(server.app(), host=args.host, port=args.port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools", backlog=4096)


if __name__ == "__main__":
    main()
