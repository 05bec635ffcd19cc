"""The AI judge: compares two responses under principles, with soft labels.

How a comparison is scored is its method's (``--method``; ``judging.methods``):
``likelihood``, ``pairwise`` or ``text``, each a strategy class in its own module.
The judge does what they share: it asks the method for the requests each
comparison needs, runs only those not in the cache (one batch per call), keeps
and persists the records, reports progress, and builds the backend only when
something is missing.

Judgements are cached by a key of everything that determines them (judge model,
method, the method's prompt version, the conversation, the responses, the
principle's question), so runs resume and only new comparisons reach the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

from core.backends.base import Backend

from .methods import Comparison, JudgeMethod, Verdict, method_class

__all__ = ["Comparison", "Judge", "JudgeSettings", "Verdict"]


@dataclass(frozen=True)
class JudgeSettings:
    model: str
    method: str = "likelihood"
    cot: bool = False
    cot_clamp: bool = True
    cot_max_tokens: int = 192
    likelihood_scale: float = 1.0
    constrained_verdict: bool = True

    @cached_property
    def strategy(self) -> JudgeMethod:
        """The method's strategy, built once (its prompt version is computed once); ValueError if unknown."""
        return method_class(self.method)(self)

    def as_dict(self) -> dict:
        return {"model": self.model, "method": self.method, "cot": self.cot, "cot_clamp": self.cot_clamp,
                "cot_max_tokens": self.cot_max_tokens, "likelihood_scale": self.likelihood_scale,
                "constrained_verdict": self.constrained_verdict, "prompts": self.strategy.prompt_version}


def is_valid_judgement(record) -> bool:
    """Whether a cached judgement can be used as it is (core.schema's JudgementRecord: a probability is a
    finite number in [0, 1], a log-likelihood a finite number <= 0); a hand-edited or damaged one is redone."""
    from pydantic import TypeAdapter, ValidationError

    from core.schema import JudgementRecord

    try:
        TypeAdapter(JudgementRecord).validate_python(record)
    except ValidationError:
        return False
    return True


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
        self.settings = settings
        self.method = settings.strategy
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

    def keys_for(self, comparison: Comparison) -> list[str]:
        return [self.method.key(request) for request in self.method.requests(comparison)]

    def judge(self, comparisons: Sequence[Comparison]) -> list[Verdict]:
        """A verdict per comparison, running only the judgements not in the cache."""
        todo: dict[str, object] = {}
        for comparison in comparisons:
            for request in self.method.requests(comparison):
                key = self.method.key(request)
                if key not in self.cache and key not in todo:
                    todo[key] = request
        if todo:
            self._store(self.method.run(todo, self.backend, self._stage))
        return [self.verdict(c) for c in comparisons]

    def verdict(self, comparison: Comparison) -> Verdict:
        """The verdict from cached judgements (an error when any needed one is missing or failed)."""
        return self.method.verdict(comparison, [self.cache.get(key) for key in self.keys_for(comparison)])

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
