"""``cai judge``'s input rows read into items to judge: a `cai generate` row (revision mode) or a prompt with
responses or none (samples mode), each checked before anything is written, and which rows repeat another."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.dedup import find_duplicates, prompt_order, prompt_text
from core.errors import UserError
from core.hashing import stable_hash
from core.schema import DRAFT, REVISION, GenerationRow, MessageError, parse_messages, parse_step, validate_fields
from core.store import read_json_objects

GENERATE_FIELDS = ("prompt", "initial_response", "final_response", "rounds")  # what revision mode needs


def read_jsonl(path: str | Path, limit: int | None = None, what: str = "input", flag: str = "--in") -> list[tuple[int, dict]]:
    rows = read_json_objects(path, what, flag)
    return rows[:limit] if limit else rows


def _messages(value, where: str, name: str = "prompt") -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise UserError(f"{where}: the prompt is empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise UserError(f"{where}: the prompt must be text or a non-empty list of {{role, content}} messages")
    try:
        return parse_messages(value, name, other_keys="drop")
    except MessageError as exc:
        raise UserError(f"{where}: {exc}") from None


def _check_types(row: dict, where: str, expected: dict[str, tuple[type, ...]]) -> None:
    """A column of the wrong type (a hand-edited row) is a UserError naming the row and the column."""
    for column, types in expected.items():
        value = row.get(column)
        if not isinstance(value, types) or isinstance(value, bool):
            names = " or ".join("null" if t is type(None) else {"str": "text", "list": "a list", "int": "a whole number"}
                                .get(t.__name__, t.__name__) for t in types)
            raise UserError(f"{where}: '{column}' must be {names}, got {json.dumps(value)[:60]}; fix the row")


@dataclass
class Candidate:
    text: str
    finish_reason: str = "stop"
    label: str = ""  # where it came from: "initial_response", "final_response", "sample 3"

    @property
    def usable_as_chosen(self) -> bool:
        return bool(self.text.strip()) and self.finish_reason != "length"


@dataclass
class Item:
    """One input row ready to judge."""

    id: str
    line: int
    prompt: list[dict]
    candidates: list[Candidate]
    input_fingerprint: str
    principle_ids: list[str]
    revisions: int = 0
    source_file: str = ""  # the file it was read from (a folder's part), when not --in itself


def _finish(calls: list[dict], kind: str, last: bool) -> str:
    """finish_reason of the first (or last) call of this kind of step: a cut-off response is never chosen."""
    matching = [c for c in calls or [] if parse_step(c["step"])[0] == kind]
    if not matching:
        return "stop"
    return (matching[-1] if last else matching[0]).get("finish_reason") or "stop"


def revision_item(line: int, row: dict, where: str) -> Item | str:
    missing = [f for f in GENERATE_FIELDS if f not in row]
    if missing:
        raise UserError(f"{where}:{line}: not a `cai generate` row (missing {', '.join(missing)}); "
                        "use --mode samples for prompts or sampled responses")
    prompt = _messages(row["prompt"], f"{where}:{line}")
    validate_fields(GenerationRow, row, ("initial_response", "final_response", "rounds", "calls", "flags"), f"{where}:{line}",
                    "is this a `cai generate` output?")
    row_id = str(row.get("id") or stable_hash(prompt))
    if not row["rounds"]:
        return "no revision (0 rounds)"
    initial = Candidate(row["initial_response"], _finish(row.get("calls"), DRAFT, False), "initial_response")
    final = Candidate(row["final_response"], _finish(row.get("calls"), REVISION, True), "final_response")
    return Item(row_id, line, prompt, [final, initial],
                row.get("fingerprint") or stable_hash([prompt, initial.text, final.text]),
                [r.get("principle_id") for r in row["rounds"]], revisions=len(row["rounds"]))


def samples_item(line: int, row: dict, where: str) -> Item:
    if "prompt" in row and "messages" in row:
        raise UserError(f"{where}:{line}: has both 'prompt' and 'messages'; keep one")
    if "prompt" not in row and "messages" not in row:
        raise UserError(f"{where}:{line}: missing 'prompt' (text or messages) or 'messages'")
    name = "prompt" if "prompt" in row else "messages"
    prompt = _messages(row[name], f"{where}:{line}", name)
    if prompt[-1]["role"] != "user":
        raise UserError(f"{where}:{line}: the prompt's last message must be from the user (the turn to answer)")
    _check_types(row, f"{where}:{line}", {"responses": (list, type(None)), "id": (str, int, type(None))})
    row_id = str(row.get("id") or stable_hash(prompt))
    candidates = []
    for i, response in enumerate(row.get("responses") or []):
        if isinstance(response, str):
            candidates.append(Candidate(response, "stop", f"response {i}"))
        elif (isinstance(response, dict) and isinstance(response.get("content", response.get("text")), str)
              and isinstance(response.get("finish_reason"), (str, type(None)))):
            candidates.append(Candidate(response.get("content", response.get("text")),
                                        response.get("finish_reason") or "stop", f"response {i}"))
        else:
            raise UserError(f"{where}:{line}: responses[{i}] must be text or {{\"content\": text, \"finish_reason\": ...}}")
    return Item(row_id, line, prompt, candidates, stable_hash([prompt, [c.text for c in candidates]]), [])


def find_repeats(parsed: list[Item | str], rows: list[dict]) -> dict[int, dict]:
    """Input index -> what it repeats (core/dedup.py), for rows that repeat an earlier row's prompt or final
    response (samples mode: prompt), with both rows' ids and texts for the report's examples."""
    texts = [{"prompt": prompt_text(item.prompt),
              "response": next((c.text for c in item.candidates if c.label == "final_response"), None)}
             if isinstance(item, Item) else {} for item in parsed]
    found = {}
    order = [prompt_order(row, index) for index, row in enumerate(rows)]
    for index, duplicate in find_duplicates(texts, order).items():
        item, first = parsed[index], parsed[duplicate.of]
        found[index] = {"id": item.id, "line": item.line, "of_id": first.id, "of_line": first.line,
                        "field": duplicate.field, "kind": duplicate.kind, "similarity": duplicate.similarity,
                        "text": texts[index][duplicate.field], "of_text": texts[duplicate.of][duplicate.field]}
    return found
