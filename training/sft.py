"""``cai train sft``: supervised fine-tuning on the final revisions, the supervised stage of Constitutional AI."""

# No ``from __future__ import annotations``: HfArgumentParser reads the field types.
from dataclasses import dataclass, field

from trl import SFTConfig, SFTTrainer

from training import data as training_data
from training.config import StageFields
from training.stages import TrainingStage


@dataclass
class SFTStageConfig(StageFields, SFTConfig):
    r"""
    Configuration of ``cai train sft``: [`StageFields`] and TRL's [`~trl.SFTConfig`].

    Parameters:
        > Parameters whose defaults differ from TRL's

        max_length (`int` or `None`, *optional*, defaults to `512`):
            Maximum tokens per row (instead of `1024`); the demo's rows are far shorter, and on CPU every
            token of padding costs.

        > Parameters chosen for the device when left unset

        packing (`bool`, *optional*):
            Pack rows best-fit into padding-free batches: on a GPU whose models load with FlashAttention
            (`attn_implementation: flash_attention_2`), which padding-free batches need; off otherwise.
    """

    max_length: int | None = field(
        default=512,
        metadata={"help": "Maximum tokens per row; longer rows are truncated. Empty: no truncation."},
    )
    packing: bool | None = field(
        default=None,
        metadata={"help": "Pack rows best-fit into padding-free batches of max_length tokens. Empty: on where the "
                  "models load with FlashAttention (a GPU with flash_attn), which padding-free batches need."},
    )


class SFTStage(TrainingStage):
    trainer_class = SFTTrainer
    gpu_train_batch = 16

    @classmethod
    def liger_fits(cls, config, settings):
        return True

    def load_rows(self) -> list[dict]:
        return training_data.load_sft_rows(self.config.data, self.config.max_rows)
