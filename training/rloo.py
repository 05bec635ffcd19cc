"""``cai train rloo``: REINFORCE leave-one-out on TRL's RLOOTrainer, with a reward model, the constitutional
judge as the live reward, or several sources with weights (``training/rl.py``)."""

# No ``from __future__ import annotations``: HfArgumentParser reads the field types.
from dataclasses import dataclass

from training.config import StageFields
from training.rl import RLFields, RLStage, trl_import_failed

try:
    from trl import RLOOConfig, RLOOTrainer
except (ImportError, RuntimeError) as exc:  # TRL wraps a failed import of its trainer module in a RuntimeError
    raise trl_import_failed("rloo", exc) from None


@dataclass
class RLOOStageConfig(RLFields, StageFields, RLOOConfig):
    r"""
    Configuration of ``cai train rloo``: [`RLFields`], [`StageFields`] and TRL's [`~trl.RLOOConfig`]
    (`beta`, TRL's `0.05`, is the KL coefficient in the reward; `beta_final` raises it over training).
    """


class RLOOStage(RLStage):
    trainer_base = RLOOTrainer
