"""Exact and near-duplicate rows: the same prompt (or response) twice, or once more with a word or two changed.

Texts are compared as their words (lowercased, punctuation dropped).  Two texts are

- **exact duplicates** when their words are the same;
- **near duplicates** when the Jaccard similarity of their sets of word bigrams (2-word shingles) is at least
  ``NEAR_THRESHOLD`` (0.8).  Candidates come from MinHash LSH (datasketch, ``NUM_PERM`` permutations, a lower
  LSH threshold so that few are missed); the similarity of each candidate is then computed exactly, so the
  threshold is the decision, not an estimate.  One word changed in a 20-word prompt gives 17/21 = 0.81.

Rows are taken in their prompts' order (``prompt_order``: generation rows are written as they finish, so a file's
order is not the prompts'); a row whose prompt or response duplicates one of an earlier row that was kept is a
duplicate of that row (the first of a group is kept; a row left out is not compared with).  Responses of fewer than ``MIN_RESPONSE_WORDS`` words
("Yes.", "I can't help with that.") are not compared: short answers repeat by nature.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

SHINGLE_WORDS = 2
NEAR_THRESHOLD = 0.8
NUM_PERM = 128
MIN_RESPONSE_WORDS = 8
FIELDS = ("prompt", "response")
_WORD = re.compile(r"\w+")
_LSH_MARGIN = 0.15  # candidates down to 0.65: MinHash's estimate errs by about 0.04 at 128 permutations


def prompt_text(value) -> str | None:
    """The user turns of a prompt (text, or a list of chat messages) as one text; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(m["content"] for m in value
                         if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str))
    return None


def _last_assistant(messages) -> str | None:
    turns = [m.get("content") for m in messages or [] if isinstance(m, dict) and m.get("role") == "assistant"]
    return turns[-1] if turns and isinstance(turns[-1], str) else None


def row_texts(row: dict) -> dict[str, str | None]:
    """``{"prompt", "response"}`` of a row of any stage: a generation row (its final response), a preference pair
    (its chosen response) or an SFT row (its last assistant turn; the turns before it are the prompt)."""
    if "messages" in row and "prompt" not in row:
        messages = row["messages"] if isinstance(row["messages"], list) else []
        cut = max((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"),
                  default=len(messages))
        return {"prompt": prompt_text(messages[:cut]), "response": _last_assistant(messages[cut:])}
    if "chosen" in row:
        return {"prompt": prompt_text(row.get("prompt")), "response": _last_assistant(row.get("chosen"))}
    response = row.get("final_response")
    return {"prompt": prompt_text(row.get("prompt")), "response": response if isinstance(response, str) else None}


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def shingles(text_words: list[str], size: int = SHINGLE_WORDS) -> set[str]:
    """The text's word ``size``-grams (its words, when it has fewer than ``size``)."""
    if len(text_words) < size:
        return {" ".join(text_words)} if text_words else set()
    return {" ".join(text_words[i:i + size]) for i in range(len(text_words) - size + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass(frozen=True)
class Duplicate:
    """Row ``index`` repeats row ``of`` (an earlier, kept row) in ``field``."""

    index: int
    of: int
    field: str  # "prompt" or "response"
    kind: str  # "exact" or "near"
    similarity: float

    def as_dict(self) -> dict:
        return asdict(self)


class _Text:
    """One text as compared: its exact key, its shingles and their MinHash."""

    def __init__(self, text_words: list[str]):
        from datasketch import MinHash

        self.key = " ".join(text_words)
        self.shingles = shingles(text_words)
        self.minhash = MinHash(num_perm=NUM_PERM, seed=1)
        self.minhash.update_batch([s.encode("utf-8") for s in self.shingles])


class _Index:
    """The kept texts of one field: exact keys and MinHash LSH over their shingles."""

    def __init__(self):
        from datasketch import MinHashLSH

        self.exact: dict[str, int] = {}
        self.shingles: dict[int, set[str]] = {}
        self.lsh = MinHashLSH(threshold=NEAR_THRESHOLD - _LSH_MARGIN, num_perm=NUM_PERM)

    def match(self, text: _Text) -> tuple[int, str, float] | None:
        """``(kept row, "exact" or "near", similarity)`` of the row this text duplicates, else None."""
        if text.key in self.exact:
            return self.exact[text.key], "exact", 1.0
        best = None
        for row in self.lsh.query(text.minhash):
            similarity = jaccard(text.shingles, self.shingles[row])
            if similarity >= NEAR_THRESHOLD and (best is None or (similarity, -row) > (best[2], -best[0])):
                best = (row, "near", similarity)
        return best

    def add(self, row: int, text: _Text) -> None:
        self.exact.setdefault(text.key, row)
        self.shingles[row] = text.shingles
        self.lsh.insert(row, text.minhash)


def _compared(field: str, text: str | None) -> _Text | None:
    if not isinstance(text, str):
        return None
    text_words = words(text)
    if not text_words or (field == "response" and len(text_words) < MIN_RESPONSE_WORDS):
        return None
    return _Text(text_words)


def prompt_order(row: dict, index: int) -> tuple:
    """Where a row comes in ``find_duplicates``: a generation row by its prompt's line, another row as it comes."""
    source = row.get("source")
    line = source.get("line") if isinstance(source, dict) and "initial_response" in row else None
    return (line if isinstance(line, int) and not isinstance(line, bool) else float("inf"), index)


def find_duplicates(rows: Sequence[Mapping[str, str | None]], order: Sequence | None = None) -> dict[int, Duplicate]:
    """Row index -> its Duplicate, for every row (``{"prompt": text, "response": text}``) that repeats an earlier
    kept row's prompt or response; the prompt is checked first.  Rows are taken by ``order`` (a sort key per row,
    e.g. ``prompt_order``), else as they come."""
    indexes = {name: _Index() for name in FIELDS}
    found: dict[int, Duplicate] = {}
    taken = sorted(range(len(rows)), key=lambda i: order[i]) if order is not None else range(len(rows))
    for index in taken:
        row = rows[index]
        texts = {name: _compared(name, row.get(name)) for name in FIELDS}
        for name, text in texts.items():
            match = indexes[name].match(text) if text is not None else None
            if match is not None:
                of, kind, similarity = match
                found[index] = Duplicate(index, of, name, kind, round(similarity, 3))
                break
        if index not in found:
            for name, text in texts.items():
                if text is not None:
                    indexes[name].add(index, text)
    return found


def count_duplicates(duplicates: Iterable[Duplicate]) -> dict[str, int]:
    """``{"prompt_exact": n, "prompt_near": n, "response_exact": n, "response_near": n}``."""
    counts = {f"{name}_{kind}": 0 for name in FIELDS for kind in ("exact", "near")}
    for duplicate in duplicates:
        counts[f"{duplicate.field}_{duplicate.kind}"] += 1
    return counts


def method_record() -> dict:
    """What was compared and how, for manifests and dataset cards."""
    return {"library": "datasketch MinHash LSH", "num_perm": NUM_PERM, "shingle": f"{SHINGLE_WORDS}-word",
            "near_threshold": NEAR_THRESHOLD, "similarity": "Jaccard of word-shingle sets, computed exactly",
            "min_response_words": MIN_RESPONSE_WORDS, "fields": list(FIELDS)}
