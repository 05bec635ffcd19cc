"""The contract of a judge method, and what it takes and gives: comparisons in, verdicts out.

A method (a strategy of ``Judge``) says which requests a comparison needs, each
cached under a key of everything that determines it; runs one request on a backend
into its record (a coroutine: the judge keeps many in flight, each one's follow-up
call sent as soon as its first returns); and combines a comparison's records into a
``Verdict``.  The ``Judge`` does the rest: the cache, what runs at once, the backend.

A method's prompt version, part of every key, is the hash of everything it sends
to a backend for fixed probe comparisons.  Editing a judge prompt therefore
changes the keys of exactly the judgements that prompt shapes, and they are redone
instead of reused; nothing is bumped by hand.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, NamedTuple

from constitution.schema import Principle
from core.backends.base import Backend, Completion, LabelLogprobs, Sampling, SequenceLogprob
from core.hashing import stable_hash


class Judgement(NamedTuple):
    """One request's record (with its ``key``) and the tokens the backend generated for it."""

    record: dict
    output_tokens: int = 0


@dataclass(frozen=True)
class Comparison:
    """Is response ``x`` better than response ``y`` for this conversation, under this principle?"""

    prompt: tuple  # of message dicts (tuple so the comparison is hashable)
    x: str
    y: str
    principle: Principle

    @classmethod
    def of(cls, prompt: Sequence[dict], x: str, y: str, principle: Principle) -> Comparison:
        return cls(tuple(dict(m) for m in prompt), x, y, principle)


@dataclass
class Verdict:
    """Both orders of one comparison under one principle."""

    principle_id: str
    p: float | None = None  # P(x better), both orders combined
    p_x_first: float | None = None  # P(x better) with x shown as (A)
    p_x_second: float | None = None  # P(x better) with x shown as (B)
    orders_agree: bool | None = None
    first_wins: list[bool] = field(default_factory=list)  # did (A) win, per order
    bounded: bool = False  # a label was outside the top-k tokens: a bound was used
    order_free: bool = False
    parse_failures: int = 0
    refused: bool = False  # the judge declined (judging/refusal.py): left out, never a 0.5
    error: str | None = None
    judge: str | None = None  # which judge gave it (set by a panel or a fallback; None: the only judge)
    fallback: bool = False  # the fallback judge's, for a comparison the first judge left without a verdict
    by_judge: dict[str, Verdict] = field(default_factory=dict)  # each judge's own verdict (several judges)

    def as_dict(self) -> dict:
        out = {
            "p": self.p, "p_x_first": self.p_x_first, "p_x_second": self.p_x_second,
            "orders_agree": self.orders_agree, "bounded": self.bounded, "error": self.error,
        }
        if self.refused:
            out["refused"] = True
        if self.fallback:
            out["fallback"] = self.judge
        if self.by_judge:
            out["judges"] = {name: v.p for name, v in self.by_judge.items()}
        return out


@dataclass(frozen=True)
class MethodOptions:
    """What a judge config sets for a method, as a backend's ``Options``: a method with options of its own
    subclasses this; its fields are filled by name from the judge config's fields, then ``rules()`` is checked,
    and ``cai run``'s eval judges with the judge section's values of them."""

    def rules(self) -> list[tuple[str, bool, str]]:
        """``(field, holds, rule)`` checks, as ``core.config.check_rules`` takes them."""
        return []


class JudgeMethod(ABC):
    """One way of judging (``--method``).  Requests are small hashable records with an ``_asdict()``."""

    #: One line for ``--method``'s help: how it scores, and when to use it.
    description: ClassVar[str]
    #: Whether ``--cot`` (reasoning before the verdict) applies to it.
    supports_cot: ClassVar[bool] = False
    #: the options it reads (``self.settings`` carries their values)
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    #: The pydantic model of its cache records (``judge`` returns them): a ``core.schema.CachedJudgement`` with a
    #: ``kind`` Literal of its own or shared with the methods that write the same records; a cached record it
    #: does not validate is redone.
    record_model: ClassVar[type]

    def __init__(self, settings: Any):
        """``settings``: the judge's ``judging.judge.JudgeSettings`` (model, method and the methods' options)."""
        self.settings = settings

    # -- keys ----------------------------------------------------------------
    def key_fields(self) -> dict:
        """What a cached judgement depends on besides its request (clamping and scale are applied afterwards)."""
        return {"model": self.settings.model, "method": self.settings.method, "prompts": self.prompt_version}

    def key(self, request) -> str:
        return stable_hash({**self.key_fields(), **request._asdict()})

    @cached_property
    def prompt_version(self) -> str:
        """Hash of every conversation, label and sampling setting this method sends for the probe comparisons."""
        recorder = _Recorder()
        requests = [request for comparison in _probe_comparisons() for request in self.requests(comparison)]

        async def probe() -> None:
            for i, request in enumerate(requests):
                await self.judge(str(i), request, recorder)

        _run_without_loop(probe())
        return stable_hash(recorder.sent())

    # -- the method ----------------------------------------------------------
    @abstractmethod
    def requests(self, comparison: Comparison) -> list:
        """The requests one comparison needs, in the order ``verdict`` receives their records."""

    @abstractmethod
    async def judge(self, key: str, request: Any, backend: Backend, session: str | None = None) -> Judgement:
        """Run one request on ``backend`` (every call with ``session``); its record, with ``key``.

        A record marked ``transient`` (a request that failed for good this run) is cached for this run
        but not persisted, so the next run redoes it.
        """

    @abstractmethod
    def verdict(self, comparison: Comparison, records: list[dict | None]) -> Verdict:
        """Combine one comparison's records (None: not judged) into its verdict."""


def _probe_comparisons() -> list[Comparison]:
    """Comparisons that reach every text a method sends (with and without a system turn; with tag-like text)."""
    principle = Principle(id="probe", critique_request="critique", revision_request="revise",
                          comparison_question="Which response is better?")
    turns = [{"role": "user", "content": "A question <response A>?"}, {"role": "assistant", "content": "An answer."},
             {"role": "user", "content": "A follow-up."}]
    return [Comparison.of(turns, "Response x </response A>", "Response y", principle),
            Comparison.of([{"role": "system", "content": "A system turn."}, *turns], "x", "y", principle)]


def _run_without_loop(coroutine: Coroutine) -> None:
    """Run a coroutine that never waits (the probe backend answers at once): no event loop needed, so the
    prompt version can be computed anywhere, the event loop's thread included."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("a judge method waited on something other than its backend while probed")


class _Recorder(Backend):
    """Records what a method sends; replies that parse as no verdict, so every follow-up request is sent too."""

    name = "probe"

    def __init__(self):
        super().__init__("probe")
        # (call kind, its settings) -> the conversations sent with them, in the order sent
        self._sent: dict[str, tuple[list, list]] = {}

    def _record(self, kind: str, conversation, settings=None) -> None:
        head = [kind] if settings is None else [kind, settings]
        self._sent.setdefault(repr(head), (head, []))[1].append(list(conversation))

    def sent(self) -> list:
        """Each kind of call with its settings and all its conversations (one entry per kind and settings, in
        the order first sent): what is sent, whatever the order requests run in."""
        return [[head[0], conversations, *head[1:]] for head, conversations in self._sent.values()]

    async def achat(self, conversation, sampling: Sampling, seed=None, session=None) -> Completion:
        self._record("chat", conversation, sampling.as_dict())
        return Completion(text="Probe reasoning.", finish_reason="stop")

    async def alabel_logprobs(self, conversation, labels, session=None) -> LabelLogprobs:
        self._record("label_logprobs", conversation, list(labels))
        return LabelLogprobs({label: -1.0 for label in labels}, floor=-2.0)

    async def aresponse_logprobs(self, conversation, session=None) -> SequenceLogprob:
        self._record("response_logprobs", conversation)
        return SequenceLogprob(-1.0, tokens=1)
