"""Any OpenAI-compatible endpoint (``vllm serve`` included), async with bounded concurrency.

Requests go over one aiohttp session per run as plain JSON (the way vLLM's own serving
benchmark sends them): the openai SDK builds an httpx request and a pydantic response per
call, which capped one process at about 1,300 calls/s against a server that answers at once;
plain aiohttp does several times that (bench/README.md, the driver's ceiling).  Retries
(tenacity) cover 408/409/429/5xx, timeouts and dropped connections, with jittered
exponential backoff that honours Retry-After.  Other 4xx errors are final for that
request: the row records the error and the batch goes on.  The API key comes from the
environment and is never logged or stored.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay

from core import aio
from core.errors import UserError
from core.log import get_logger
from core.redact import redact_url

from .base import (
    Backend, BackendOptions, Completion, Conversation, LabelLogprobs, Sampling, SequenceLogprob, ends_with_assistant,
)
from .endpoint_http import (
    LONG_WAIT, BackoffWait, EndpointStatusError, MalformedResponseError, WaitNotice, chat_completions_target,
    describe_error, env_proxy, error_message, is_http_url, is_retryable, read_capped, request_errors,
)
from .openai_replies import cached_tokens, is_logprob, reply_text, response_logprob, token_count

LOG = get_logger(__name__)
#: requests in flight unless --concurrency says otherwise: a GPU server runs 256 to 1,024 sequences at
#: once, and keeps them all busy only when more rows than that are in flight (bench/README.md, gpu_sim)
DEFAULT_CONCURRENCY = 1024


class EndpointDownError(UserError):
    """Many requests in a row failed even after their retries: stop instead of trying every prompt."""


@dataclass(frozen=True)
class OpenAIOptions(BackendOptions):
    """The openai backend's options (``--base-url``, ``--api-key-env``, ``--concurrency``, ...)."""

    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int | None = None
    request_timeout: float = 120.0
    session_header: str = "X-Session-ID"
    seed: int = 0

    def rules(self) -> list[tuple[str, bool, str]]:
        url = self.base_url or os.environ.get("OPENAI_BASE_URL")
        return [
            ("base_url", bool(url), "is not an endpoint: the openai backend needs its OpenAI-compatible URL, e.g. "
             "http://127.0.0.1:8000/v1 (or set $OPENAI_BASE_URL)"),
            ("base_url", is_http_url(url), "is not an http:// or https:// URL with a host: write it as "
             "http://HOST:PORT/v1, e.g. http://127.0.0.1:8000/v1 (an IPv6 host in brackets: http://[::1]:8000/v1)"),
            ("concurrency", self.concurrency is None or self.concurrency >= 1, "must be >= 1"),
            ("request_timeout", self.request_timeout > 0, "must be > 0"),
        ]


class OpenAIBackend(Backend):
    """Any OpenAI-compatible endpoint; its model is recorded by the served name, never the URL."""

    name = "openai"
    Options = OpenAIOptions

    @classmethod
    def from_options(cls, model: str, options: OpenAIOptions) -> OpenAIBackend:
        return cls(model, base_url=options.base_url, api_key_env=options.api_key_env, concurrency=options.concurrency,
                   timeout=options.request_timeout, session_header=options.session_header, seed=options.seed)

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int | None = None,
        timeout: float = 120.0,
        max_attempts: int = 6,
        max_retry_time: float = 600.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        seed: int = 0,
        down_after: int = 16,
        session_header: str = "X-Session-ID",
    ):
        super().__init__(model)
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        self.api_key_env = api_key_env
        # A GPU server runs 256 to 1,024 sequences at once; fewer requests in flight leave it idle.
        self.concurrency = concurrency or DEFAULT_CONCURRENCY
        self.session_header = session_header
        self._session_on_loop = None  # the aiohttp session, the URL and the proxy, made on the event loop
        self._semaphore: asyncio.Semaphore | None = None
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.max_retry_time = max_retry_time
        self.notice = WaitNotice()
        self.wait = BackoffWait(backoff_initial, backoff_max, notice=self.notice)
        # Circuit breaker: after ``down_after`` requests in a row fail for good with a retryable
        # error (connection, timeout, 429, 5xx), the endpoint counts as down and the run stops.
        self.down_after = down_after
        self._failed_in_a_row = 0
        self._last_failure = ""
        # The key stays in the environment; only its variable's name is kept on the object.
        if not self.base_url and not os.environ.get(api_key_env):
            raise ValueError(f"the openai backend needs --base-url or ${api_key_env}")

    def _session(self):
        """One aiohttp session for the run (made on the event loop), with the URL and headers every request uses."""
        import aiohttp

        url, headers = chat_completions_target(self.base_url, self.api_key_env)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers=headers,
            cookie_jar=aiohttp.DummyCookieJar(),  # an API client keeps no cookies (and skips their cost per request)
        )
        return session, url, env_proxy(url)

    async def _post(self, session, url: str, proxy: str | None, body: dict, headers: dict | None) -> dict:
        """One attempt: the answer's JSON, or the error that ended it."""
        # A server that has not answered after a while gets a line (the request itself ends at --request-timeout).
        after = max(LONG_WAIT, self.timeout / 4)
        stalled = asyncio.get_running_loop().call_later(
            after, self.notice, self.timeout, f"waiting: no answer from the server for {after:.0f} s (stalled?); "
            f"a request gives up after --request-timeout {self.timeout:g} s")
        try:
            async with session.post(url, data=json.dumps(body), headers=headers, proxy=proxy) as response:
                payload = await read_capped(response)
                if response.status >= 400:
                    raise EndpointStatusError(response.status, error_message(response.status, payload),
                                              response.headers.copy())  # case-insensitive, for Retry-After
        finally:
            stalled.cancel()
        try:
            answer = json.loads(payload)
        except (ValueError, RecursionError):
            raise MalformedResponseError(f"the answer is not JSON: {payload[:200]!r}") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list) or not answer["choices"]:
            raise MalformedResponseError(f"the answer has no choices: {payload[:200]!r}")
        return answer

    def _is_down(self) -> bool:
        return self._failed_in_a_row >= self.down_after

    def _down_error(self) -> EndpointDownError:
        return EndpointDownError(
            f"the endpoint {redact_url(self.base_url)} is not answering: {self._failed_in_a_row} requests in a row failed "
            f"after up to {self.max_attempts} attempts each (last: {self._last_failure}). Stopped; finished "
            "batches are saved. Check the server, then run the same command again to resume."
        )

    def _scrub(self, exc: BaseException) -> None:
        """Servers may echo the key they were sent (a 401 says "Incorrect API key provided: ..."); drop it."""
        key = os.environ.get(self.api_key_env)
        if key and len(key) >= 4 and key in (getattr(exc, "message", None) or str(exc)):
            if getattr(exc, "message", None):
                exc.message = exc.message.replace(key, "***")
            exc.args = tuple(a.replace(key, "***") if isinstance(a, str) else a for a in exc.args)

    def _session_and_semaphore(self):
        if self._session_on_loop is None:
            self._session_on_loop = self._session()
            self._semaphore = asyncio.Semaphore(self.concurrency)
        return self._session_on_loop, self._semaphore

    async def _call(self, kwargs: dict, session: str | None = None) -> dict:
        """One request with retries; an error that is final for it is raised (the caller records it)."""
        (http, url, proxy), semaphore = self._session_and_semaphore()
        body = {key: value for key, value in kwargs.items() if key != "extra_body"}
        body.update(kwargs.get("extra_body") or {})
        headers = {self.session_header: session} if session and self.session_header else None
        async with semaphore:
            if self._is_down():
                raise self._down_error()
            try:
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception(is_retryable),
                    wait=self.wait,
                    stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.max_retry_time)
                    | (lambda state: self._is_down()),
                    reraise=True,
                ):
                    with attempt:
                        result = await self._post(http, url, proxy, body, headers)
            except Exception as exc:
                self._scrub(exc)
                if not is_retryable(exc):
                    self._failed_in_a_row = 0  # the server answered; this request is wrong
                    raise
                self._failed_in_a_row += 1
                self._last_failure = describe_error(exc)
                if self._is_down():
                    raise self._down_error() from None
                raise
            self._failed_in_a_row = 0
            return result

    async def _answer(self, kwargs: dict, session: str | None):
        """The response, or the API error that ended the request (an endpoint that is down raises)."""
        try:
            return await self._call(kwargs, session)
        except Exception as exc:  # noqa: BLE001 - sorted below
            if not isinstance(exc, request_errors()):
                raise
            return exc

    def _request(self, conversation: Conversation, choices: Sequence[str] | None = None, **kwargs) -> dict:
        request = {"model": self.model, "messages": list(conversation), **kwargs}
        extra = {}
        if ends_with_assistant(conversation):
            # vLLM's server continues a final assistant message when asked.
            extra.update(continue_final_message=True, add_generation_prompt=False)
        if choices is not None:
            # vLLM's structured outputs; an endpoint without them answers 400 (recorded, not retried).
            extra["structured_outputs"] = {"choice": list(choices)}
        if extra:
            request["extra_body"] = extra
        return request

    async def achat(self, conversation: Conversation, sampling: Sampling, seed: int | None = None,
                    session: str | None = None) -> Completion:
        extra = {"seed": seed} if seed is not None else {}
        if sampling.stop:
            extra["stop"] = list(sampling.stop)
        request = self._request(conversation, max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                                top_p=sampling.top_p, choices=sampling.choices, **extra)
        result = await self._answer(request, session)
        if isinstance(result, BaseException):
            return Completion(text="", finish_reason="error", error=describe_error(result))
        choice = result["choices"][0]
        try:
            text, replaced = reply_text(choice)
        except MalformedResponseError as exc:
            return Completion(text="", finish_reason="error", error=describe_error(exc))
        if replaced:
            LOG.warning("a reply held %d unpaired surrogate(s) (invalid Unicode); stored with U+FFFD in their place",
                        replaced)
        usage = result.get("usage") if isinstance(result.get("usage"), dict) else {}
        finish = choice.get("finish_reason")
        return Completion(
            text=text,
            finish_reason=finish if isinstance(finish, str) and finish else "stop",
            prompt_tokens=token_count(usage.get("prompt_tokens")),
            completion_tokens=token_count(usage.get("completion_tokens")),
            cached_tokens=cached_tokens(usage),
        )

    async def alabel_logprobs(self, conversation: Conversation, labels: Sequence[str],
                              session: str | None = None) -> LabelLogprobs:
        request = self._request(conversation, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=20)
        result = await self._answer(request, session)
        if isinstance(result, BaseException):
            return LabelLogprobs({label: None for label in labels}, error=describe_error(result))
        choice = result["choices"][0]
        logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
        content = logprobs.get("content") if isinstance(logprobs, dict) else None
        first = content[0] if isinstance(content, list) and content and isinstance(content[0], dict) else {}
        entries = first.get("top_logprobs")
        if not isinstance(entries, list) or not entries:
            return LabelLogprobs({label: None for label in labels}, error="endpoint returned no log-probabilities")
        # Entries that are not {"token": text, "logprob": a finite number <= 0} are left out.
        top = {t["token"]: float(t["logprob"]) for t in entries
               if isinstance(t, dict) and isinstance(t.get("token"), str) and is_logprob(t.get("logprob"))}
        # Match a label by its first characters; tokens may carry a leading space.
        values = {}
        for label in labels:
            matches = [lp for tok, lp in top.items() if tok == label or tok.strip() == label]
            values[label] = max(matches) if matches else None
        return LabelLogprobs(values, floor=min(top.values()) if top else None)

    async def aresponse_logprobs(self, conversation: Conversation, session: str | None = None) -> SequenceLogprob:
        """Via vLLM's server extensions: ``prompt_logprobs`` and ``return_token_ids`` in extra_body.

        Two requests: the whole conversation (its prompt token log-probabilities) and the
        conversation without its final message (where the response starts).  Endpoints
        without these extensions give an error for the row.
        """
        if not ends_with_assistant(conversation):
            return SequenceLogprob(None, error="the conversation must end with the assistant message to score")
        full_request = {
            "model": self.model, "messages": list(conversation), "max_tokens": 1, "temperature": 0.0,
            "extra_body": {"continue_final_message": True, "add_generation_prompt": False,
                           "prompt_logprobs": 0, "return_token_ids": True},
        }
        head_request = {
            "model": self.model, "messages": list(conversation[:-1]), "max_tokens": 1, "temperature": 0.0,
            "extra_body": {"add_generation_prompt": True, "return_token_ids": True},
        }
        full, head = await asyncio.gather(self._answer(full_request, session), self._answer(head_request, session))
        failed = next((r for r in (full, head) if isinstance(r, BaseException)), None)
        if failed is not None:
            return SequenceLogprob(None, error=describe_error(failed))
        return response_logprob(full, head)

    def close(self) -> None:
        opened, self._session_on_loop = self._session_on_loop, None
        if opened is not None:
            try:
                aio.run_sync(opened[0].close())
            except Exception:  # noqa: BLE001 - best effort at exit
                pass

