"""The judge methods (``--method``): one strategy class per module, and the one registry of them.

A new method is a module with a ``JudgeMethod`` subclass (see ``base``) and a line here.
"""

from __future__ import annotations

from core.registry import Registry

from .base import Comparison, JudgeMethod, Verdict

#: name -> "module:class", in the order ``--help`` lists them.
JUDGE_METHODS: Registry[type[JudgeMethod]] = Registry("judge method", {
    "likelihood": "judging.methods.likelihood:Likelihood",
    "pairwise": "judging.methods.pairwise:Pairwise",
    "text": "judging.methods.text:Text",
})


def method_class(name: str, flag: str = "--method") -> type[JudgeMethod]:
    """The judge method registered as ``name``; an unknown name is a UserError with "did you mean"."""
    return JUDGE_METHODS.get(name, flag)


__all__ = ["JUDGE_METHODS", "Comparison", "JudgeMethod", "Verdict", "method_class"]
