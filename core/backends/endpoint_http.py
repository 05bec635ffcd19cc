"""HTTP to an OpenAI-compatible endpoint: its errors, capped reads, retries with backoff, and where requests go
(the URL, its credentials and the proxy).

Retries (tenacity, driven by ``OpenAIBackend``) cover 408/409/429/5xx, timeouts and dropped connections, with
jittered exponential backoff that honours Retry-After.  Other 4xx errors are final for that request.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from email.utils import parsedate_to_datetime
from urllib.parse import unquote, urlsplit, urlunsplit

from tenacity import RetryCallState

from core.log import get_logger
from core.redact import redact_text

RETRY_STATUS = {408, 409, 429}
#: The largest answer read: a chat completion, even with prompt log-probabilities, is far smaller; a larger
#: body (a misbehaving server, a wrong URL) fails its row instead of filling memory and the output.
MAX_REPLY_BYTES = 8 * 2**20
#: The longest wait a Retry-After header can ask for; a longer (or absurd) value is capped to this.
RETRY_AFTER_CAP = 60.0
#: Waits at least this long get a line saying why (a server asking for time, a server that does not answer).
LONG_WAIT = 5.0
#: At most one such line per this many seconds, however many requests wait at once.
LONG_WAIT_LINE_EVERY = 30.0
LOG = get_logger(__name__)
#: the endpoint when neither --base-url nor $OPENAI_BASE_URL names one (the key then comes from $OPENAI_API_KEY)
OPENAI_API_URL = "https://api.openai.com/v1"


class EndpointStatusError(Exception):
    """The endpoint answered with an HTTP error status; ``message`` is its own explanation."""

    def __init__(self, status_code: int, message: str, headers=None):
        super().__init__(message)
        self.status_code, self.message, self.headers = status_code, message, headers or {}


class MalformedResponseError(Exception):
    """A 200 answer that is not a chat completion (final for the request: retrying gets the same)."""


def request_errors() -> tuple[type[BaseException], ...]:
    """What ends a request and is recorded for its row: an error status, a bad answer, no connection, a timeout."""
    import aiohttp

    return (EndpointStatusError, MalformedResponseError, aiohttp.ClientError, asyncio.TimeoutError)


def is_retryable(exc: BaseException) -> bool:
    import aiohttp

    if isinstance(exc, EndpointStatusError):
        return exc.status_code in RETRY_STATUS or exc.status_code >= 500
    # A dropped connection mid-answer (payload error), a refused or reset one, or no answer in time.
    return isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError))


def error_message(status: int, payload: bytes) -> str:
    """The endpoint's own words for an error: OpenAI's ``{"error": {"message"}}``, vLLM's ``{"message"}``, or the text."""
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else error if isinstance(error, str) else None
        message = message or body.get("message") or body.get("detail")
        if message:
            return str(message)
    text = payload.decode("utf-8", "replace").strip()
    return text[:500] or f"status {status} with an empty body"


async def read_capped(response) -> bytes:
    """The body, at most MAX_REPLY_BYTES (a larger one is a MalformedResponseError, final for the request)."""
    if (response.content_length or 0) > MAX_REPLY_BYTES:
        raise MalformedResponseError(_too_large(response.content_length))
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise MalformedResponseError(_too_large())
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int | None = None) -> str:
    said = f" ({size / 2**20:.0f} MiB)" if size else ""
    return f"the answer is larger than {MAX_REPLY_BYTES // 2**20} MiB{said}; not read (is --base-url the right server?)"


def retry_after_seconds(exc: BaseException | None) -> float | None:
    """Seconds the server asked us to wait (Retry-After: seconds or HTTP date), if any."""
    headers = getattr(exc, "headers", None)
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return _finite_wait(float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return _finite_wait(float(value))
    except ValueError:
        try:
            import datetime as dt

            return _finite_wait((parsedate_to_datetime(value) - dt.datetime.now(dt.timezone.utc)).total_seconds())
        except (TypeError, ValueError, OverflowError):
            return None


def _finite_wait(seconds: float) -> float | None:
    """A wait a server asked for, as a number of seconds >= 0 (negative: 0; NaN: none asked; infinite: huge)."""
    if seconds != seconds:
        return None
    return min(max(0.0, seconds), 1e9)


class WaitNotice:
    """One line on stderr for a long wait, saying why; at most one per ``every`` seconds (many requests wait at once)."""

    def __init__(self, every: float = LONG_WAIT_LINE_EVERY):
        self.every, self._last = every, float("-inf")

    def __call__(self, seconds: float, line: str) -> None:
        import time

        now = time.monotonic()
        if seconds >= LONG_WAIT and now - self._last >= self.every:
            self._last = now
            LOG.warning("%s", line)


class BackoffWait:
    """Full-jitter exponential backoff, or the server's Retry-After when it sent one."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0, retry_after_cap: float = RETRY_AFTER_CAP,
                 notice: WaitNotice | None = None):
        self.initial, self.maximum, self.retry_after_cap = initial, maximum, retry_after_cap
        self.notice = notice or WaitNotice()

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = retry_after_seconds(exc)
        if asked is not None:
            wait = min(asked, self.retry_after_cap)
            capped = f", capped from {asked:.0f} s" if asked > self.retry_after_cap else ""
            status = getattr(exc, "status_code", "")
            self.notice(wait, f"waiting {wait:.0f} s: the server asked (HTTP {status} Retry-After{capped})")
            return wait
        wait = random.uniform(0, min(self.maximum, self.initial * 2 ** (state.attempt_number - 1)))
        if exc is not None:
            self.notice(wait, f"waiting {wait:.0f} s before retrying: {describe_error(exc)}")
        return wait


def describe_error(exc: BaseException) -> str:
    import aiohttp

    if isinstance(exc, EndpointStatusError):
        return f"HTTP {exc.status_code}: {redact_text(exc.message)}"
    if isinstance(exc, asyncio.TimeoutError):
        return "Timeout: no answer within the request timeout (--request-timeout)"
    if isinstance(exc, aiohttp.ClientConnectionError):
        return f"Connection failed: {redact_text(str(exc) or type(exc).__name__)}"
    return f"{type(exc).__name__}: {redact_text(str(exc))}"


def is_http_url(url: str | None) -> bool:
    try:
        parts = urlsplit(url or "")
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def env_proxy(url: str) -> str | None:
    """The proxy ``$HTTP(S)_PROXY`` names for ``url`` unless ``$NO_PROXY`` exempts its host, as curl and httpx do.

    Looked up once per run: aiohttp's ``trust_env`` looks it up (and reads ~/.netrc) per request,
    which cost a third of the client's time at 1,000+ requests/s.
    """
    import urllib.request

    parts = urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def chat_completions_target(base_url: str | None, api_key_env: str) -> tuple[str, dict[str, str]]:
    """The chat completions URL of ``base_url`` (without its credentials) and the headers every request sends."""
    import aiohttp

    parts = urlsplit(base_url or OPENAI_API_URL)
    headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "cai"}
    # Credentials in the URL (a proxy's basic auth) are sent as such; otherwise the key as a bearer token.
    # Either goes as a header, never as the session's ``auth``: aiohttp drops the Authorization header on a
    # redirect to another origin (scheme, host or port) but would send a session's auth there again.
    if parts.username or parts.password:
        headers["Authorization"] = aiohttp.BasicAuth(unquote(parts.username or ""),
                                                     unquote(parts.password or "")).encode()
    else:
        headers["Authorization"] = f"Bearer {os.environ.get(api_key_env) or 'EMPTY'}"
    # A key in the base URL's query (``?api-key=...``) goes with every request, after the path.
    url = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/") + "/chat/completions",
                      parts.query, ""))
    return url, headers
