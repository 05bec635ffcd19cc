"""The counts a judge report is made of, and the figures computed from them.

Order consistency (the winner survives swapping the options) and the share of
single-order judgements won by the first option expose a position-biased judge;
mean confidence and how often the longer response wins expose a vague or
length-biased one.  A report keeps its counts (``JudgeReport.sums``), so the reports of a
sharded run's parts merge (``JudgeReport.merge``) into the report the unsharded run would write.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields

from .judge import Verdict

# Below these, the report says plainly that the judge is not to be trusted.
WEAK_ORDER_CONSISTENCY = 0.6
STRONG_POSITION_BIAS = 0.75


def _share(numerator: float, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


@dataclass
class ComparisonStats:
    comparisons: int = 0  # with a probability
    failures: int = 0
    parse_failures: int = 0
    bounded: int = 0
    orders_agree: int = 0
    order_free: int = 0
    single_orders: int = 0
    first_wins: int = 0
    confidence_sum: float = 0.0
    length_decided: int = 0
    longer_won: int = 0
    human_pairs: int = 0
    human_agree: float = 0.0
    human_ties: int = 0
    asked: int = 0  # comparisons judged, whatever came of them
    refusals: int = 0  # comparisons the judge declined (judging/refusal.py); not failures, not parse failures
    fallback: int = 0  # comparisons with a probability from the fallback judge

    def add(self, verdict: Verdict, x_len: int | None = None, y_len: int | None = None) -> None:
        self.parse_failures += verdict.parse_failures
        self.asked += 1
        self.refusals += int(verdict.refused)  # the first judge's refusal, whether or not the fallback answered
        if verdict.p is None:
            self.failures += int(not verdict.refused)
            return
        self.comparisons += 1
        self.fallback += int(verdict.fallback)
        self.bounded += int(verdict.bounded)
        self.orders_agree += int(bool(verdict.orders_agree))
        self.order_free += int(verdict.order_free)
        if not verdict.order_free:
            self.single_orders += 2
            self.first_wins += sum(verdict.first_wins)
        self.confidence_sum += max(verdict.p, 1 - verdict.p)
        if x_len is not None and y_len is not None and x_len != y_len and verdict.p != 0.5:
            self.length_decided += 1
            self.longer_won += int((verdict.p > 0.5) == (x_len > y_len))

    def merge(self, other: ComparisonStats) -> None:
        """Add another's counts (every field is a count or a sum)."""
        for name in (f.name for f in fields(self)):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @classmethod
    def from_sums(cls, sums: dict) -> ComparisonStats:
        """The stats whose counts are ``sums`` (``asdict`` of one); a damaged mapping is a ValueError."""
        if not isinstance(sums, dict) or set(sums) - {f.name for f in fields(cls)}:
            raise ValueError(f"not the sums of comparison stats: {sums!r:.80}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sums.values()):
            raise ValueError("comparison stats' sums are numbers")
        return cls(**sums)

    def add_human(self, p_human_choice: float | None) -> None:
        """One human-labelled pair: ``p_human_choice`` is the judge's P(the human's choice is better)."""
        if p_human_choice is None:
            return
        self.human_pairs += 1
        if p_human_choice > 0.5:
            self.human_agree += 1
        elif p_human_choice == 0.5:
            self.human_ties += 1

    def as_dict(self) -> dict:
        ordered = self.comparisons - self.order_free
        out = {
            "comparisons": self.comparisons,
            "failures": self.failures,
            "parse_failures": self.parse_failures,
            "refusals": self.refusals,
            "refusal_rate": _share(self.refusals, self.asked),
            "by_fallback_judge": self.fallback,
            "label_outside_top_k": self.bounded,
            "order_consistency": _share(self.orders_agree - self.order_free, ordered) if ordered else (
                1.0 if self.comparisons else None),
            "order_free_comparisons": self.order_free,
            "first_option_wins": _share(self.first_wins, self.single_orders),
            "mean_confidence": _share(self.confidence_sum, self.comparisons),
            "longer_response_wins": _share(self.longer_won, self.length_decided),
        }
        if self.human_pairs:
            from .scoring import wilson_interval

            low, high = wilson_interval(self.human_agree, self.human_pairs)
            out.update(
                human_pairs=self.human_pairs,
                agreement=_share(self.human_agree, self.human_pairs),
                agreement_ci95=[round(low, 4), round(high, 4)],
                ties=self.human_ties,
            )
        return out


@dataclass
class RevisedRows:
    """What became of the rows revised under one principle (revision mode): does the principle do anything?"""

    rows: int = 0
    flagged: int = 0
    flags_by_check: dict[str, int] = field(default_factory=dict)
    change_sum: float = 0.0  # share of the draft's words the revision changed, summed over rows
    pairs: int = 0
    revision_chosen: int = 0

    def add_row(self, flags: list[dict], change: float) -> None:
        self.rows += 1
        self.change_sum += change
        self.flagged += int(bool(flags))
        for name in dict.fromkeys(str(f.get("check")) for f in flags):
            self.flags_by_check[name] = self.flags_by_check.get(name, 0) + 1

    def merge(self, other: RevisedRows) -> None:
        for name in ("rows", "flagged", "change_sum", "pairs", "revision_chosen"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name, n in other.flags_by_check.items():
            self.flags_by_check[name] = self.flags_by_check.get(name, 0) + n

    def as_dict(self) -> dict:
        return {"rows": self.rows, "flagged": self.flagged,
                "flags_by_check": dict(sorted(self.flags_by_check.items(), key=lambda kv: (-kv[1], kv[0]))),
                "revision_change": _share(self.change_sum, self.rows), "pairs": self.pairs,
                "revision_preferred": _share(self.revision_chosen, self.pairs)}


def revision_change(draft: str, revision: str) -> float:
    """How much of the draft the revision changed: 1 - the similarity of their words (0: the same, 1: all new)."""
    import difflib

    return 1.0 - difflib.SequenceMatcher(None, draft.split(), revision.split(), autojunk=False).ratio()


@dataclass
class JudgeReport:
    overall: ComparisonStats = field(default_factory=ComparisonStats)
    per_principle: dict[str, ComparisonStats] = field(default_factory=lambda: defaultdict(ComparisonStats))
    rows: int = 0
    pairs_made: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    chosen_longer: int = 0
    chosen_is_revision: int = 0
    orders_agree_pairs: int = 0
    flagged_rows: int = 0
    flagged_left_out: int = 0
    flagged_by_check: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    judges: dict[str, ComparisonStats] = field(default_factory=lambda: defaultdict(ComparisonStats))  # several judges
    judges_agree: dict[str, list[int]] = field(default_factory=dict)  # "a | b" -> [both answered, agreed]
    handed_to_fallback: int = 0  # comparisons given to the fallback judge
    beyond_fallback_limit: int = 0  # comparisons left without a verdict because --fallback-limit was reached
    revised: dict[str, RevisedRows] = field(default_factory=lambda: defaultdict(RevisedRows))  # by revision principle
    duplicate_rows: int = 0
    duplicate_left_out: int = 0
    duplicates_by_kind: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    duplicate_examples: list[dict] = field(default_factory=list)

    #: the plain counts of a report (besides its stats and its counts by reason or check)
    COUNTS = ("rows", "pairs_made", "chosen_longer", "chosen_is_revision", "orders_agree_pairs", "flagged_rows",
              "flagged_left_out", "duplicate_rows", "duplicate_left_out", "handed_to_fallback", "beyond_fallback_limit")
    #: counts added later: a report written before them reads them as 0
    LATER_COUNTS = ("duplicate_rows", "duplicate_left_out", "handed_to_fallback", "beyond_fallback_limit")
    EXAMPLES = 5

    def add_duplicate(self, duplicate: dict, kept: bool) -> None:
        """One input row that repeats an earlier one (core/dedup.py; with the ids, lines and texts of both, from
        ``judging.items.find_repeats``); a row left out counts here, not as a pair."""
        self.duplicate_rows += 1
        self.duplicates_by_kind[f"{duplicate['field']}_{duplicate['kind']}"] += 1
        if len(self.duplicate_examples) < self.EXAMPLES:
            self.duplicate_examples.append(duplicate)
        if not kept:
            self.rows += 1
            self.duplicate_left_out += 1

    def add_flags(self, flags: list[dict], kept: bool) -> None:
        """One input row's generation flags (generation/checks.py); a row left out counts here, not as a pair."""
        if not flags:
            return
        self.flagged_rows += 1
        for name in dict.fromkeys(f.get("check") for f in flags):
            self.flagged_by_check[name] += 1
        if not kept:
            self.rows += 1
            self.flagged_left_out += 1

    def add_revised(self, principle_ids: list[str], flags: list[dict], change: float) -> None:
        """One revision-mode row: the principles it was revised under, its flags and how much it changed."""
        for pid in dict.fromkeys(p for p in principle_ids if p):
            self.revised[pid].add_row(flags, change)

    def add_revision_pair(self, principle_ids: list[str], pair: dict | None) -> None:
        """The pair a revised row made (None: none): did the judge prefer the revision?"""
        if pair is None:
            return
        for pid in dict.fromkeys(p for p in principle_ids if p):
            self.revised[pid].pairs += 1
            self.revised[pid].revision_chosen += int(pair.get("source", {}).get("chosen") == "final_response")

    def add(self, verdict: Verdict, x_len: int | None = None, y_len: int | None = None) -> None:
        self.overall.add(verdict, x_len, y_len)
        self.per_principle[verdict.principle_id].add(verdict, x_len, y_len)
        if verdict.by_judge:
            from .ensemble import mutual_agreement

            for name, own in verdict.by_judge.items():
                self.judges[name].add(own, x_len, y_len)
            for pair, agreed in mutual_agreement(verdict.by_judge):
                counts = self.judges_agree.setdefault(pair, [0, 0])
                counts[0] += 1
                counts[1] += int(agreed)

    def add_pair(self, pair: dict | None, reason: str | None = None) -> None:
        self.rows += 1
        if pair is None:
            self.dropped[reason or "dropped"] += 1
            return
        self.pairs_made += 1
        chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        self.chosen_longer += int(len(chosen) > len(rejected))
        self.orders_agree_pairs += int(bool(pair.get("orders_agree")))
        self.chosen_is_revision += int(pair.get("source", {}).get("chosen") == "final_response")

    def merge(self, other: JudgeReport) -> None:
        """Add another report's counts (a shard part's): its figures are then those of the pooled rows."""
        self.overall.merge(other.overall)
        for pid, stats in other.per_principle.items():
            self.per_principle[pid].merge(stats)
        for key, n in other.dropped.items():
            self.dropped[key] += n
        for key, n in other.flagged_by_check.items():
            self.flagged_by_check[key] += n
        for key, n in other.duplicates_by_kind.items():
            self.duplicates_by_kind[key] += n
        # the first by input line, as one report of all the rows keeps them
        self.duplicate_examples = sorted(self.duplicate_examples + other.duplicate_examples,
                                         key=lambda e: e.get("line") or 0)[:self.EXAMPLES]
        for name in self.COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name, stats in other.judges.items():
            self.judges[name].merge(stats)
        for pid, rows in other.revised.items():
            self.revised[pid].merge(rows)
        for pair, (both, agreed) in other.judges_agree.items():
            counts = self.judges_agree.setdefault(pair, [0, 0])
            counts[0] += both
            counts[1] += agreed

    def sums(self) -> dict:
        """The counts every figure of the report is computed from (kept in the report, for ``merge``)."""
        return {"overall": asdict(self.overall),
                "per_principle": {pid: asdict(stats) for pid, stats in sorted(self.per_principle.items())},
                "dropped": dict(sorted(self.dropped.items())),
                "flagged_by_check": dict(sorted(self.flagged_by_check.items())),
                "duplicates_by_kind": dict(sorted(self.duplicates_by_kind.items())),
                "duplicate_examples": list(self.duplicate_examples),
                **({"revised": {pid: asdict(rows) for pid, rows in sorted(self.revised.items())}}
                   if self.revised else {}),
                **({"judges": {name: asdict(stats) for name, stats in sorted(self.judges.items())},
                    "judges_agree": dict(sorted(self.judges_agree.items()))} if self.judges else {}),
                **{name: getattr(self, name) for name in self.COUNTS}}

    @classmethod
    def from_sums(cls, sums: dict) -> JudgeReport:
        """The report whose counts are ``sums`` (``JudgeReport.sums()``); damaged sums are a ValueError."""
        if not isinstance(sums, dict):
            raise ValueError("a report's sums are a mapping")
        report = cls(overall=ComparisonStats.from_sums(sums.get("overall")))
        principles = sums.get("per_principle")
        if not isinstance(principles, dict):
            raise ValueError("a report's sums have per_principle")
        for pid, stats in principles.items():
            report.per_principle[pid] = ComparisonStats.from_sums(stats)
        sums = {"duplicates_by_kind": {}, "duplicate_examples": [], **{name: 0 for name in cls.LATER_COUNTS}, **sums}
        if not isinstance(sums["duplicate_examples"], list):
            raise ValueError("a report's sums have duplicate_examples: a list")
        report.duplicate_examples = [e for e in sums["duplicate_examples"] if isinstance(e, dict)][:cls.EXAMPLES]
        for name in ("dropped", "flagged_by_check", "duplicates_by_kind"):
            counts = sums.get(name)
            if not isinstance(counts, dict) or not all(type(n) is int for n in counts.values()):
                raise ValueError(f"a report's sums have {name}: counts by name")
            getattr(report, name).update(counts)
        for pid, rows in (sums.get("revised") or {}).items():  # absent in older reports
            try:
                report.revised[pid] = RevisedRows(**rows)
            except TypeError:
                raise ValueError("a report's sums have revised: counts by principle") from None
        for name, stats in (sums.get("judges") or {}).items():  # absent in reports of one judge
            report.judges[name] = ComparisonStats.from_sums(stats)
        for pair, counts in (sums.get("judges_agree") or {}).items():
            if not (isinstance(counts, list) and len(counts) == 2 and all(type(n) is int for n in counts)):
                raise ValueError("a report's sums have judges_agree: [both, agreed] by pair of judges")
            report.judges_agree[pair] = list(counts)
        for name in cls.COUNTS:
            if type(sums.get(name)) is not int:
                raise ValueError(f"a report's sums have {name}: a count")
            setattr(report, name, sums[name])
        return report

    def warnings(self) -> list[str]:
        stats = self.overall.as_dict()
        found = []
        consistency, first = stats["order_consistency"], stats["first_option_wins"]
        if stats["comparisons"] and stats["order_free_comparisons"] < stats["comparisons"]:
            if consistency is not None and consistency < WEAK_ORDER_CONSISTENCY:
                found.append(
                    f"order consistency is {consistency:.0%}: the winner often changes when the options swap, so this "
                    "judge mostly reacts to position; its soft labels stay near 0.5. Try a stronger judge "
                    "(--judge-model FOLDER or --judge-backend openai --judge-base-url URL)."
                )
            if first is not None and (first > STRONG_POSITION_BIAS or first < 1 - STRONG_POSITION_BIAS):
                found.append(f"the first option wins {first:.0%} of single-order judgements: a strong position bias "
                             "(both orders are averaged, which cancels it, but little signal is left).")
        if stats["comparisons"] and stats["mean_confidence"] is not None and stats["mean_confidence"] < 0.55:
            found.append(f"mean confidence is {stats['mean_confidence']:.2f}: the judge barely prefers either response.")
        if stats["failures"]:
            found.append(f"{stats['failures']} comparison(s) failed (see the errors file); they made no pairs.")
        if stats["refusals"]:
            refusing = [pid for pid, s in sorted(self.per_principle.items()) if s.refusals]
            found.append(f"the judge refused {stats['refusals']} comparison(s) ({stats['refusal_rate']:.0%}; under "
                         f"{', '.join(refusing[:6])}{', ...' if len(refusing) > 6 else ''})"
                         + (f"; the fallback judge answered {stats['by_fallback_judge']} comparison(s)"
                            if stats["by_fallback_judge"] else "")
                         + f"; {self.overall.asked - self.overall.comparisons} comparison(s) are left out without "
                         "a verdict, never scored 0.5"
                         + ("" if stats["by_fallback_judge"] else " (--fallback-judge-model gives them to another judge)"))
        return found

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "pairs_made": self.pairs_made,
            "pairs_dropped": sum(self.dropped.values()),
            "flagged_rows": self.flagged_rows,
            "flagged_rows_left_out": self.flagged_left_out,
            "flagged_by_check": dict(sorted(self.flagged_by_check.items(), key=lambda kv: (-kv[1], kv[0]))),
            "duplicate_rows": self.duplicate_rows,
            "duplicate_rows_left_out": self.duplicate_left_out,
            "duplicates_by_kind": dict(sorted(self.duplicates_by_kind.items())),
            "duplicate_examples": list(self.duplicate_examples),
            "dropped_by_reason": dict(sorted(self.dropped.items())),
            "pairs_with_orders_agreeing": self.orders_agree_pairs,
            "chosen_is_longer": _share(self.chosen_longer, self.pairs_made),
            "chosen_is_revision": _share(self.chosen_is_revision, self.pairs_made),
            "handed_to_fallback": self.handed_to_fallback,
            "beyond_fallback_limit": self.beyond_fallback_limit,
            **self.overall.as_dict(),
            "per_principle": {pid: stats.as_dict() for pid, stats in sorted(self.per_principle.items())},
            **({"revised_per_principle": {pid: rows.as_dict() for pid, rows in sorted(self.revised.items())}}
               if self.revised else {}),
            **({"judges": {name: stats.as_dict() for name, stats in sorted(self.judges.items())},
                "judges_agree": judges_agreement(self.judges_agree)} if self.judges else {}),
            "warnings": self.warnings(),
            "sums": self.sums(),
        }


def judges_agreement(counts: dict[str, list[int]]) -> dict[str, dict]:
    """How often every two judges pick the same response, of the comparisons both answered, with its interval."""
    from .scoring import wilson_interval

    out = {}
    for pair, (both, agreed) in sorted(counts.items()):
        low, high = wilson_interval(agreed, both)
        out[pair] = {"comparisons": both, "agreement": _share(agreed, both),
                     "agreement_ci95": [round(low, 4), round(high, 4)] if both else None}
    return out
