"""Settings that depend on the device: chosen once, for the fields the user left unset.

A device-dependent field of a ``cai train`` config (``AUTO_FIELDS``) defaults to ``None``, which means
"choose for the device".  ``StageFields.__post_init__`` calls :func:`apply_device_defaults` before TRL's own
checks run: it fills every field still ``None`` with the value :func:`choose_settings` picks for the device
(a 2-core CPU keeps the CPU values of earlier releases; a CUDA GPU gets bf16, larger batches, ...) and
records what it chose in ``config.auto_settings``, which the run's summary (``cai_training.json``) and log
repeat.  A value set in YAML, by a flag or in Python is never ``None``, so it always wins.

:func:`choose_settings` is pure: the device, the parameter count and the fields to choose are arguments, so
the GPU choices are tested on a CPU.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the fields whose default depends on the device (only those a method's config has apply to it)
AUTO_FIELDS = (
    "bf16",
    "attn_implementation",
    "use_liger_kernel",
    "precompute_ref_log_probs",
    "packing",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "local_rollout_forward_batch_size",
    "gradient_checkpointing",
    "dataloader_pin_memory",
)

#: the CPU values: those of the config classes before device defaults existed (sized for a 2-core CPU)
CPU_SETTINGS: dict[str, Any] = {
    "bf16": False,
    "attn_implementation": "sdpa",
    "use_liger_kernel": False,
    "precompute_ref_log_probs": False,
    "packing": False,
    "per_device_train_batch_size": 2,
    "per_device_eval_batch_size": 2,
    "local_rollout_forward_batch_size": 2,
    "gradient_checkpointing": False,
    "dataloader_pin_memory": False,
}
GPU_ROLLOUT_BATCH = 64  # TRL's default for PPO's no-grad rollout forwards
#: gradient checkpointing goes on when the training state would take more than this share of GPU memory
#: (the rest is for activations, the logits and the allocator's slack)
CHECKPOINT_STATE_SHARE = 0.4


@dataclass(frozen=True)
class Device:
    """What the choice of settings needs to know of the machine a run trains on."""

    kind: str  #: ``cpu`` or ``cuda`` (NVIDIA, or AMD through ROCm)
    name: str = "CPU"
    memory_bytes: int = 0  #: memory of one GPU
    bf16: bool = False  #: the GPU computes in bfloat16 (NVIDIA Ampere or newer)
    liger_kernel: bool = False  #: the ``liger_kernel`` package is installed
    flash_attn: bool = False  #: the ``flash_attn`` package is installed
    fsdp: bool = False  #: launched with FSDP (``accelerate launch --config_file recipes/accelerate/fsdp.yaml``)
    shards: int = 1  #: processes the training state is sharded over (FSDP or DeepSpeed ZeRO-3), else 1

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    def describe(self) -> str:
        if not self.is_gpu:
            return "cpu"
        extras = [name for name, present in (("bf16", self.bf16), ("liger_kernel", self.liger_kernel),
                                              ("flash_attn", self.flash_attn)) if present]
        if self.shards > 1:
            extras.append(f"state sharded over {self.shards} ({'FSDP' if self.fsdp else 'ZeRO-3'})")
        return f"cuda: {self.name}, {self.memory_bytes / 2**30:.0f} GiB" + "".join(f", {e}" for e in extras)


CPU = Device("cpu")


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def detect_device(use_cpu: bool = False) -> Device:
    """The device this process trains on: the first visible CUDA GPU, else the CPU.

    ``--use-cpu true`` and ``accelerate launch --cpu`` (``ACCELERATE_USE_CPU``) mean the CPU even where a GPU is.
    """
    import torch

    forced_cpu = use_cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if forced_cpu or not torch.cuda.is_available():
        return CPU
    index = int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count()
    properties = torch.cuda.get_device_properties(index)
    # What `accelerate launch` tells its processes about sharding.
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    zero3 = (os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
             and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3")
    return Device(
        kind="cuda",
        name=properties.name,
        memory_bytes=int(properties.total_memory),
        bf16=bool(torch.cuda.is_bf16_supported()),
        liger_kernel=_installed("liger_kernel"),
        flash_attn=_installed("flash_attn"),
        fsdp=fsdp,
        shards=int(os.environ.get("WORLD_SIZE", 1)) if fsdp or zero3 else 1,
    )


def count_parameters(model: str | None) -> int | None:
    """Parameters of a local model folder, from its safetensors headers (nothing is loaded); None if unknown."""
    from core.model import model_identity

    folder = Path(model_identity(model))
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    try:
        for file in files:
            with safe_open(str(file), framework="pt") as weights:
                for name in weights.keys():
                    count = 1
                    for size in weights.get_slice(name).get_shape():
                        count *= size
                    total += count
    except Exception:  # an unreadable file: the choice falls back to the memory-safe one
        return None
    return total


def training_state_bytes(stage, parameters: int, use_peft: bool, train_dtype: str, keeps_reference: bool) -> int:
    """Bytes of weights, gradients and AdamW moments (and frozen copies) a run of ``stage`` (its TrainingStage
    class) keeps on each GPU without sharding."""
    weight = 2 if train_dtype in ("bfloat16", "float16") else 4
    per_parameter = weight if use_peft else 4 * weight  # LoRA trains a small adapter; a full fine-tune: 2 moments + grad
    if keeps_reference:
        per_parameter += weight  # the frozen reference copy (DPO without precomputed log-probs, PPO)
    # models of the policy's size beside it: trained (weights, gradient, 2 moments) or frozen (weights)
    per_parameter += 4 * weight * stage.trained_companions + weight * stage.frozen_companions
    return parameters * per_parameter


def choose_settings(config, device: Device, unset: Collection[str], parameters: int | None = None) -> dict[str, Any]:
    """The value of each field in ``unset`` (that the config has) for ``device``; its other fields are the user's.

    ``parameters`` is the base model's parameter count (None when unknown: the memory-safe choice is made).
    """
    from training.methods import method_of

    stage = method_of(config).stage_class
    unset = [name for name in AUTO_FIELDS if name in unset and hasattr(config, name)]
    if not device.is_gpu:
        return {name: stage.cpu_settings.get(name, CPU_SETTINGS[name]) for name in unset}

    values = {name: getattr(config, name, None) for name in AUTO_FIELDS if name not in unset}
    chosen: dict[str, Any] = {}

    def setting(name: str):
        return chosen[name] if name in chosen else values.get(name)

    for name in unset:
        if name == "bf16":
            value = device.bf16 and not config.fp16
        elif name == "attn_implementation":
            # FlashAttention-2 runs only in half precision; padding-free batches (SFT packing) need it.
            half = setting("bf16") or config.fp16
            value = "flash_attention_2" if device.flash_attn and half else "sdpa"
        elif name == "use_liger_kernel":
            value = device.liger_kernel and stage.liger_fits(config, values)
        elif name == "precompute_ref_log_probs":
            # One no-grad pass before training instead of a reference forward in every step, and no reference
            # copy on the GPU; TRL's Liger DPO loss and a synced reference model cannot use it, and under FSDP
            # TRL's pass would run the policy before it is sharded and placed.
            value = not setting("use_liger_kernel") and not config.sync_ref_model and not device.fsdp
        elif name == "packing":
            # TRL packs rows best-fit into padding-free batches, which only FlashAttention reads correctly.
            value = setting("attn_implementation") in ("flash_attention_2", "flash_attention_3")
        elif name == "per_device_train_batch_size":
            value = stage.gpu_train_batch
        elif name == "per_device_eval_batch_size":
            value = 2 * setting("per_device_train_batch_size")
        elif name == "local_rollout_forward_batch_size":
            value = GPU_ROLLOUT_BATCH
        elif name == "gradient_checkpointing":
            if parameters is None:
                value = True
            else:
                keeps_reference = stage.keeps_reference(config, bool(setting("precompute_ref_log_probs")))
                state = training_state_bytes(stage, parameters, config.use_peft, config.train_dtype,
                                             keeps_reference) // device.shards
                value = state > CHECKPOINT_STATE_SHARE * device.memory_bytes
        elif name == "dataloader_pin_memory":
            value = True
        else:  # pragma: no cover - AUTO_FIELDS and this function are edited together
            raise AssertionError(f"no GPU choice for {name}")
        chosen[name] = value
    return chosen


def apply_device_defaults(config, device: Device | None = None) -> dict[str, Any]:
    """Fill ``config``'s unset device-dependent fields in place; return ``{"device": ..., "chosen": {...}}``."""
    unset = [name for name in AUTO_FIELDS if hasattr(config, name) and getattr(config, name) is None]
    device = device or detect_device(getattr(config, "use_cpu", False))
    parameters = count_parameters(config.model) if device.is_gpu and "gradient_checkpointing" in unset else None
    chosen = choose_settings(config, device, unset, parameters)
    for name, value in chosen.items():
        setattr(config, name, value)
    record: dict[str, Any] = {"device": device.describe(), "chosen": chosen}
    if parameters is not None:
        record["model_parameters"] = parameters
    return record


__all__ = [
    "AUTO_FIELDS", "CPU", "CPU_SETTINGS", "Device", "apply_device_defaults", "choose_settings", "count_parameters",
    "detect_device", "training_state_bytes",
]
