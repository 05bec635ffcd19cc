"""The Python API of training: ``train(config) -> summary``, where the config's class says the method.

    from training.api import train
    from training.dpo import DPOStageConfig

    summary = train(DPOStageConfig(data="runs/demo/preferences.jsonl", output_dir="runs/demo/dpo", max_steps=8))

``cai train`` and ``cai run`` both end here; the methods are those of ``training.methods.METHODS``.
"""

from __future__ import annotations

from typing import Any

from training.methods import METHODS, TrainingMethod, get_method, method_of


def train(config) -> dict[str, Any]:
    """Train with ``config`` and write its model folder; returns the summary (also in cai_training.json)."""
    method = method_of(config)
    return method.stage_class(config, method.name).run()


def config_class(name: str) -> type:
    """The config class of the training method ``name`` (a UserError with did-you-mean for an unknown one)."""
    return get_method(name).config_class


__all__ = ["METHODS", "TrainingMethod", "config_class", "get_method", "train"]
