"""``cai train reward``: a Bradley-Terry reward model (one-output head) on the judge's pairs."""

# No ``from __future__ import annotations``: HfArgumentParser reads the field types.
from dataclasses import dataclass, field

from trl import RewardConfig, RewardTrainer

from core.config import check_rules
from training import data as training_data
from training import models
from training.config import StageFields
from training.stages import TrainingStage


@dataclass
class RewardStageConfig(StageFields, RewardConfig):
    r"""
    Configuration of ``cai train reward``: [`StageFields`] and TRL's [`~trl.RewardConfig`].

    Parameters:
        > Parameters that control the judge's margin

        use_margin (`bool`, *optional*, defaults to `True`):
            Pass the judge's `margin` column to TRL's RewardTrainer, whose loss becomes
            `-log sigmoid(r_chosen - r_rejected - margin_scale * margin)`: confident pairs must be separated
            further.
        margin_scale (`float`, *optional*, defaults to `1.0`):
            Multiplier on the judge's margin (a probability difference in [0, 1]) in reward units; `0` ignores it.

        > Parameters whose defaults differ from ours or TRL's

        eval_fraction (`float`, *optional*, defaults to `0.1`):
            Pairs held out to report the reward model's accuracy (instead of `0.0`).
        learning_rate (`float`, *optional*, defaults to `5e-5`): instead of `1e-4`.
        max_length (`int` or `None`, *optional*, defaults to `512`): instead of `1024`.
    """

    use_margin: bool = field(
        default=True,
        metadata={
            "help": "Pass the judge's `margin` column to TRL's RewardTrainer, whose loss becomes "
            "-log sigmoid(r_chosen - r_rejected - margin_scale * margin): confident pairs must be separated further."
        },
    )
    margin_scale: float = field(
        default=1.0,
        metadata={"help": "Multiplier on the judge's margin (a probability difference in [0, 1]) in reward units."},
    )
    eval_fraction: float = field(
        default=0.1,
        metadata={"help": "Fraction of pairs held out (split by the seed) to report the reward model's accuracy; 0 none."},
    )
    learning_rate: float = field(default=5e-5, metadata={"help": "The initial learning rate for AdamW."})
    max_length: int | None = field(
        default=512, metadata={"help": "Maximum tokens per prompt and answer; longer ones are truncated."}
    )

    def __post_init__(self):
        check_rules(self, [("margin_scale", self.margin_scale >= 0, "must be >= 0 (0 ignores the margin)")])
        super().__post_init__()

    @property
    def margin_used(self) -> bool:
        return self.use_margin and self.margin_scale > 0


class RewardStage(TrainingStage):
    counts = "pairs"
    trainer_class = RewardTrainer
    lora_task = "SEQ_CLS"
    gpu_train_batch = 8
    cpu_settings = {"per_device_eval_batch_size": 4}

    @classmethod
    def liger_fits(cls, config, settings):
        return True  # transformers patches the model's layers (RMSNorm, SwiGLU, RoPE)

    def load_rows(self) -> list[dict]:
        config = self.config
        rows = training_data.load_preference_rows(
            config.data, config.max_rows, ("margin",) if config.margin_used else (), "or pass --use-margin false"
        )
        if config.margin_used:
            for row in rows:
                row["margin"] = config.margin_scale * row["margin"]
        return rows

    def load_model(self, base, tokenizer):
        config = self.config
        return models.load_score_model(base, config.train_dtype, tokenizer.pad_token_id, "--model",
                                       config.attn_implementation)
