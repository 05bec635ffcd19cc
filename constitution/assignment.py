"""Deterministic, weighted rendezvous (highest-random-weight) assignment of principles.

Each (key, principle) pair gets a pseudo-random score from a hash; the principles
are ranked by ``-weight / ln(u)``.  Adding or removing one principle changes the
top choice for only about 1/N of the keys, and editing a principle's text changes
none (the hash uses its id), so incremental regeneration redoes little.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from .schema import Principle


def _unit_interval(*parts: object) -> float:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / 2**64


def rank_principles(key: str, principles: Sequence[Principle], seed: int = 0) -> list[Principle]:
    """All principles, best first, for this key and seed."""

    def score(principle: Principle) -> float:
        return -principle.weight / math.log(_unit_interval(seed, key, principle.id))

    return sorted(principles, key=lambda p: (score(p), p.id), reverse=True)


def assign_principles(key: str, principles: Sequence[Principle], count: int, seed: int = 0) -> list[Principle]:
    """``count`` principles for ``key``: distinct while there are enough, then cycling."""
    ranked = rank_principles(key, principles, seed)
    return [ranked[i % len(ranked)] for i in range(count)]
