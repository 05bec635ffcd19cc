"""Reading a chat completion's answer: its text (whatever shape a server gives it), token counts and
log-probabilities; a shape no server should send is a MalformedResponseError or the row's error."""

from __future__ import annotations

import json
import re

from core.text import shorten

from .base import SequenceLogprob
from .endpoint_http import MalformedResponseError


def reply_text(choice: object) -> tuple[str, int]:
    """The text of one answer's choice and how many unpaired surrogates in it were replaced with U+FFFD.

    Servers differ: ``content`` may be text, null (nothing said), or a list of content parts
    (``[{"type": "text", "text": ...}]``, whose texts are joined).  An answer with tool calls and no
    text, or a content of another type, is a MalformedResponseError (the row records it).
    """
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise MalformedResponseError(f"the answer's choice has no message object: {_brief(choice)}")
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(part["text"] for part in content
                          if isinstance(part, dict) and part.get("type") in ("text", "output_text", None)
                          and isinstance(part.get("text"), str))
    elif content is None:
        if message.get("tool_calls"):
            raise MalformedResponseError("the answer holds tool calls instead of text (this engine sends no tools; "
                                         "check the server's chat template)")
        content = ""
    if not isinstance(content, str):
        raise MalformedResponseError(f"the answer's content is not text: {_brief(content)}")
    return valid_unicode(content)


def valid_unicode(text: str) -> tuple[str, int]:
    """``text`` with each unpaired surrogate (a JSON escape such as \\ud800 alone: not Unicode, and no file can
    hold it as UTF-8) replaced by U+FFFD, and how many were replaced."""
    try:
        text.encode("utf-8")
        return text, 0
    except UnicodeEncodeError:
        return _SURROGATE.subn("\ufffd", text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _brief(value: object) -> str:
    text = json.dumps(value, ensure_ascii=True, default=repr)
    return shorten(text, 200)


def token_count(value: object) -> int:
    """A token count from ``usage``: a whole number >= 0, else 0 (a server may leave it out or send anything)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def is_logprob(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and -float("inf") < value <= 0


def response_logprob(full, head) -> SequenceLogprob:
    try:
        return _summed(full, head)
    except (TypeError, KeyError, AttributeError, IndexError, ValueError):  # a server's odd shapes: the row's error
        return SequenceLogprob(None, error="endpoint returned malformed prompt log-probabilities")


def _summed(full, head) -> SequenceLogprob:
    ids, head_ids = full.get("prompt_token_ids"), head.get("prompt_token_ids")
    logprobs = full.get("prompt_logprobs")
    if not ids or head_ids is None or not logprobs:
        return SequenceLogprob(None, error="endpoint returned no prompt log-probabilities (needs a vLLM server)")
    if list(ids[: len(head_ids)]) != list(head_ids):
        return SequenceLogprob(None, error="the chat template does not keep the prompt as a prefix of prompt + response")
    total = 0.0
    for position in range(max(len(head_ids), 1), len(ids)):
        entry = logprobs[position] or {}
        value = entry.get(str(ids[position]), entry.get(ids[position]))
        if value is None:
            return SequenceLogprob(None, error=f"no log-probability for prompt token {position}")
        value = value["logprob"] if isinstance(value, dict) else value
        if not is_logprob(value):
            raise ValueError(value)
        total += value
    return SequenceLogprob(total, tokens=len(ids) - len(head_ids))


def cached_tokens(usage: dict) -> int | None:
    """``usage.prompt_tokens_details.cached_tokens`` (vLLM with --enable-prompt-tokens-details, OpenAI), else None."""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return cached if isinstance(cached, int) and not isinstance(cached, bool) and cached >= 0 else None
