"""The AI judge: compares two responses under principles, in both orders, with soft labels.

Methods (``--method``):

- ``pairwise``: the judge sees the conversation, the comparison question and both
  responses as (A) and (B); P(A) is read from the next-token log-probabilities of
  the labels, normalised over the two.  Scored in both orders and averaged.
- ``likelihood``: each response is scored alone by its log-likelihood as the reply
  of an assistant told to follow the principle minus that of one told to violate
  it; P(x better) = sigmoid(score_x - score_y).  No order exists, so none can bias it.
- ``text``: for endpoints without log-probabilities: the reply must be the verdict
  and nothing else (strict parse); a reply that does not parse is a failure.  By
  default the reply is constrained to "(A)" or "(B)" (vLLM structured outputs), so
  it always parses; ``--no-constrained-verdict`` for endpoints without them.

``--cot`` (pairwise and text): the judge first writes its reasoning (greedy), then
the label is read after it (text: its last line, or when that is not a verdict, a
constrained answer after the reasoning); its probabilities are clamped to [0.4, 0.6] unless
``--no-cot-clamp``, because reasoning makes them overconfident.

Judgements are cached by a key of everything that determines them (judge model,
method, prompt version, the conversation, both responses in their order, the
principle's question), so runs resume and only new comparisons reach the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from core.hashing import stable_hash
from constitution.schema import Principle
from core.backends.base import Backend, Sampling

from . import prompts
from .scoring import clamp, combine_orders, likelihood_probability, normalise_labels, parse_verdict

METHODS = ("likelihood", "pairwise", "text")


@dataclass(frozen=True)
class JudgeSettings:
    model: str
    method: str = "likelihood"
    cot: bool = False
    cot_clamp: bool = True
    cot_max_tokens: int = 192
    likelihood_scale: float = 1.0
    constrained_verdict: bool = True

    def key_fields(self) -> dict:
        """What a cached judgement depends on (clamping and scale are applied afterwards)."""
        fields = {"model": self.model, "method": self.method, "prompts": prompts.PROMPT_VERSION}
        if self.method != "likelihood":
            fields["cot"] = self.cot
            if self.cot:
                fields["cot_max_tokens"] = self.cot_max_tokens
        if self.method == "text":
            fields["constrained_verdict"] = self.constrained_verdict
        return fields

    def as_dict(self) -> dict:
        return {"model": self.model, "method": self.method, "cot": self.cot, "cot_clamp": self.cot_clamp,
                "cot_max_tokens": self.cot_max_tokens, "likelihood_scale": self.likelihood_scale,
                "constrained_verdict": self.constrained_verdict, "prompts": prompts.PROMPT_VERSION}


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
    error: str | None = None

    def as_dict(self) -> dict:
        return {
            "p": self.p, "p_x_first": self.p_x_first, "p_x_second": self.p_x_second,
            "orders_agree": self.orders_agree, "bounded": self.bounded, "error": self.error,
        }


class Judge:
    """Judges batches of comparisons; keeps every single judgement in ``cache`` (key -> record).

    ``backend_factory`` is called only when a judgement is missing, so a finished
    run loads no model.  ``on_records`` receives each batch of new records (to persist them).
    """

    def __init__(
        self,
        settings: JudgeSettings,
        backend: Backend | None = None,
        backend_factory: Callable[[], Backend] | None = None,
        cache: dict[str, dict] | None = None,
        on_records: Callable[[list[dict]], None] | None = None,
        progress=None,
    ):
        if settings.method not in METHODS:
            raise ValueError(f"unknown judge method {settings.method!r}; choose one of {', '.join(METHODS)}")
        self.settings = settings
        self._backend = backend
        self._factory = backend_factory
        self.cache: dict[str, dict] = cache if cache is not None else {}
        self.on_records = on_records
        self.progress = progress
        self.calls = 0

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            if self._factory is None:
                raise RuntimeError("the judge has no backend")
            self._backend = self._factory()
        return self._backend

    # -- keys ----------------------------------------------------------------
    def order_key(self, prompt: Sequence[dict], first: str, second: str, question: str) -> str:
        return stable_hash({**self.settings.key_fields(), "prompt": list(prompt), "first": first, "second": second,
                            "question": question})

    def likelihood_key(self, prompt: Sequence[dict], response: str, question: str, follow: bool) -> str:
        return stable_hash({**self.settings.key_fields(), "prompt": list(prompt), "response": response,
                            "question": question, "follow": follow})

    def keys_for(self, comparison: Comparison) -> list[str]:
        q = comparison.principle.comparison_question
        if self.settings.method == "likelihood":
            return [self.likelihood_key(comparison.prompt, r, q, f) for r in (comparison.x, comparison.y)
                    for f in (True, False)]
        return [self.order_key(comparison.prompt, comparison.x, comparison.y, q),
                self.order_key(comparison.prompt, comparison.y, comparison.x, q)]

    def missing(self, comparisons: Iterable[Comparison]) -> int:
        return len({k for c in comparisons for k in self.keys_for(c) if k not in self.cache})

    # -- running -------------------------------------------------------------
    def judge(self, comparisons: Sequence[Comparison]) -> list[Verdict]:
        """A verdict per comparison, running only the judgements not in the cache."""
        if self.settings.method == "likelihood":
            self._run_likelihood(comparisons)
        else:
            self._run_orders(comparisons)
        return [self.verdict(c) for c in comparisons]

    def _store(self, records: list[dict]) -> None:
        for record in records:
            self.cache[record["key"]] = record
        keep = [r for r in records if not r.get("transient")]
        if self.on_records and keep:
            self.on_records(keep)

    def _stage(self, name: str, count: int, tokens: int, started: float) -> None:
        self.calls += count
        if self.progress is not None:
            self.progress.stage(name, count, tokens, time.monotonic() - started)

    def _run_likelihood(self, comparisons: Sequence[Comparison]) -> None:
        todo: dict[str, list[dict]] = {}
        for c in comparisons:
            q = c.principle.comparison_question
            for response in (c.x, c.y):
                for follow in (True, False):
                    key = self.likelihood_key(c.prompt, response, q, follow)
                    if key not in self.cache and key not in todo:
                        todo[key] = prompts.likelihood_conversation(c.prompt, response, q, follow)
        if not todo:
            return
        started = time.monotonic()
        results = self.backend.response_logprobs(list(todo.values()))
        records = []
        for key, result in zip(todo, results):
            records.append({"key": key, "kind": "likelihood", "logprob": result.logprob, "tokens": result.tokens,
                            "error": result.error, "transient": result.error is not None})
        self._stage("likelihood", len(todo), 0, started)
        self._store(records)

    def _run_orders(self, comparisons: Sequence[Comparison]) -> None:
        todo: dict[str, tuple] = {}
        for c in comparisons:
            q = c.principle.comparison_question
            for first, second in ((c.x, c.y), (c.y, c.x)):
                key = self.order_key(c.prompt, first, second, q)
                if key not in self.cache and key not in todo:
                    todo[key] = (c.prompt, first, second, q)
        if not todo:
            return
        keys, items = list(todo), list(todo.values())
        text = self.settings.method == "text"
        reasoning: list[str | None] = [None] * len(items)
        records: list[dict | None] = [None] * len(items)
        if self.settings.cot:
            started = time.monotonic()
            conversations = [prompts.pairwise_cot_conversation(*item, text=text) for item in items]
            replies = self.backend.chat(conversations, Sampling(max_tokens=self.settings.cot_max_tokens, temperature=0.0))
            self._stage("reasoning", len(items), sum(r.completion_tokens for r in replies), started)
            for i, reply in enumerate(replies):
                if reply.error:
                    records[i] = self._failed_record(keys[i], reply.error)
                else:
                    reasoning[i] = reply.text
        pending = [i for i in range(len(items)) if records[i] is None]
        started = time.monotonic()
        if text:
            constrained = self.settings.constrained_verdict
            if self.settings.cot:
                for i in pending:
                    records[i] = self._text_record(keys[i], reasoning[i], last_line=True)
                    records[i]["reasoning"] = reasoning[i]
                # Reasoning that does not end in a verdict: ask for one after it, constrained to a label.
                unstated = [i for i in pending if constrained and records[i]["parse_failure"]]
                conversations = [prompts.after_reasoning(prompts.pairwise_cot_conversation(*items[i], text=True),
                                                         reasoning[i]) for i in unstated]
                sampling = Sampling(max_tokens=2, temperature=0.0, choices=prompts.LABELS)
            else:
                unstated = pending
                conversations = [prompts.pairwise_text_conversation(*items[i]) for i in pending]
                sampling = Sampling(max_tokens=8, temperature=0.0, choices=prompts.VERDICTS if constrained else None)
            replies = []
            if conversations:
                replies = self.backend.chat(conversations, sampling)
                self._stage("verdict", len(unstated), sum(r.completion_tokens for r in replies), started)
            for i, reply in zip(unstated, replies):
                if reply.error:
                    records[i] = self._failed_record(keys[i], reply.error)
                    continue
                records[i] = self._text_record(keys[i], reply.text, last_line=False)
                if reasoning[i] is not None:
                    records[i]["reasoning"] = reasoning[i]
        else:
            if self.settings.cot:
                conversations = [prompts.after_reasoning(prompts.pairwise_cot_conversation(*items[i], text=False),
                                                         reasoning[i]) for i in pending]
            else:
                conversations = [prompts.pairwise_label_conversation(*items[i]) for i in pending]
            results = self.backend.label_logprobs(conversations, prompts.LABELS)
            self._stage("labels", len(pending), 0, started)
            for i, result in zip(pending, results):
                a, b = (result.logprobs.get(label) for label in prompts.LABELS)
                if result.error:
                    records[i] = self._failed_record(keys[i], result.error)
                    continue
                normalised = normalise_labels(a, b, result.floor)
                records[i] = {"key": keys[i], "kind": "order", "p_first": normalised.p, "bounded": normalised.bounded,
                              "logprob_a": a, "logprob_b": b, "floor": result.floor, "error": normalised.error,
                              "transient": False}
                if reasoning[i] is not None:
                    records[i]["reasoning"] = reasoning[i]
        self._store([r for r in records if r is not None])

    @staticmethod
    def _failed_record(key: str, error: str) -> dict:
        """A request that failed for good this run: not a judgement, so it is redone on the next."""
        return {"key": key, "kind": "order", "p_first": None, "error": error, "transient": True}

    @staticmethod
    def _text_record(key: str, reply: str, last_line: bool) -> dict:
        label = parse_verdict(reply, last_line=last_line)
        record = {"key": key, "kind": "order", "reply": reply, "transient": False}
        if label is None:
            record.update(p_first=None, parse_failure=True,
                          error="verdict did not parse: " + repr(reply[-120:]))
        else:
            record.update(p_first=1.0 if label == "A" else 0.0, parse_failure=False, error=None)
        return record

    # -- combining -----------------------------------------------------------
    def verdict(self, comparison: Comparison) -> Verdict:
        """The verdict from cached judgements (an error when any needed one is missing or failed)."""
        verdict = Verdict(comparison.principle.id)
        records = [self.cache.get(k) for k in self.keys_for(comparison)]
        if self.settings.method == "likelihood":
            verdict.order_free = True
            if any(r is None for r in records):
                verdict.error = "not judged"
                return verdict
            failed = next((r for r in records if r.get("error")), None)
            if failed:
                verdict.error = failed["error"]
                return verdict
            x_follow, x_violate, y_follow, y_violate = (r["logprob"] for r in records)
            p = likelihood_probability(x_follow - x_violate, y_follow - y_violate, self.settings.likelihood_scale)
            verdict.p = verdict.p_x_first = verdict.p_x_second = p
            verdict.orders_agree = p != 0.5
            return verdict
        xy, yx = records
        if xy is None or yx is None:
            verdict.error = "not judged"
            return verdict
        verdict.parse_failures = sum(1 for r in (xy, yx) if r.get("parse_failure"))
        verdict.bounded = bool(xy.get("bounded") or yx.get("bounded"))
        p1, p2 = xy.get("p_first"), yx.get("p_first")
        if p1 is None or p2 is None:
            verdict.error = (xy if p1 is None else yx).get("error") or "no probability"
            return verdict
        if self.settings.cot and self.settings.cot_clamp and self.settings.method == "pairwise":
            p1, p2 = clamp(p1), clamp(p2)
        combined = combine_orders(p1, p2)
        verdict.p, verdict.p_x_first, verdict.p_x_second = combined.p, combined.p_x_first, combined.p_x_second
        verdict.orders_agree = combined.orders_agree
        verdict.first_wins = list(combined.first_wins)
        return verdict
