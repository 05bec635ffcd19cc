"""Loading base models for training and writing the final model folders.

Every folder ``cai train`` writes is a plain Hugging Face model folder
(safetensors weights, config, tokenizer, generation config), with LoRA adapters
merged in, so ``transformers``, vLLM and ``cai generate --model DIR`` load it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from core.errors import UserError


def resolve_base(name: str | None, flag: str = "--model") -> str:
    """A folder path or hub id for ``name``; the embedded default model when empty."""
    from core.model import resolve_model

    try:
        resolved = resolve_model(name)
    except FileNotFoundError as exc:
        raise UserError(f"{flag}: {exc}") from None
    if not Path(resolved).is_dir() and (resolved.startswith(("/", ".", "~")) or resolved.count("/") > 1):
        raise UserError(f"{flag} {name!r}: no such model folder; pass a folder written by `cai train` or save_pretrained")
    return resolved


def torch_dtype(name: str, folder: str):
    """The torch dtype for a ``train_dtype``/``save_dtype`` value; ``auto`` reads the folder's config."""
    import torch

    if name == "auto":
        name = base_dtype_name(folder)
    return getattr(torch, name)


def base_dtype_name(folder: str) -> str:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(dtype).removeprefix("torch.") if dtype is not None else "float32"
    return name if name in ("float32", "bfloat16", "float16") else "float32"


def load_tokenizer(folder: str, padding_side: str = "right"):
    """The folder's tokenizer with a pad token (its EOS when it has none), as TRL's trainers need one."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, padding_side=padding_side)
    except OSError as exc:
        raise UserError(f"--model {folder!r}: cannot load its tokenizer ({exc})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise UserError(f"{folder}: the tokenizer has no chat template; conversational rows need one")
    return tokenizer


def load_causal_lm(folder: str, dtype_name: str, attn_implementation: str | None = None, flag: str = "--model"):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(dtype_name, folder),
                                                    attn_implementation=attn_implementation)
    except OSError as exc:
        raise UserError(f"{flag} {folder!r}: cannot load a causal language model ({exc})") from None


def load_score_model(folder: str, dtype_name: str, pad_token_id: int, flag: str, attn_implementation: str | None = None):
    """A one-output sequence-classification model (reward or value) on ``folder``'s transformer."""
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=1, dtype=torch_dtype(dtype_name, folder), attn_implementation=attn_implementation
        )
    except (OSError, ValueError) as exc:
        raise UserError(f"{flag} {folder!r}: cannot load a sequence-classification model ({exc})") from None
    # The head finds the last real token through pad_token_id; without it, batches of more than one row fail.
    model.config.pad_token_id = pad_token_id
    return model


def lora_config(config: Any, task_type: str):
    """The adapter's PeftConfig, built by ``trl.get_peft_config`` from the stage's LoRA fields
    (``training.config.PEFT_FIELDS``), or None without ``--use-peft``."""
    if not config.use_peft:
        return None
    from trl import ModelConfig, get_peft_config

    from training.config import PEFT_FIELDS

    settings = ModelConfig(lora_task_type=task_type, **{name: getattr(config, name) for name in PEFT_FIELDS})
    # ModelConfig turns a list of one name into the bare name, which peft reads as a pattern for the whole module
    # path (`model.layers.0.self_attn.q_proj`), so that `--lora-target-modules q_proj` would match nothing; only
    # `all-linear` is meant bare.
    targets = config.lora_target_modules
    settings.lora_target_modules = targets[0] if targets == ["all-linear"] else targets
    return get_peft_config(settings)


def weights_are_sharded(accelerator) -> bool:
    """Whether no rank holds every weight: FSDP, or DeepSpeed ZeRO stage 3."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return accelerator.state.deepspeed_plugin.zero_stage == 3
    return False


def load_into_empty_copy(model, state_dict: dict):
    """A copy of ``model`` (its class, config and LoRA adapters) holding ``state_dict``, a gathered full state dict.

    The copy is built with its weights on the meta device, so only the gathered tensors take memory.
    """
    from accelerate import init_empty_weights
    from peft import PeftModel, get_peft_model

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    with init_empty_weights(include_buffers=False):
        copy = type(base)(base.config)
    if isinstance(model, PeftModel):
        copy = get_peft_model(copy, model.peft_config[model.active_adapter])
    missing, unexpected = copy.load_state_dict(state_dict, strict=False, assign=True)
    (copy.get_base_model() if isinstance(copy, PeftModel) else copy).tie_weights()
    still_empty = [name for name, tensor in copy.state_dict().items() if tensor.is_meta]
    if unexpected or still_empty:
        raise RuntimeError(f"the gathered weights do not fit the model: missing {still_empty[:3] or missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    return copy


def is_own_model_folder(folder: Path) -> bool:
    """Whether ``cai train`` wrote ``folder``: its summary, a run's stamp, a save or checkpoints to resume."""
    return any((folder / name).exists() for name in ("cai_training.json", "cai_stage.json", ".saving")) or \
        any(folder.glob("checkpoint-*"))


def check_model_folder(folder: str | Path, flag: str = "--output-dir", overwrite: bool = False,
                       overwrite_flag: str = "--overwrite") -> None:
    """Refuse to train into a folder that holds files ``cai train`` did not write (another model's weights, a
    user's files) unless ``overwrite``; an empty or missing folder, or one of its own, is fine."""
    folder = Path(folder)
    if overwrite or not folder.is_dir() or is_own_model_folder(folder) or not any(folder.iterdir()):
        return
    raise UserError(f"{flag} {folder} holds files `cai train` did not write (another model's weights?); they were "
                    f"left as they are: choose another {flag}, or pass {overwrite_flag} to replace them")


def save_model_folder(model, tokenizer, output_dir: str | Path, dtype, extra: dict | None = None) -> Path:
    """Write ``model`` (LoRA merged) with its tokenizer as a safetensors folder; return the folder.

    The weights go to a temporary folder renamed into place, so a killed save never leaves a half model that
    ``--model`` would later load; training logs already in ``output_dir`` are kept.
    """
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    model = model.to(dtype)
    import torch

    broken = [name for name, tensor in model.state_dict().items()
              if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if broken:
        raise UserError(f"the trained weights are not finite ({len(broken)} tensors, e.g. {broken[0]}); no model was "
                        f"saved to {output_dir}. Check the data and lower --learning-rate")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = output_dir / ".saving"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(staging)
    for item in staging.iterdir():
        target = output_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        item.replace(target)
    staging.rmdir()
    if extra:
        (output_dir / "cai_training.json").write_text(json.dumps(extra, indent=2, default=str) + "\n")
    return output_dir
