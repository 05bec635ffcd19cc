"""Load ``principles.yaml`` safely and report every problem at once with file:line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.errors import UserError
from core.yamlfile import YamlDocument, YamlError, parse_yaml, read_yaml
from .schema import Constitution


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class ConstitutionError(UserError):
    """Every problem found in a constitution file; ``str()`` lists them one per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _describe(error: dict, data: Any) -> str:
    loc = error["loc"]
    dotted = ".".join(str(part) for part in loc)
    kind = error["type"]
    if kind == "missing":
        return f"{dotted}: required field is missing; add it"
    if kind == "extra_forbidden":
        return f"{dotted}: unknown field {loc[-1]!r}; remove it or check its spelling"
    if kind == "greater_than":
        return f"{dotted}: weight must be positive, got {error.get('input')!r}"
    return f"{dotted}: {error['msg']} (got {error.get('input')!r})"


def _checked_document(document: YamlDocument) -> YamlDocument:
    problems = [Problem(document.path, line, message) for line, message in document.duplicates]
    if document.data is None:
        problems.append(Problem(document.path, None, "file is empty; see principles.yaml for the format"))
    elif not isinstance(document.data, dict):
        problems.append(Problem(document.path, 1, "top level must be a mapping with version, principles, ..."))
    if document.data is None or not isinstance(document.data, dict):
        raise ConstitutionError(problems)
    return document


def parse_constitution(text: str, filename: str = "<string>") -> Constitution:
    """A constitution from YAML text; every problem at once, each with file:line (see core.yamlfile)."""
    try:
        document = parse_yaml(text, filename)
    except YamlError as exc:
        raise ConstitutionError([Problem(exc.path, exc.line, exc.detail)]) from None
    return _validate(_checked_document(document))


def _validate(document: YamlDocument) -> Constitution:
    filename, data = document.path, document.data
    problems = [Problem(filename, line, message) for line, message in document.duplicates]
    seen_ids: dict[str, int] = {}
    for i, principle in enumerate(data.get("principles") or []):
        if isinstance(principle, dict) and isinstance(principle.get("id"), str):
            line = document.line_of("principles", i, "id")
            pid = principle["id"]
            if pid in seen_ids:
                problems.append(Problem(filename, line, f"duplicate principle id {pid!r} (first on line {seen_ids[pid]}); ids must be unique"))
            else:
                seen_ids[pid] = line

    try:
        constitution = Constitution.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            problems.append(Problem(filename, document.line_of(*error["loc"]), _describe(error, data)))
        constitution = None

    if problems:
        problems.sort(key=lambda p: (p.line or 0))
        raise ConstitutionError(problems)
    return constitution


def load_constitution(path: str | Path) -> Constitution:
    try:
        document = read_yaml(path, "file")
    except YamlError as exc:
        raise ConstitutionError([Problem(exc.path, exc.line, exc.detail)]) from None
    return _validate(_checked_document(document))
