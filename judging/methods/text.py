"""``text``: a generated verdict, for endpoints without log-probabilities.

The reply must be the verdict and nothing else (a strict parse; a reply that does
not parse is a failure, never a guess).  By default it is constrained to "(A)" or
"(B)" (vLLM structured outputs), so it always parses; ``--no-constrained-verdict``
for endpoints without them.  With ``--cot`` the verdict is the reasoning's last
line or, when that is not a verdict, a constrained label asked for after it.
Both orders are judged; P(A) is 1 or 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.backends.base import Backend, Sampling

from .. import judge_prompts
from ..refusal import declines
from ..scoring import parse_verdict
from .base import Judgement
from .orders import BothOrders, CotOptions, Order, failed_record


@dataclass(frozen=True)
class TextOptions(CotOptions):
    constrained_verdict: bool = True


class Text(BothOrders):
    description = "a generated verdict (constrained to a label by default), for endpoints without log-probabilities"
    Options = TextOptions

    def key_fields(self) -> dict:
        return {**super().key_fields(), "constrained_verdict": self.settings.constrained_verdict}

    def cot_conversation(self, order: Order) -> list[dict]:
        return judge_prompts.pairwise_cot_conversation(*order, text=True)

    async def read_verdict(self, key: str, order: Order, reasoning: str | None, backend: Backend,
                           session: str | None) -> Judgement:
        constrained = self.settings.constrained_verdict
        if reasoning is not None:
            record = text_record(key, reasoning, last_line=True)
            record["reasoning"] = reasoning
            if not (constrained and record["parse_failure"]):
                return Judgement(record)
            # Reasoning that does not end in a verdict: ask for one after it, constrained to a label.
            conversation = judge_prompts.after_reasoning(self.cot_conversation(order), reasoning)
            sampling = Sampling(max_tokens=2, temperature=0.0, choices=judge_prompts.LABELS)
        else:
            conversation = judge_prompts.pairwise_text_conversation(*order)
            sampling = Sampling(max_tokens=8, temperature=0.0, choices=judge_prompts.VERDICTS if constrained else None)
        reply = await backend.achat(conversation, sampling, session=session)
        if reply.error:
            return Judgement(failed_record(key, reply.error))
        record = text_record(key, reply.text, last_line=False)
        if reasoning is not None:
            record["reasoning"] = reasoning
        return Judgement(record, reply.completion_tokens)


def text_record(key: str, reply: str, last_line: bool) -> dict:
    label = parse_verdict(reply, last_line=last_line)
    record = {"key": key, "kind": "order", "reply": reply, "transient": False}
    if label is None and declines(reply):
        record.update(p_first=None, parse_failure=False, outcome="refused",
                      error="refused: " + repr(reply[-120:]))
    elif label is None:
        record.update(p_first=None, parse_failure=True, outcome="parse_failure",
                      error="verdict did not parse: " + repr(reply[-120:]))
    else:
        record.update(p_first=1.0 if label == "A" else 0.0, parse_failure=False, outcome="judged", error=None)
    return record
