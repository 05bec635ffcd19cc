"""``text``: a generated verdict, for endpoints without log-probabilities.

The reply must be the verdict and nothing else (a strict parse; a reply that does
not parse is a failure, never a guess).  By default it is constrained to "(A)" or
"(B)" (vLLM structured outputs), so it always parses; ``--no-constrained-verdict``
for endpoints without them.  With ``--cot`` the verdict is the reasoning's last
line or, when that is not a verdict, a constrained label asked for after it.
Both orders are judged; P(A) is 1 or 0.
"""

from __future__ import annotations

import time

from core.backends.base import Backend, Sampling

from .. import prompts
from ..scoring import parse_verdict
from .base import Stage
from .orders import BothOrders, Order, failed_record


class Text(BothOrders):
    description = "a generated verdict (constrained to a label by default), for endpoints without log-probabilities"

    def key_fields(self) -> dict:
        return {**super().key_fields(), "constrained_verdict": self.settings.constrained_verdict}

    def cot_conversation(self, order: Order) -> list[dict]:
        return prompts.pairwise_cot_conversation(*order, text=True)

    def read_verdicts(self, keys, orders, reasoning, pending, records, backend: Backend, stage: Stage) -> None:
        started = time.monotonic()
        constrained = self.settings.constrained_verdict
        if self.settings.cot:
            for i in pending:
                records[i] = text_record(keys[i], reasoning[i], last_line=True)
                records[i]["reasoning"] = reasoning[i]
            # Reasoning that does not end in a verdict: ask for one after it, constrained to a label.
            unstated = [i for i in pending if constrained and records[i]["parse_failure"]]
            conversations = [prompts.after_reasoning(self.cot_conversation(orders[i]), reasoning[i]) for i in unstated]
            sampling = Sampling(max_tokens=2, temperature=0.0, choices=prompts.LABELS)
        else:
            unstated = pending
            conversations = [prompts.pairwise_text_conversation(*orders[i]) for i in pending]
            sampling = Sampling(max_tokens=8, temperature=0.0, choices=prompts.VERDICTS if constrained else None)
        if not conversations:
            return
        replies = backend.chat(conversations, sampling)
        stage("verdict", len(unstated), sum(r.completion_tokens for r in replies), started)
        for i, reply in zip(unstated, replies):
            if reply.error:
                records[i] = failed_record(keys[i], reply.error)
                continue
            records[i] = text_record(keys[i], reply.text, last_line=False)
            if reasoning[i] is not None:
                records[i]["reasoning"] = reasoning[i]


def text_record(key: str, reply: str, last_line: bool) -> dict:
    label = parse_verdict(reply, last_line=last_line)
    record = {"key": key, "kind": "order", "reply": reply, "transient": False}
    if label is None:
        record.update(p_first=None, parse_failure=True, error="verdict did not parse: " + repr(reply[-120:]))
    else:
        record.update(p_first=1.0 if label == "A" else 0.0, parse_failure=False, error=None)
    return record
