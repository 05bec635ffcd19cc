"""The Python API of training: ``train(config) -> summary``, where the config's class says the method.

    from training.api import train
    from training.dpo import DPOStageConfig

    summary = train(DPOStageConfig(data="runs/demo/preferences.jsonl", output_dir="runs/demo/dpo", max_steps=8))

``cai train`` and ``cai run`` both end here; the methods are those of ``training.methods.TRAINING_METHODS``.
"""

from __future__ import annotations

from typing import Any

from training.methods import TRAINING_METHODS, TrainingMethod, get_method, method_of


def train(config) -> dict[str, Any]:
    """Train with ``config`` and write its model folder; returns the summary (also in cai_training.json)."""
    method = method_of(config)
    return method.stage_class(config, method.name).run()


__all__ = ["TRAINING_METHODS", "TrainingMethod", "get_method", "train"]
