"""Settings that depend on the device: chosen once, for the fields the user left unset.

A device-dependent field of a ``cai train`` config (``AUTO_FIELDS``) defaults to ``None``, which means
"choose for the device".  ``StageFields.__post_init__`` calls :func:`apply_device_defaults` before TRL's own
checks run: it fills every field still ``None`` with the value :func:`choose_settings` picks for the device
(a CPU keeps the small batches of earlier releases; a CUDA GPU gets larger batches, ...) and
records what it chose in ``config.auto_settings``, which the run's summary (``cai_training.json``) and log
repeat.  A value set in YAML, by a flag or in Python is never ``None``, so it always wins.

Precision follows the engines' rule (``core/hardware.py``): bf16 autocast where the device computes bf16
natively (a GPU that supports it; a CPU with ``avx512_bf16`` or AMX: docs/hardware.md, "Training", has the
speed-up), float32 elsewhere (a CPU without native bf16 emulates it, several times slower).  The master
weights stay float32 (``train_dtype``) and so does the saved folder (``save_dtype``).

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

from core.hardware import CPU as HostCPU
from core.hardware import choose_dtype, this_cpu

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

#: the CPU values but bf16 (chosen by the CPU's flags): those of the config classes before device defaults
#: existed (sized for a 2-core CPU)
CPU_SETTINGS: dict[str, Any] = {
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
    name: str = ""  #: the GPU's name, or the CPU's model, flags and cores (empty: a CPU not described)
    memory_bytes: int = 0  #: memory of one GPU
    #: computes in bfloat16 natively: a GPU of NVIDIA Ampere or newer, a CPU with avx512_bf16 or AMX
    bf16: bool = False
    liger_kernel: bool = False  #: the ``liger_kernel`` package is installed
    flash_attn: bool = False  #: the ``flash_attn`` package is installed
    fsdp: bool = False  #: launched with FSDP (``accelerate launch --config_file recipes/accelerate/fsdp.yaml``)
    shards: int = 1  #: processes the training state is sharded over (FSDP or DeepSpeed ZeRO-3), else 1

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    def describe(self) -> str:
        if not self.is_gpu:
            return f"cpu: {self.name}" if self.name else "cpu"
        extras = [name for name, present in (("bf16", self.bf16), ("liger_kernel", self.liger_kernel),
                                              ("flash_attn", self.flash_attn)) if present]
        if self.shards > 1:
            extras.append(f"state sharded over {self.shards} ({'FSDP' if self.fsdp else 'ZeRO-3'})")
        return f"cuda: {self.name}, {self.memory_bytes / 2**30:.0f} GiB" + "".join(f", {e}" for e in extras)


CPU = Device("cpu")  #: a CPU without native bf16


def cpu_device(cpu: HostCPU | None = None) -> Device:
    """``cpu`` (by default this machine's, from ``/proc/cpuinfo``) as a training device: bf16 where the engines'
    ``dtype: auto`` would run bfloat16 on it."""
    cpu = cpu or this_cpu()
    return Device("cpu", name=cpu.describe(), bf16=choose_dtype("auto", cpu) == "bfloat16")


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def detect_device(use_cpu: bool = False) -> Device:
    """The device this process trains on: the first visible CUDA GPU, else the CPU.

    ``--use-cpu true`` and ``accelerate launch --cpu`` (``ACCELERATE_USE_CPU``) mean the CPU even where a GPU is.
    """
    import torch

    forced_cpu = use_cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if forced_cpu or not torch.cuda.is_available():
        # Another accelerator (Apple MPS, Intel XPU) is what transformers then trains on: keep the CPU values,
        # without bf16, which would need use_cpu and so move the run off that accelerator.
        accelerator = getattr(torch, "accelerator", None)
        if not forced_cpu and accelerator is not None and accelerator.is_available():
            return CPU
        return cpu_device()
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
    # The same rule on every device: mixed precision in bf16 where the device computes it natively.
    bf16 = device.bf16 and not config.fp16
    if not device.is_gpu:
        return {name: bf16 if name == "bf16" else stage.cpu_settings.get(name, CPU_SETTINGS[name]) for name in unset}

    values = {name: getattr(config, name, None) for name in AUTO_FIELDS if name not in unset}
    chosen: dict[str, Any] = {}

    def setting(name: str):
        return chosen[name] if name in chosen else values.get(name)

    for name in unset:
        if name == "bf16":
            value = bf16
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
    if not device.is_gpu and config.bf16 and not getattr(config, "use_cpu", True):
        # transformers accepts bf16 without a GPU only when told the run is on the CPU.
        config.use_cpu = chosen["use_cpu"] = True
    record: dict[str, Any] = {"device": device.describe(), "precision": describe_precision(config, device, chosen),
                              "chosen": chosen}
    if parameters is not None:
        record["model_parameters"] = parameters
    return record


def describe_precision(config, device: Device, chosen: dict[str, Any]) -> str:
    """What the run computes in and why, e.g. ``bf16 autocast, float32 weights (auto: native bf16)``."""
    weights = "weights in the model's dtype" if config.train_dtype == "auto" else f"{config.train_dtype} weights"
    mixed = "bf16" if config.bf16 else "fp16" if getattr(config, "fp16", False) else None
    what = f"{mixed} autocast, {weights}" if mixed else f"{weights}, no autocast"
    if "bf16" not in chosen:
        why = "bf16 set"
    elif config.bf16:
        why = "auto: native bf16"
    elif device.bf16:
        why = "auto: fp16 set"
    else:
        why = "auto: no native bf16"
    return f"{what} ({why})"


__all__ = [
    "AUTO_FIELDS", "CPU", "CPU_SETTINGS", "Device", "apply_device_defaults", "choose_settings", "count_parameters",
    "cpu_device", "describe_precision", "detect_device", "training_state_bytes",
]
