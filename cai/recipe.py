"""A ``cai run`` recipe file: its mapping, the ``file:line`` of every key, and each section built into its stage's
config object (``core.config.build_config``), every problem naming the recipe's file and line."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from core.config import build_config, check_values, did_you_mean
from core.errors import UserError
from core.yamlfile import read_yaml

SECTIONS = ("generate", "judge", "train", "eval")
TOP_LEVEL = ("run_dir", "constitution", "model", "seed", "dtype", "judge_check", *SECTIONS)
#: top-level keys that name a folder or a model (a number or a list there is a mistake, not a name)
TOP_LEVEL_PATHS = {"run_dir": "the run folder, e.g. run_dir: runs/demo",
                   "model": "a model folder or the served model's name"}
#: top-level keys every section whose config has that field receives (the section's own value wins)
SHARED = ("constitution", "model", "seed", "dtype")
class Recipe:
    """A recipe file: its mapping, and the ``file:line`` of every key for messages."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        document = read_yaml(self.path, "recipe")
        if document.duplicates:
            raise UserError("\n".join(f"{self.path}:{line}: {message}" for line, message in document.duplicates))
        if not isinstance(document.data, dict):
            raise UserError(f"{self.path}: a recipe is a mapping with run_dir, model and the sections {', '.join(SECTIONS)}")
        self.document = document
        self.data: dict = document.data
        problems = [f"{self.where(key)}: unknown key {key!r}{did_you_mean(key, TOP_LEVEL)}; a recipe has "
                    f"{', '.join(TOP_LEVEL)}" for key in self.data if key not in TOP_LEVEL]
        problems += [f"{self.where(key)}: {key}: expected a string ({what}), got {self.data[key]!r}; fix the value"
                     for key, what in TOP_LEVEL_PATHS.items()
                     if self.data.get(key) is not None and (not isinstance(self.data[key], str) or not self.data[key].strip())]
        if problems:
            raise UserError("\n".join(problems))

    def where(self, *keys) -> str:
        return self.document.where(*keys)

    def section(self, *keys, default: dict | None = None) -> dict:
        """The mapping at ``keys`` (``{}`` or ``default`` when absent or empty)."""
        value: Any = self.data
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            return dict(default or {})
        if not isinstance(value, dict):
            raise UserError(f"{self.where(*keys)}: {'.'.join(keys)} must be a mapping of option: value lines")
        return dict(value)

    def build(self, config_class: type, keys: tuple[str, ...], values: dict, inherited: dict | None = None, **fixed):
        """``config_class`` from a section's ``values`` over ``inherited`` ones and the top-level SHARED keys.

        Every problem names the recipe file and the line of the key (or of the section).
        """
        known = {f.name for f in dataclasses.fields(config_class) if f.init}
        merged = {key: self.data[key] for key in SHARED if key in self.data and key in known}
        sources = {key: (key,) for key in merged}
        for key, (value, source) in (inherited or {}).items():
            merged[key], sources[key] = value, source
        merged.update(values)
        sources.update({key: (*keys, key) for key in values})
        label = f"{self.where(*keys)}: {'.'.join(keys)}"
        checked = check_values(config_class, merged, lambda key: self.where(*sources.get(key, keys)))
        try:
            return build_config(config_class, checked, prog=label, **fixed)
        except UserError as exc:  # the config's own rules (e.g. --beta must be > 0): name the section
            message = str(exc)
            raise UserError(message if message.startswith(str(self.path)) else f"{label}: {message}") from None
