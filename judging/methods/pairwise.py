"""``pairwise``: P(A) from the judge's next-token log-probabilities of the labels.

The judge sees the conversation, the comparison question and both responses as
(A) and (B); P(A) is read from the log-probabilities of "A" and "B" after
"The better response is (", normalised over the two (a label outside the top-k
tokens is bounded by the lowest of them, never taken as zero).  Both orders are
averaged.  With ``--cot`` the label is read after the reasoning and clamped to
[0.4, 0.6] unless ``--no-cot-clamp``, because reasoning makes it overconfident.
"""

from __future__ import annotations

from core.backends.base import Backend

from .. import judge_prompts
from ..refusal import REFUSAL_LABEL_MASS, label_mass
from ..scoring import normalise_labels
from .base import Judgement
from .orders import BothOrders, Order, failed_record


class Pairwise(BothOrders):
    description = "P(A) from the label log-probabilities, both orders"
    clamps_cot = True

    def cot_conversation(self, order: Order) -> list[dict]:
        return judge_prompts.pairwise_cot_conversation(*order, text=False)

    async def read_verdict(self, key: str, order: Order, reasoning: str | None, backend: Backend,
                           session: str | None) -> Judgement:
        if reasoning is not None:
            conversation = judge_prompts.after_reasoning(self.cot_conversation(order), reasoning)
        else:
            conversation = judge_prompts.pairwise_label_conversation(*order)
        result = await backend.alabel_logprobs(conversation, judge_prompts.LABELS, session=session)
        if result.error:
            return Judgement(failed_record(key, result.error))
        a, b = (result.logprobs.get(label) for label in judge_prompts.LABELS)
        normalised = normalise_labels(a, b, result.floor)
        record = {"key": key, "kind": "order", "p_first": normalised.p, "bounded": normalised.bounded,
                  "logprob_a": a, "logprob_b": b, "floor": result.floor, "error": normalised.error, "transient": False,
                  "outcome": "error" if normalised.error else "judged"}
        mass = label_mass(a, b, result.floor)
        if mass is not None and mass < REFUSAL_LABEL_MASS:
            # The judge meant to say something other than a label: a refusal, not a verdict near 0.5.
            record.update(p_first=None, outcome="refused",
                          error=f"refused: the labels hold {mass:.2g} of the probability (< {REFUSAL_LABEL_MASS})")
        if reasoning is not None:
            record["reasoning"] = reasoning
        return Judgement(record)
