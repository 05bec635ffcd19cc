"""Stand-in judge backends for pure-logic and fault-injection tests (never for behaviour a user sees)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from typing import Literal, NamedTuple

from core.backends.base import Backend, Completion, LabelLogprobs, SequenceLogprob
from core.schema import CachedJudgement
from judging.methods.base import JudgeMethod, Judgement, Verdict

_BLOCK = re.compile(r"<response (A|B)>\n(.*?)\n</response \1>", re.S)


def options(conversation) -> dict[str, str]:
    """The texts shown as (A) and (B) in a pairwise judge conversation."""
    text = conversation[0]["content"]
    return {m.group(1): m.group(2) for m in _BLOCK.finditer(text)}


def quality(text: str) -> int:
    return text.count("GOOD") - text.count("BAD")


class PreferenceBackend(Backend):
    """Prefers responses with more "GOOD" than "BAD"; can add a bias towards option (A).

    ``missing``: "B" drops label B from the top tokens (the floor applies);
    ``verdicts``: replies for the text method, in turn;
    ``order``: a ``standins.FinishOrder`` that holds each request until its row's turn (without one a request
    still yields to the event loop, as a real backend does, so the requests in flight interleave).
    """

    name = "preference"

    def __init__(self, model="stand-in-judge", position_bias=0.0, missing=None, verdicts=None, fail_when=None,
                 order=None):
        super().__init__(model)
        self.order = order
        self.position_bias = position_bias
        self.missing = missing
        self.verdicts = list(verdicts or [])
        self.fail_when = fail_when or (lambda conversation: False)
        self.label_calls = self.chat_calls = self.likelihood_calls = 0
        self.seen: list = []
        self.samplings: list = []

    def label_logprobs(self, conversations, labels):
        out = []
        for conversation in conversations:
            self.label_calls += 1
            self.seen.append(conversation)
            if self.fail_when(conversation):
                out.append(LabelLogprobs({label: None for label in labels}, error="HTTP 500: boom"))
                continue
            shown = options(conversation)
            diff = quality(shown["A"]) - quality(shown["B"]) + self.position_bias
            a, b = math.log(1 / (1 + math.exp(-diff))), math.log(1 / (1 + math.exp(diff)))
            values = {"A": a, "B": b}
            if self.missing:
                values[self.missing] = None
            out.append(LabelLogprobs(values, floor=min(v for v in (a, b)) - 1.0))
        return out

    def chat(self, conversations, sampling, seeds=None):
        out = []
        self.samplings.append(sampling)
        for i, conversation in enumerate(conversations):
            self.chat_calls += 1
            self.seen.append(conversation)
            if self.verdicts:
                text = self.verdicts.pop(0)
            elif conversation[0]["role"] == "user" and "<response A>" in conversation[0]["content"]:
                shown = options(conversation)
                better = "A" if quality(shown["A"]) >= quality(shown["B"]) else "B"
                if sampling.choices:  # as structured outputs would: one of the choices, nothing else
                    text = next(choice for choice in sampling.choices if better in choice)
                else:
                    text = f"Reasoning about it.\nAnswer: ({better})"
            else:
                seed = (seeds or [None] * len(conversations))[i] or 0
                text = ["GOOD answer", "BAD answer", "plain answer", "GOOD GOOD answer"][seed % 4]
            out.append(Completion(text=text, finish_reason="stop", prompt_tokens=10, completion_tokens=3))
        return out

    async def _turn(self, conversation):
        if self.order is None:
            await asyncio.sleep(0)
            return contextlib.nullcontext()
        return self.order.turn(conversation)

    async def achat(self, conversation, sampling, seed=None, session=None):
        async with await self._turn(conversation):
            return self.chat([conversation], sampling, [seed])[0]

    async def alabel_logprobs(self, conversation, labels, session=None):
        async with await self._turn(conversation):
            return self.label_logprobs([conversation], labels)[0]

    async def aresponse_logprobs(self, conversation, session=None):
        async with await self._turn(conversation):
            return self.response_logprobs([conversation])[0]

    def response_logprobs(self, conversations):
        out = []
        for conversation in conversations:
            self.likelihood_calls += 1
            follow = "careful reviewer would pick" in conversation[0]["content"]
            q = quality(conversation[-1]["content"])
            out.append(SequenceLogprob(-10.0 + (q if follow else -q), tokens=5))
        return out


class Length(NamedTuple):
    response: str


class LengthJudgement(CachedJudgement):
    """ShorterWins's cache record."""

    kind: Literal["length"]
    length: int


class ShorterWins(JudgeMethod):
    """A judge method added the way a new one is (a module and a registry line): the shorter response wins."""

    description = "the shorter response wins"
    record_model = LengthJudgement

    def requests(self, comparison):
        return [Length(comparison.x), Length(comparison.y)]

    async def judge(self, key, request, backend, session=None):
        return Judgement({"key": key, "kind": "length", "length": len(request.response), "transient": False})

    def verdict(self, comparison, records):
        verdict = Verdict(comparison.principle.id, order_free=True)
        if any(r is None for r in records):
            verdict.error = "not judged"
            return verdict
        x, y = (r["length"] for r in records)
        verdict.p = verdict.p_x_first = verdict.p_x_second = 0.5 if x == y else float(x < y)
        return verdict


REFUSAL = "I'm sorry, but I can't help compare responses about this."


class RefusingBackend(PreferenceBackend):
    """A judge that declines the comparisons ``refuse_when(conversation)`` picks, in the form of its method:
    a declining reply for the text method (unconstrained: structured outputs would force a label), or label
    log-probabilities with almost no mass on (A) and (B) for the pairwise method (a model that meant to say
    something else).  It judges the others as ``PreferenceBackend`` does."""

    name = "refusing"

    def __init__(self, refuse_when, **kwargs):
        super().__init__(**kwargs)
        self.refuse_when = refuse_when
        self.refused = 0

    def label_logprobs(self, conversations, labels):
        out = []
        for conversation in conversations:
            if self.refuse_when(conversation):
                self.label_calls += 1
                self.refused += 1
                out.append(LabelLogprobs({"A": -8.0, "B": -8.5}, floor=-9.0))  # P(A) + P(B) = 5e-4
            else:
                out.extend(super().label_logprobs([conversation], labels))
        return out

    def chat(self, conversations, sampling, seeds=None):
        out = []
        for i, conversation in enumerate(conversations):
            if "<response A>" not in conversation[0]["content"] or sampling.choices:
                out.extend(super().chat([conversation], sampling, [(seeds or [None] * len(conversations))[i]]))
                continue
            self.chat_calls += 1
            if self.refuse_when(conversation):
                self.refused += 1
                out.append(Completion(text=REFUSAL, finish_reason="stop", prompt_tokens=10, completion_tokens=12))
            else:  # the verdict alone, as the text method asks
                shown = options(conversation)
                better = "A" if quality(shown["A"]) >= quality(shown["B"]) else "B"
                out.append(Completion(text=f"({better})", finish_reason="stop", prompt_tokens=10, completion_tokens=3))
        return out


class FixedBackend(PreferenceBackend):
    """A judge whose P(A) for each conversation is ``p_first(conversation)`` (for combining judges by hand)."""

    name = "fixed"

    def __init__(self, p_first, **kwargs):
        super().__init__(**kwargs)
        self.p_first = p_first

    def label_logprobs(self, conversations, labels):
        self.label_calls += len(conversations)
        return [LabelLogprobs({"A": math.log(p), "B": math.log(1 - p)}, floor=-20.0)
                for p in (self.p_first(c) for c in conversations)]
