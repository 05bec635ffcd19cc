"""``pairwise``: P(A) from the judge's next-token log-probabilities of the labels.

The judge sees the conversation, the comparison question and both responses as
(A) and (B); P(A) is read from the log-probabilities of "A" and "B" after
"The better response is (", normalised over the two (a label outside the top-k
tokens is bounded by the lowest of them, never taken as zero).  Both orders are
averaged.  With ``--cot`` the label is read after the reasoning and clamped to
[0.4, 0.6] unless ``--no-cot-clamp``, because reasoning makes it overconfident.
"""

from __future__ import annotations

import time

from core.backends.base import Backend

from .. import prompts
from ..scoring import normalise_labels
from .base import Stage
from .orders import BothOrders, Order, failed_record


class Pairwise(BothOrders):
    description = "P(A) from the label log-probabilities, both orders"
    clamps_cot = True

    def cot_conversation(self, order: Order) -> list[dict]:
        return prompts.pairwise_cot_conversation(*order, text=False)

    def read_verdicts(self, keys, orders, reasoning, pending, records, backend: Backend, stage: Stage) -> None:
        started = time.monotonic()
        if self.settings.cot:
            conversations = [prompts.after_reasoning(self.cot_conversation(orders[i]), reasoning[i]) for i in pending]
        else:
            conversations = [prompts.pairwise_label_conversation(*orders[i]) for i in pending]
        results = backend.label_logprobs(conversations, prompts.LABELS)
        stage("labels", len(pending), 0, started)
        for i, result in zip(pending, results):
            if result.error:
                records[i] = failed_record(keys[i], result.error)
                continue
            a, b = (result.logprobs.get(label) for label in prompts.LABELS)
            normalised = normalise_labels(a, b, result.floor)
            records[i] = {"key": keys[i], "kind": "order", "p_first": normalised.p, "bounded": normalised.bounded,
                          "logprob_a": a, "logprob_b": b, "floor": result.floor, "error": normalised.error,
                          "transient": False}
            if reasoning[i] is not None:
                records[i]["reasoning"] = reasoning[i]
