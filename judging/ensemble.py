"""Several judges, combined, and a fallback judge for what they leave unanswered.

``--judge-model`` is the first judge; ``--extra-judge-models`` adds more (on the same
backend and endpoint).  Every judge judges every comparison, and their verdicts are
combined by ``--combine-judges``:

- ``mean``: P(x better) is the mean of the judges' probabilities (each order's too);
- ``majority``: each judge votes for the response it gives more than 0.5 (a judge at
  exactly 0.5 abstains); P(x better) is the share of the votes for x, 0.5 when the votes
  are even.

A judge without a probability (it refused, failed or could not parse) is left out of
the combination; when none has one, the comparison has none.  Each judge's verdict is
kept on the combined one (``Verdict.by_judge``), so the report gives each judge's own
figures and how often every two of them agree.

The judgement cache is one mapping for all of them: a judgement's key holds its judge
model, so each judge's records stay apart, and adding a judge to a run reuses the
others' judgements and runs only the new judge's.

``--fallback-judge-model`` takes the comparisons left without a probability (the judges
refused them or could not answer), at most ``--fallback-limit`` of them; its verdict
replaces the empty one and is marked as the fallback's.  Without a fallback (or beyond
its limit) such comparisons are left out of the pairs and counted, never scored 0.5.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from core import aio
from core.backends.base import Backend
from core.progress import Progress

from .judge import Comparison, Judge, Judged, JudgeSettings, Verdict
from .scoring import COMBINATIONS



def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _vote(values: list[float]) -> float | None:
    """The share of non-abstaining votes for x; 0.5 when they are even (or every judge abstains)."""
    for_x = sum(1 for v in values if v > 0.5)
    for_y = sum(1 for v in values if v < 0.5)
    return 0.5 if for_x == for_y else for_x / (for_x + for_y)


def combine(verdicts: Sequence[Verdict], names: Sequence[str], how: str = "mean") -> Verdict:
    """One verdict from several judges' verdicts of the same comparison (``how``: ``mean`` or ``majority``)."""
    first = verdicts[0]
    combined = Verdict(first.principle_id, order_free=all(v.order_free for v in verdicts),
                       by_judge=dict(zip(names, verdicts)))
    combined.parse_failures = sum(v.parse_failures for v in verdicts)
    combined.bounded = any(v.bounded for v in verdicts if v.p is not None)
    answered = [v for v in verdicts if v.p is not None]
    if not answered:
        combined.refused = any(v.refused for v in verdicts)
        combined.error = "every judge refused" if all(v.refused for v in verdicts) else next(
            (v.error for v in verdicts if v.error), "no verdict")
        return combined
    pool = _mean if how == "mean" else _vote
    combined.p = pool([v.p for v in answered])
    combined.p_x_first = pool([v.p_x_first for v in answered])
    combined.p_x_second = pool([v.p_x_second for v in answered])
    if combined.order_free:
        combined.orders_agree = combined.p != 0.5
    else:
        combined.orders_agree = (combined.p_x_first - 0.5) * (combined.p_x_second - 0.5) > 0
        combined.first_wins = [combined.p_x_first > 0.5, combined.p_x_second < 0.5]
    return combined


def same_side(p: float, q: float) -> bool:
    """Whether two probabilities of x being better pick the same response (two exact ties agree too)."""
    return (p > 0.5 and q > 0.5) or (p < 0.5 and q < 0.5) or (p == 0.5 and q == 0.5)


def mutual_agreement(by_judge: dict[str, Verdict]) -> list[tuple[str, bool]]:
    """For every two judges that both gave a probability: ``("a | b", whether they pick the same response)``."""
    names = sorted(by_judge)
    return [(f"{a} | {b}", same_side(by_judge[a].p, by_judge[b].p))
            for i, a in enumerate(names) for b in names[i + 1:]
            if by_judge[a].p is not None and by_judge[b].p is not None]


class JudgePanel:
    """The judges of a run (one or several, combined) and an optional fallback; ``ajudge`` as ``Judge``'s."""

    def __init__(self, members: list[Judge], how: str = "mean", fallback: Judge | None = None,
                 fallback_limit: int | None = None):
        if how not in COMBINATIONS:
            raise ValueError(f"unknown combination {how!r}; choose one of {', '.join(COMBINATIONS)}")
        self.members = members
        self.how = how
        self.fallback = fallback
        self.fallback_limit = fallback_limit
        self.cache = members[0].cache
        for judge in [*members[1:], *([fallback] if fallback else [])]:
            judge.cache = self.cache  # one cache: keys hold the judge model, so each judge's records stay apart
        self.handed_to_fallback = 0  # comparisons given to the fallback judge
        self.beyond_fallback_limit = 0  # comparisons left without a verdict because the limit was reached
        self._owned: list[Backend] = []

    @property
    def names(self) -> list[str]:
        return [judge.settings.model for judge in self.members]

    @property
    def settings(self) -> JudgeSettings:
        """The first judge's settings (what rows name as their judge when there is one)."""
        return self.members[0].settings

    @property
    def calls(self) -> int:
        return sum(judge.calls for judge in self._all())

    def _all(self) -> list[Judge]:
        return [*self.members, *([self.fallback] if self.fallback else [])]

    def identity(self) -> dict:
        """What the pairs depend on: every judge's settings, how they combine, and the fallback."""
        out = self.settings.as_dict()
        if len(self.members) > 1:
            out = {**out, "judges": [judge.settings.as_dict() for judge in self.members], "combine": self.how}
        if self.fallback is not None:
            out = {**out, "fallback": self.fallback.settings.as_dict(), "fallback_limit": self.fallback_limit}
        return out

    def pending_keys(self, comparisons: Iterable[Comparison]) -> set[str]:
        """The judgements the judges need for these comparisons that are not in the cache (the fallback's are not
        known until the judges answer)."""
        comparisons = list(comparisons)
        return {key for judge in self.members for key in judge.pending_keys(comparisons)}

    @property
    def progress(self) -> Progress | None:
        return self.members[0].progress

    @progress.setter
    def progress(self, value: Progress | None) -> None:
        for judge in self.members:
            judge.progress = value

    def missing(self, comparisons: Sequence[Comparison]) -> bool:
        return any(judge.missing(comparisons) for judge in self.members)

    def start(self) -> None:
        """Load every judge's backend now, in the caller's thread (never on the event loop)."""
        for judge in self._all():
            judge.backend  # noqa: B018 - loaded here

    @property
    def concurrency(self) -> int | None:
        return self.members[0].concurrency

    @concurrency.setter
    def concurrency(self, value: int | None) -> None:
        for judge in self._all():
            judge.concurrency = value

    def close(self) -> None:
        for backend in self._owned:
            backend.close()
        self._owned.clear()

    async def ajudge(self, comparisons: Sequence[Comparison], session: str | None = None) -> Judged:
        results = await aio.gather([judge.ajudge(comparisons, session) for judge in self.members])
        records = [record for result in results for record in result.records]
        tokens = sum(result.output_tokens for result in results)
        if len(self.members) == 1:
            verdicts = list(results[0].verdicts)
        else:
            verdicts = [combine([result.verdicts[i] for result in results], self.names, self.how)
                        for i in range(len(comparisons))]
        unanswered = [i for i, v in enumerate(verdicts) if v.p is None]
        if self.fallback is not None and unanswered:
            room = len(unanswered) if self.fallback_limit is None else max(
                0, self.fallback_limit - self.handed_to_fallback)
            taken, left = unanswered[:room], unanswered[room:]
            # Counted before the await: rows run concurrently, and the limit holds across all of them.
            self.handed_to_fallback += len(taken)
            self.beyond_fallback_limit += len(left)
            if taken:
                backup = await self.fallback.ajudge([comparisons[i] for i in taken], session)
                records += backup.records
                tokens += backup.output_tokens
                for i, answer in zip(taken, backup.verdicts):
                    first = verdicts[i]
                    verdicts[i] = replace(answer, refused=first.refused or answer.refused,
                                          parse_failures=first.parse_failures + answer.parse_failures,
                                          judge=self.fallback.settings.model, fallback=answer.p is not None,
                                          by_judge=first.by_judge)
        return Judged(verdicts, records, tokens)


def build_panel(config, first: Judge, backends: dict[str, Backend] | None = None) -> JudgePanel:
    """The panel of a judge config (``judging.config.JudgeModelConfig``): ``first`` (``--judge-model``), its
    ``--extra-judge-models`` and its ``--fallback-judge-model``.  ``backends``: the caller's engines for some of
    them, by model name (tests); the others are built here, loaded when first needed and closed with the panel."""
    from core.backends.registry import build_backend

    from .engines import judge_settings

    backends = backends or {}
    panel_members: list[Judge] = [first]
    built: list[Backend] = []

    def backend_of(backend_name: str, model: str, options) -> Backend:
        if model in backends:
            return backends[model]
        built.append(build_backend(backend_name, model, options))
        return built[-1]

    base = judge_settings(config)
    for backend_name, model, identity, options in config.extra_judges():
        panel_members.append(Judge(replace(base, model=identity), backend=backend_of(backend_name, model, options),
                                   concurrency=first.concurrency))
    fallback = None
    if config.fallback_judge_model:
        backend_name, model, identity, options = config.fallback_judge()
        fallback = Judge(replace(base, model=identity), backend=backend_of(backend_name, model, options),
                         concurrency=first.concurrency)
    panel = JudgePanel(panel_members, config.combine_judges, fallback, config.fallback_limit)
    panel._owned = built  # closed with the panel
    return panel
