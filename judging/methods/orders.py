"""What the methods that show both responses as (A) and (B) share: both orders, reasoning, combining.

Each comparison is judged as (x, y) and as (y, x); each order's record holds
``p_first``, the probability that the option shown first won, and the two are
combined into P(x better) so that the position cannot decide the verdict.
With ``--cot`` the judge first writes its reasoning (greedy), and the verdict is
read after it.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import NamedTuple

from core.backends.base import Backend, Sampling
from core.schema import OrderJudgement

from ..refusal import outcome
from ..scoring import clamp, combine_orders
from .base import Comparison, JudgeMethod, Judgement, MethodOptions, Verdict


class Order(NamedTuple):
    """One order of a comparison: ``first`` shown as (A), ``second`` as (B)."""

    prompt: tuple
    first: str
    second: str
    question: str


@dataclass(frozen=True)
class CotOptions(MethodOptions):
    cot: bool = False
    cot_clamp: bool = True
    cot_max_tokens: int = 192

    def rules(self):
        return [("cot_max_tokens", self.cot_max_tokens >= 1, "must be >= 1")]


class BothOrders(JudgeMethod):
    supports_cot = True
    record_model = OrderJudgement
    Options = CotOptions
    #: Whether ``--cot`` probabilities are clamped (unless ``--no-cot-clamp``).
    clamps_cot: bool = False

    def key_fields(self) -> dict:
        fields = super().key_fields()
        fields["cot"] = self.settings.cot
        if self.settings.cot:
            fields["cot_max_tokens"] = self.settings.cot_max_tokens
        return fields

    def requests(self, comparison: Comparison) -> list[Order]:
        q = comparison.principle.comparison_question
        return [Order(comparison.prompt, comparison.x, comparison.y, q),
                Order(comparison.prompt, comparison.y, comparison.x, q)]

    @abstractmethod
    def cot_conversation(self, order: Order) -> list[dict]:
        """The conversation that asks for reasoning before the verdict."""

    @abstractmethod
    async def read_verdict(self, key: str, order: Order, reasoning: str | None, backend: Backend,
                           session: str | None) -> Judgement:
        """The order's record, read after its reasoning (``None`` without ``--cot``)."""

    async def judge(self, key: str, order: Order, backend: Backend, session: str | None = None) -> Judgement:
        reasoning, tokens = None, 0
        if self.settings.cot:
            reply = await backend.achat(self.cot_conversation(order),
                                        Sampling(max_tokens=self.settings.cot_max_tokens, temperature=0.0),
                                        session=session)
            if reply.error:
                return Judgement(failed_record(key, reply.error))
            reasoning, tokens = reply.text, reply.completion_tokens
        judgement = await self.read_verdict(key, order, reasoning, backend, session)
        return Judgement(judgement.record, tokens + judgement.output_tokens)

    def verdict(self, comparison: Comparison, records: list[dict | None]) -> Verdict:
        verdict = Verdict(comparison.principle.id)
        xy, yx = records
        if xy is None or yx is None:
            verdict.error = "not judged"
            return verdict
        verdict.parse_failures = sum(1 for r in (xy, yx) if r.get("parse_failure"))
        verdict.refused = any(outcome(r) == "refused" for r in (xy, yx))
        verdict.bounded = bool(xy.get("bounded") or yx.get("bounded"))
        p1, p2 = xy.get("p_first"), yx.get("p_first")
        if p1 is None or p2 is None:
            verdict.error = (xy if p1 is None else yx).get("error") or "no probability"
            return verdict
        if self.clamps_cot and self.settings.cot and self.settings.cot_clamp:
            p1, p2 = clamp(p1), clamp(p2)
        combined = combine_orders(p1, p2)
        verdict.p, verdict.p_x_first, verdict.p_x_second = combined.p, combined.p_x_first, combined.p_x_second
        verdict.orders_agree = combined.orders_agree
        verdict.first_wins = list(combined.first_wins)
        return verdict


def failed_record(key: str, error: str) -> dict:
    """A request that failed for good this run: not a judgement, so it is redone on the next."""
    return {"key": key, "kind": "order", "p_first": None, "error": error, "transient": True, "outcome": "error"}
