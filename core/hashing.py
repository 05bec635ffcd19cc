"""Stable content hashes: the keys that make every stage resumable."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of ``obj``'s canonical JSON; identical across runs and machines."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:length]
