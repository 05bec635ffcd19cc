"""PPO on TRL's experimental PPOTrainer, with a KL coefficient that can rise over training.

PPOTrainer reads ``args.kl_coef`` afresh at every update (the per-token reward
is ``-kl_coef * KL``), so a callback that moves ``args.kl_coef`` between updates
is a faithful schedule; the coefficient in force is logged as
``objective/kl_coef`` next to TRL's reward (``objective/scores``), KL
(``objective/kl``) and entropy (``objective/entropy``).
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback
from trl.experimental.ppo import PPOTrainer

from core.errors import UserError
from training import data as training_data
from training import models


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


def _prompt_dataset(prompts: list[list[dict]], tokenizer, max_prompt_length: int):
    from datasets import Dataset

    ids = []
    for messages in prompts:
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        input_ids = list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
        ids.append(input_ids[-max_prompt_length:])  # keep the end: the generation prompt must stay
    return Dataset.from_dict({"input_ids": ids})


def build_ppo_trainer(config) -> tuple[ScheduledKLPPOTrainer, Any, str, int]:
    from accelerate import PartialState

    if not config.reward_model:
        raise UserError("--reward-model is required: the folder written by `cai train reward`")
    prompt_file = config.prompts or config.data
    prompts = training_data.load_prompts(prompt_file, config.max_rows)
    base = models.resolve_base(config.model)
    reward_folder = models.resolve_base(config.reward_model, "--reward-model")
    value_folder = models.resolve_base(config.value_model or config.reward_model, "--value-model")
    # Generation needs the prompts padded on the left.
    tokenizer = models.load_tokenizer(base, padding_side="left")

    policy = models.load_causal_lm(base, config.train_dtype)
    for folder, flag in ((reward_folder, "--reward-model"), (value_folder, "--value-model")):
        _check_same_vocabulary(policy, folder, flag)
    peft_config = models.lora_config(config, "CAUSAL_LM")
    ref_policy = None if peft_config is not None else models.load_causal_lm(base, config.train_dtype)
    reward_model = models.load_score_model(reward_folder, config.train_dtype, tokenizer.pad_token_id, "--reward-model")
    value_model = models.load_score_model(value_folder, config.train_dtype, tokenizer.pad_token_id, "--value-model")

    # TRL counts PPO in episodes (prompts); --max-steps counts PPO updates, as the other methods count steps.
    if config.max_steps and config.max_steps > 0:
        batch = config.per_device_train_batch_size * config.gradient_accumulation_steps * PartialState().num_processes
        config.total_episodes = config.max_steps * batch
    config.sft_model_path = base  # TRL's own fields, kept truthful in the saved training arguments
    config.reward_model_path = reward_folder

    dataset = _prompt_dataset(prompts, tokenizer, config.max_prompt_length)
    train_rows, eval_rows = training_data.split_rows(list(range(len(dataset))), config.eval_fraction, config.seed)
    eval_rows = eval_rows or train_rows[: config.per_device_eval_batch_size]
    if len(train_rows) < config.per_device_train_batch_size * config.gradient_accumulation_steps:
        raise UserError(
            f"{prompt_file}: {len(train_rows)} training prompts, fewer than one PPO batch "
            f"(--per-device-train-batch-size {config.per_device_train_batch_size} x "
            f"--gradient-accumulation-steps {config.gradient_accumulation_steps}); add prompts or lower them"
        )

    kl_start = config.kl_coef
    callbacks = []
    if config.kl_coef_final is not None:
        callbacks.append(LinearKLSchedule(kl_start, config.kl_coef_final))
    trainer = ScheduledKLPPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=dataset.select(train_rows),
        eval_dataset=dataset.select(eval_rows),
        callbacks=callbacks,
        peft_config=peft_config,
    )
    trainer.kl_coef_start = kl_start
    return trainer, tokenizer, base, len(prompts)


def _check_same_vocabulary(policy, folder: str, flag: str) -> None:
    from transformers import AutoConfig

    other = AutoConfig.from_pretrained(folder)
    if getattr(other, "vocab_size", None) != policy.config.vocab_size:
        raise UserError(
            f"{flag} {folder!r}: vocabulary size {getattr(other, 'vocab_size', None)} differs from the policy's "
            f"{policy.config.vocab_size}; PPO scores the policy's tokens directly, so train the reward model "
            "on the same tokenizer (`cai train reward --model` with the policy's base)"
        )
