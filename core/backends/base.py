"""The backend contract every stage uses: chat completions and log-probabilities.

A backend answers one request at a time, asynchronously (``achat``, ``alabel_logprobs``,
``aresponse_logprobs``), on the process's event loop (``core.aio``): a stage keeps many
requests in flight and submits each row's next call the moment its previous one returns,
so the engine's queue stays full (vLLM batches whatever is in flight continuously).  The
batch methods ``chat``, ``label_logprobs`` and ``response_logprobs`` run a list of
requests concurrently and wait for all: for callers with no chain to stream.  A backend
implements either form of each; the base class derives the other.

``session`` names the row a request belongs to: every call of one row carries the same
key, so a router with session affinity keeps the row's growing prefix on one server.

Besides the requests a backend class declares what a stage config may set for it
(``Options``), how it is built from them (``from_options``), how its model is named in
records (``identity``), and how many requests it keeps in flight by default
(``concurrency``); ``core.backends.registry`` is the one place that picks a backend by name.  Building a
backend loads nothing: ``load`` starts its engine, when a stage first has work.
"""

from __future__ import annotations

import dataclasses
import asyncio
from abc import ABC
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from core import aio
from core.hashing import stable_hash

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
    # The reply ends before the first of these strings (not included; finish_reason "stop").
    stop: tuple[str, ...] | None = None

    def as_dict(self) -> dict:
        fields = {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p}
        if self.choices is not None:
            fields["choices"] = list(self.choices)
        if self.stop is not None:  # only when set: fingerprints of runs without it stay as they were
            fields["stop"] = list(self.stop)
        return fields


@dataclass
class Completion:
    """One reply. ``error`` is set (and ``text`` empty) when the request failed for good."""

    text: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    #: prompt tokens served from the engine's prefix cache, where the engine says (None: it did not)
    cached_tokens: int | None = None


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

    #: the field that sets the share of accelerator memory the backend's engine reserves in this process;
    #: ``None`` for a backend whose model runs elsewhere (an endpoint)
    memory_share_field: ClassVar[str | None] = None

    def rules(self) -> list[tuple[str, bool, str]]:
        """``(field, holds, rule)`` checks, as ``core.config.check_rules`` takes them."""
        return []

    @property
    def in_process(self) -> bool:
        """Whether the model loads into this process's memory (engines side by side must then share it)."""
        return self.memory_share_field is not None

    def with_memory_share(self, share: float | None) -> BackendOptions:
        """These options with the engine's memory share set to ``share`` (unchanged for None or an endpoint)."""
        if share is None or self.memory_share_field is None:
            return self
        return dataclasses.replace(self, **{self.memory_share_field: share})

    def devices(self) -> int:
        """Accelerators one engine spans (a memory share is then per device, and vLLM's own default holds)."""
        return 1


class Backend(ABC):
    """A model behind a small request interface (see module docstring)."""

    #: registry name, e.g. "vllm"
    name: str = ""
    #: the options a stage config sets for this backend
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    #: requests in flight at once unless the user sets ``--concurrency`` (a backend may size it from its engine)
    concurrency: int = 256
    #: the dtype the model runs in, recorded with what it made; None where the backend cannot know (an endpoint)
    dtype: str | None = None

    # Each pair is (batch method, single-request method): a subclass implements at least one of each
    # (response_logprobs is optional: neither means the backend cannot score).
    _PAIRS = (("chat", "achat"), ("label_logprobs", "alabel_logprobs"))

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for batch, single in cls._PAIRS:
            if getattr(cls, batch) is getattr(Backend, batch) and getattr(cls, single) is getattr(Backend, single):
                raise TypeError(f"{cls.__name__} must implement {batch}() or {single}()")

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

    @classmethod
    def check_model(cls, model: str, flag: str = "--model") -> None:
        """Refuse, before any work, a model name this backend could not load (a UserError naming ``flag``);
        loads nothing. An endpoint's model is checked by the endpoint."""

    @property
    def loaded(self) -> bool:
        """Whether requests can run now (see ``load``)."""
        return True

    def load(self) -> Backend:
        """Start what requests need (an engine in this process) and return the backend; a no-op once done, and
        for a backend whose model runs elsewhere.

        Building a backend starts nothing, so a stage with no work left loads no model: a stage calls ``load``
        when it first has work, in its own thread, never on the event loop (an engine's start-up there would
        stall every request).  Whoever built the backend closes it."""
        return self

    def serves(self, model: str) -> bool:
        """Whether this backend, already built, runs ``model`` (as the user names it)."""
        return self.identity(self.model) == self.identity(model)

    # -- one request (streaming stages) -----------------------------------
    async def achat(self, conversation: Conversation, sampling: Sampling, seed: int | None = None,
                    session: str | None = None) -> Completion:
        """Reply to one conversation.

        A conversation whose last message is from the assistant is continued (its text is a
        prefix of the reply) instead of answered.  ``seed`` makes sampling reproducible whatever
        else is in flight.  A request that fails for good returns a Completion with ``error``;
        an exception means the backend cannot go on (an endpoint that is down, a dead engine).
        """
        return self.chat([conversation], sampling, [seed])[0]

    async def alabel_logprobs(self, conversation: Conversation, labels: Sequence[str],
                              session: str | None = None) -> LabelLogprobs:
        """Log-probability that the reply's next token is each label's first token.

        As in ``achat``, a final assistant message is continued, so a caller can ask
        "...the answer is (" and read the labels "A" and "B".
        """
        return self.label_logprobs([conversation], labels)[0]

    async def aresponse_logprobs(self, conversation: Conversation, session: str | None = None) -> SequenceLogprob:
        """Log-likelihood of the conversation's final assistant message (the judge's likelihood scoring).

        Optional: backends that cannot score prompts raise NotImplementedError.
        """
        if type(self).response_logprobs is Backend.response_logprobs:
            raise NotImplementedError(f"the {self.name or type(self).__name__} backend cannot score response likelihoods")
        return self.response_logprobs([conversation])[0]

    # -- many requests at once, waiting for all ---------------------------
    def chat(
        self,
        conversations: Sequence[Conversation],
        sampling: Sampling,
        seeds: Sequence[int] | None = None,
    ) -> list[Completion]:
        """``achat`` for each conversation, concurrently; replies in order."""
        seeds = list(seeds) if seeds is not None else [None] * len(conversations)
        return self._all([self.achat(c, sampling, seed) for c, seed in zip(conversations, seeds)])

    def label_logprobs(self, conversations: Sequence[Conversation], labels: Sequence[str]) -> list[LabelLogprobs]:
        """``alabel_logprobs`` for each conversation, concurrently; results in order."""
        return self._all([self.alabel_logprobs(c, labels) for c in conversations])

    def response_logprobs(self, conversations: Sequence[Conversation]) -> list[SequenceLogprob]:
        """``aresponse_logprobs`` for each conversation, concurrently; results in order."""
        if type(self).aresponse_logprobs is Backend.aresponse_logprobs:
            raise NotImplementedError(f"the {self.name or type(self).__name__} backend cannot score response likelihoods")
        return self._all([self.aresponse_logprobs(c) for c in conversations])

    def _all(self, coroutines: list) -> list:
        """Run coroutines on the event loop, at most ``concurrency`` at once; results in order."""
        if not coroutines:
            return []

        async def gather():
            semaphore = asyncio.Semaphore(self.concurrency)

            async def bounded(coroutine):
                async with semaphore:
                    return await coroutine

            # aio.gather: a request that raises (an endpoint that is down) stops the others too
            return await aio.gather([bounded(c) for c in coroutines])

        return aio.run_sync(gather())

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine or connections."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def session_key(row_id: str) -> str:
    """The key every call of one row carries (the same across runs), so that a router with session
    affinity keeps the row's requests, and their shared prefix, on one server."""
    return stable_hash(["session", row_id], 16)


def ends_with_assistant(conversation: Conversation) -> bool:
    return bool(conversation) and conversation[-1]["role"] == "assistant"
