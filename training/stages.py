"""The four ``cai train`` methods: build the data, models and TRL trainer, train, save a model folder.

Each ``run_*`` takes its stage config (see ``training.config``) and returns a
summary dict (also written to ``cai_training.json`` in the output folder).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from core.errors import UserError
from training import data as training_data
from training import models


def _dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows) if rows else None


def _finish(trainer, model, tokenizer, config, method: str, base: str, started: float, extra: dict) -> dict[str, Any]:
    """Evaluate on the held-out rows (if any), save the merged model folder, write the summary."""
    summary: dict[str, Any] = {
        "method": method,
        "base_model": base,
        "data": str(Path(config.data).resolve()) if config.data else None,
        "prompts": str(Path(config.prompts).resolve()) if getattr(config, "prompts", None) else None,
        "use_peft": config.use_peft,
        "global_step": trainer.state.global_step,
        "train_seconds": round(time.time() - started, 2),
        **extra,
    }
    if getattr(trainer, "eval_dataset", None) is not None:
        metrics = _finite(trainer.evaluate())
        summary["eval"] = metrics
        summary["held_out_rows"] = len(trainer.eval_dataset)
        if "eval_accuracy" in metrics:  # the reward model's: chosen scored above rejected on held-out pairs
            summary["held_out_accuracy"] = metrics["eval_accuracy"]
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(config.output_dir) / "eval_results.json").write_text(json.dumps(metrics, indent=2) + "\n")
    history = [entry for entry in trainer.state.log_history if "loss" in entry or "objective/kl" in entry]
    summary["last_log"] = _finite(history[-1]) if history else {}
    summary["log_history"] = [_finite(entry) for entry in trainer.state.log_history]  # `cai report` plots it
    # Under `accelerate launch` every rank evaluates (a collective), but only rank 0 writes the folder.
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        unwrapped = trainer.accelerator.unwrap_model(model)
        save_dtype = models.torch_dtype(config.save_dtype, base)
        models.save_model_folder(unwrapped, tokenizer, config.output_dir, save_dtype, extra=summary)
    trainer.accelerator.wait_for_everyone()
    return summary


def _finite(values: dict) -> dict:
    """NaN/inf become None: the summary must stay strict JSON (TRL logs NaN variances for tiny batches)."""
    import math

    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


def _check_steps(config, n_train: int) -> None:
    if n_train < 1:
        raise UserError(f"{config.data}: no training rows left after the held-out split; add rows or lower --eval-fraction")


def run_sft(config) -> dict[str, Any]:
    from trl import SFTTrainer

    rows = training_data.load_sft_rows(config.data, config.max_rows)
    train_rows, eval_rows = training_data.split_rows(rows, config.eval_fraction, config.seed)
    _check_steps(config, len(train_rows))
    base = models.resolve_base(config.model)
    tokenizer = models.load_tokenizer(base)
    model = models.load_causal_lm(base, config.train_dtype)
    started = time.time()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=_dataset(train_rows),
        eval_dataset=_dataset(eval_rows),
        processing_class=tokenizer,
        peft_config=models.lora_config(config, "CAUSAL_LM"),
    )
    trainer.train()
    return _finish(trainer, trainer.model, tokenizer, config, "sft", base, started, {"rows": len(rows)})


def run_reward(config) -> dict[str, Any]:
    from trl import RewardTrainer

    use_margin = config.use_margin and config.margin_scale > 0
    rows = training_data.load_preference_rows(
        config.data, config.max_rows, ("margin",) if use_margin else (), "or pass --use-margin false"
    )
    for row in rows:
        if use_margin:
            row["margin"] = config.margin_scale * row["margin"]
    train_rows, eval_rows = training_data.split_rows(rows, config.eval_fraction, config.seed)
    _check_steps(config, len(train_rows))
    base = models.resolve_base(config.model)
    tokenizer = models.load_tokenizer(base)
    model = models.load_score_model(base, config.train_dtype, tokenizer.pad_token_id, "--model")
    started = time.time()
    trainer = RewardTrainer(
        model=model,
        args=config,
        train_dataset=_dataset(train_rows),
        eval_dataset=_dataset(eval_rows),
        processing_class=tokenizer,
        peft_config=models.lora_config(config, "SEQ_CLS"),
    )
    trainer.train()
    return _finish(trainer, trainer.model, tokenizer, config, "reward", base, started, {"pairs": len(rows)})


def run_dpo(config) -> dict[str, Any]:
    from training.dpo import CONFIDENCE_KEY, ConfidenceDPOTrainer, ConfidencePreferenceCollator

    extra = (config.confidence_column,) if config.confidence != "none" else ()
    rows = training_data.load_preference_rows(
        config.data, config.max_rows, extra, "or pass --confidence none for plain DPO"
    )
    if extra:
        for row in rows:
            row[CONFIDENCE_KEY] = row.pop(config.confidence_column)
    train_rows, eval_rows = training_data.split_rows(rows, config.eval_fraction, config.seed)
    _check_steps(config, len(train_rows))
    base = models.resolve_base(config.model)
    tokenizer = models.load_tokenizer(base)
    model = models.load_causal_lm(base, config.train_dtype)
    peft_config = models.lora_config(config, "CAUSAL_LM")
    # With LoRA the reference is the base model with the adapter switched off; otherwise a frozen copy.
    ref_model = None if peft_config is not None else models.load_causal_lm(base, config.train_dtype)
    collator = ConfidencePreferenceCollator(
        pad_token_id=tokenizer.pad_token_id,
        max_length=config.max_length,
        truncation_mode=config.truncation_mode,
        pad_to_multiple_of=config.pad_to_multiple_of,
    )
    started = time.time()
    trainer = ConfidenceDPOTrainer(
        model=model,
        ref_model=ref_model,
        args=config,
        data_collator=collator,
        train_dataset=_dataset(train_rows),
        eval_dataset=_dataset(eval_rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        confidence_mode=config.confidence,
    )
    trainer.train()
    return _finish(
        trainer, trainer.model, tokenizer, config, "dpo", base, started,
        {"pairs": len(rows), "beta": config.beta, "confidence": config.confidence},
    )


def run_ppo(config) -> dict[str, Any]:
    from training.ppo import build_ppo_trainer

    trainer, tokenizer, base, n_prompts = build_ppo_trainer(config)
    started = time.time()
    trainer.train()
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    # PPOTrainer has no evaluate(); its eval_dataset only feeds sample generations.
    trainer.eval_dataset = None
    return _finish(
        trainer, policy, tokenizer, config, "ppo", base, started,
        {
            "prompts": n_prompts,
            "reward_model": config.reward_model,
            "kl_coef_start": trainer.kl_coef_start,
            "kl_coef_end": config.kl_coef,
        },
    )


RUNNERS = {"sft": run_sft, "reward": run_reward, "ppo": run_ppo, "dpo": run_dpo}
