"""Load ``principles.yaml`` safely and report every problem at once with file:line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from core.errors import UserError
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


class _LineTrackingLoader(yaml.SafeLoader):
    """SafeLoader that records each node's line and flags duplicate keys instead of overwriting."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                self.duplicates.append(
                    (line, f"duplicate key {key!r} (first on line {seen[key]}); keep one of them")
                )
            else:
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _line_index(node: yaml.Node, path: tuple = (), index: dict | None = None) -> dict[tuple, int]:
    """Map every path (keys and list positions) to the 1-based line where its value starts."""
    index = {} if index is None else index
    index.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = path + (key_node.value,)
            index[key_path] = key_node.start_mark.line + 1
            _line_index(value_node, key_path, index)
            index[key_path] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, path + (i,), index)
    return index


def _line_for(index: dict[tuple, int], loc: tuple) -> int | None:
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in index:
            return index[loc[:cut]]
    return None


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


def parse_constitution(text: str, filename: str = "<string>") -> Constitution:
    problems: list[Problem] = []
    loader = _LineTrackingLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConstitutionError([Problem(filename, None, "file is empty; see principles.yaml for the format")])
        data = loader.construct_document(node)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConstitutionError(
            [Problem(filename, line, f"unsupported YAML tag ({exc.problem}); only plain YAML is allowed, remove the tag")]
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        column = f", column {mark.column + 1}" if mark else ""
        raise ConstitutionError(
            [Problem(filename, line, f"malformed YAML{column}: {exc.problem or exc.context}; fix the syntax")]
        ) from None
    finally:
        loader.dispose()

    problems.extend(Problem(filename, line, message) for line, message in loader.duplicates)
    index = _line_index(node)
    if not isinstance(data, dict):
        problems.append(Problem(filename, 1, "top level must be a mapping with version, principles, ..."))
        raise ConstitutionError(problems)

    seen_ids: dict[str, int] = {}
    for i, principle in enumerate(data.get("principles") or []):
        if isinstance(principle, dict) and isinstance(principle.get("id"), str):
            line = _line_for(index, ("principles", i, "id"))
            pid = principle["id"]
            if pid in seen_ids:
                problems.append(Problem(filename, line, f"duplicate principle id {pid!r} (first on line {seen_ids[pid]}); ids must be unique"))
            else:
                seen_ids[pid] = line

    try:
        constitution = Constitution.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            problems.append(Problem(filename, _line_for(index, tuple(error["loc"])), _describe(error, data)))
        constitution = None

    if problems:
        problems.sort(key=lambda p: (p.line or 0))
        raise ConstitutionError(problems)
    return constitution


def load_constitution(path: str | Path) -> Constitution:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConstitutionError([Problem(str(path), None, f"cannot read: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConstitutionError([Problem(str(path), line, "not valid UTF-8; save the file as UTF-8")]) from None
    return parse_constitution(text, str(path))
