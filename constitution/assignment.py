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


def rank_principles(key: str, principles: Sequence[Principle], seed: int = 0) -> list[Principle]:
    """All principles, best first, for this key and seed."""
    # Each score hashes "seed<US>key<US>principle id"; hash the shared prefix once.
    prefix = hashlib.sha256(f"{seed}\x1f{key}\x1f".encode("utf-8"))

    def score(principle: Principle) -> float:
        digest = prefix.copy()
        digest.update(principle.id.encode("utf-8"))
        unit = (int.from_bytes(digest.digest()[:8], "big") + 0.5) / 2**64
        return -principle.weight / math.log(unit)

    return sorted(principles, key=lambda p: (score(p), p.id), reverse=True)


def assign_principles(key: str, principles: Sequence[Principle], count: int, seed: int = 0) -> list[Principle]:
    """``count`` principles for ``key``: distinct while there are enough, then cycling."""
    ranked = rank_principles(key, principles, seed)
    return [ranked[i % len(ranked)] for i in range(count)]
