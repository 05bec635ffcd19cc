"""Read a prompts file (JSON Lines) and report every bad line before any generation."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from core.hashing import stable_hash
from core.schema import MessageError, parse_messages
from core.store import iter_lines, parse_json_line


@dataclass(frozen=True)
class PromptRecord:
    id: str
    messages: list[dict[str, str]]
    tag: str | None
    line: int


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
        try:
            messages = parse_messages(row["messages"], "messages")
        except MessageError as exc:
            return None, str(exc)
        if messages[-1]["role"] != "user":
            return None, "the last message must be from the user (the turn to answer)"
        return messages, None
    return None, "missing 'prompt' (text) or 'messages' (chat); add one"


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """The file's lines with their numbers, read as a stream (a prompts file may be larger than memory)."""
    return iter_lines(path, "prompts", "--prompts")


def _record(number: int, line: bytes) -> PromptRecord | str:
    """The prompt on one line, or what is wrong with it."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "not valid UTF-8; save the file as UTF-8"
    try:
        row = parse_json_line(text)
    except ValueError as exc:
        return str(exc)
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    try:
        json.dumps(row, ensure_ascii=False)
    except RecursionError:
        return "nested too deeply (more than Python's recursion limit); flatten it"
    messages, error = _messages(row)
    if error:
        return error
    tag = row.get("tag")
    if tag is not None and not isinstance(tag, str):
        return f"'tag' must be a string, got {type(tag).__name__}"
    raw_id = row.get("id")
    if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or str(raw_id) == ""):
        return f"'id' must be a non-empty string or integer, got {raw_id!r}"
    prompt_id = str(raw_id) if raw_id is not None else stable_hash(messages)
    return PromptRecord(prompt_id, messages, tag, number)


def scan_prompts(path: str | Path, limit: int | None = None,
                 visit: Callable[[PromptRecord], None] | None = None) -> int:
    """Check every line of a prompts file; return how many prompts it gives (the first ``limit``).

    ``visit`` sees each of those prompts in order, and none is kept, so memory does
    not follow the prompts' text.  Every bad line is reported at once, as a
    PromptFileError raised after the whole file is read.
    """
    path = Path(path)
    problems: list[tuple[int, str]] = []
    first_line_of: dict[str, int] = {}
    count = 0
    for number, line in _lines(path):
        if not line.strip():
            continue
        record = _record(number, line)
        if isinstance(record, str):
            problems.append((number, record))
            continue
        if record.id in first_line_of:
            problems.append((number, f"duplicate id {record.id!r} (first on line {first_line_of[record.id]}); "
                                     "ids must be unique"))
            continue
        first_line_of[record.id] = number
        if limit is None or count < limit:
            count += 1
            if visit is not None:
                visit(record)
    if problems:
        raise PromptFileError(str(path), problems)
    if not first_line_of:
        raise UserError(f"{path}: no prompts; add JSON lines like {{\"prompt\": \"...\"}}")
    return count


def iter_prompts(path: str | Path, limit: int | None = None) -> Iterator[PromptRecord]:
    """The prompts of a file ``scan_prompts`` accepted, read again as a stream (the first ``limit``)."""
    path = Path(path)
    count = 0
    for number, line in _lines(path):
        if limit is not None and count >= limit:
            return
        if not line.strip():
            continue
        record = _record(number, line)
        if isinstance(record, str):
            raise UserError(f"{path}:{number}: {record} (the file changed during the run; fix it and run again)")
        count += 1
        yield record


def read_prompts(path: str | Path, limit: int | None = None) -> list[PromptRecord]:
    """All prompts (the first ``limit``), or a PromptFileError listing every bad line."""
    records: list[PromptRecord] = []
    scan_prompts(path, limit, records.append)
    return records
