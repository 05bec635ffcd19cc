"""A fast OpenAI-compatible stand-in server and a fault-injecting proxy, both on 127.0.0.1.

The stand-in answers ``POST /v1/chat/completions`` deterministically from the
request (messages, seed, sampling), so a greedy run against it is reproducible
byte for byte; it is for the engine's bookkeeping (resume, retries, kills), not
for anything a model would decide.  Behaviours a test can trigger:

- a reply longer than ``max_tokens`` words is cut to ``max_tokens`` words with
  ``finish_reason: "length"`` (so a small ``--max-tokens`` cuts every reply);
- a last message containing ``[[empty]]`` gets an empty reply;
- a conversation longer than ``context_chars`` characters gets vLLM's 400
  context-length error (not retryable);
- ``api_key`` set: a request without ``Bearer <api_key>`` gets a 401 whose
  message echoes the key it was sent (as some real servers do);
- ``hold_after`` set: requests after that many are held, unanswered, until
  ``release()`` (a run caught in the middle of a batch, for certain).

``HostileServer`` answers every request with what a test scripts (any status, headers
and raw body, a body that never ends, a redirect), and records each request's
method, path and Authorization header: a server that misbehaves on purpose.

The proxy forwards to any upstream (the stand-in or a real ``vllm serve``) and,
for a configurable share of requests, answers 429 with Retry-After, 500 or 503,
hangs past the client's timeout, resets the connection, or cuts the body short.
Whether attempt ``n`` of a request (keyed by its body) faults is a hash of
(seed, request, n), so a run's faults do not depend on scheduling.  At most
``max_faults_per_request`` attempts of one request fault, so every request
succeeds within a client's retry cap when that cap is larger.

Run either from a shell (the bench scripts do this in-process instead)::

    python tests/reliability/servers.py standin --port 8100
    python tests/reliability/servers.py proxy --port 8101 --upstream http://127.0.0.1:8100 --rate 0.2
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULT_KINDS = ("429", "500", "503", "hang", "reset", "truncate")


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):  # a killed client is not news
            super().handle_error(request, client_address)


class _Base:
    """Start/stop plumbing shared by the stand-in and the proxy (context manager)."""

    handler: type

    def __init__(self, port: int = 0):
        self.stopping = threading.Event()
        self.httpd = _QuietServer(("127.0.0.1", port), self.handler)
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _send_json(handler: BaseHTTPRequestHandler, status: int, body: dict, headers: dict | None = None) -> None:
    payload = json.dumps(body).encode()
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


def standin_reply(request: dict) -> tuple[str, str, int]:
    """(text, finish_reason, completion_tokens) for a chat request: a pure function of it."""
    messages = request.get("messages") or []
    last = str(messages[-1].get("content", "")) if messages else ""
    if "[[empty]]" in last:
        return "", "stop", 0
    key = _digest(messages, request.get("seed"), request.get("temperature"), request.get("top_p"))[:12]
    words = f"[{key}] turn {len(messages)} answers: {last[:80]}".split(" ")
    limit = int(request.get("max_tokens") or 16)
    if len(words) > limit:
        return " ".join(words[:limit]), "length", limit
    return " ".join(words), "stop", len(words)


class _StandinHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses connections

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        owner: StandinServer = self.server.owner
        with owner.lock:
            owner.auth_headers.add(self.headers.get("authorization", ""))
        if self.path.rstrip("/").endswith("/models"):
            _send_json(self, 200, {"object": "list", "data": [
                {"id": owner.model, "object": "model", "owned_by": "standin", "max_model_len": owner.context_chars}]})
        else:
            _send_json(self, 404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self):  # noqa: N802
        owner: StandinServer = self.server.owner
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        auth = self.headers.get("authorization", "")
        with owner.lock:
            owner.requests += 1
            owner.auth_headers.add(auth)
            held = owner.hold_after is not None and owner.requests > owner.hold_after
            owner.held += held
        if held:
            while not (owner.released.wait(0.05) or owner.stopping.is_set()):
                pass
        if owner.delay:
            time.sleep(owner.delay)
        if urlsplit(self.path).path.rstrip("/") != "/v1/chat/completions":  # a key in the query is allowed
            return _send_json(self, 404, {"error": {"message": f"The model or route {self.path} does not exist"}})
        if owner.api_key is not None and auth != f"Bearer {owner.api_key}":
            sent = auth.removeprefix("Bearer ")
            return _send_json(self, 401, {"error": {"message": f"Incorrect API key provided: {sent}", "code": 401}})
        try:
            request = json.loads(body)
        except json.JSONDecodeError as exc:
            return _send_json(self, 400, {"error": {"message": f"bad JSON: {exc}"}})
        if owner.keep_bodies:
            with owner.lock:
                owner.bodies.append(request)
                owner.headers.append(dict(self.headers))
        size = sum(len(str(m.get("content", ""))) for m in request.get("messages") or [])
        if size > owner.context_chars:
            # What vLLM's server says; a 400 is final (not retried).
            return _send_json(self, 400, {"object": "error", "type": "BadRequestError", "code": 400, "message": (
                f"This model's maximum context length is {owner.context_chars} tokens. However, you requested "
                f"{size} tokens in the messages. Please reduce the length of the messages.")})
        text, finish, tokens = standin_reply(request)
        logprobs = None
        if request.get("logprobs"):
            # Label log-probabilities (a judge's "A" or "B"): deterministic, from the conversation.
            share = int(_digest(request.get("messages"))[:6], 16) / 0xFFFFFF
            a, b = -0.1 - 2.0 * share, -0.1 - 2.0 * (1 - share)
            top = [{"token": "A", "logprob": a, "bytes": None}, {"token": "B", "logprob": b, "bytes": None},
                   {"token": "The", "logprob": -4.0, "bytes": None}]
            text = "A" if a >= b else "B"
            finish, tokens = "length", 1
            logprobs = {"content": [{"token": text, "logprob": max(a, b), "bytes": None, "top_logprobs": top}]}
        _send_json(self, 200, {
            "id": "chatcmpl-" + _digest(request)[:12], "object": "chat.completion", "created": 0,
            "model": request.get("model", owner.model),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                         "logprobs": logprobs}],
            "usage": {"prompt_tokens": size // 4 + 1, "completion_tokens": tokens, "total_tokens": size // 4 + 1 + tokens},
        })


class StandinServer(_Base):
    """Deterministic OpenAI-compatible chat server (see module docstring)."""

    handler = _StandinHandler

    def __init__(self, port: int = 0, model: str = "standin", delay: float = 0.0, context_chars: int = 20000,
                 api_key: str | None = None, keep_bodies: bool = False, hold_after: int | None = None):
        self.model, self.delay, self.context_chars, self.api_key = model, delay, context_chars, api_key
        self.keep_bodies = keep_bodies
        self.lock = threading.Lock()
        self.requests = 0
        self.auth_headers: set[str] = set()
        self.bodies: list[dict] = []
        self.headers: list[dict] = []  # of each kept body's request
        self.hold_after = hold_after
        self.held = 0  # requests held so far
        self.released = threading.Event()
        super().__init__(port)

    def hold(self, after: int | None) -> None:
        """Answer the next ``after`` requests, then hold every later one until ``release()`` (None: hold none)."""
        with self.lock:
            self.requests, self.held, self.hold_after = 0, 0, after
            self.released.clear()

    def release(self) -> None:
        self.released.set()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _upstream(self):
        owner: FaultProxy = self.server.owner
        local = owner.local
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection(owner.upstream.hostname, owner.upstream.port, timeout=owner.upstream_timeout)
        return local.conn

    def _forward(self, method: str, body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization", "accept")}
        for attempt in range(2):  # a stale keep-alive connection gets one fresh retry
            conn = self._upstream()
            try:
                conn.request(method, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                return response.status, response.getheaders(), data
            except (OSError, http.client.HTTPException):
                conn.close()
                self.server.owner.local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _relay(self, status, headers, data, cut: bool = False) -> None:
        self.send_response(status)
        for key, value in headers:
            if key.lower() in ("content-type", "retry-after"):
                self.send_header(key, value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if cut:
            self.wfile.write(data[: max(1, len(data) // 2)])
            self.close_connection = True
        else:
            self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self._relay(*self._forward("GET", None))

    def do_POST(self):  # noqa: N802
        owner: FaultProxy = self.server.owner
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        key = hashlib.sha256(body).hexdigest()[:16]
        arrived = time.monotonic()
        with owner.lock:
            attempt = owner.attempts.get(key, 0) + 1
            owner.attempts[key] = attempt
        kind = owner.fault_for(key, attempt)
        event = {"key": key, "attempt": attempt, "kind": kind or "ok", "arrived": arrived}
        try:
            if kind in ("429", "500", "503"):
                headers = {"retry-after": str(owner.retry_after)} if kind == "429" else {}
                _send_json(self, int(kind), {"error": {"message": f"injected {kind}"}}, headers)
            elif kind == "hang":
                owner.stopping.wait(owner.hang_seconds)
                self.close_connection = True
            elif kind == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                os.close(self.connection.detach())  # RST, not FIN
                self.close_connection = True
            elif kind == "truncate":
                self._relay(*self._forward("POST", body), cut=True)
            else:
                status, headers, data = self._forward("POST", body)
                event["status"] = status
                self._relay(status, headers, data)
        finally:
            event["done"] = time.monotonic()
            with owner.lock:
                owner.events.append(event)

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass


class FaultProxy(_Base):
    """Forwards to ``upstream`` and injects faults in a ``rate`` share of attempts (see module docstring)."""

    handler = _ProxyHandler

    def __init__(self, upstream: str, rate: float = 0.2, kinds=FAULT_KINDS, seed: int = 0, port: int = 0,
                 retry_after: float = 1, hang_seconds: float = 3.0, max_faults_per_request: int = 3,
                 upstream_timeout: float = 60.0):
        parsed = urlsplit(upstream)
        self.upstream = parsed
        self.rate, self.kinds, self.seed = rate, tuple(kinds), seed
        self.retry_after, self.hang_seconds = retry_after, hang_seconds
        self.max_faults_per_request = max_faults_per_request
        self.upstream_timeout = upstream_timeout
        self.local = threading.local()
        self.lock = threading.Lock()
        self.attempts: dict[str, int] = {}
        self.events: list[dict] = []
        self.down = False  # True: every attempt is reset (an endpoint that stays down)
        super().__init__(port)

    def fault_for(self, key: str, attempt: int) -> str | None:
        if self.down:
            return "reset"
        if attempt > self.max_faults_per_request or not self.kinds:
            return None
        digest = int(_digest(self.seed, key, attempt)[:12], 16)
        if (digest % 1_000_000) / 1_000_000 >= self.rate:
            return None
        return self.kinds[(digest // 1_000_000) % len(self.kinds)]

    # -- what a test checks -------------------------------------------------
    def summary(self) -> dict:
        with self.lock:
            events = list(self.events)
        by_kind: dict[str, int] = {}
        for event in events:
            by_kind[event["kind"]] = by_kind.get(event["kind"], 0) + 1
        faults = sum(n for kind, n in by_kind.items() if kind != "ok")
        return {"attempts": len(events), "requests": len({e["key"] for e in events}), "faults": faults,
                "fault_rate": faults / max(1, len(events)), "by_kind": by_kind,
                "max_attempts_per_request": max((e["attempt"] for e in events), default=0)}

    def unanswered(self) -> list[str]:
        """Requests whose last attempt did not get a 200."""
        last: dict[str, dict] = {}
        for event in self.events:
            if event["key"] not in last or event["attempt"] > last[event["key"]]["attempt"]:
                last[event["key"]] = event
        return [k for k, e in last.items() if not (e["kind"] == "ok" and e.get("status") == 200)]

    def retry_after_gaps(self) -> list[float]:
        """For each 429, seconds from sending it to the next attempt of the same request."""
        by_key: dict[tuple[str, int], dict] = {(e["key"], e["attempt"]): e for e in self.events}
        return [by_key[(k, a + 1)]["arrived"] - e["done"]
                for (k, a), e in by_key.items() if e["kind"] == "429" and (k, a + 1) in by_key]


class _HostileHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self):
        owner: HostileServer = self.server.owner
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with owner.lock:
            owner.seen.append({"method": self.command, "path": self.path,
                               "authorization": self.headers.get("authorization")})
        status, headers, payload = owner.answer(json.loads(body) if body else {})
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if payload is ENDLESS:  # a body that never ends: a byte every 0.2 s until the client gives up
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.close_connection = True
            try:
                self.wfile.write(b'{"choices": [{"message": {"content": "')
                while not owner.stopping.wait(0.2):
                    self.wfile.write(b"a")
                    self.wfile.flush()
            except OSError:
                pass
            return
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except OSError:  # the client stopped reading (a capped reply)
            self.close_connection = True

    do_GET = do_POST = _answer  # noqa: N815


ENDLESS = object()


def chat_answer(content, **fields) -> bytes:
    """A chat completion whose message content is ``content`` (anything JSON), with ``fields`` over the defaults."""
    answer = {"id": "x", "object": "chat.completion", "model": "standin",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    answer.update(fields)
    return json.dumps(answer).encode()


class HostileServer(_Base):
    """Answers each request with ``answer(request) -> (status, headers, body bytes or ENDLESS)``."""

    handler = _HostileHandler

    def __init__(self, answer, port: int = 0):
        self.answer = answer
        self.lock = threading.Lock()
        self.seen: list[dict] = []
        super().__init__(port)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    standin = sub.add_parser("standin")
    standin.add_argument("--port", type=int, default=8100)
    standin.add_argument("--delay", type=float, default=0.0)
    proxy = sub.add_parser("proxy")
    proxy.add_argument("--port", type=int, default=8101)
    proxy.add_argument("--upstream", required=True)
    proxy.add_argument("--rate", type=float, default=0.2)
    proxy.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    server = StandinServer(args.port, delay=args.delay) if args.what == "standin" else FaultProxy(
        args.upstream, rate=args.rate, seed=args.seed, port=args.port)
    print(f"{args.what} on {server.base_url}", flush=True)
    with server:
        try:
            server.thread.join()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
