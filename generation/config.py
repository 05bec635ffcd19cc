"""Configuration of ``cai generate`` (YAML via --config, any field overridable by a flag)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.errors import UserError

from core.backends.base import BACKENDS, Backend, create_backend


@dataclass(kw_only=True)
class EngineOptions:
    """How a stage reaches its models; every stage's config has these."""

    api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "Environment variable holding the API key (never logged)."}
    )
    concurrency: int = field(default=32, metadata={"help": "openai backend: requests in flight at once."})
    request_timeout: float = field(default=120.0, metadata={"help": "openai backend: seconds per request."})
    max_model_len: int | None = field(default=None, metadata={"help": "vllm backend: context length (default: model's)."})
    gpu_memory_utilization: float | None = field(
        default=None,
        metadata={"help": "vllm backend: memory share for the engine (on CPU: RAM to reserve, sized to the model; 0.9 on GPU)."},
    )
    tensor_parallel_size: int = field(default=1, metadata={"help": "vllm backend: GPUs to shard the model over."})

    def __post_init__(self):
        if self.concurrency < 1:
            raise UserError(f"--concurrency {self.concurrency!r} must be >= 1")

    def build_backend(self, backend: str, model: str, base_url: str | None, seed: int) -> Backend:
        """A backend on ``model``: an in-process engine (the model resolved, the default converted once) or an endpoint."""
        if backend == "vllm":
            from core.model import resolve_model

            return create_backend(
                "vllm",
                resolve_model(model),
                seed=seed,
                max_model_len=self.max_model_len,
                gpu_memory_utilization=self.gpu_memory_utilization,
                tensor_parallel_size=self.tensor_parallel_size,
            )
        return create_backend(
            "openai",
            model,
            base_url=base_url,
            api_key_env=self.api_key_env,
            concurrency=self.concurrency,
            timeout=self.request_timeout,
            seed=seed,
        )


@dataclass
class GenerateConfig(EngineOptions):
    prompts: str = field(metadata={"help": "Prompts file: JSON Lines with 'prompt' or 'messages', optional 'id' and 'tag'."})
    out: str = field(metadata={"help": "Output JSON Lines file; an existing one is resumed."})
    constitution: str = field(default="principles.yaml", metadata={"help": "Constitution YAML file."})
    model: str = field(
        default="default",
        metadata={"help": "Model: 'default' (embedded SmolLM2-135M-Instruct), a local model folder, or a hub id."},
    )
    backend: str = field(default="vllm", metadata={"help": "Backend: 'vllm' (in-process) or 'openai' (any endpoint)."})
    base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1."})
    rounds: int = field(default=1, metadata={"help": "Critique-revision rounds per prompt."})
    seed: int = field(default=0, metadata={"help": "Seed for principle assignment and sampling."})
    limit: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    max_tokens: int = field(default=256, metadata={"help": "Maximum new tokens per call."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (0 is greedy)."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling probability mass."})
    batch_size: int = field(
        default=64, metadata={"help": "Prompts per batch; each batch is written (and flushed) when its chain ends."}
    )
    examples: int = field(default=2, metadata={"help": "Before/after examples to print at the end."})
    overwrite: bool = field(default=False, metadata={"help": "Discard an existing output and start fresh."})

    def __post_init__(self):
        super().__post_init__()
        if self.backend not in BACKENDS:
            import difflib

            close = difflib.get_close_matches(self.backend, BACKENDS, n=1)
            raise UserError(
                f"--backend {self.backend!r} is unknown" + (f"; did you mean {close[0]!r}?" if close else "")
                + f" Choose one of: {', '.join(BACKENDS)}."
            )
        if self.backend == "openai" and not self.base_url:
            import os

            if not os.environ.get("OPENAI_BASE_URL"):
                raise UserError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        checks = [
            ("rounds", self.rounds >= 0, "must be >= 0"),
            ("max_tokens", self.max_tokens >= 1, "must be >= 1"),
            ("temperature", self.temperature >= 0, "must be >= 0"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("limit", self.limit is None or self.limit >= 1, "must be >= 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)!r} {rule}")
