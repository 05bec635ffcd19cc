"""The pairs ``cai label`` asks about, and the session that records their labels.

Pairs are read from a run folder, each with its two responses in an order drawn from the seed, in the file's
order or the judge's most doubtful first.  Each label is appended and fsynced to the labels file at once (ties to
``OUT.ties.jsonl``); a pair already in either file is not asked again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from core.hashing import stable_hash
from core.log import get_logger
from core.store import JsonlStore

CHOICES = ("1", "2", "tie", "skip")
LOG = get_logger(__name__)


def ties_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.ties{out.suffix or '.jsonl'}")


@dataclass
class LabelPair:
    """One pair to label: the responses in the order shown, and where each came from."""

    key: str  # the prompt and both texts, order-free: the resume key
    id: str
    line: int
    prompt: list[dict]
    responses: tuple[str, str]
    origins: tuple[str, str]  # "chosen"/"rejected" (the judge's) or "draft"/"revision"
    file: str = ""  # the file of the run folder the pair was read from (a part, for a sharded stage)
    doubt: float | None = None  # how doubtful the judge was (``judge_doubt``); None: the judge made no pair of it
    doubt_reasons: tuple[str, ...] = ()

    def as_shown(self) -> dict:
        return {"key": self.key, "id": self.id, "prompt": self.prompt, "responses": list(self.responses)}


def _messages(value) -> list[dict] | None:
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
            for m in value) and value[-1]["role"] == "user":
        return [{"role": m["role"], "content": m["content"]} for m in value]
    return None


def _last_text(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and isinstance(value[-1].get("content"), str):
        return value[-1]["content"]
    return None


def make_pair(row_id: str, line: int, prompt: list[dict], first: tuple[str, str], second: tuple[str, str],
              seed: int, file: str = "") -> LabelPair:
    """A pair with its two (text, origin) responses in the order drawn for it from ``seed``."""
    key = stable_hash([prompt, sorted([first[0], second[0]])])
    if int(stable_hash([seed, key]), 16) % 2:
        first, second = second, first
    return LabelPair(key, row_id, line, prompt, (first[0], second[0]), (first[1], second[1]), file)


def judge_doubt(pair_row: dict) -> tuple[float, tuple[str, ...]]:
    """How doubtful the judge was of one of its pairs (``cai judge``'s row), in [0, 3], and why: one point when its
    winner changes with the order of the options, one when several judges disagree, and 1 - the margin."""
    reasons, doubt = [], 0.0
    if pair_row.get("orders_agree") is False:
        doubt += 1
        reasons.append("order-inconsistent")
    sides = set()
    scores = pair_row.get("principle_scores")
    for score in scores.values() if isinstance(scores, dict) else ():  # a damaged row's scores give no doubt
        judges = score.get("judges") if isinstance(score, dict) else None
        for p in judges.values() if isinstance(judges, dict) else ():
            if isinstance(p, (int, float)):
                sides.add((p > 0.5) - (p < 0.5))
    if len(sides) > 1:
        doubt += 1
        reasons.append("judges disagree")
    margin = pair_row.get("margin")
    if isinstance(margin, (int, float)) and 0 <= margin <= 1:
        doubt += 1 - margin
        reasons.append(f"margin {margin:.2f}")
    return round(doubt, 6), tuple(reasons)


def _judge_rows(run_dir: Path) -> dict[str, dict]:
    """The judge's pairs of a run folder by row id (for ordering revisions by the judge's doubt)."""
    from core.shards import data_files, stage_output
    from core.store import read_json_objects

    path = stage_output(run_dir, "preferences")
    if not path.exists():
        raise UserError(f"{path}: not found; --order doubt needs the judge's pairs: run `cai judge` (or `cai run`) "
                        "first, or label in --order file")
    return {str(row.get("id")): row for file in data_files(path, "RUN_DIR")
            for _, row in read_json_objects(file, "preferences (run folder)", "RUN_DIR")}


def load_pairs(run_dir: str | Path, source: str = "preferences", seed: int = 0, order: str = "file") -> list[LabelPair]:
    """The pairs of a run folder that can be labelled (two different, non-empty responses to a user turn), in
    ``order``: the file's, or the judge's most doubtful first (``judge_doubt``; pairs the judge made none of
    come last, in file order)."""
    from core.shards import data_files, stage_output
    from core.store import read_json_objects

    path = stage_output(run_dir, source)  # RUN_DIR/NAME.jsonl, or the folder of a sharded stage's parts
    if not path.exists():
        other = "revisions" if source == "preferences" else "preferences"
        raise UserError(f"{path}: not found; run `cai run` (or `cai judge`) first, or label --source {other}")
    pairs, seen = [], set()
    for file in data_files(path, "RUN_DIR"):
        for line, row in read_json_objects(file, f"{source} (run folder)", "RUN_DIR"):
            pair = _pair_of(row, line, source, seed, file.relative_to(Path(run_dir)).as_posix())
            if pair is not None and pair.key not in seen:
                seen.add(pair.key)
                pairs.append(pair)
                if source == "preferences":
                    pair.doubt, pair.doubt_reasons = judge_doubt(row)
    if not pairs:
        raise UserError(f"{path}: no pair to label (every row lacks two different responses)")
    if order == "doubt":
        if source == "revisions":
            judged = _judge_rows(Path(run_dir))
            for pair in pairs:
                if pair.id in judged:
                    pair.doubt, pair.doubt_reasons = judge_doubt(judged[pair.id])
        pairs.sort(key=lambda pair: -1.0 if pair.doubt is None else -pair.doubt)  # stable: file order breaks ties
    return pairs


def _pair_of(row: dict, line: int, source: str, seed: int, file: str) -> LabelPair | None:
    """The pair of one row, or None when it has nothing to compare."""
    prompt = _messages(row.get("prompt"))
    if source == "preferences":
        texts = (_last_text(row.get("chosen")), "chosen"), (_last_text(row.get("rejected")), "rejected")
    else:
        texts = (row.get("initial_response"), "draft"), (row.get("final_response"), "revision")
    if prompt is None or not all(isinstance(t, str) and t.strip() for t, _ in texts) or texts[0][0] == texts[1][0]:
        return None  # nothing to compare: a missing or empty response, or the same text twice
    return make_pair(str(row.get("id", line)), line, prompt, texts[0], texts[1], seed, file)


# -- the session ---------------------------------------------------------------------------
class LabelSession:
    """The pairs, which are labelled (from the files, so a restart resumes), and the appends."""

    def __init__(self, pairs: list[LabelPair], out: str | Path, source: str = "preferences", order: str = "file"):
        self.pairs = pairs
        self.by_key = {pair.key: pair for pair in pairs}
        self.rank = {pair.key: rank for rank, pair in enumerate(pairs)}
        self.source = source
        self.order = order
        self.labels, self.ties = JsonlStore(out), JsonlStore(ties_path(out))
        self.done: set[str] = set()
        for store in (self.labels, self.ties):
            keys = [row.get("key") for row in store.load()]
            self.done.update(key for key in keys if isinstance(key, str))
            unkeyed = sum(1 for key in keys if not isinstance(key, str))
            if unkeyed:
                LOG.warning("%s: %d row(s) without a text 'key' (not written by `cai label`); their pairs are "
                            "asked again", store.path, unkeyed)
        self.already_done = sum(1 for pair in pairs if pair.key in self.done)
        self.skipped: set[str] = set()
        self.lock = threading.Lock()

    def next_pair(self) -> LabelPair | None:
        for pair in self.pairs:
            if pair.key not in self.done and pair.key not in self.skipped:
                return pair
        return None

    def state(self) -> dict:
        with self.lock:
            pair = self.next_pair()
            done = sum(1 for p in self.pairs if p.key in self.done)
            return {"total": len(self.pairs), "done": done, "skipped": len(self.skipped),
                    "pair": pair.as_shown() if pair else None}

    def record(self, key: str, choice: str) -> dict:
        """Save one pick (``1``, ``2``, ``tie``) or skip the pair until `cai label` runs again; returns the state."""
        if choice not in CHOICES:
            raise ValueError(f"choice {choice!r} must be one of {', '.join(CHOICES)}")
        pair = self.by_key.get(key)
        if pair is None:
            raise ValueError("unknown pair")
        with self.lock:
            if choice == "skip":
                self.skipped.add(key)
            elif key not in self.done:
                row = {"id": pair.id, "key": key, "prompt": pair.prompt, "labelled_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "sampling": {"order": self.order, "rank": self.rank[key], "of": len(self.pairs),
                                    "doubt": pair.doubt, "reasons": list(pair.doubt_reasons)}}
                if choice == "tie":
                    self.ties.append([{**row, "responses": list(pair.responses), "label": "tie",
                                       "source": {"file": pair.file or self._file(), "line": pair.line, "origins": list(pair.origins)}}])
                else:
                    better = 0 if choice == "1" else 1
                    self.labels.append([{**row,
                                         "chosen": [{"role": "assistant", "content": pair.responses[better]}],
                                         "rejected": [{"role": "assistant", "content": pair.responses[1 - better]}],
                                         "label": "human",
                                         "source": {"file": pair.file or self._file(), "line": pair.line,
                                                    "chosen": pair.origins[better], "rejected": pair.origins[1 - better]}}])
                self.done.add(key)
        return self.state()

    def _file(self) -> str:
        return "preferences.jsonl" if self.source == "preferences" else "revisions.jsonl"
