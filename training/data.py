"""Reading the training files: checked row by row, so bad input names its file, line and fix.

Preference rows are TRL's conversational preference format as the judge writes
them (``prompt``/``chosen``/``rejected`` message lists, ``core.schema.PreferenceRow``)
plus the judge's extra columns; only the columns a trainer needs are kept.  Messages
are checked by ``core.schema.parse_messages`` (the one message validator).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.schema import ROLES, MessageError, parse_messages
from core.store import read_json_rows

PREFERENCE_EXAMPLE = (
    '{"prompt": [{"role": "user", "content": "..."}], "chosen": [{"role": "assistant", "content": "..."}], '
    '"rejected": [{"role": "assistant", "content": "..."}], "chosen_probability": 0.83, "margin": 0.66}'
)
#: Columns the judge writes as probabilities or margins: a number outside [0, 1] is a damaged row.
UNIT_COLUMNS = {"chosen_probability": (0.0, 1.0), "margin": (0.0, 1.0)}
SFT_EXAMPLE = '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'


def read_jsonl(path: str | Path | None, what: str) -> list[tuple[Path, int, dict]]:
    """``(file, line number, row)`` for every non-empty line of a file or of a folder of shard parts
    (``core.shards``); every bad line is reported at once."""
    return read_json_rows(path, what, "--data", _example(what))


def _example(what: str) -> str:
    return SFT_EXAMPLE if what == "sft" else PREFERENCE_EXAMPLE


def _check_messages(value: Any, path: Path, number: int, column: str, roles: Sequence[str], example: str) -> list:
    """Message lists must be ``[{"role": ..., "content": str}, ...]``; a plain string becomes one message."""
    if isinstance(value, str) and len(roles) == 1:
        return [{"role": roles[0], "content": value}]
    try:
        return parse_messages(value, column, roles, other_keys="drop")
    except MessageError as exc:
        raise UserError(f"{path}:{number}: {exc}; a row looks like {example}") from None


def load_sft_rows(path: str | Path | None, max_rows: int | None = None) -> list[dict]:
    """``[{"messages": [...]}]`` from sft.jsonl; other columns are dropped."""
    rows = []
    for file, number, row in read_jsonl(path, "sft")[:max_rows]:
        if "messages" not in row:
            raise UserError(f"{file}:{number}: no 'messages' column; an sft row looks like {SFT_EXAMPLE}")
        messages = _check_messages(row["messages"], file, number, "messages", ROLES, SFT_EXAMPLE)
        if messages[-1]["role"] != "assistant":
            raise UserError(f"{file}:{number}: the last message must be the assistant's answer to learn from")
        rows.append({"messages": messages})
    return rows


def load_preference_rows(
    path: str | Path | None,
    max_rows: int | None = None,
    extra_columns: tuple[str, ...] = (),
    extra_hint: str = "or turn off the option that needs it",
) -> list[dict]:
    """``prompt``/``chosen``/``rejected`` message lists plus the requested numeric ``extra_columns``."""
    rows = []
    for file, number, row in read_jsonl(path, "preference")[:max_rows]:
        missing = [column for column in ("prompt", "chosen", "rejected") if column not in row]
        if missing:
            raise UserError(
                f"{file}:{number}: missing column(s) {', '.join(missing)}; a preference row looks like "
                f"{PREFERENCE_EXAMPLE}"
            )
        prompt = row["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        kept = {
            "prompt": _check_messages(prompt, file, number, "prompt", ROLES, PREFERENCE_EXAMPLE),
            "chosen": _check_messages(row["chosen"], file, number, "chosen", ("assistant",), PREFERENCE_EXAMPLE),
            "rejected": _check_messages(row["rejected"], file, number, "rejected", ("assistant",),
                                        PREFERENCE_EXAMPLE),
        }
        for column in extra_columns:
            value = row.get(column)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(
                    f"{file}:{number}: column {column!r} must be a number, got {json.dumps(value)}; the judge "
                    f"writes it for every pair ({extra_hint})"
                )
            low, high = UNIT_COLUMNS.get(column, (-math.inf, math.inf))
            if not math.isfinite(value) or not low <= value <= high:
                bounds = f"in [{low:g}, {high:g}]" if column in UNIT_COLUMNS else "finite"
                raise UserError(f"{file}:{number}: column {column!r} is {value!r}; it must be a number {bounds} "
                                "(fix the row or judge the pairs again)")
            kept[column] = float(value)
        rows.append(kept)
    return rows


def load_prompts(path: str | Path | None, max_rows: int | None = None) -> list[list[dict]]:
    """Chat prompts for PPO from a file of ``{"prompt": str | messages}`` rows (preference files qualify)."""
    prompts = []
    for file, number, row in read_jsonl(path, "prompts")[:max_rows]:
        if "prompt" not in row:
            raise UserError(f'{file}:{number}: no \'prompt\' column; a prompt row looks like {{"prompt": "..."}}')
        value = row["prompt"]
        if isinstance(value, str):
            if not value.strip():
                raise UserError(f"{file}:{number}: the prompt is empty")
            prompts.append([{"role": "user", "content": value}])
        else:
            prompts.append(
                _check_messages(value, file, number, "prompt", ROLES, '{"prompt": "..."}')
            )
    return prompts


def load_prompt_rows(path: str | Path | None, max_rows: int | None = None,
                     reference_column: str | None = None) -> list[dict]:
    """Rows for online RL: ``prompt`` (chat messages) and ``id`` (the row's, or empty: the judge then keys the
    prompt by its hash, as ``cai judge`` does), plus ``reference``, the text of ``reference_column`` (text or
    assistant messages), when a pointwise judge compares each completion with it."""
    located = read_jsonl(path, "prompts")[:max_rows]
    rows = []
    for prompt, (file, number, row) in zip(load_prompts(path, max_rows), located):
        identity = row.get("id")
        if identity is not None and (isinstance(identity, bool) or not isinstance(identity, (str, int))):
            raise UserError(f"{file}:{number}: 'id' must be text or a whole number, got {json.dumps(identity)}")
        kept = {"prompt": prompt, "id": "" if identity is None else str(identity)}
        if reference_column is not None:
            value = row.get(reference_column)
            if isinstance(value, list):
                value = _check_messages(value, file, number, reference_column, ("assistant",), PREFERENCE_EXAMPLE)
                value = value[-1]["content"]
            if not isinstance(value, str) or not value.strip():
                raise UserError(
                    f"{file}:{number}: no reference answer in column {reference_column!r} (text or assistant "
                    f"messages), which the pointwise judge compares each completion with; add it, name another "
                    "column with --judge-reference, or use --judge-mode groupwise"
                )
            kept["reference"] = value
        rows.append(kept)
    return rows


def split_rows(rows: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A reproducible held-out split; at least one training row, and one eval row when asked for any."""
    if eval_fraction <= 0 or len(rows) < 2:
        return rows, []
    import random

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(rows) - 1, max(1, round(len(rows) * eval_fraction)))
    held = set(order[:n_eval])
    return [row for i, row in enumerate(rows) if i not in held], [row for i, row in enumerate(rows) if i in held]
