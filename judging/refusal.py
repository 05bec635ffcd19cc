"""Refusals to judge: a judge that declines is not a judge that failed to parse.

Judges refuse to grade harmful content, which is exactly what a constitution asks
about, so a refusal says something about the prompt and the principle; it is
counted apart from parse failures, per principle and overall, and the refused
comparison is left out (or handed to ``--fallback-judge-model``), never scored 0.5.

Two forms are recognised:

- a text verdict (``--method text``) that does not parse and reads as declining
  ("I'm sorry, but I can't ...", "As an AI ..."): ``declines``;
- label log-probabilities (``--method pairwise``) with almost no mass on the
  labels: the judge meant to say something else than (A) or (B).  The mass is
  P(A) + P(B) before they are normalised over the two; below
  ``REFUSAL_LABEL_MASS`` the order is a refusal (``label_mass_refusal``).

Each order's record says what happened (``outcome``: ``judged``, ``refused``,
``parse_failure`` or ``error``); records written before this field read as before.
"""

from __future__ import annotations

import math
import re

#: Below this total probability on the two labels, a log-probability verdict is a refusal.
REFUSAL_LABEL_MASS = 0.05

OUTCOMES = ("judged", "refused", "parse_failure", "error")

# Phrases a declining reply starts with or contains; matched only when the reply is not a verdict.
_DECLINES = re.compile(
    r"\b(?:i\s*(?:'m|am)\s+(?:sorry|afraid|not\s+(?:able|comfortable|going))|i\s+(?:can\s*not|can't|can’t|won't|"
    r"won’t|will\s+not|must\s+decline|decline|refuse|am\s+unable|'m\s+unable)|as\s+an\s+ai\b|"
    r"(?:not\s+(?:able|appropriate)|unable)\s+to\s+(?:judge|evaluate|compare|assess|help|choose|pick|answer)|"
    r"neither\s+response\s+is\s+(?:acceptable|appropriate))",
    re.IGNORECASE,
)


def declines(reply: str | None) -> bool:
    """Whether a reply that is not a verdict reads as declining to judge."""
    return bool(reply) and _DECLINES.search(reply) is not None


def label_mass(logprob_a: float | None, logprob_b: float | None, floor: float | None) -> float | None:
    """The most probability the two labels can have together (a missing label counts at ``floor``, its bound);
    None when a missing label has no floor to bound it."""
    total = 0.0
    for value in (logprob_a, logprob_b):
        if value is None:
            if floor is None:
                return None
            value = floor
        total += math.exp(value)
    return total


def label_mass_refusal(logprob_a: float | None, logprob_b: float | None, floor: float | None,
                       threshold: float = REFUSAL_LABEL_MASS) -> bool:
    """Whether the labels hold less than ``threshold`` of the judge's next-token probability."""
    mass = label_mass(logprob_a, logprob_b, floor)
    return mass is not None and mass < threshold


def outcome(record: dict | None) -> str | None:
    """What happened to one cached judgement (an older record without ``outcome`` is read from its fields)."""
    if record is None:
        return None
    if record.get("outcome"):
        return record["outcome"]
    if record.get("parse_failure"):
        return "parse_failure"
    return "error" if record.get("error") else "judged"
