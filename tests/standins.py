"""Stand-in backends for pure-logic and fault-injection tests (never for behaviour a user sees)."""

from __future__ import annotations

from core.backends.base import Backend, Completion, LabelLogprobs


class ScriptedBackend(Backend):
    """Replies deterministically from the conversation; can fail chosen prompts."""

    name = "scripted"

    def __init__(self, model: str = "scripted", fail_when=None):
        super().__init__(model)
        self.calls: list[list[dict]] = []
        self.fail_when = fail_when or (lambda conversation: False)

    def chat(self, conversations, sampling, seeds=None):
        out = []
        for conversation in conversations:
            self.calls.append(list(conversation))
            if self.fail_when(conversation):
                out.append(Completion(text="", finish_reason="error", error="HTTP 400: context length exceeded"))
                continue
            last = conversation[-1]["content"]
            text = f"reply#{len(conversation)} to: {last[:40]}"
            out.append(Completion(text=text, finish_reason="stop", prompt_tokens=len(conversation) * 10,
                                  completion_tokens=len(text.split())))
        return out

    def label_logprobs(self, conversations, labels):
        return [LabelLogprobs({label: -1.0 for label in labels}, floor=-5.0) for _ in conversations]
