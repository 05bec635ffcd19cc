"""One config dataclass per training method, in TRL's style.

Each class is TRL's own config (so every TRL and ``transformers.TrainingArguments``
field stays available from YAML and the command line) plus :class:`StageFields`,
the few fields of ours: the data file, the base model, the held-out split, LoRA
and the dtype of the saved folder.  Validation errors quote the bad value.

This module imports TRL (and so torch); ``training.cli`` imports it only once a
``cai train`` command actually runs.
"""

# No ``from __future__ import annotations``: HfArgumentParser reads the field types.
import os
from dataclasses import dataclass, field

# We pin trl==1.12.0 for PPOTrainer; its "experimental API" warning on every run says nothing new.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from trl import DPOConfig, RewardConfig, SFTConfig
from trl.experimental.ppo import PPOConfig

from core.errors import UserError

DTYPES = ("auto", "float32", "bfloat16", "float16")
CONFIDENCE_MODES = ("none", "smooth", "weight")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class StageFields:
    """Fields every ``cai train`` method shares (ours, not TRL's)."""

    data: str | None = field(
        default=None,
        metadata={
            "help": "JSON Lines file to train on: sft.jsonl rows with `messages` for sft; the judge's preference "
            "rows (`prompt`, `chosen`, `rejected`, ...) for reward, ppo and dpo."
        },
    )
    model: str | None = field(
        default=None,
        metadata={
            "help": "Base model: a Hugging Face model folder (e.g. one written by `cai train`) or a hub id; "
            "empty or `default` means the embedded SmolLM2-135M-Instruct."
        },
    )
    eval_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Fraction of rows held out (split by a fixed seed) and evaluated after training; the "
            "metrics are written to eval_results.json in the output folder. 0 disables the held-out split."
        },
    )
    max_rows: int | None = field(
        default=None,
        metadata={"help": "Use at most this many rows of the data file (first rows first); empty uses all."},
    )
    train_dtype: str = field(
        default="float32",
        metadata={
            "help": f"Dtype the weights are trained in, one of {DTYPES}; `auto` keeps the folder's dtype. "
            "float32 is the safe choice on CPU."
        },
    )
    save_dtype: str = field(
        default="float32",
        metadata={
            "help": f"Dtype of the saved model folder, one of {DTYPES}; `auto` writes the base model's dtype "
            "(bfloat16 for the default model: half the size, but it rounds away the small updates of a "
            "short run, so float32 is the default)."
        },
    )
    use_peft: bool = field(
        default=False,
        metadata={
            "help": "Train a LoRA adapter (peft) instead of all weights. The saved folder still holds full, "
            "merged weights, so transformers and vLLM load it like any other model."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (with --use-peft)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha (with --use-peft)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch (with --use-peft)."})
    lora_target_modules: str = field(
        default="all-linear",
        metadata={
            "help": "Comma-separated module names LoRA wraps (e.g. `q_proj,v_proj`), or `all-linear` (with --use-peft)."
        },
    )

    def __post_init__(self):
        for name in ("train_dtype", "save_dtype"):
            if getattr(self, name) not in DTYPES:
                raise UserError(f"{_flag(name)} {getattr(self, name)!r} is not one of {', '.join(DTYPES)}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise UserError(f"--eval-fraction {self.eval_fraction!r} must be in [0, 1), e.g. 0.1")
        if self.max_rows is not None and self.max_rows < 1:
            raise UserError(f"--max-rows {self.max_rows!r} must be a positive number of rows")
        if self.lora_r < 1:
            raise UserError(f"--lora-r {self.lora_r!r} must be at least 1, e.g. 16")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise UserError(f"--lora-dropout {self.lora_dropout!r} must be in [0, 1)")
        super().__post_init__()


@dataclass
class SFTStageConfig(StageFields, SFTConfig):
    """Supervised fine-tuning on the final revisions (`sft.jsonl`): the supervised stage of Constitutional AI."""


@dataclass
class RewardStageConfig(StageFields, RewardConfig):
    """Bradley-Terry reward model: a one-output sequence-classification head trained on the judge's pairs."""

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

    def __post_init__(self):
        if self.margin_scale < 0:
            raise UserError(f"--margin-scale {self.margin_scale!r} must be >= 0 (0 ignores the margin)")
        super().__post_init__()


@dataclass
class PPOStageConfig(StageFields, PPOConfig):
    """PPO (TRL's experimental PPOTrainer): policy, frozen reference, reward model and value model."""

    reward_model: str | None = field(
        default=None,
        metadata={"help": "Reward model folder written by `cai train reward` (required)."},
    )
    value_model: str | None = field(
        default=None,
        metadata={
            "help": "Folder the value model starts from; empty means the reward model, as in TRL's PPO example."
        },
    )
    prompts: str | None = field(
        default=None,
        metadata={
            "help": "Optional prompts file (JSON Lines with `prompt`: a string or a list of chat messages); "
            "empty takes the `prompt` column of --data."
        },
    )
    kl_coef_final: float | None = field(
        default=None,
        metadata={
            "help": "Raise (or lower) the KL coefficient linearly from --kl-coef at the first PPO update to this "
            "value at the last; empty keeps --kl-coef constant."
        },
    )
    max_prompt_length: int = field(
        default=256,
        metadata={"help": "Prompts longer than this many tokens (after the chat template) are cut from the left."},
    )

    def __post_init__(self):
        if self.kl_coef < 0:
            raise UserError(f"--kl-coef {self.kl_coef!r} must be >= 0, e.g. 0.05")
        if self.kl_coef_final is not None and self.kl_coef_final < 0:
            raise UserError(f"--kl-coef-final {self.kl_coef_final!r} must be >= 0, e.g. 0.2")
        if self.max_prompt_length < 1:
            raise UserError(f"--max-prompt-length {self.max_prompt_length!r} must be at least 1")
        super().__post_init__()


@dataclass
class DPOStageConfig(StageFields, DPOConfig):
    """DPO on the judge's pairs, optionally smoothed or weighted per pair by the judge's confidence."""

    confidence: str = field(
        default="none",
        metadata={
            "help": f"Use the judge's confidence per pair, one of {CONFIDENCE_MODES}. `smooth`: conservative DPO "
            "(cDPO) with a per-pair label-smoothing epsilon = 1 - confidence, i.e. loss = (1 - eps) * "
            "-log sigmoid(beta * delta) + eps * -log sigmoid(-beta * delta). `weight`: each pair's sigmoid "
            "loss is multiplied by 2 * confidence - 1 (0 for a coin flip, 1 for a sure pair). `none`: plain DPO."
        },
    )
    confidence_column: str = field(
        default="chosen_probability",
        metadata={
            "help": "Column holding the judge's probability that `chosen` is better (in [0.5, 1]; values below "
            "0.5 are read as 0.5)."
        },
    )

    def __post_init__(self):
        if self.confidence not in CONFIDENCE_MODES:
            raise UserError(f"--confidence {self.confidence!r} is not one of {', '.join(CONFIDENCE_MODES)}")
        if self.beta <= 0:
            raise UserError(f"--beta {self.beta!r} must be > 0, e.g. 0.1")
        super().__post_init__()
        if self.confidence != "none":
            # The per-pair term is derived for the plain sigmoid DPO loss; refuse the combinations it does not cover.
            problems = []
            if list(self.loss_type) != ["sigmoid"]:
                problems.append(f"--loss-type {self.loss_type!r} (needs ['sigmoid'])")
            if self.f_divergence_type != "reverse_kl":
                problems.append(f"--f-divergence-type {self.f_divergence_type!r} (needs 'reverse_kl')")
            if self.ld_alpha is not None:
                problems.append(f"--ld-alpha {self.ld_alpha!r} (needs empty)")
            if self.use_weighting:
                problems.append("--use-weighting True (needs False)")
            if self.use_liger_kernel:
                problems.append("--use-liger-kernel True (needs False)")
            if problems:
                raise UserError(f"--confidence {self.confidence!r} cannot be combined with " + "; ".join(problems))


STAGE_CONFIGS = {
    "sft": SFTStageConfig,
    "reward": RewardStageConfig,
    "ppo": PPOStageConfig,
    "dpo": DPOStageConfig,
}
