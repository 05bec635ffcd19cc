"""Two in-process vLLM engines on one GPU: a share of its memory each, or a clear error before any loading.

vLLM's ``gpu_memory_utilization`` is the share of the GPU's *total* memory one engine takes (weights,
activations, then KV cache in the rest), and an engine refuses to start when that much is not free.  Two
engines that each take the default 0.9 cannot both start.  When a judge model beside the policy loads in the
same process (``cai judge --mode samples --judge-model``, ``cai run`` with a ``judge_model``), the 0.9 is split
between them by what each needs: its weights (the model folder's safetensors), the KV cache of a few
full-length sequences and a fixed allowance for activations and CUDA graphs; the spare memory is split in the
same proportions.  When their needs do not fit, a UserError says so before either loads.  An engine that
starts beside one already loaded (``cai run``'s eval: the trained model beside the kept policy) gets what is
free (``share_beside``), or the caller closes the loaded one first.

On CPU nothing changes: each engine reserves the RAM ``vllm_backend._cpu_memory_share`` sizes for it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError

GiB = 2**30
#: the share of the GPU the engines take together unless --gpu-memory-utilization says otherwise (vLLM's default)
DEFAULT_BUDGET = 0.9
#: activations, sampler and CUDA graphs of one engine, besides weights and KV cache (vLLM profiles 0.5 to 2 GiB)
ENGINE_OVERHEAD = 2 * GiB
#: what a second engine's process takes before vLLM measures the free memory (its CUDA context)
CUDA_CONTEXT = GiB // 2
#: KV cache an engine needs at least: this many full-length sequences (vLLM refuses to start below one)
KV_SEQUENCES = 4
#: the context the KV estimate assumes when neither --max-model-len nor the model's config gives one
DEFAULT_CONTEXT = 4096
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}


@dataclass(frozen=True)
class EngineNeed:
    """What one engine needs on the GPU, in bytes; ``label`` names it in messages (``--judge-model X``)."""

    label: str
    weights: int
    kv_cache: int
    overhead: int = ENGINE_OVERHEAD

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead


def _local_folder(model: str | Path) -> Path:
    """A model's folder: itself, or a hub id's snapshot in the local cache (nothing is downloaded)."""
    path = Path(model)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model), local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, or not a hub id: the estimate falls back to a minimum
        return path


def estimate_need(label: str, folder: str | Path, max_model_len: int | None = None) -> EngineNeed:
    """An engine's need from its model folder: the safetensors' size, and the KV cache of ``KV_SEQUENCES``
    sequences of its context (layers x KV heads x head size x 2 for keys and values, in the model's dtype)."""
    folder = _local_folder(folder)
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors")) if folder.is_dir() else 0
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    config = config.get("text_config", config) if isinstance(config, dict) else {}
    layers = config.get("num_hidden_layers") or 0
    heads = config.get("num_attention_heads") or 0
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or ((config.get("hidden_size") or 0) // heads if heads else 0)
    dtype = DTYPE_BYTES.get(str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"), 2)
    context = max_model_len or min(config.get("max_position_embeddings") or DEFAULT_CONTEXT, 32768)
    per_token = 2 * layers * kv_heads * head_dim * dtype
    kv_cache = per_token * context * KV_SEQUENCES if per_token else max(GiB, weights // 4)
    return EngineNeed(label, weights, kv_cache)


def split_gpu_memory(needs: list[EngineNeed], total: int, free: int, budget: float | None = None) -> list[float]:
    """Each engine's ``gpu_memory_utilization`` (a share of ``total``) so that all of them fit on one GPU.

    Together they take ``budget`` of the GPU (0.9 by default), or what is free now when that is less
    (another process's memory); each gets at least its need, and the rest is split in proportion to the
    needs.  When the needs do not fit, a UserError names each engine's need and what the GPU has.
    """
    budget = DEFAULT_BUDGET if budget is None else budget
    usable = min(budget * total, free)
    wanted = sum(need.total for need in needs)
    if wanted > usable:
        detail = " and ".join(f"{need.label} ~{need.total / GiB:.1f} GiB ({need.weights / GiB:.1f} GiB weights, "
                              f"{need.kv_cache / GiB:.1f} GiB KV cache, {need.overhead / GiB:.0f} GiB activations)"
                              for need in needs)
        raise UserError(
            f"the engines cannot share this GPU: {detail} need {wanted / GiB:.1f} GiB together, but it has "
            f"{usable / GiB:.1f} GiB for them ({free / GiB:.1f} GiB free of {total / GiB:.1f} GiB, at most "
            f"{budget:g} of it by --gpu-memory-utilization). Use one model for both (drop --judge-model), a smaller "
            "judge, a shorter --max-model-len, or serve the judge on another GPU (--judge-backend openai "
            "--judge-base-url URL)"
        )
    # Rounded down, so the shares never add up to more than the budget.
    return [math.floor(usable * need.total / wanted / total * 1000) / 1000 for need in needs]


def share_beside(need: EngineNeed, total: int, free: int, budget: float | None = None) -> float | None:
    """The ``gpu_memory_utilization`` of one more engine on a GPU where engines already hold their memory: what
    is free now less a CUDA context (vLLM refuses a share larger than what is free at its start), at most
    ``budget`` of the GPU; None when its need does not fit there."""
    budget = DEFAULT_BUDGET if budget is None else budget
    usable = min(budget * total, free - CUDA_CONTEXT)
    if need.total > usable:
        return None
    return math.floor(usable / total * 1000) / 1000


def cuda_memory() -> tuple[int, int] | None:
    """``(free, total)`` bytes of the current CUDA device, or None without CUDA (CPU: nothing to split)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return int(free), int(total)


def shared_gpu_shares(engines: list[tuple[str, str, int | None]], budget: float | None = None) -> list[float] | None:
    """``gpu_memory_utilization`` for each of ``engines`` (``(label, model folder, max_model_len)``) loading
    side by side on this process's GPU, or None when there is no GPU (or only one engine)."""
    if len(engines) < 2:
        return None
    memory = cuda_memory()
    if memory is None:
        return None
    free, total = memory
    return split_gpu_memory([estimate_need(*engine) for engine in engines], total, free, budget)
