"""Pure arithmetic of the judge: label normalisation, order combination, ensembling, clamping, parsing.

Conventions: a single-order judgement gives ``p_first``, the probability that the
option shown first, (A), is the better one.  A comparison of responses x and y is
judged as (x, y) and (y, x); both are turned into "probability that x is better"
and averaged, so the label cannot depend on which came first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

COT_CLAMP = (0.4, 0.6)
#: How several judges' verdicts combine (judging/ensemble.py).
COMBINATIONS = ("mean", "majority")


@dataclass(frozen=True)
class LabelProbability:
    """P(A) normalised over the two labels; ``bounded`` when one label fell outside the top-k tokens."""

    p: float | None
    bounded: bool = False
    error: str | None = None


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def normalise_labels(logprob_a: float | None, logprob_b: float | None, floor: float | None) -> LabelProbability:
    """P(A) = e^a / (e^a + e^b).

    Engines return only the top-k tokens.  A label missing from them has a
    log-probability of at most ``floor``; it is never taken as zero.  Using the
    floor in its place gives the least extreme P(A) consistent with what was
    seen (a bound), and the result is flagged ``bounded``.  With both labels
    missing nothing is known: an error.
    """
    if logprob_a is not None and logprob_b is not None:
        return LabelProbability(sigmoid(logprob_a - logprob_b))
    if logprob_a is None and logprob_b is None:
        return LabelProbability(None, error="neither label (A) nor (B) is among the judge's top tokens")
    if floor is None:
        return LabelProbability(None, error="one label is missing from the top tokens and no floor was given")
    if logprob_a is None:
        return LabelProbability(sigmoid(min(floor, logprob_b) - logprob_b), bounded=True)
    return LabelProbability(sigmoid(logprob_a - min(floor, logprob_a)), bounded=True)


def clamp(p: float, low: float = COT_CLAMP[0], high: float = COT_CLAMP[1]) -> float:
    return min(high, max(low, p))


@dataclass(frozen=True)
class OrderCombination:
    """Both orders of one comparison of x against y."""

    p: float  # P(x better), averaged over both orders
    p_x_first: float  # P(x better) when x was shown as (A)
    p_x_second: float  # P(x better) when x was shown as (B)

    @property
    def orders_agree(self) -> bool:
        """Same winner in both orders (a 0.5 in either order counts as no winner, so not agreeing)."""
        return (self.p_x_first - 0.5) * (self.p_x_second - 0.5) > 0

    @property
    def first_wins(self) -> tuple[bool, bool]:
        """Whether option (A) won in each order."""
        return self.p_x_first > 0.5, (1.0 - self.p_x_second) > 0.5


def combine_orders(p_first_xy: float, p_first_yx: float) -> OrderCombination:
    """``p_first_xy``: P(A) with x as A; ``p_first_yx``: P(A) with y as A.  Returns P(x better)."""
    p_x_first, p_x_second = p_first_xy, 1.0 - p_first_yx
    return OrderCombination((p_x_first + p_x_second) / 2.0, p_x_first, p_x_second)


def ensemble(probabilities: Sequence[float | None]) -> float | None:
    """Mean over the principles that gave a probability; None when none did."""
    values = [p for p in probabilities if p is not None]
    return sum(values) / len(values) if values else None


def likelihood_probability(score_x: float, score_y: float, scale: float = 1.0) -> float:
    """P(x better) from two log-likelihood-ratio scores (Bradley-Terry on the score difference)."""
    return sigmoid((score_x - score_y) * scale)


# A strict verdict: the whole reply is the label, optionally "(A)" / "Answer: (A)" / "A." and nothing else.
_VERDICT = re.compile(r"(?:(?:final\s+)?answer\s*:\s*)?\(?\s*([AB])\s*\)?\s*\.?", re.IGNORECASE)


def parse_verdict(text: str, last_line: bool = False) -> str | None:
    """``"A"``, ``"B"`` or None.  Nothing is guessed: extra words make the reply unparseable.

    With ``last_line`` (chain-of-thought replies) only the last non-empty line
    must be the verdict.
    """
    if text is None:
        return None
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    candidate = lines[-1] if last_line else text.strip()
    if not last_line and len(lines) != 1:
        return None
    candidate = candidate.strip().strip("*").strip()
    match = _VERDICT.fullmatch(candidate)
    if not match:
        return None
    label = match.group(1)
    # A lone lowercase "a" is an article, not a verdict.
    if label == "a" and candidate in ("a", "a."):
        return None
    return label.upper()


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (well-behaved for small n and extreme shares)."""
    if n <= 0:
        return (0.0, 1.0)
    phat = successes / n
    denominator = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denominator
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))
