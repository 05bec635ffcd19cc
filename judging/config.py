"""Configuration of ``cai judge`` and ``cai judge agreement`` (YAML via --config, any field overridable by a flag)."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field

from core.errors import UserError
from core.backends.base import BACKENDS
from generation.config import EngineOptions

from .methods import METHODS, method_class

_COT_METHODS = [name for name in METHODS if method_class(name).supports_cot]

MODES = ("revision", "samples")


def _choice(flag: str, value, choices) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        raise UserError(
            f"{flag} {value!r} is unknown" + (f"; did you mean {close[0]!r}?" if close else "")
            + f" Choose one of: {', '.join(choices)}."
        )


@dataclass
class JudgeModelConfig(EngineOptions):
    """Which judge, how it scores, and which principles it asks about."""

    constitution: str = field(default="principles.yaml", metadata={"help": "Constitution YAML file (its comparison questions)."})
    judge_model: str | None = field(
        default=None,
        metadata={"help": "Judge model: a local model folder, a hub id, 'default' (embedded SmolLM2-135M-Instruct) or, "
                          "with --judge-backend openai, the served model name. Default: the same as --model "
                          "(one engine, loaded once)."},
    )
    judge_backend: str | None = field(
        default=None, metadata={"help": "Judge backend: 'vllm' (in-process) or 'openai' (any endpoint). Default: --backend."}
    )
    judge_base_url: str | None = field(
        default=None, metadata={"help": "Judge's OpenAI-compatible base URL. Default: --base-url."}
    )
    model: str = field(
        default="default",
        metadata={"help": "Policy model (samples mode samples from it; the judge defaults to it): 'default', a folder or a hub id."},
    )
    backend: str = field(default="vllm", metadata={"help": "Policy backend: 'vllm' (in-process) or 'openai'."})
    base_url: str | None = field(default=None, metadata={"help": "Policy's OpenAI-compatible base URL."})
    method: str = field(
        default="likelihood",
        metadata={"help": f"How the judge scores, one of {', '.join(METHODS)}. "
                          + "; ".join(f"{name!r}: {method_class(name).description}" for name in METHODS) + "."},
    )
    cot: bool = field(
        default=False,
        metadata={"help": f"Chain of thought ({' and '.join(_COT_METHODS)} methods): the judge reasons first, then the "
                          "label is read."},
    )
    cot_clamp: bool = field(
        default=True, metadata={"help": "With --cot, clamp each probability to [0.4, 0.6] (reasoning makes them overconfident)."}
    )
    cot_max_tokens: int = field(default=192, metadata={"help": "With --cot, maximum tokens of reasoning."})
    constrained_verdict: bool = field(
        default=True,
        metadata={"help": "text method: constrain the verdict to (A) or (B) with vLLM structured outputs, so it always "
                          "parses; --no-constrained-verdict for endpoints without them (a reply that does not parse "
                          "is then a failure)."},
    )
    likelihood_scale: float = field(
        default=1.0,
        metadata={"help": "likelihood method: P(x better) = sigmoid(scale * (score_x - score_y)); lower is less confident."},
    )
    principles_per_pair: int = field(
        default=3,
        metadata={"help": "Principles each pair is judged under (weighted rendezvous, as in generation); scores are averaged."},
    )
    principle_ids: str | None = field(
        default=None, metadata={"help": "Comma-separated principle ids to judge every pair under, instead of an assignment."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for principle assignment and sampling."})
    batch_size: int = field(default=32, metadata={"help": "Rows per batch; each batch is saved when judged."})
    limit: int | None = field(default=None, metadata={"help": "Use only the first N input rows."})

    def __post_init__(self):
        super().__post_init__()
        _choice("--backend", self.backend, list(BACKENDS))
        if self.judge_backend is not None:
            _choice("--judge-backend", self.judge_backend, list(BACKENDS))
        _choice("--method", self.method, METHODS)
        if self.cot and not method_class(self.method).supports_cot:
            raise UserError(f"--cot needs --method {' or '.join(_COT_METHODS)} (the {self.method} method has no verdict "
                            "to reason towards)")
        for flag, backend, url in (("--base-url", self.backend, self.base_url),
                                   ("--judge-base-url", self.resolved_judge_backend, self.resolved_judge_base_url)):
            if backend == "openai" and not url and not os.environ.get("OPENAI_BASE_URL"):
                raise UserError(f"an openai backend needs {flag} (e.g. http://127.0.0.1:8000/v1)")
        checks = [
            ("principles_per_pair", self.principles_per_pair >= 1, "must be >= 1"),
            ("cot_max_tokens", self.cot_max_tokens >= 1, "must be >= 1"),
            ("likelihood_scale", self.likelihood_scale > 0, "must be > 0"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("limit", self.limit is None or self.limit >= 1, "must be >= 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)!r} {rule}")

    @property
    def resolved_judge_backend(self) -> str:
        return self.judge_backend or self.backend

    @property
    def resolved_judge_base_url(self) -> str | None:
        if self.judge_base_url:
            return self.judge_base_url
        return self.base_url if self.resolved_judge_backend == self.backend else None

    @property
    def resolved_judge_model(self) -> str:
        return self.judge_model or self.model

    def judge_is_policy(self) -> bool:
        return (self.resolved_judge_model, self.resolved_judge_backend, self.resolved_judge_base_url) == (
            self.model, self.backend, self.base_url)

    def principle_id_list(self) -> list[str] | None:
        if not self.principle_ids:
            return None
        return [p.strip() for p in self.principle_ids.split(",") if p.strip()]


@dataclass
class JudgeConfig(JudgeModelConfig):
    input: str | None = field(
        default=None, metadata={"aliases": ["--in"], "help": "Input JSON Lines: `cai generate` output (revision mode), "
                                                              "or prompts with optional 'responses' (samples mode)."}
    )
    out: str | None = field(default=None, metadata={"help": "Output preference pairs (JSON Lines); an existing one is resumed."})
    mode: str = field(
        default="revision",
        metadata={"help": "'revision': initial response against final revision; 'samples': n policy samples per prompt, "
                          "best against worst by mean win probability."},
    )
    min_margin: float = field(
        default=0.0,
        metadata={"help": "Drop pairs whose margin (2 * chosen_probability - 1, in [0, 1]) is below this."},
    )
    require_orders_agree: bool = field(
        default=False, metadata={"help": "Drop pairs whose winner changes when the order of the options is swapped."}
    )
    num_samples: int = field(default=4, metadata={"help": "samples mode: responses sampled per prompt without 'responses'."})
    max_tokens: int = field(default=256, metadata={"help": "samples mode: maximum new tokens per sampled response."})
    temperature: float = field(default=0.9, metadata={"help": "samples mode: sampling temperature."})
    top_p: float = field(default=0.95, metadata={"help": "samples mode: nucleus sampling probability mass."})
    sft_out: str | None = field(
        default=None, metadata={"help": "Where to write the SFT rows (default: sft.jsonl beside --out)."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Discard an existing output and its judgement cache."})

    def __post_init__(self):
        super().__post_init__()
        if not self.input:
            raise UserError("--in is required: the input JSON Lines file (e.g. the output of `cai generate`)")
        if not self.out:
            raise UserError("--out is required: where to write the preference pairs (JSON Lines)")
        _choice("--mode", self.mode, MODES)
        checks = [
            ("min_margin", 0.0 <= self.min_margin <= 1.0, "must be in [0, 1]"),
            ("num_samples", self.num_samples >= 2, "must be >= 2"),
            ("max_tokens", self.max_tokens >= 1, "must be >= 1"),
            ("temperature", self.temperature >= 0, "must be >= 0"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)!r} {rule}")


@dataclass
class AgreementConfig(JudgeModelConfig):
    pairs: str | None = field(
        default=None,
        metadata={"help": "Human-labelled pairs (JSON Lines): {'prompt'|'messages', 'chosen', 'rejected'} or two "
                          "transcripts {'chosen': '\\n\\nHuman: ...\\n\\nAssistant: ...', 'rejected': ...}."},
    )
    out: str | None = field(default=None, metadata={"help": "Also save the agreement report (JSON) here."})
    details: str | None = field(default=None, metadata={"help": "Also save each pair's judgement (JSON Lines) here."})

    def __post_init__(self):
        super().__post_init__()
        if not self.pairs:
            raise UserError("--pairs is required: a JSON Lines file of human-labelled pairs")
