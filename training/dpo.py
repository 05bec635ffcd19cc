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

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from trl import DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import selective_log_softmax

CONFIDENCE_KEY = "pair_confidence"


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
        saved_flag = self.precompute_ref_logps
        self.precompute_ref_logps = True
        try:
            loss, outputs = super()._compute_loss(model, inputs, return_outputs=True)
        finally:
            self.precompute_ref_logps = saved_flag

        delta = self._logratio_delta(outputs.logits, inputs)
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
    def _logratio_delta(logits: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(chosen - ref_chosen) - (rejected - ref_rejected) summed log-probs, with gradients, as TRL computes them."""
        shift_logits = logits[..., :-1, :]
        shift_labels = inputs["input_ids"][..., 1:]
        shift_mask = inputs["completion_mask"][..., 1:]
        per_token = selective_log_softmax(shift_logits, shift_labels)
        logps = (per_token * shift_mask).sum(dim=1)
        chosen, rejected = logps.chunk(2, dim=0)
        return (chosen - inputs["ref_chosen_logps"]) - (rejected - inputs["ref_rejected_logps"])
