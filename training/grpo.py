"""``cai train grpo``: group relative policy optimization on TRL's GRPOTrainer, with the same reward sources
as ``cai train rloo`` (``training/rl.py``)."""

# No ``from __future__ import annotations``: HfArgumentParser reads the field types.
from dataclasses import dataclass, field

from training.config import StageFields
from training.rl import RLFields, RLStage, trl_import_failed

try:
    from trl import GRPOConfig, GRPOTrainer
except (ImportError, RuntimeError) as exc:  # TRL wraps a failed import of its trainer module in a RuntimeError
    raise trl_import_failed("grpo", exc) from None


@dataclass
class GRPOStageConfig(RLFields, StageFields, GRPOConfig):
    r"""
    Configuration of ``cai train grpo``: [`RLFields`], [`StageFields`] and TRL's [`~trl.GRPOConfig`].

    Parameters:
        beta (`float`, *optional*, defaults to `0.04`):
            KL coefficient in the loss, instead of TRL's `0.0` (no KL term, no reference model): the seed
            article's objective keeps the policy near the reference, and `beta_final` raises it over training.
    """

    beta: float = field(
        default=0.04,
        metadata={"help": "KL coefficient in the loss (TRL's default is 0.0: no KL term and no reference model); "
                          "--beta-final raises it over training."},
    )


class GRPOStage(RLStage):
    trainer_base = GRPOTrainer
