"""YAML files read safely: plain YAML only, duplicate keys reported, every value's line known,
and alias expansion bounded (a few hundred bytes of nested aliases must not take minutes and gigabytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

class YamlError(UserError):
    """A YAML document that cannot be read: ``line`` (1-based, or None) and ``detail`` say where and why."""

    def __init__(self, path: str, line: int | None, detail: str):
        self.path, self.line, self.detail = path, line, detail
        super().__init__(f"{path}:{line}: {detail}" if line else f"{path}: {detail}")


#: Nodes a document may expand to, aliases counted each time they are used. Real configs and
#: constitutions have a few thousand; an alias bomb has billions.
MAX_NODES = 200_000
#: The largest YAML file read (configs, recipes and constitutions are kilobytes).
MAX_YAML_BYTES = 16 * 2**20


@dataclass
class YamlDocument:
    """A parsed YAML document, with the 1-based line of every key path (keys and list positions)."""

    path: str
    data: Any
    lines: dict[tuple, int] = field(default_factory=dict)
    duplicates: list[tuple[int, str]] = field(default_factory=list)

    def line_of(self, *loc) -> int | None:
        """The line of ``loc`` or, when it has none, of its nearest parent."""
        for cut in range(len(loc), -1, -1):
            if tuple(loc[:cut]) in self.lines:
                return self.lines[tuple(loc[:cut])]
        return None

    def where(self, *loc) -> str:
        """``file:line`` of ``loc`` (``file`` alone when the line is unknown)."""
        line = self.line_of(*loc)
        return f"{self.path}:{line}" if line else self.path


class _LineTrackingLoader(yaml.SafeLoader):
    """SafeLoader that flags duplicate keys instead of keeping the last one."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if first != line:
                self.duplicates.append((line, f"duplicate key {key!r} (first on line {first}); keep one of them"))
        return super().construct_mapping(node, deep=deep)


def _count_nodes(root: yaml.Node, path: str) -> None:
    """Refuse a document whose aliases expand past MAX_NODES, before anything expands them."""
    stack, seen = [root], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise YamlError(
                path, node.start_mark.line + 1, f"the YAML expands to more than {MAX_NODES:,} values through "
                "aliases (*name); write the values out instead of nesting aliases"
            )
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                stack += (key_node, value_node)
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


def _line_index(root: yaml.Node) -> dict[tuple, int]:
    index: dict[tuple, int] = {}
    stack: list[tuple[yaml.Node, tuple]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        index.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key_path = path + (key_node.value,)
                index[key_path] = key_node.start_mark.line + 1
                stack.append((value_node, key_path))
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, path + (i,)) for i, item in enumerate(node.value)]
    return index


def parse_yaml(text: str, path: str = "<string>") -> YamlDocument:
    """Parse one YAML document; malformed YAML and tags raise a UserError naming the line."""
    loader = _LineTrackingLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return YamlDocument(path, None)
        _count_nodes(node, path)
        data = loader.construct_document(node)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlError(path, mark.line + 1 if mark else None,
                        f"unsupported YAML tag ({exc.problem}); only plain YAML is allowed, remove the tag") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        column = f", column {mark.column + 1}" if mark else ""
        raise YamlError(path, mark.line + 1 if mark else None,
                        f"malformed YAML{column}: {exc.problem or exc.context}; fix the syntax") from None
    except yaml.YAMLError as exc:  # a reader error: a character YAML does not allow
        raise YamlError(path, None, f"not valid YAML ({exc}); fix the file") from None
    except RecursionError:
        raise YamlError(path, None, "the YAML is nested too deeply; flatten it") from None
    finally:
        loader.dispose()
    return YamlDocument(path, data, _line_index(node), loader.duplicates)


def read_yaml(path: str | Path, what: str = "YAML file") -> YamlDocument:
    """Read and parse a YAML file; an unreadable or non-UTF-8 file is a UserError naming it."""
    from .store import read_whole_file

    path = Path(path)
    try:
        raw = read_whole_file(path, what, MAX_YAML_BYTES)
    except IsADirectoryError:
        raise YamlError(str(path), None, f"is a folder; pass the {what} itself") from None
    except OSError as exc:
        raise YamlError(str(path), None, f"cannot read the {what}: {exc.strerror}") from None
    except UserError as exc:
        raise YamlError(str(path), None, str(exc).removeprefix(f"{path}: ")) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YamlError(str(path), line, f"not valid UTF-8; save the {what} as UTF-8") from None
    return parse_yaml(text, str(path))
