"""``likelihood``: each response scored alone, by how much more likely it is under the principle.

A response's score is its log-likelihood as the reply of an assistant told to
follow the principle minus that as the reply of one told to violate it (a
contrastive score in the spirit of RLCD); P(x better) = sigmoid(scale *
(score_x - score_y)).  No order exists, so none can bias it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from core.backends.base import Backend
from core.schema import LikelihoodJudgement

from .. import judge_prompts
from ..scoring import likelihood_probability
from .base import Comparison, JudgeMethod, Judgement, MethodOptions, Verdict


class Scored(NamedTuple):
    """One response as the reply of an assistant told to follow (or violate) the principle."""

    prompt: tuple
    response: str
    question: str
    follow: bool


@dataclass(frozen=True)
class LikelihoodOptions(MethodOptions):
    likelihood_scale: float = 1.0

    def rules(self):
        return [("likelihood_scale", self.likelihood_scale > 0, "must be > 0")]


class Likelihood(JudgeMethod):
    record_model = LikelihoodJudgement
    Options = LikelihoodOptions
    description = ("each response's log-likelihood under a principle-following minus a principle-violating "
                   "instruction (the best on the bundled human labels with the default model)")

    def requests(self, comparison: Comparison) -> list[Scored]:
        q = comparison.principle.comparison_question
        return [Scored(comparison.prompt, response, q, follow) for response in (comparison.x, comparison.y)
                for follow in (True, False)]

    async def judge(self, key: str, request: Scored, backend: Backend, session: str | None = None) -> Judgement:
        result = await backend.aresponse_logprobs(judge_prompts.likelihood_conversation(*request), session=session)
        return Judgement({"key": key, "kind": "likelihood", "logprob": result.logprob, "tokens": result.tokens,
                          "error": result.error, "transient": result.error is not None})

    def verdict(self, comparison: Comparison, records: list[dict | None]) -> Verdict:
        verdict = Verdict(comparison.principle.id, order_free=True)
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
