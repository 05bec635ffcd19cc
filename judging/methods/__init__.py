"""The judge methods (``--method``): one strategy class per module, and the one registry of them.

A new method is a module with a ``JudgeMethod`` subclass (see ``base``) and a line here.
"""

from __future__ import annotations

import importlib

from core.config import did_you_mean

from .base import Comparison, JudgeMethod, Verdict

#: name -> "module:class", in the order ``--help`` lists them.
METHODS = {
    "likelihood": "judging.methods.likelihood:Likelihood",
    "pairwise": "judging.methods.pairwise:Pairwise",
    "text": "judging.methods.text:Text",
}


def method_class(name: str) -> type[JudgeMethod]:
    if name not in METHODS:
        raise ValueError(f"unknown judge method {name!r}{did_you_mean(name, METHODS)}. "
                         f"Choose one of: {', '.join(METHODS)}.")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["METHODS", "Comparison", "JudgeMethod", "Verdict", "method_class"]
