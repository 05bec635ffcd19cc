"""``cai label``'s page and its two calls, served on 127.0.0.1 by the standard library's ``http.server``.

The server answers only requests addressed to 127.0.0.1/localhost on its port (no DNS
rebinding) and a label only with the page's per-session token (no cross-site posts); no
other site may frame its page (``X-Frame-Options``, CSP ``frame-ancestors``: no clickjacking).
Every answer, errors included, is JSON with a status: a request body is at most ``MAX_BODY``
bytes of JSON (too deep a nesting is a 400), and nothing a client sends prints a traceback.
"""

from __future__ import annotations

import json
import secrets
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from core.errors import UserError
from core.log import get_logger
from core.store import parse_json_line

from .label_session import LabelSession

HOST = "127.0.0.1"
MAX_BODY = 4096
#: Sent with every answer: no other page may show this one in a frame (a click through it would label).
NO_FRAMING = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}
LOG = get_logger(__name__)


class LabelServer:
    """The labelling page and its two calls, on 127.0.0.1 only."""

    def __init__(self, session: LabelSession, port: int = 0, title: str = "cai label"):
        from .report import render_template

        self.session = session
        self.token = secrets.token_urlsafe(24)
        handler = type("Handler", (_Handler,), {"owner": self})
        try:
            self.httpd = ThreadingHTTPServer((HOST, port), handler)
        except OSError as exc:
            raise UserError(f"cannot serve on {HOST}:{port} ({exc.strerror}); pass another --port (0: any free one)") from None
        self.port = self.httpd.server_address[1]
        self.page = render_template("label.html.j2", title=title, token=self.token, out=str(session.labels.path),
                                    ties=str(session.ties.path)).encode("utf-8")
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def allowed_hosts(self) -> set[str]:
        return {f"{HOST}:{self.port}", f"localhost:{self.port}"}

    def start(self) -> str:
        """Serve in a background thread (tests); returns the page's URL."""
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self.url

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        if self.thread is not None:
            self.httpd.shutdown()
            self.thread.join()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    owner: LabelServer
    server_version = "cai-label"

    def log_message(self, format, *args):  # the terminal shows progress, not access logs
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in NO_FRAMING.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code, message=None, explain=None):
        """The standard library's own refusals (a malformed request line, an unknown method) as JSON too."""
        self.close_connection = True
        self._json(code, {"error": message or HTTPStatus(code).phrase})

    def _json(self, status: int, value: dict) -> None:
        self._send(status, json.dumps(value, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _host_ok(self) -> bool:
        if self.headers.get("Host") in self.owner.allowed_hosts():
            return True
        self._json(HTTPStatus.FORBIDDEN, {"error": "wrong host"})
        return False

    def _guarded(self, handle) -> None:
        """Run ``handle``; an unexpected error is a 500 with a JSON message (and a log line), never a traceback."""
        try:
            handle()
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - the answer says what failed; the server goes on
            LOG.warning("cai label: %s %s failed: %s: %s", self.command, self.path[:80], type(exc).__name__, exc)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error ({type(exc).__name__})"})

    def do_GET(self):
        self._guarded(self._get)

    def do_POST(self):
        self._guarded(self._post)

    def _get(self):
        if not self._host_ok():
            return
        if self.path == "/":
            self._send(HTTPStatus.OK, self.owner.page, "text/html; charset=utf-8")
        elif self.path == "/api/state":
            self._json(HTTPStatus.OK, self.owner.session.state())
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def _post(self):
        if not self._host_ok():
            return
        if self.path != "/api/label":
            return self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
        if not secrets.compare_digest(self.headers.get("X-Label-Token", ""), self.owner.token):
            return self._json(HTTPStatus.FORBIDDEN, {"error": "missing or wrong token"})
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) == 0:
            self.close_connection = True  # the body, if any, is not read
            return self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "send a JSON body with its Content-Length"})
        if int(length) > MAX_BODY:
            self.close_connection = True
            return self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"the body is larger than {MAX_BODY} bytes"})
        try:
            body = parse_json_line(self.rfile.read(int(length)))  # too deep a nesting is a ValueError too
            if not isinstance(body, dict) or not isinstance(body.get("key"), str) \
                    or not isinstance(body.get("choice"), str):
                raise ValueError('the body must be {"key": text, "choice": text}')
            state = self.owner.session.record(body["key"], body["choice"])
        except ValueError as exc:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        self._json(HTTPStatus.OK, state)
