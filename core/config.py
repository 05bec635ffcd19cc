"""The one configuration path of every command: defaults in the config dataclass, then
``--config FILE`` (YAML), then flags.

Values from YAML (a ``--config`` file or a recipe section) are checked here against the
dataclass's field types: an unknown key, a value of the wrong type or a number that is not
finite is one UserError naming the file, the line, the key and the fix.  Flags are parsed by
TRL's parser (``HfArgumentParser``), so every field of TRL's and transformers' configs is a flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import UserError
from .yamlfile import YamlDocument, read_yaml


def did_you_mean(word: Any, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def flag(name: str) -> str:
    """The command-line flag of a config field: ``max_tokens`` -> ``--max-tokens``."""
    return "--" + name.replace("_", "-")


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    """A UserError quoting ``value`` unless it is one of ``choices`` (``name`` is the flag or key)."""
    choices = list(choices)
    if value not in choices:
        hint = did_you_mean(value, choices) or "."
        raise UserError(f"{name} {value!r} is unknown{hint} Choose one of: {', '.join(choices)}.")


def check_rules(config: Any, rules: Sequence[tuple[str, bool, str]], flags: Mapping[str, str] | None = None) -> None:
    """``rules`` are ``(field, holds, rule)``; the first that does not hold is a UserError quoting the value.

    The error names the field's flag, or ``flags[field]`` when the value came from another option
    (a judge's ``--judge-base-url``).
    """
    from core.redact import redact_values

    for name, holds, rule in rules:
        if not holds:
            # A URL is quoted without its credentials or query (a key may be in either).
            value = redact_values(getattr(config, name))
            raise UserError(f"{(flags or {}).get(name) or flag(name)} {value!r} {rule}")


def _field_types(config_class: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(config_class)
    except Exception:  # a type the hints cannot resolve: fall back to what the fields say
        return {f.name: f.type for f in dataclasses.fields(config_class)}


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as ``hint`` asks, or ValueError. Only the shapes YAML can give are handled."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option)
            except ValueError:
                continue
        raise ValueError(_describe(hint))
    if origin is typing.Literal:
        if value in typing.get_args(hint):
            return value
        raise ValueError(" or ".join(map(repr, typing.get_args(hint))))
    if origin in (list, tuple, Sequence):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        items = value if isinstance(value, list) else [value]
        coerced = [_coerce(v, item) for v in items]
        return tuple(coerced) if origin is tuple else coerced
    if origin in (dict, Mapping):
        if isinstance(value, dict):
            return value
        raise ValueError("a mapping")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError("true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError("a whole number")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError("a finite number")
            return float(value)
        raise ValueError("a number")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError("a string")
    if isinstance(hint, type) and issubclass(hint, dict):
        if isinstance(value, dict):
            return value
        raise ValueError("a mapping")
    return value  # Any, enums, callables: the dataclass checks them


def check_values(config_class: type, values: Mapping[str, Any], where) -> dict[str, Any]:
    """``values`` checked against ``config_class``'s fields: unknown keys and wrong types are a UserError.

    ``where(key)`` names the place of a key (``file:line``) in messages.
    """
    hints = _field_types(config_class)
    known = [f.name for f in dataclasses.fields(config_class) if f.init]
    # A field's flag aliases name it in YAML too (``--in`` of ``input``: ``in: file.jsonl``).
    aliases = {alias.lstrip("-").replace("-", "_"): f.name for f in dataclasses.fields(config_class)
               for alias in f.metadata.get("aliases", ())}
    problems, checked = [], {}
    for key, value in values.items():
        key = aliases.get(key, key)
        if key not in known:
            problems.append(f"{where(key)}: unknown option {key!r}{did_you_mean(key, known)}")
            continue
        try:
            checked[key] = _coerce(value, hints.get(key, Any))
        except ValueError as exc:
            problems.append(f"{where(key)}: {key}: expected {exc}, got {value!r}; fix the value")
    if problems:
        raise UserError("\n".join(problems))
    return checked


def check_finite(config: Any, prog: str) -> None:
    """Every float field of a parsed config (flags included) is finite: ``--temperature inf`` is refused."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name, None)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{prog}: {flag(f.name)} {value!r} must be a finite number")


def build_config(config_class: type, values: Mapping[str, Any], where=lambda key: key, prog: str = "", **fixed):
    """A config object from a mapping (a recipe section), checked as a ``--config`` file is."""
    checked = check_values(config_class, values, where)
    checked.update(fixed)
    missing = [f.name for f in dataclasses.fields(config_class) if f.init and f.name not in checked
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{prog or config_class.__name__}: {', '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} required; add {missing[0]}: ... there")
    try:
        config = config_class(**checked)
    except UserError:
        raise
    except (TypeError, ValueError) as exc:
        raise UserError(f"{prog or config_class.__name__}: {exc}") from None
    check_finite(config, prog or config_class.__name__)
    return config


def read_config_file(path: str, config_class: type) -> dict[str, Any]:
    """The options of a YAML config file, checked against ``config_class``."""
    document = read_yaml(path, "config file")
    if document.data is None:
        return {}
    if not isinstance(document.data, dict):
        raise UserError(f"{path}: a config file is a YAML mapping of option: value lines")
    if document.duplicates:
        raise UserError("\n".join(f"{path}:{line}: {message}" for line, message in document.duplicates))
    return check_values(config_class, document.data, lambda key: document.where(key))


def _split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    rest, path = [], None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise UserError("--config needs a YAML file of option: value lines")
            path, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return path, rest


def _is_bool_or_empty(action) -> bool:
    """A flag of a ``bool | None`` field without default (empty = "chosen later"): HfArgumentParser wants a value."""
    from transformers.hf_argparser import string_to_bool

    return action.type is string_to_bool and action.nargs is None and action.default is None


def parse_config(config_class: type, argv: Sequence[str], prog: str, overrides: Mapping[str, Any] | None = None):
    """Parse a command's config: dataclass defaults, then ``overrides``, then ``--config FILE``, then flags."""
    from transformers import HfArgumentParser

    path, argv = _split_config_flag(list(argv))
    values = dict(overrides or {})
    if path:
        values.update(read_config_file(path, config_class))
    parser = HfArgumentParser([config_class], prog=prog)
    # Read above (before the flags); declared here so that --help lists it with the rest.
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="YAML file of option: value lines, read after the defaults and before the flags (an "
                        "unknown key or a wrong type names its line)")
    for action in parser._actions:  # YAML values become the flags' defaults, so flags still override them
        if action.dest in values:
            action.default = values[action.dest]
            action.required = False
        if _is_bool_or_empty(action):  # `--bf16` alone means true, as for a plain bool field
            action.nargs, action.const = "?", True
    try:
        (config,) = parser.parse_args_into_dataclasses(args=argv)
    except UserError:
        raise
    except (TypeError, ValueError) as exc:
        raise UserError(f"{prog}: {exc}") from None
    check_finite(config, prog)
    return config


__all__ = [
    "YamlDocument", "build_config", "check_choice", "check_finite", "check_rules", "check_values", "did_you_mean",
    "flag", "parse_config", "read_config_file",
]
