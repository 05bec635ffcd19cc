"""Judge statistics: how far its labels can be trusted, overall and per principle.

Order consistency (the winner survives swapping the options) and the share of
single-order judgements won by the first option expose a position-biased judge;
mean confidence and how often the longer response wins expose a vague or
length-biased one.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

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

    def add(self, verdict: Verdict, x_len: int | None = None, y_len: int | None = None) -> None:
        self.parse_failures += verdict.parse_failures
        if verdict.p is None:
            self.failures += 1
            return
        self.comparisons += 1
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
    flagged_kept: bool = False
    flagged_by_check: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add_flags(self, flags: list[dict], kept: bool) -> None:
        """One input row's generation flags (generation/checks.py); a row left out counts here, not as a pair."""
        self.flagged_kept = kept
        if not flags:
            return
        self.flagged_rows += 1
        for name in dict.fromkeys(f.get("check") for f in flags):
            self.flagged_by_check[name] += 1
        if not kept:
            self.rows += 1

    def add(self, verdict: Verdict, x_len: int | None = None, y_len: int | None = None) -> None:
        self.overall.add(verdict, x_len, y_len)
        self.per_principle[verdict.principle_id].add(verdict, x_len, y_len)

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
        return found

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "pairs_made": self.pairs_made,
            "pairs_dropped": sum(self.dropped.values()),
            "flagged_rows": self.flagged_rows,
            "flagged_rows_left_out": 0 if self.flagged_kept else self.flagged_rows,
            "flagged_by_check": dict(sorted(self.flagged_by_check.items(), key=lambda kv: (-kv[1], kv[0]))),
            "dropped_by_reason": dict(sorted(self.dropped.items())),
            "pairs_with_orders_agreeing": self.orders_agree_pairs,
            "chosen_is_longer": _share(self.chosen_longer, self.pairs_made),
            "chosen_is_revision": _share(self.chosen_is_revision, self.pairs_made),
            **self.overall.as_dict(),
            "per_principle": {pid: stats.as_dict() for pid, stats in sorted(self.per_principle.items())},
            "warnings": self.warnings(),
        }


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def principle_table(per_principle: dict[str, dict], columns: list[tuple[str, str]]) -> str:
    if not per_principle:
        return ""
    width = max(len(pid) for pid in per_principle)
    header = f"  {'principle':<{width}}  " + "  ".join(f"{title:>11}" for title, _ in columns)
    lines = [header]
    for pid, stats in per_principle.items():
        lines.append(f"  {pid:<{width}}  " + "  ".join(f"{_fmt(stats.get(key)):>11}" for _, key in columns))
    return "\n".join(lines)


def _flag_lines(report: dict) -> list[str]:
    if not report.get("flagged_rows"):
        return []
    by_check = ", ".join(f"{name}: {n}" for name, n in report["flagged_by_check"].items())
    what = "kept (--keep-flagged)" if not report["flagged_rows_left_out"] else "left out (--keep-flagged keeps them)"
    return [f"  flagged rows:            {report['flagged_rows']} {what}: {by_check}"]


def format_judge_report(report: dict) -> str:
    lines = [
        f"judge report: {report['rows']} rows -> {report['pairs_made']} pairs, {report['pairs_dropped']} dropped"
        + (f", {report['flagged_rows_left_out']} flagged rows left out" if report.get("flagged_rows_left_out") else "")
        + (" (" + ", ".join(f"{k}: {v}" for k, v in report["dropped_by_reason"].items()) + ")" if report["dropped_by_reason"] else ""),
        *_flag_lines(report),
        f"  comparisons judged:      {report['comparisons']} ({report['failures']} failed, "
        f"{report['parse_failures']} parse failures, {report['label_outside_top_k']} with a label outside the top tokens)",
        f"  order consistency:       {_fmt(report['order_consistency'])}"
        + ("  (order-free method: by construction)" if report["order_free_comparisons"] else ""),
        f"  first option wins:       {_fmt(report['first_option_wins'])}",
        f"  mean confidence:         {_fmt(report['mean_confidence'])}",
        f"  longer response wins:    {_fmt(report['longer_response_wins'])}",
        f"  chosen is the revision:  {_fmt(report['chosen_is_revision'])}",
    ]
    table = principle_table(report["per_principle"], [
        ("comparisons", "comparisons"), ("order-cons.", "order_consistency"), ("first-wins", "first_option_wins"),
        ("confidence", "mean_confidence"), ("longer-wins", "longer_response_wins"), ("failures", "failures")])
    if table:
        lines += ["  per principle:", table]
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)
