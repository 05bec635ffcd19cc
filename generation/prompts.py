"""Read a prompts file (JSON Lines) and report every bad line before any generation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from constitution.errors import UserError
from constitution.hashing import stable_hash

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PromptRecord:
    id: str
    messages: list[dict[str, str]]
    tag: str | None
    line: int
    extra: dict = field(default_factory=dict)


class PromptFileError(UserError):
    def __init__(self, path: str, problems: list[tuple[int, str]]):
        self.problems = problems
        lines = [f"{path}:{line}: {message}" for line, message in problems]
        lines.append(f"{len(problems)} bad line(s) in {path}; fix them (nothing was generated)")
        super().__init__("\n".join(lines))


def _messages(row: dict) -> tuple[list[dict[str, str]] | None, str | None]:
    if "prompt" in row and "messages" in row:
        return None, "has both 'prompt' and 'messages'; keep one"
    if "prompt" in row:
        prompt = row["prompt"]
        if not isinstance(prompt, str):
            return None, f"'prompt' must be a string, got {type(prompt).__name__}"
        if not prompt.strip():
            return None, "'prompt' is empty"
        return [{"role": "user", "content": prompt}], None
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            return None, "'messages' must be a non-empty list of {role, content}"
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or set(message) - {"role", "content"} or "role" not in message:
                return None, f"messages[{i}] must be an object with only 'role' and 'content'"
            if message["role"] not in ROLES:
                return None, f"messages[{i}].role is {message['role']!r}; use one of {', '.join(ROLES)}"
            if not isinstance(message.get("content"), str):
                return None, f"messages[{i}].content must be a string"
        if messages[-1]["role"] != "user":
            return None, "the last message must be from the user (the turn to answer)"
        return [dict(m) for m in messages], None
    return None, "missing 'prompt' (text) or 'messages' (chat); add one"


def read_prompts(path: str | Path, limit: int | None = None) -> list[PromptRecord]:
    """All prompts (the first ``limit``), or a PromptFileError listing every bad line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read prompts file: {exc.strerror}") from None
    problems: list[tuple[int, str]] = []
    records: list[PromptRecord] = []
    first_line_of: dict[str, int] = {}
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            problems.append((number, "not valid UTF-8; save the file as UTF-8"))
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append((number, f"invalid JSON at column {exc.colno}: {exc.msg}"))
            continue
        if not isinstance(row, dict):
            problems.append((number, f"expected a JSON object, got {type(row).__name__}"))
            continue
        try:
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            # A JSON escape like \\ud800 decodes to half a surrogate pair: not text any output can hold.
            problems.append((number, f"contains an unpaired surrogate ({exc.object[exc.start]!r}), which is not valid Unicode; fix the escape"))
            continue
        messages, error = _messages(row)
        if error:
            problems.append((number, error))
            continue
        tag = row.get("tag")
        if tag is not None and not isinstance(tag, str):
            problems.append((number, f"'tag' must be a string, got {type(tag).__name__}"))
            continue
        raw_id = row.get("id")
        if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or str(raw_id) == ""):
            problems.append((number, f"'id' must be a non-empty string or integer, got {raw_id!r}"))
            continue
        prompt_id = str(raw_id) if raw_id is not None else stable_hash(messages)
        if prompt_id in first_line_of:
            problems.append((number, f"duplicate id {prompt_id!r} (first on line {first_line_of[prompt_id]}); ids must be unique"))
            continue
        first_line_of[prompt_id] = number
        extra = {k: v for k, v in row.items() if k not in ("prompt", "messages", "id", "tag")}
        records.append(PromptRecord(prompt_id, messages, tag, number, extra))
    if problems:
        raise PromptFileError(str(path), problems)
    if not records:
        raise UserError(f"{path}: no prompts; add JSON lines like {{\"prompt\": \"...\"}}")
    return records[:limit] if limit else records
