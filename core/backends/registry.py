"""The one place a backend is chosen and configured.

A backend is one module holding a ``Backend`` subclass (``core.backends.base``): its
``Options`` (the fields a stage config sets for it, with their rules), ``from_options``
(how it is built) and ``identity`` (how its model is named in records).  Adding one is
that module plus one line in ``BACKENDS`` (a :class:`core.registry.Registry`); no other module tests a backend's name.

Stage configs keep one flat set of fields for the user (``--backend``, ``--base-url``,
``--concurrency``, ...: ``EngineOptions`` plus each stage's model, backend, base_url and
seed).  Turning them into a backend is one call::

    build_backend(config.backend, config.model, backend_options(config.backend, config))

or, on a stage config, ``config.build_backend(config.backend, config.model)``.  A backend is built unloaded:
``load()`` starts its engine when a stage first has work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.config import check_rules
from core.hardware import DTYPE_HELP
from core.registry import Registry

from .base import Backend, BackendOptions

#: name -> "module:Class" (imported only when chosen, so heavy libraries load only then) or the class itself
BACKENDS: Registry[type[Backend]] = Registry("backend", {
    "vllm": "core.backends.vllm_backend:VLLMBackend",
    "openai": "core.backends.openai_backend:OpenAIBackend",
})
DEFAULT_BACKEND = "vllm"
#: the help of every ``--backend`` flag
BACKEND_HELP = (
    "How the model runs: 'vllm' (an in-process engine on a model folder) or 'openai' (any OpenAI-compatible "
    "endpoint at --base-url); the backends are registered in core/backends/registry.py."
)


def backend_class(name: str, flag: str = "--backend") -> type[Backend]:
    """The class registered as ``name``; an unknown name is a UserError with "did you mean" (``flag`` names it)."""
    return BACKENDS.get(name, flag)


def backend_options(
    name: str, config: Any = None, *, flag: str = "--backend", flags: Mapping[str, str] | None = None, **values
) -> BackendOptions:
    """Backend ``name``'s options, checked by its rules.

    Each option is taken from ``values``, else from ``config``'s field of the same name (a stage
    config's flat fields), else it keeps its default.  A broken rule is a UserError quoting the
    value and naming its flag; ``flags`` maps an option to the flag it came from when that is not
    its own (a judge's ``base_url`` comes from ``--judge-base-url``).
    """
    options_class = backend_class(name, flag).Options
    chosen = {}
    for option in dataclasses.fields(options_class):
        if option.name in values:
            chosen[option.name] = values[option.name]
        elif hasattr(config, option.name):
            chosen[option.name] = getattr(config, option.name)
    options = options_class(**chosen)
    check_rules(options, options.rules(), flags)
    return options


def build_backend(name: str, model: str, options: BackendOptions | None = None) -> Backend:
    """Backend ``name`` on ``model`` (as the user named it) with ``options`` (default: the backend's defaults),
    not loaded yet: a stage calls ``load()`` when it first has work."""
    cls = backend_class(name)
    return cls.from_options(model, options if options is not None else backend_options(name))


def backend_identity(name: str, model: str) -> str:
    """``model`` as backend ``name`` records it in rows, keys and manifests: loads nothing, holds no URL or key."""
    return backend_class(name).identity(model)


def create_backend(name: str, model: str, **arguments) -> Backend:
    """Backend ``name`` built from its class's own arguments and loaded, ready for requests (tests, benchmarks,
    engine knobs that no stage config exposes); commands build theirs from a stage config with ``build_backend``."""
    return backend_class(name)(model=model, **arguments).load()


@dataclass(kw_only=True)
class EngineOptions:
    r"""How a stage reaches its models: every stage config has these flat fields (with its own ``model``,
    ``backend``, ``base_url`` and ``seed``), and each backend takes the ones its options name.

    Parameters:
        > Parameters that control how much is in flight (every backend)

        concurrency (`int` or `None`, *optional*, defaults to `None`):
            Requests in flight at once (in `cai generate`, rows: each row has one call in flight). `None` sizes
            it from the engine: twice the in-process engine's `max_num_seqs`, or 1,024 for an endpoint.

        > Parameters that control the openai backend (any OpenAI-compatible endpoint)

        api_key_env (`str`, *optional*, defaults to `"OPENAI_API_KEY"`):
            Name of the environment variable holding the API key. The key itself is never logged or stored.
        request_timeout (`float`, *optional*, defaults to `120.0`):
            Seconds one request may take before it is retried.
        session_header (`str`, *optional*, defaults to `"X-Session-ID"`):
            HTTP header carrying a key that is the same for every call of one row, so that a router with session
            affinity keeps the row's prefix on one server; `""` sends none.

        > Parameters that control the vllm backend (an in-process engine)

        max_model_len (`int` or `None`, *optional*, defaults to `None`):
            Context length in tokens; `None` uses the model's.
        gpu_memory_utilization (`float` or `None`, *optional*, defaults to `None`):
            Share of memory the engine reserves: on GPU 0.9 by default; on CPU the share of RAM, sized to the model.
        tensor_parallel_size (`int`, *optional*, defaults to `1`):
            GPUs to shard the model over.
        dtype (`str`, *optional*, defaults to `"auto"`):
            Weights' and activations' dtype: `auto` is bfloat16 on a GPU that supports it and on a CPU with native
            bf16 (`avx512_bf16` or AMX), float32 on other CPUs; or `bfloat16`, `float16`, `float32`.
    """

    api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "openai backend: environment variable holding the API key (never logged)."}
    )
    concurrency: int | None = field(
        default=None,
        metadata={"help": "Requests (rows) in flight at once; default: twice the in-process engine's max_num_seqs, "
                          "or 1024 for an endpoint (a GPU server runs up to 1,024 sequences)."},
    )
    session_header: str = field(
        default="X-Session-ID",
        metadata={"help": "openai backend: header with a per-row key, the same on every call of a row, for routers "
                          "with session affinity ('' sends none)."},
    )
    request_timeout: float = field(default=120.0, metadata={"help": "openai backend: seconds per request (> 0)."})
    max_model_len: int | None = field(default=None, metadata={"help": "vllm backend: context length (default: model's)."})
    gpu_memory_utilization: float | None = field(
        default=None,
        metadata={"help": "vllm backend: memory share for the engine (on CPU: RAM to reserve, sized to the model; 0.9 on GPU)."},
    )
    tensor_parallel_size: int = field(default=1, metadata={"help": "vllm backend: GPUs to shard the model over."})
    dtype: str = field(default="auto", metadata={"help": "vllm backend: " + DTYPE_HELP})

    def build_backend(self, backend: str, model: str, **values) -> Backend:
        """Backend ``backend`` on ``model`` with this config's options; ``values`` override fields (e.g. ``base_url=``)."""
        return build_backend(backend, model, backend_options(backend, self, **values))
