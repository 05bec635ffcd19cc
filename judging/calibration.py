"""The judge against people: agreement with ties counted and without, and how well its confidence is calibrated.

Each labelled pair gives the judge's P(the person's choice is better), or, for a pair the
person called a tie, the judge's P(the first response is better); a pair the judge left
without a probability (refused, failed) is left out and counted, never scored.

- **Counting ties**: of every pair judged, the share where the judge picks the person's
  choice, or where both call it a tie (the judge's exact 0.5 is its tie); a tie on one
  side only is a disagreement.
- **Excluding ties**: of the pairs where neither the judge nor the person called a tie,
  the share where the judge picks the person's choice.

The two can differ widely (the same MT-Bench data gives 88% excluding ties and 67%
counting them), so both are given, each with its 95% Wilson interval.

The **reliability diagram** bins the pairs without a tie by the judge's stated confidence,
max(p, 1 - p), into ``BINS``; per bin, the mean confidence against how often the person
agreed.  A calibrated judge lies on the diagonal; ``ece`` is the mean gap, weighted by
the pairs in each bin.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from .scoring import wilson_interval

#: Edges of the confidence bins of the reliability diagram (the last bin includes 1.0).
BINS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class Labelled(NamedTuple):
    """One labelled pair as the judge saw it."""

    p: float | None  # the judge's P(the person's choice is better); for a person's tie, P(first better)
    human_tie: bool = False


def _share(numerator: float, denominator: int) -> dict:
    low, high = wilson_interval(numerator, denominator)
    return {"agreement": round(numerator / denominator, 4) if denominator else None, "pairs": denominator,
            "agreed": int(numerator), "ci95": [round(low, 4), round(high, 4)] if denominator else None}


def calibration(labelled: Iterable[Labelled]) -> dict:
    """Agreement counting ties and excluding them (each with its interval), the reliability diagram's bins and
    the expected calibration error, for a set of labelled pairs."""
    labelled = list(labelled)
    judged = [entry for entry in labelled if entry.p is not None]
    judge_ties = sum(1 for entry in judged if entry.p == 0.5)
    human_ties = sum(1 for entry in judged if entry.human_tie)
    counting = sum(1 for entry in judged if (entry.p == 0.5) == entry.human_tie and (entry.human_tie or entry.p > 0.5))
    decided = [entry.p for entry in judged if entry.p != 0.5 and not entry.human_tie]
    excluding = sum(1 for p in decided if p > 0.5)
    bins, gap = [], 0.0
    for low, high in zip(BINS, BINS[1:]):
        inside = [p for p in decided if low <= max(p, 1 - p) < high or (high == BINS[-1] and max(p, 1 - p) == high)]
        if not inside:
            continue
        confidence = sum(max(p, 1 - p) for p in inside) / len(inside)
        agreed = sum(1 for p in inside if p > 0.5)
        figure = _share(agreed, len(inside))
        bins.append({"bin": [low, high], "mean_confidence": round(confidence, 4), **figure})
        gap += len(inside) * abs(agreed / len(inside) - confidence)
    return {
        "pairs": len(labelled),
        "judged": len(judged),
        "left_out": len(labelled) - len(judged),
        "judge_ties": judge_ties,
        "human_ties": human_ties,
        "counting_ties": _share(counting, len(judged)),
        "excluding_ties": _share(excluding, len(decided)),
        "reliability": bins,
        "ece": round(gap / len(decided), 4) if decided else None,
    }


def calibration_lines(figures: dict, indent: str = "  ") -> list[str]:
    """The figures as text: both agreements, then the reliability diagram as a table."""

    def share(figure: dict) -> str:
        if not figure["pairs"]:
            return "-"
        low, high = figure["ci95"]
        return f"{figure['agreement']:.3f} ({figure['agreed']}/{figure['pairs']}; 95% CI [{low:.3f}, {high:.3f}])"

    lines = [f"{indent}agreement counting ties:   {share(figures['counting_ties'])}",
             f"{indent}agreement excluding ties:  {share(figures['excluding_ties'])}  "
             f"({figures['judge_ties']} judge ties, {figures['human_ties']} human ties, "
             f"{figures['left_out']} left out without a verdict)"]
    if figures["reliability"]:
        lines.append(f"{indent}reliability (stated confidence -> how often people agreed; ECE "
                     f"{figures['ece']:.3f}):")
        for entry in figures["reliability"]:
            low, high = entry["bin"]
            lines.append(f"{indent}  [{low:.1f}, {high:.1f}{']' if high == BINS[-1] else ')'}  confidence "
                         f"{entry['mean_confidence']:.3f}  agreed {entry['agreement']:.3f}  n={entry['pairs']}")
    return lines
