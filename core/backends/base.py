"""The backend contract every stage uses: chat completions and label log-probabilities.

A backend answers a whole batch at once so that engines can schedule it as they
like (vLLM batches it continuously; the OpenAI client sends it concurrently).
Besides ``chat`` and ``label_logprobs`` a backend class declares what a stage
config may set for it (``Options``), how it is built from them (``from_options``)
and how its model is named in records (``identity``); ``core.backends.registry``
is the one place that picks a backend by name.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

Message = dict[str, str]
Conversation = list[Message]


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters shared by every backend."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    # The reply must be exactly one of these strings (vLLM's structured outputs, a "choice"):
    # a small judge then always gives a verdict that parses.
    choices: tuple[str, ...] | None = None

    def as_dict(self) -> dict:
        fields = {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p}
        if self.choices is not None:
            fields["choices"] = list(self.choices)
        return fields


@dataclass
class Completion:
    """One reply. ``error`` is set (and ``text`` empty) when the request failed for good."""

    text: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class LabelLogprobs:
    """Next-token log-probabilities of candidate labels.

    Engines return only the top-k tokens. A label outside them has ``None`` in
    ``logprobs``; its true log-probability is at most ``floor`` (the lowest
    top-k value), which is a bound, not a value.
    """

    logprobs: dict[str, float | None]
    floor: float | None = None
    error: str | None = None


@dataclass
class SequenceLogprob:
    """Log-likelihood of a conversation's final assistant message given everything before it.

    ``logprob`` is the sum over the message's tokens (``tokens`` of them); ``None``
    with ``error`` set when it could not be computed.
    """

    logprob: float | None
    tokens: int = 0
    error: str | None = None


@dataclass(frozen=True)
class BackendOptions:
    """What a stage config sets for a backend: each backend subclasses this with its own fields.

    The registry fills the fields by name from the stage config's flat fields (``--concurrency``
    fills ``concurrency``), then checks ``rules()``.
    """

    def rules(self) -> list[tuple[str, bool, str]]:
        """``(field, holds, rule)`` checks, as ``core.config.check_rules`` takes them."""
        return []


class Backend(ABC):
    """A model behind a small batch interface (see module docstring)."""

    #: registry name, e.g. "vllm"
    name: str = ""
    #: the options a stage config sets for this backend
    Options: ClassVar[type[BackendOptions]] = BackendOptions

    def __init__(self, model: str):
        self.model = model

    @classmethod
    def from_options(cls, model: str, options: BackendOptions) -> Backend:
        """The backend on ``model`` (as the user named it) with a stage config's options."""
        return cls(model=model, **dataclasses.asdict(options))

    @classmethod
    def identity(cls, model: str) -> str:
        """``model`` as recorded in rows, keys and manifests: loads nothing and holds no secret."""
        return model

    @abstractmethod
    def chat(
        self,
        conversations: Sequence[Conversation],
        sampling: Sampling,
        seeds: Sequence[int] | None = None,
    ) -> list[Completion]:
        """Reply to each conversation, in order.

        A conversation whose last message is from the assistant is continued
        (its text is a prefix of the reply) instead of answered.  ``seeds``, one
        per conversation, make sampling reproducible regardless of batching.
        """

    @abstractmethod
    def label_logprobs(self, conversations: Sequence[Conversation], labels: Sequence[str]) -> list[LabelLogprobs]:
        """Log-probability that the next token of each reply is each label's first token.

        As in ``chat``, a final assistant message is continued, so a caller can
        ask "...the answer is (" and read the labels "A" and "B".
        """

    def response_logprobs(self, conversations: Sequence[Conversation]) -> list[SequenceLogprob]:
        """Log-likelihood of each conversation's final assistant message (the judge's likelihood scoring).

        Optional: backends that cannot score prompts raise NotImplementedError.
        """
        raise NotImplementedError(f"the {self.name or type(self).__name__} backend cannot score response likelihoods")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine or connections."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def ends_with_assistant(conversation: Conversation) -> bool:
    return bool(conversation) and conversation[-1]["role"] == "assistant"
