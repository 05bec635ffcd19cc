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
    after_429, after_500 = server.arrivals[1] - server.arrivals[0], server.arrivals[2] - server.arrivals[1]
    assert after_429 >= 0.95  # Retry-After honoured
    assert after_500 < after_429 / 2  # plain backoff (at most 0.05 s) after a 500: the Retry-After is not kept
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


class RawServer(ScriptedServer):
    """Answers every POST with 200 and the given raw body (a broken endpoint or proxy)."""

    def __init__(self, body: bytes):
        super().__init__([])
        handler = self.httpd.RequestHandlerClass

        def do_post(request):
            request.rfile.read(int(request.headers.get("content-length", 0)))
            self.arrivals.append(time.monotonic())
            request.send_response(200)
            request.send_header("content-type", "application/json")
            request.send_header("content-length", str(len(body)))
            request.end_headers()
            request.wfile.write(body)

        handler.do_POST = do_post


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b'{"object": "list", "data": []}', b'{"choices": []}'])
def test_an_answer_that_is_not_a_chat_completion_is_a_row_error_not_retried(body):
    server = RawServer(body)
    with server as url:
        [completion] = backend(url).chat([[{"role": "user", "content": "a"}]], Sampling(max_tokens=4))
    assert len(server.arrivals) == 1  # the same request would get the same answer
    assert completion.finish_reason == "error" and completion.error.startswith("MalformedResponseError")


def test_credentials_in_the_url_are_sent_as_basic_auth_instead_of_the_key(monkeypatch):
    import base64

    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-this-one")
    server = ScriptedServer([(200, {})])
    with server as url:
        with_user = url.replace("http://", "http://alice:p%40ss@")
        [completion] = backend(with_user).chat([[{"role": "user", "content": "a"}]], Sampling(max_tokens=4))
    assert completion.text == "hello"
    assert server.auth_headers == ["Basic " + base64.b64encode(b"alice:p@ss").decode()]


def test_the_proxy_comes_from_the_environment_once_and_no_proxy_exempts_a_host(monkeypatch):
    from core.backends.endpoint_http import env_proxy

    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "vllm.internal")
    assert env_proxy("http://gpu-07.cluster:8000/v1") == "http://proxy.internal:3128"
    assert env_proxy("http://vllm.internal:8000/v1") is None
    assert env_proxy("https://gpu-07.cluster/v1") is None  # no HTTPS_PROXY set


def test_the_error_message_is_the_endpoints_own_words():
    from core.backends.endpoint_http import error_message

    assert error_message(400, b'{"error": {"message": "too long", "code": 400}}') == "too long"
    assert error_message(400, b'{"object": "error", "message": "maximum context length is 8192"}') \
        == "maximum context length is 8192"
    assert error_message(502, b"<html>Bad Gateway</html>") == "<html>Bad Gateway</html>"
    assert error_message(503, b"") == "status 503 with an empty body"
