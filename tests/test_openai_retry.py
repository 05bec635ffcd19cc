"""The openai backend's retry policy against a local HTTP server that misbehaves on purpose."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core.backends.base import Sampling
from core.backends.registry import create_backend

OK_BODY = {
    "id": "x", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


class ScriptedServer:
    """Answers each POST with the next scripted (status, headers) and records arrival times."""

    def __init__(self, script):
        self.script = list(script)
        self.arrivals: list[float] = []
        self.auth_headers: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                server.arrivals.append(time.monotonic())
                server.auth_headers.append(self.headers.get("authorization", ""))
                status, headers = server.script.pop(0) if server.script else (200, {})
                body = json.dumps(OK_BODY if status == 200 else {"error": {"message": f"status {status}"}}).encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def backend(url, **options):
    return create_backend("openai", "m", base_url=url, backoff_initial=0.01, backoff_max=0.05, **options)


def test_429_with_retry_after_then_500_then_success(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-value")
    server = ScriptedServer([(429, {"retry-after": "1"}), (500, {}), (200, {})])
    with server as url:
        [completion] = backend(url).chat([[{"role": "user", "content": "hi"}]], Sampling(max_tokens=4))
    assert completion.text == "hello" and completion.error is None and completion.completion_tokens == 1
    assert len(server.arrivals) == 3
    assert server.arrivals[1] - server.arrivals[0] >= 0.95  # Retry-After honoured
    assert server.arrivals[2] - server.arrivals[1] < 0.9  # plain backoff after a 500
    assert server.auth_headers[0] == "Bearer sk-test-secret-value"  # the key from the environment is used


@pytest.mark.parametrize("status", [400, 401, 404])
def test_other_4xx_are_not_retried_and_become_row_errors(status):
    server = ScriptedServer([(status, {})])
    with server as url:
        completions = backend(url).chat(
            [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]], Sampling(max_tokens=4)
        )
    assert len(server.arrivals) == 2  # one attempt each: the first failed, the second succeeded
    failed = [c for c in completions if c.error]
    assert len(failed) == 1 and failed[0].error.startswith(f"HTTP {status}")
    assert any(c.text == "hello" for c in completions)


def test_attempts_are_capped():
    server = ScriptedServer([(503, {})] * 10)
    with server as url:
        [completion] = backend(url, max_attempts=3).chat([[{"role": "user", "content": "a"}]], Sampling())
    assert len(server.arrivals) == 3 and completion.error.startswith("HTTP 503")


def test_connection_refused_is_retried_then_reported():
    with ScriptedServer([]) as url:
        pass  # closed: nothing listens on the port any more
    [completion] = backend(url, max_attempts=2, timeout=2).chat([[{"role": "user", "content": "a"}]], Sampling())
    assert completion.error and "Connection" in completion.error
