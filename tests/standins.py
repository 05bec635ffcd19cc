"""Stand-in backends for pure-logic and fault-injection tests (never for behaviour a user sees)."""

from __future__ import annotations

import contextlib

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


class FinishOrder:
    """Makes rows finish in a chosen order without timing: a row's call waits until every row that goes
    before it has made all its calls.

    ``rows``: how many rows will call (all in flight at once: the run's concurrency must allow it);
    ``calls_per_row``: the calls each makes; ``row_of(conversation)``: the row a call belongs to;
    ``rank(row)``: the order rows finish in (default: the highest row first, the reverse of the input).
    A call waits first for every row's first call, so the order does not depend on which rows started
    first; a row that never gets its turn fails the test after ``timeout`` seconds instead of hanging.
    """

    def __init__(self, rows: int, calls_per_row: int, row_of, rank=lambda row: -row, timeout: float = 60.0):
        self.rows, self.calls_per_row, self.row_of, self.rank, self.timeout = rows, calls_per_row, row_of, rank, timeout
        self.started: set = set()
        self.calls: dict = {}
        self._changed = None
        self.finished: list = []  # rows in the order their last call returned

    def _may_go(self, row) -> bool:
        return len(self.started) >= self.rows and all(
            self.calls.get(other, 0) >= self.calls_per_row for other in self.started if self.rank(other) < self.rank(row))

    @contextlib.asynccontextmanager
    async def turn(self, conversation):
        import asyncio

        if self._changed is None:
            self._changed = asyncio.Condition()
        row = self.row_of(conversation)
        async with self._changed:
            self.started.add(row)
            self._changed.notify_all()
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self._may_go(row)), self.timeout)
            except asyncio.TimeoutError:
                raise AssertionError(f"row {row} never got its turn: {len(self.started)} of {self.rows} rows "
                                     f"started, calls made {self.calls}") from None
        try:
            yield
        finally:
            async with self._changed:
                self.calls[row] = self.calls.get(row, 0) + 1
                if self.calls[row] == self.calls_per_row:
                    self.finished.append(row)
                self._changed.notify_all()


class NeverLoads(ScriptedBackend):
    """A backend that fails the test if a stage loads it: for runs that must start no engine (all done)."""

    name = "never-loads"

    def __init__(self, model: str = "never-loads"):
        super().__init__(model)

    @property
    def loaded(self) -> bool:
        return False

    def load(self):
        raise AssertionError("a finished output must not load a model")
