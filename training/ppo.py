"""PPO on TRL's experimental PPOTrainer, with a KL coefficient that can rise over training.

PPOTrainer reads ``args.kl_coef`` afresh at every update (the per-token reward
is ``-kl_coef * KL``), so a callback that moves ``args.kl_coef`` between updates
is a faithful schedule; the coefficient in force is logged as
``objective/kl_coef`` next to TRL's reward (``objective/scores``), KL
(``objective/kl``) and entropy (``objective/entropy``).
"""

# No ``from __future__ import annotations``: HfArgumentParser reads the field types.
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from transformers import TrainerCallback
from trl.experimental.ppo import PPOConfig, PPOTrainer

from core.config import check_rules
from core.errors import UserError
from training import data as training_data
from training import models
from training.config import StageFields
from training.stages import TrainingStage


@dataclass
class PPOStageConfig(StageFields, PPOConfig):
    r"""
    Configuration of ``cai train ppo``: [`StageFields`] and TRL's experimental [`~trl.experimental.ppo.PPOConfig`].

    Parameters:
        > Parameters that control the models

        reward_model (`str`):
            Reward model folder written by `cai train reward`. Required.
        value_model (`str`, *optional*):
            Folder the value model starts from; `None` means the reward model, as in TRL's PPO example.

        > Parameters that control the prompts

        prompts (`str`, *optional*):
            Prompts file (JSON Lines with `prompt`: a string or a list of chat messages); `None` takes the
            `prompt` column of `data`.
        max_prompt_length (`int`, *optional*, defaults to `256`):
            Prompts longer than this many tokens (after the chat template) are cut from the left.

        > Parameters that control the KL penalty

        kl_coef_final (`float`, *optional*):
            Move the KL coefficient linearly from `kl_coef` at the first PPO update to this value at the last;
            `None` keeps `kl_coef` constant.

        > Parameters whose defaults differ from TRL's (sized for a 2-core CPU)

        num_ppo_epochs (`int`, *optional*, defaults to `1`): instead of `4`.
        local_rollout_forward_batch_size (`int`, *optional*):
            Chosen for the device when unset: CPU `2`, GPU `64` (TRL's).
        response_length (`int`, *optional*, defaults to `48`): instead of `53`.
        stop_token (`str`, *optional*, defaults to `"eos"`): instead of `None`; answers end at the EOS token.
        num_sample_generations (`int`, *optional*, defaults to `0`): instead of `10`; no sample printing.
    """

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
    num_ppo_epochs: int = field(default=1, metadata={"help": "Number of epochs per batch of rollouts."})
    local_rollout_forward_batch_size: int | None = field(
        default=None,
        metadata={"help": "Per rank no-grad forward pass batch size in the rollout. Empty: CPU 2; GPU 64 (TRL's)."},
    )
    response_length: int = field(default=48, metadata={"help": "Length of the generated answers, in tokens."})
    stop_token: Optional[Literal["eos"]] = field(
        default="eos", metadata={"help": "`eos`: answers end at the EOS token (the tokenizer's)."}
    )
    num_sample_generations: int = field(
        default=0, metadata={"help": "Sample generations printed during training (0: none)."}
    )

    def __post_init__(self):
        if not self.reward_model:
            raise UserError("--reward-model DIR is required: the folder written by `cai train reward`")
        check_rules(self, [
            ("kl_coef", self.kl_coef >= 0, "must be >= 0, e.g. 0.05"),
            ("kl_coef_final", self.kl_coef_final is None or self.kl_coef_final >= 0, "must be >= 0, e.g. 0.2"),
            ("max_prompt_length", self.max_prompt_length >= 1, "must be at least 1"),
        ])
        super().__post_init__()


class LinearKLSchedule(TrainerCallback):
    """Moves ``args.kl_coef`` linearly from ``start`` (first update) to ``end`` (last update)."""

    def __init__(self, start: float, end: float):
        self.start, self.end = start, end

    def _value(self, done: int, total: int) -> float:
        if total <= 1:
            return self.end
        return self.start + (self.end - self.start) * min(done, total - 1) / (total - 1)

    def on_train_begin(self, args, state, control, **kwargs):
        args.kl_coef = self.start

    def on_step_end(self, args, state, control, **kwargs):
        # global_step updates are done; the next one uses this coefficient.
        args.kl_coef = self._value(state.global_step, state.max_steps)


class ScheduledKLPPOTrainer(PPOTrainer):
    """PPOTrainer that logs the KL coefficient it is using."""

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs["objective/kl_coef"] = float(self.args.kl_coef)
        super().log(logs, start_time)


class PPOStage(TrainingStage):
    counts = "prompts"
    padding_side = "left"  # generation needs the prompts padded on the left
    evaluates = False  # PPOTrainer has no evaluate(); its eval_dataset only feeds sample generations
    gpu_train_batch = 8
    trained_companions = 1  # the value model
    frozen_companions = 1  # the reward model

    @classmethod
    def keeps_reference(cls, config, precompute_ref_log_probs):
        return True  # the KL penalty's reference policy (and TRL's PPOTrainer has no Liger path: liger_fits is False)

    @property
    def source(self) -> str:
        return self.config.prompts or self.config.data

    def load_rows(self) -> list[list[dict]]:
        return training_data.load_prompts(self.source, self.config.max_rows)

    def check_split(self, train_rows, source):
        config = self.config
        if len(train_rows) < config.per_device_train_batch_size * config.gradient_accumulation_steps:
            raise UserError(
                f"{source}: {len(train_rows)} training prompts, fewer than one PPO batch "
                f"(--per-device-train-batch-size {config.per_device_train_batch_size} x "
                f"--gradient-accumulation-steps {config.gradient_accumulation_steps}); add prompts or lower them"
            )

    def build_trainer(self, policy, tokenizer, train_rows, eval_rows, base):
        from accelerate import PartialState

        config = self.config
        reward_folder = models.resolve_base(config.reward_model, "--reward-model")
        value_folder = models.resolve_base(config.value_model or config.reward_model, "--value-model")
        for folder, flag in ((reward_folder, "--reward-model"), (value_folder, "--value-model")):
            _check_same_vocabulary(policy, folder, flag)
        peft_config = models.lora_config(config, "CAUSAL_LM")
        attention = config.attn_implementation
        ref_policy = None if peft_config is not None else models.load_causal_lm(base, config.train_dtype, attention)
        reward_model = models.load_score_model(reward_folder, config.train_dtype, tokenizer.pad_token_id,
                                               "--reward-model", attention)
        value_model = models.load_score_model(value_folder, config.train_dtype, tokenizer.pad_token_id,
                                              "--value-model", attention)

        # TRL counts PPO in episodes (prompts); --max-steps counts PPO updates, as the other methods count steps.
        if config.max_steps and config.max_steps > 0:
            batch = config.per_device_train_batch_size * config.gradient_accumulation_steps * PartialState().num_processes
            config.total_episodes = config.max_steps * batch
        config.sft_model_path = base  # TRL's own fields, kept truthful in the saved training arguments
        config.reward_model_path = reward_folder

        self.kl_coef_start = config.kl_coef
        callbacks = [LinearKLSchedule(config.kl_coef, config.kl_coef_final)] if config.kl_coef_final is not None else []
        return ScheduledKLPPOTrainer(
            args=config,
            processing_class=tokenizer,
            model=policy,
            ref_model=ref_policy,
            reward_model=reward_model,
            value_model=value_model,
            train_dataset=_prompt_dataset(train_rows, tokenizer, config.max_prompt_length),
            eval_dataset=_prompt_dataset(eval_rows or train_rows[: config.per_device_eval_batch_size], tokenizer,
                                         config.max_prompt_length),
            callbacks=callbacks,
            peft_config=peft_config,
        )

    saved_prefix = "policy."

    def trained_model(self, trainer):
        return trainer.accelerator.unwrap_model(trainer.model).policy

    def details(self, trainer) -> dict[str, Any]:
        return {
            "prompts_file": self.source,
            "reward_model": self.config.reward_model,
            "kl_coef_start": self.kl_coef_start,
            "kl_coef_end": self.config.kl_coef,
        }


def _prompt_dataset(prompts: list[list[dict]], tokenizer, max_prompt_length: int):
    from datasets import Dataset

    ids = []
    for messages in prompts:
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        input_ids = list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
        ids.append(input_ids[-max_prompt_length:])  # keep the end: the generation prompt must stay
    return Dataset.from_dict({"input_ids": ids})


def _check_same_vocabulary(policy, folder: str, flag: str) -> None:
    from transformers import AutoConfig

    other = AutoConfig.from_pretrained(folder)
    if getattr(other, "vocab_size", None) != policy.config.vocab_size:
        raise UserError(
            f"{flag} {folder!r}: vocabulary size {getattr(other, 'vocab_size', None)} differs from the policy's "
            f"{policy.config.vocab_size}; PPO scores the policy's tokens directly, so train the reward model "
            "on the same tokenizer (`cai train reward --model` with the policy's base)"
        )
