"""Judge statistics: how far its labels can be trusted, overall and per principle.

Order consistency (the winner survives swapping the options) and the share of
single-order judgements won by the first option expose a position-biased judge;
mean confidence and how often the longer response wins expose a vague or
length-biased one.

Every figure is computed from counts, and a report keeps those counts (``sums``), so the
reports of a sharded run's parts merge into the report the unsharded run would have written:
the counts are summed and every rate and interval is computed again from the sums
(``merged_report``), never averaged from the parts' rates.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from core.shards import Shard, part_files, part_of
from core.store import is_being_written, read_json_object, read_manifest

from .judge import Verdict

# Below these, the report says plainly that the judge is not to be trusted.
WEAK_ORDER_CONSISTENCY = 0.6
STRONG_POSITION_BIAS = 0.75


def report_path(out: Path) -> Path:
    """The report ``cai judge`` writes beside its output (or beside each shard's part)."""
    out = Path(out)
    return out.with_name(out.name + ".report.json")


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
        ``judging.run``); a row left out counts here, not as a pair."""
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


def judges_lines(report: dict) -> list[str]:
    """Each judge's figures and their mutual agreement, when there are several."""
    if not report.get("judges"):
        return []
    lines = ["  each judge:"]
    table = principle_table(report["judges"], [
        ("comparisons", "comparisons"), ("refusals", "refusals"), ("failures", "failures"),
        ("order-cons.", "order_consistency"), ("confidence", "mean_confidence"), ("agreement", "agreement")])
    lines.append(table.replace("principle", "judge    ", 1))
    for pair, figure in report.get("judges_agree", {}).items():
        ci = figure["agreement_ci95"]
        lines.append(f"  judges {pair} agree on {_fmt(figure['agreement'])} of {figure['comparisons']} comparisons"
                     + (f" (95% CI [{ci[0]:.3f}, {ci[1]:.3f}])" if ci else ""))
    return lines


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
    left_out = report["flagged_rows_left_out"]
    what = ("kept (--keep-flagged)" if not left_out else "left out (--keep-flagged keeps them)"
            if left_out == report["flagged_rows"] else f"{left_out} left out, the others kept (--keep-flagged)")
    return [f"  flagged rows:            {report['flagged_rows']} {what}: {by_check}"]


def _duplicate_lines(report: dict) -> list[str]:
    if not report.get("duplicate_rows"):
        return []
    by_kind = ", ".join(f"{name.replace('_', ' ')}: {n}" for name, n in report["duplicates_by_kind"].items() if n)
    left_out = report["duplicate_rows_left_out"]
    what = ("kept (--keep-duplicates)" if not left_out else "left out (--keep-duplicates keeps them)"
            if left_out == report["duplicate_rows"] else f"{left_out} left out, the others kept (--keep-duplicates)")
    return [f"  duplicate rows:          {report['duplicate_rows']} {what}: {by_kind}"]


def _parts_line(report: dict) -> list[str]:
    parts = report.get("parts")
    if not parts:
        return []
    line = f"  parts merged:            {len(parts['merged'])} of {parts['count']}"
    if parts["missing"]:
        line += " (not merged: " + ", ".join(f"{m['part']}: {m['why']}" for m in parts["missing"]) + ")"
    return [line]


def format_judge_report(report: dict) -> str:
    lines = [
        f"judge report{' of ' + report['parts']['folder'] if report.get('parts') else ''}: {report['rows']} rows -> {report['pairs_made']} pairs, {report['pairs_dropped']} dropped"
        + (f", {report['flagged_rows_left_out']} flagged rows left out" if report.get("flagged_rows_left_out") else "")
        + (f", {report['duplicate_rows_left_out']} duplicate rows left out" if report.get("duplicate_rows_left_out")
           else "")
        + (" (" + ", ".join(f"{k}: {v}" for k, v in report["dropped_by_reason"].items()) + ")" if report["dropped_by_reason"] else ""),
        *_parts_line(report),
        *_flag_lines(report),
        *_duplicate_lines(report),
        f"  comparisons judged:      {report['comparisons']} ({report['failures']} failed, "
        f"{report.get('refusals', 0)} refused, "
        f"{report['parse_failures']} parse failures, {report['label_outside_top_k']} with a label outside the top tokens"
        + (f"; {report['by_fallback_judge']} by the fallback judge" if report.get("by_fallback_judge") else "") + ")",
        f"  order consistency:       {_fmt(report['order_consistency'])}"
        + ("  (order-free method: by construction)" if report["order_free_comparisons"] else ""),
        f"  first option wins:       {_fmt(report['first_option_wins'])}",
        f"  mean confidence:         {_fmt(report['mean_confidence'])}",
        f"  longer response wins:    {_fmt(report['longer_response_wins'])}",
        f"  chosen is the revision:  {_fmt(report['chosen_is_revision'])}",
    ]
    table = principle_table(report["per_principle"], [
        ("comparisons", "comparisons"), ("order-cons.", "order_consistency"), ("first-wins", "first_option_wins"),
        ("confidence", "mean_confidence"), ("longer-wins", "longer_response_wins"), ("failures", "failures"),
        ("refusals", "refusals")])
    if table:
        lines += ["  per principle:", table]
    lines += judges_lines(report)
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)


# -- the report of a folder of shard parts ----------------------------------------------------------------------
#: the judge settings that decide which judged rows become pairs (recorded in each part's manifest)
PAIR_FILTERS = ("min_margin", "require_orders_agree", "principles_per_pair", "principle_ids", "keep_flagged",
                "keep_duplicates")


def merged_report(out: str | Path) -> dict | None:
    """The judge report of ``cai judge``'s ``--out``: a file's own report, or, for a folder of shard parts, the
    parts' reports merged into one; None when there is none yet.

    The merged report is the one the unsharded run writes over the same rows: the parts' counts are summed and
    every rate (and interval) is computed again from the sums.  Its ``parts`` say which parts it covers and
    which it does not: a part not judged yet, stopped, or with a report that cannot be merged (the reason is
    given, with the fix), and parts of another split (another N) in the folder; ``warnings`` name them too.
    """
    out = Path(out)
    if not out.is_dir():
        return read_json_object(report_path(out))
    parts = part_files(out)
    if not parts:
        return None
    splits = Counter(part_of(path).count for path in parts)
    count = max(splits, key=lambda n: (splits[n], n))  # the split most parts are of
    merged, judge, covered, missing = JudgeReport(), None, [], []
    filters: list[tuple[str, dict]] = []  # each merged part and the pair filters it was judged with
    for index in range(count):
        part = out / Shard(index, count).part_name
        why = None
        report = read_json_object(report_path(part))
        manifest = read_manifest(part) or {}
        counts = manifest.get("counts")
        if is_being_written(part):
            why = "running now; its report comes when it finishes"
        elif isinstance(counts, dict) and counts.get("stopped"):
            why = f"stopped ({counts['stopped']}); run shard {index}/{count} again"
        elif report is None:
            why = f"no report yet (not judged, or running); run shard {index}/{count}"
        else:
            try:
                part_report = JudgeReport.from_sums(report.get("sums"))
            except (ValueError, TypeError):
                part_report = None
                why = (f"its report has no counts to merge (written by an older cai); run shard {index}/{count} "
                       "again (its judgements are cached: no model loads)")
            if part_report is not None and judge is not None and report.get("judge") != judge:
                why = "judged with another judge than the other parts; judge it again with theirs"
            elif part_report is not None:
                judge = report.get("judge") if judge is None else judge
                merged.merge(part_report)
                covered.append(part.name)
                config = manifest.get("config") or {}
                filters.append((part.name, {key: config.get(key) for key in PAIR_FILTERS}))
        if why:
            missing.append({"part": part.name, "why": why})
    if not covered:
        return None
    other_split = [path.name for path in parts if part_of(path).count != count]
    result = merged.as_dict()
    result["judge"] = judge
    result["parts"] = {"folder": str(out), "count": count, "merged": covered, "missing": missing,
                       "other_split": other_split}
    notes = []
    if missing:
        notes.append(f"{len(missing)} of the {count} parts of {out} are not in this report "
                     f"({', '.join(m['part'] for m in missing[:4])}{', ...' if len(missing) > 4 else ''}): its "
                     f"figures leave their rows out (`cai status {out}` shows each part's state)")
    differ = [key for key in PAIR_FILTERS if len({repr(setting[key]) for _, setting in filters}) > 1]
    if differ:
        # Each part's counts are right for its own settings; their sum is of no single setting.
        groups: dict[str, list[str]] = defaultdict(list)
        for name, setting in filters:
            groups[", ".join(f"{key} {setting[key]!r}" for key in differ)].append(name)
        notes.append(f"the parts of {out} were judged with different pair filters ("
                     + "; ".join(f"{setting}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
                                 for setting, names in groups.items())
                     + "): the merged figures mix them; judge every part again with one setting")
    if other_split:
        notes.append(f"{out} also holds parts of another split ({', '.join(other_split[:4])}"
                     f"{', ...' if len(other_split) > 4 else ''}), left out: a folder holds one split; move them "
                     "to their own folder")
    result["warnings"] = notes + result["warnings"]
    return result


def yield_funnel(report: dict, prompts: int | None = None) -> dict:
    """Where the rows went, from the prompts to the pairs: the yield of a run (pairs per prompt).

    ``report``: a judge report (``as_dict`` or ``merged_report``); ``prompts``: how many prompts generation
    had (rows that failed to generate are the difference), else the judge's rows stand for them.
    """
    rows = report.get("rows") or 0
    prompts = rows if prompts is None else prompts
    left_out = {"flagged by the row checks": report.get("flagged_rows_left_out") or 0,
                "duplicates": report.get("duplicate_rows_left_out") or 0}
    judged = rows - sum(left_out.values())
    pairs = report.get("pairs_made") or 0
    return {"prompts": prompts, "rows": rows, "not_generated": max(0, prompts - rows),
            "left_out": {k: v for k, v in left_out.items() if v}, "judged": judged,
            "dropped": dict(report.get("dropped_by_reason") or {}), "pairs": pairs,
            "pairs_per_prompt": round(pairs / prompts, 3) if prompts else None}


def format_yield(funnel: dict) -> str:
    """One line: ``yield: 0.20 pairs per prompt (40 prompts -> 40 rows -> 9 flagged ... -> 8 pairs)``."""
    steps = [f"{funnel['prompts']} prompts"]
    if funnel["not_generated"]:
        steps.append(f"{funnel['rows']} rows ({funnel['not_generated']} failed to generate)")
    steps += [f"{n} {why} left out" for why, n in funnel["left_out"].items()]
    steps.append(f"{funnel['judged']} judged")
    steps += [f"{n} dropped: {why}" for why, n in funnel["dropped"].items()]
    steps.append(f"{funnel['pairs']} pairs")
    share = "-" if funnel["pairs_per_prompt"] is None else f"{funnel['pairs_per_prompt']:.2f}"
    return f"yield: {share} pairs per prompt ({' -> '.join(steps)})"
