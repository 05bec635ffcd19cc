"""The judge methods (``--method``): one strategy class per module, and the one registry of them.

A new method is a module with a ``JudgeMethod`` subclass (see ``base``) and a line here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from core.config import check_rules
from core.registry import Registry

from .base import Comparison, JudgeMethod, MethodOptions, Verdict

#: name -> "module:class", in the order ``--help`` lists them.
JUDGE_METHODS: Registry[type[JudgeMethod]] = Registry("judge method", {
    "likelihood": "judging.methods.likelihood:Likelihood",
    "pairwise": "judging.methods.pairwise:Pairwise",
    "text": "judging.methods.text:Text",
})


def method_class(name: str, flag: str = "--method") -> type[JudgeMethod]:
    """The judge method registered as ``name``; an unknown name is a UserError with "did you mean"."""
    return JUDGE_METHODS.get(name, flag)


def method_options(name: str, config: Any) -> MethodOptions:
    """Method ``name``'s options from ``config``'s fields of the same name (else their defaults), checked by its
    rules: a broken one is a UserError quoting the value and naming its flag."""
    options_class = method_class(name).Options
    options = options_class(**{option.name: getattr(config, option.name) for option in dataclasses.fields(options_class)
                               if hasattr(config, option.name)})
    check_rules(options, options.rules())
    return options


__all__ = ["JUDGE_METHODS", "Comparison", "JudgeMethod", "MethodOptions", "Verdict", "method_class", "method_options"]
