"""The skeleton every training method shares: rows -> held-out split -> tokenizer -> model -> TRL trainer
-> train -> evaluate the held-out rows -> save a model folder and its summary.

A method subclasses :class:`TrainingStage` and states only what differs: how its rows are read
(``load_rows``), its TRL trainer class and extra trainer arguments (``trainer_class``,
``trainer_options``), and where needed which model it trains (``load_model``) and what its summary
adds (``details``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.hardware import freed_memory_kept
from core.log import get_logger
from training import data as training_data
from training import models

logger = get_logger(__name__)


def finite_loss_callback(method: str):
    """A TrainerCallback that stops training when a logged loss is NaN or infinite (nothing is saved then)."""
    import math

    from transformers import TrainerCallback

    class FiniteLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            for key, value in (logs or {}).items():
                watched = "loss" in key or key == "grad_norm"
                if watched and isinstance(value, (int, float)) and not math.isfinite(value):
                    raise UserError(
                        f"cai train {method}: {key} became {value} at step {state.global_step}; training stopped and "
                        "no model was saved. Check the data (every number finite), lower --learning-rate, or "
                        "train in float32 (--bf16 false --train-dtype float32)"
                    )

    return FiniteLoss()


class TrainingStage:
    """One training run of a method on its config; :meth:`run` returns the summary (also in cai_training.json)."""

    #: how the summary names the rows it counts ("rows", "pairs", "prompts")
    counts = "rows"
    #: the tokenizer's padding side (generation needs the left)
    padding_side = "right"
    #: whether the trainer evaluates the held-out rows after training (PPOTrainer has no evaluate())
    evaluates = True
    #: the TRL trainer, built with the shared arguments plus ``trainer_options``
    trainer_class: type
    #: peft's task type for ``--use-peft``
    lora_task = "CAUSAL_LM"
    #: where the saved model's weights sit in the trainer's model (PPO: ``policy.`` of its policy-and-value wrapper)
    saved_prefix = ""

    # ------------------------------------------------------------------ what the device defaults need to know
    #: rows (sft), pairs (reward, dpo) or prompts (ppo) per GPU and optimizer micro-step, when the user sets none
    gpu_train_batch: int
    #: the CPU values where this method differs from ``training.device_defaults.CPU_SETTINGS``
    cpu_settings: dict[str, Any] = {}
    #: models of the policy's size trained beside it (PPO's value model) and kept frozen beside it (PPO's reward
    #: model): each adds to the memory the training state takes
    trained_companions = 0
    frozen_companions = 0

    @classmethod
    def keeps_reference(cls, config, precompute_ref_log_probs: bool) -> bool:
        """Whether a frozen reference copy of the policy stays in memory while training."""
        return False

    @classmethod
    def liger_fits(cls, config, settings: dict[str, Any]) -> bool:
        """Whether TRL can use Liger's fused kernels for this method with ``config`` (``settings``: the device
        settings the user chose)."""
        return False

    def __init__(self, config, method: str):
        self.config = config
        self.method = method

    # ------------------------------------------------------------------ what a method states

    def load_rows(self) -> list:
        """The rows to train on, checked (bad input is a UserError naming file and line)."""
        raise NotImplementedError

    def check_split(self, train_rows: list, source: str) -> None:
        """Refuse a split that leaves too few training rows, before any model loads."""
        if not train_rows:
            raise UserError(f"{source}: no training rows left after the held-out split; add rows or lower --eval-fraction")

    def prepare(self, base: str) -> None:
        """Work before any model loads (an RL method builds its reward sources, refusing a judge that would not
        fit beside the policy)."""

    def close(self) -> None:
        """Release what ``prepare`` built (an in-process judge engine); called however training ends."""

    def load_model(self, base: str, tokenizer):
        return models.load_causal_lm(base, self.config.train_dtype, self.config.attn_implementation)

    def trainer_options(self, tokenizer, base: str, peft_config) -> dict[str, Any]:
        """Trainer arguments beyond the shared ones (a reference model, a collator, ...)."""
        return {}

    def build_trainer(self, model, tokenizer, train_rows: list, eval_rows: list, base: str):
        peft_config = models.lora_config(self.config, self.lora_task)
        return self.trainer_class(
            model=model,
            args=self.config,
            train_dataset=self.dataset(train_rows),
            eval_dataset=self.dataset(eval_rows),
            processing_class=tokenizer,
            peft_config=peft_config,
            **self.trainer_options(tokenizer, base, peft_config),
        )

    def trained_model(self, trainer):
        """The model to save (PPO saves the policy inside its policy-and-value wrapper)."""
        return trainer.model

    def details(self, trainer) -> dict[str, Any]:
        """What this method adds to the summary."""
        return {}

    # ------------------------------------------------------------------ the shared skeleton

    def run(self) -> dict[str, Any]:
        config = self.config
        auto = getattr(config, "auto_settings", {"device": "unknown", "chosen": {}})
        chose = ", ".join(f"{name}={value}" for name, value in auto["chosen"].items())
        logger.info("cai train %s: on %s | %s%s", self.method, auto["device"], auto.get("precision", "precision unknown"),
                    f" | chose {chose} (set any of them to override)" if chose else "")
        rows = self.load_rows()
        train_rows, eval_rows = training_data.split_rows(rows, config.eval_fraction, config.seed)
        self.check_split(train_rows, self.source)
        base = models.resolve_base(config.model)
        try:
            self.prepare(base)
            tokenizer = models.load_tokenizer(base, padding_side=self.padding_side)
            model = self.load_model(base, tokenizer)
            started = time.time()
            trainer = self.build_trainer(model, tokenizer, train_rows, eval_rows, base)
            # transformers hides a NaN loss from the logs by default (logging_nan_inf_filter); it must be seen to
            # stop.
            trainer.args.logging_nan_inf_filter = False
            trainer.add_callback(finite_loss_callback(self.method))
            point = resume_point(config)
            # PPOTrainer's train() takes no checkpoint; the others resume when asked
            with freed_memory_kept():  # a step reuses the last one's pages (core.hardware.MALLOC_TUNABLES)
                trainer.train(**({} if point is None else {"resume_from_checkpoint": point}))
        finally:
            self.close()
        summary: dict[str, Any] = {
            "method": self.method,
            "base_model": base,
            "data": str(Path(self.source).resolve()),
            "use_peft": config.use_peft,
            "global_step": trainer.state.global_step,
            "train_seconds": round(time.time() - started, 2),
            self.counts: len(rows),
            "device_settings": auto,
            **self.details(trainer),
        }
        return self._finish(trainer, tokenizer, base, summary)

    @property
    def source(self) -> str:
        """The file the rows come from."""
        return self.config.data

    def dataset(self, rows: list[dict]):
        from datasets import Dataset

        return Dataset.from_list(rows) if rows else None

    def _finish(self, trainer, tokenizer, base: str, summary: dict[str, Any]) -> dict[str, Any]:
        """Evaluate on the held-out rows (if any), save the merged model folder, write the summary."""
        config = self.config
        if self.evaluates and getattr(trainer, "eval_dataset", None) is not None:
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
        # Under `accelerate launch` every rank evaluates and gathers sharded weights (collectives), but only rank 0
        # writes the folder.
        trainer.accelerator.wait_for_everyone()
        model = self.whole_model(trainer)
        if trainer.accelerator.is_main_process:
            models.save_model_folder(model, tokenizer, config.output_dir,
                                     models.torch_dtype(config.save_dtype, base), extra=summary)
        trainer.accelerator.wait_for_everyone()
        return summary

    def whole_model(self, trainer):
        """The trained model with all its weights on rank 0 (None on the other ranks).

        With one process or DDP every rank holds every weight, so rank 0 unwraps its own copy. FSDP and DeepSpeed
        ZeRO-3 shard the weights: every rank takes part in gathering the full state dict (accelerate's
        ``get_state_dict``), which rank 0 loads into a weightless copy of the model (LoRA adapters included, so
        ``save_model_folder`` merges them as usual).
        """
        accelerator = trainer.accelerator
        if not models.weights_are_sharded(accelerator):
            return accelerator.unwrap_model(self.trained_model(trainer)) if accelerator.is_main_process else None
        state = accelerator.get_state_dict(trainer.model_wrapped)
        if not accelerator.is_main_process:
            return None
        prefix = self.saved_prefix
        state = {name[len(prefix):]: tensor for name, tensor in state.items() if name.startswith(prefix)}
        return models.load_into_empty_copy(accelerator.unwrap_model(self.trained_model(trainer)), state)


def resume_point(config) -> str | bool | None:
    """``--resume-from-checkpoint``: a checkpoint folder, or ``true``/``last`` for the newest in --output-dir."""
    value = getattr(config, "resume_from_checkpoint", None)
    if value is None or str(value).lower() in ("", "false", "no", "none"):
        return None
    if str(value).lower() in ("true", "yes", "last"):
        from transformers.trainer_utils import get_last_checkpoint

        if not Path(config.output_dir).is_dir() or get_last_checkpoint(config.output_dir) is None:
            raise UserError(f"--resume-from-checkpoint {value}: no checkpoint-N folder in {config.output_dir}; train "
                            "with --save-strategy steps --save-steps N to write them")
        return True
    if not Path(value).is_dir():
        raise UserError(f"--resume-from-checkpoint {value!r}: no such checkpoint folder")
    return str(value)


def _finite(values: dict) -> dict:
    """NaN/inf become None: the summary must stay strict JSON (TRL logs NaN variances for tiny batches)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
