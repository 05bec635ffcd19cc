"""DPO with the judge's confidence per pair: conservative (smoothed) or weighted DPO.

TRL's DPOTrainer has one global ``label_smoothing`` and no per-row weight. The
sigmoid DPO loss of a pair is l(d) = -log sigmoid(beta * d), with d the
difference of the chosen and rejected policy/reference log-ratios. We keep
TRL's loss, metrics and reference handling and add, per pair i, an exact
correction computed from the same forward pass:

* ``smooth`` (cDPO, eps_i = 1 - p_i):
  (1 - eps) l(d) + eps l(-d) = l(d) + eps * beta * d, because
  -log sigmoid(-x) = -log sigmoid(x) + x. The batch loss becomes
  mean(l(d_i)) + mean(eps_i * beta * d_i).
* ``weight`` (w_i = 2 p_i - 1): mean(w_i l(d_i)) replaces mean(l(d_i)).

Here p_i is the judge's probability that ``chosen`` is better (0.5 = coin flip).
"""

# No ``from __future__ import annotations``: HfArgumentParser reads the field types.
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import selective_log_softmax

from core.config import check_choice, check_rules
from core.errors import UserError
from training import data as training_data
from training import models
from training.config import StageFields
from training.stages import TrainingStage

CONFIDENCE_KEY = "pair_confidence"
CONFIDENCE_MODES = ("smooth", "weight", "none")


@dataclass
class DPOStageConfig(StageFields, DPOConfig):
    r"""
    Configuration of ``cai train dpo``: [`StageFields`] and TRL's [`~trl.DPOConfig`].

    Parameters:
        > Parameters that control the judge's confidence

        confidence (`str`, *optional*, defaults to `"smooth"`):
            How each pair's confidence p (the judge's probability that `chosen` is better) enters the loss.
            `smooth`: conservative DPO (cDPO) with a per-pair label smoothing eps = 1 - p, i.e.
            `(1 - eps) * -log sigmoid(beta * d) + eps * -log sigmoid(-beta * d)`. `weight`: each pair's sigmoid
            loss times `2p - 1` (0 for a coin flip, 1 for a sure pair). `none`: plain DPO. `smooth` and `weight`
            need TRL's plain sigmoid loss (`loss_type: [sigmoid]`, the default).
        confidence_column (`str`, *optional*, defaults to `"chosen_probability"`):
            Column holding p, in [0.5, 1]; values below 0.5 are read as 0.5.

        > Parameters whose defaults differ from TRL's

        learning_rate (`float`, *optional*, defaults to `5e-6`): instead of `1e-6`; short CPU runs need a visible step.
        max_length (`int` or `None`, *optional*, defaults to `512`): instead of `1024`.

        > Parameters chosen for the device when left unset

        precompute_ref_log_probs (`bool`, *optional*):
            Compute the reference model's log-probabilities of every pair in one no-grad pass before training,
            so no reference copy stays in memory and no step runs a reference forward. GPU: on, unless Liger's
            DPO loss, `sync_ref_model` (TRL supports neither with it) or FSDP is used. CPU: off.
    """

    confidence: str = field(
        default="smooth",
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
    learning_rate: float = field(default=5e-6, metadata={"help": "The initial learning rate for AdamW."})
    max_length: int | None = field(
        default=512,
        metadata={"help": "Maximum tokens per prompt and answer; longer ones are truncated. Empty: no truncation."},
    )
    precompute_ref_log_probs: bool | None = field(
        default=None,
        metadata={"help": "Compute the reference log-probabilities in one no-grad pass before training (no reference "
                  "copy in memory). Empty: on for GPUs (unless Liger's loss or sync_ref_model is used), off on CPU."},
    )

    def __post_init__(self):
        check_choice("--confidence", self.confidence, CONFIDENCE_MODES)
        check_rules(self, [("beta", self.beta > 0, "must be > 0, e.g. 0.1")])
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
                raise UserError(
                    f"--confidence {self.confidence!r} cannot be combined with " + "; ".join(problems)
                    + "; pass --confidence none for TRL's other losses"
                )


@dataclass
class ConfidencePreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator that also carries each pair's confidence as a float tensor."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        output = super().torch_call(examples)
        if CONFIDENCE_KEY in examples[0]:
            output[CONFIDENCE_KEY] = torch.tensor([float(e[CONFIDENCE_KEY]) for e in examples], dtype=torch.float)
        return output


class ConfidenceDPOTrainer(DPOTrainer):
    """DPOTrainer whose sigmoid loss is smoothed (cDPO) or weighted per pair by the judge's confidence."""

    def __init__(self, *args, confidence_mode: str = "none", **kwargs):
        self.confidence_mode = confidence_mode
        super().__init__(*args, **kwargs)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if CONFIDENCE_KEY not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, CONFIDENCE_KEY]

    def compute_ref_log_probs(self, model, inputs):
        # The confidence is not a model input; TRL's precompute pass would hand it to forward().
        inputs = {key: value for key, value in inputs.items() if key != CONFIDENCE_KEY}
        return super().compute_ref_log_probs(model, inputs)

    def _compute_loss(self, model, inputs, return_outputs):
        confidence = inputs.pop(CONFIDENCE_KEY, None)
        if self.confidence_mode == "none" or confidence is None:
            return super()._compute_loss(model, inputs, return_outputs)

        # Reference log-probs go into the batch so that TRL's loss and our correction share them (one reference
        # forward per batch, exactly as TRL would do on its own).
        if "ref_chosen_logps" not in inputs:
            ref_model = self.ref_model if self.ref_model is not None else model
            ref_chosen, ref_rejected = self.compute_ref_log_probs(ref_model, inputs)
            inputs = {**inputs, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
        # The policy's own forward inside TRL's loss is the one with gradients: keep its output. Asking TRL for
        # return_outputs instead gives, from 1.16 on, a second forward under no_grad (its fused LM head builds no
        # logits), and a correction computed from that would change the loss's value but not its gradient.
        policy_outputs = []
        hook = model.register_forward_hook(lambda module, args, output: policy_outputs.append(output))
        saved_flag = self.precompute_ref_logps
        self.precompute_ref_logps = True  # the reference log-probs are in the batch: TRL runs no reference forward
        try:
            loss = super()._compute_loss(model, inputs, return_outputs=False)
        finally:
            self.precompute_ref_logps = saved_flag
            hook.remove()
        outputs = policy_outputs[0]
        delta = self._logratio_delta(outputs, inputs)
        beta_delta = self.beta * delta
        probability = confidence.to(delta.device, delta.dtype).clamp(0.5, 1.0)
        mode = "train" if self.model.training else "eval"
        if self.confidence_mode == "smooth":
            epsilon = 1.0 - probability
            loss = loss + (epsilon * beta_delta).mean()
            self._metrics[mode]["confidence/epsilon"].append(self.accelerator.gather(epsilon).mean().item())
        else:  # "weight"
            per_pair = -F.logsigmoid(beta_delta)
            weight = 2.0 * probability - 1.0
            loss = loss - per_pair.mean() + (weight * per_pair).mean()
            self._metrics[mode]["confidence/weight"].append(self.accelerator.gather(weight).mean().item())
        return (loss, outputs) if return_outputs else loss

    @staticmethod
    def _logratio_delta(outputs, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(chosen - ref_chosen) - (rejected - ref_rejected) summed log-probs of the policy's forward ``outputs``,
        with its gradients, as TRL computes them: from the per-token log-probs of TRL's fused LM head (TRL 1.16+)
        or from the logits (earlier releases)."""
        shift_mask = inputs["completion_mask"][..., 1:]
        if getattr(outputs, "log_probs", None) is not None:
            per_token = outputs.log_probs[:, -shift_mask.size(1):]
        else:
            shift_labels = inputs["input_ids"][..., 1:]
            per_token = selective_log_softmax(outputs.logits[..., :-1, :], shift_labels)
        logps = (per_token * shift_mask).sum(dim=1)
        chosen, rejected = logps.chunk(2, dim=0)
        return (chosen - inputs["ref_chosen_logps"]) - (rejected - inputs["ref_rejected_logps"])


class DPOStage(TrainingStage):
    counts = "pairs"
    trainer_class = ConfidenceDPOTrainer
    gpu_train_batch = 8

    @classmethod
    def keeps_reference(cls, config, precompute_ref_log_probs):
        return not config.use_peft and not precompute_ref_log_probs  # LoRA's reference is the base with it off

    @classmethod
    def liger_fits(cls, config, settings):
        # The confidence-aware loss needs the logits that Liger's fused loss never materialises; TRL's Liger DPO
        # loss takes one loss type, the reverse KL, and no precomputed reference log-probs.
        return (config.confidence == "none" and len(config.loss_type) == 1
                and config.f_divergence_type == "reverse_kl" and not settings.get("precompute_ref_log_probs"))

    def load_rows(self) -> list[dict]:
        config = self.config
        extra = (config.confidence_column,) if config.confidence != "none" else ()
        rows = training_data.load_preference_rows(
            config.data, config.max_rows, extra, "or pass --confidence none for plain DPO"
        )
        for row in rows if extra else ():
            row[CONFIDENCE_KEY] = row.pop(config.confidence_column)
        return rows

    def trainer_options(self, tokenizer, base, peft_config) -> dict[str, Any]:
        config = self.config
        collator = ConfidencePreferenceCollator(
            pad_token_id=tokenizer.pad_token_id,
            max_length=config.max_length,
            truncation_mode=config.truncation_mode,
            pad_to_multiple_of=config.pad_to_multiple_of,
        )
        return {
            # With LoRA the reference is the base model with the adapter switched off; with precomputed log-probs TRL
            # runs the untrained policy as the reference once, before training; otherwise a frozen copy.
            "ref_model": None if peft_config is not None or config.precompute_ref_log_probs
            else models.load_causal_lm(base, config.train_dtype, config.attn_implementation),
            "data_collator": collator,
            "confidence_mode": config.confidence,
        }

    def details(self, trainer) -> dict[str, Any]:
        return {"beta": self.config.beta, "confidence": self.config.confidence}
