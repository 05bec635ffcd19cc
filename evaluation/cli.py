"""``cai eval``: the command line of ``evaluation.run`` (defaults, then ``--config FILE``, then flags)."""

from __future__ import annotations

from core.config import parse_config


def evaluate(argv: list[str]) -> int:
    """Entry point of ``cai eval``."""
    from .run import EvalConfig, evaluate as run_evaluate, format_eval

    config = parse_config(EvalConfig, argv, "cai eval")
    print(format_eval(run_evaluate(config)))
    return 0
