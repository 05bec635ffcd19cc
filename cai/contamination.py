"""Contamination: rows whose prompt or response contains an evaluation prompt's text.

A row overlaps an evaluation prompt when its prompt or its response shares a run of ``NGRAM`` (13) words with it,
in order (words lowercased, punctuation dropped), the test of the GPT-3 and LLaMA reports.  An evaluation prompt
shorter than 13 words overlaps when all its words appear in the row in order, as one run; prompts of fewer than
``MIN_WORDS`` (5) words are not checked (their words are too common to mean anything) and are counted as such.

Evaluation sets are JSON Lines prompts files (``prompt`` text or ``messages``, as ``cai eval --prompts`` reads
them) or ``datasets`` folders (``save_to_disk``, or data files ``load_dataset`` reads) with a ``prompt`` or
``messages`` column.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.dedup import prompt_text, words
from core.errors import UserError
from core.hashing import stable_hash

NGRAM = 13
MIN_WORDS = 5
FLAG = "--eval-sets"


@dataclass
class EvalSets:
    """The n-grams of every checked evaluation prompt, by length (13, or a shorter prompt's whole length)."""

    files: list[dict] = field(default_factory=list)  # {"path", "prompts", "checked", "hash"}
    ngrams: dict[int, dict[tuple[str, ...], str]] = field(default_factory=dict)  # length -> n-gram -> "file:n"

    def add(self, source: str, number: int, text: str) -> bool:
        text_words = words(text)
        if len(text_words) < MIN_WORDS:
            return False
        size = min(NGRAM, len(text_words))
        grams = self.ngrams.setdefault(size, {})
        for i in range(len(text_words) - size + 1):
            grams.setdefault(tuple(text_words[i:i + size]), f"{source}:{number}")
        return True

    def hit(self, text: str | None) -> str | None:
        """Where the first evaluation prompt this text overlaps comes from (``file:line``), else None."""
        if not isinstance(text, str) or not self.ngrams:
            return None
        text_words = words(text)
        for size, grams in self.ngrams.items():
            for i in range(len(text_words) - size + 1):
                where = grams.get(tuple(text_words[i:i + size]))
                if where is not None:
                    return where
        return None

    def record(self) -> dict:
        return {"ngram_words": NGRAM, "min_prompt_words": MIN_WORDS, "files": self.files}


def _dataset_prompts(folder: Path) -> Iterable[tuple[int, str | None]]:
    import datasets

    try:
        if (folder / "dataset_info.json").exists() or (folder / "dataset_dict.json").exists():
            loaded = datasets.load_from_disk(str(folder))
        else:
            loaded = datasets.load_dataset(str(folder))
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; the user needs the one message
        raise UserError(f"{FLAG} {folder}: not a datasets folder `datasets` can load ({type(exc).__name__}: {exc}); "
                        "pass a JSON Lines prompts file or a folder written by save_to_disk") from None
    splits = loaded.values() if isinstance(loaded, Mapping) else [loaded]
    number = 0
    for split in splits:
        column = next((name for name in ("prompt", "messages") if name in split.column_names), None)
        if column is None:
            raise UserError(f"{FLAG} {folder}: no 'prompt' or 'messages' column (it has "
                            f"{', '.join(split.column_names)}); pass a set with the evaluation prompts in one")
        for value in split[column]:
            number += 1
            yield number, prompt_text(value)


def load_eval_sets(paths: Sequence[str | Path]) -> EvalSets:
    """The evaluation prompts of every file or folder; a bad file is one UserError naming it (and its lines)."""
    from generation.prompt_files import read_prompts

    sets = EvalSets()
    for path in map(Path, paths):
        if path.is_dir():
            prompts = list(_dataset_prompts(path))
        elif path.is_file():
            try:
                prompts = [(p.line, prompt_text(p.messages)) for p in read_prompts(path)]
            except UserError as exc:
                raise UserError(f"{FLAG}: {exc}".replace("--prompts", FLAG)) from None
        else:
            raise UserError(f"{FLAG} {path}: no such file or folder; pass JSON Lines prompts files or datasets folders")
        checked = sum(sets.add(str(path), number, text) for number, text in prompts if text)
        sets.files.append({"path": path.name, "prompts": len(prompts), "checked": checked,
                           "hash": stable_hash([text for _, text in prompts])})
    return sets


def find_contaminated(rows: Iterable[Mapping[str, str | None]], sets: EvalSets) -> dict[int, dict]:
    """Row index -> ``{"field", "eval_prompt"}`` for every row whose prompt or response overlaps an evaluation
    prompt."""
    found = {}
    for index, row in enumerate(rows):
        for name in ("prompt", "response"):
            where = sets.hit(row.get(name))
            if where is not None:
                found[index] = {"field": name, "eval_prompt": where}
                break
    return found
