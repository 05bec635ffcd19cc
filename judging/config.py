"""Configuration of ``cai judge`` and ``cai judge agreement`` (defaults, then ``--config`` YAML, then flags:
``core.config.parse_config``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.backends.base import BackendOptions
from core.backends.registry import BACKEND_HELP, DEFAULT_BACKEND, EngineOptions, backend_identity, backend_options
from core.config import check_choice, check_rules
from core.errors import UserError
from core.shards import Shard

from .methods import JUDGE_METHODS, method_class, method_options
from .scoring import COMBINATIONS


def _cot_methods() -> list[str]:
    return [name for name in JUDGE_METHODS if method_class(name).supports_cot]


MODES = ("revision", "samples")


@dataclass
class JudgeModelConfig(EngineOptions):
    r"""Which judge, how it scores, and which principles it asks about: the options ``cai judge``,
    ``cai judge agreement`` and ``cai eval`` share.

    Parameters:
        > Parameters that control the judge model (and the engine options of ``EngineOptions``)

        judge_model (`str` or `None`, *optional*, defaults to `None`):
            A local model folder, a hub id, `"default"` or, with an openai judge backend, the served model name.
            `None`: the same as `model` (one engine, loaded once).
        judge_backend (`str` or `None`, *optional*, defaults to `None`):
            The judge's backend (see `backend`); `None`: the same as `backend`.
        judge_base_url (`str` or `None`, *optional*, defaults to `None`):
            The judge endpoint's OpenAI-compatible URL; `None`: `base_url` when the backends are the same.
        extra_judge_models (`str` or `None`, *optional*, defaults to `None`):
            More judges, comma-separated, on the judge's backend and endpoint; every judge judges every comparison
            and the verdicts are combined by `combine_judges` (judging/ensemble.py).
        combine_judges (`str`, *optional*, defaults to `"mean"`):
            `"mean"`: the mean of the judges' probabilities; `"majority"`: the share of the judges' votes.
        fallback_judge_model (`str` or `None`, *optional*, defaults to `None`):
            A judge for the comparisons the judges refused or could not answer (any backend).
        fallback_judge_backend (`str` or `None`, *optional*, defaults to `None`):
            The fallback judge's backend; `None`: the judge's.
        fallback_judge_base_url (`str` or `None`, *optional*, defaults to `None`):
            The fallback judge's endpoint; `None`: the judge's when the backends are the same.
        fallback_limit (`int` or `None`, *optional*, defaults to `None`):
            At most this many comparisons go to the fallback judge; `None`: every one left without a verdict.

        > Parameters that control the policy model

        model (`str`, *optional*, defaults to `"default"`):
            The policy (samples mode samples from it; the judge defaults to it): `"default"`, a folder, a hub id or
            a served model name.
        backend (`str`, *optional*, defaults to `"vllm"`):
            A backend registered in `core/backends/registry.py`: `"vllm"` (in-process) or `"openai"` (an endpoint).
        base_url (`str` or `None`, *optional*, defaults to `None`):
            The policy endpoint's OpenAI-compatible URL (openai backend; or set `$OPENAI_BASE_URL`).
        seed (`int`, *optional*, defaults to `0`):
            Seed for principle assignment and sampling.

        > Parameters that control scoring

        method (`str`, *optional*, defaults to `"likelihood"`):
            How the judge scores: `"likelihood"`, `"pairwise"` or `"text"`.
        cot (`bool`, *optional*, defaults to `False`):
            Chain of thought (pairwise and text methods): the judge reasons first, then the label is read.
        cot_clamp (`bool`, *optional*, defaults to `True`):
            With `cot`, clamp each probability to [0.4, 0.6].
        cot_max_tokens (`int`, *optional*, defaults to `192`):
            With `cot`, maximum tokens of reasoning.
        constrained_verdict (`bool`, *optional*, defaults to `True`):
            Text method: constrain the verdict to (A) or (B) with structured outputs.
        likelihood_scale (`float`, *optional*, defaults to `1.0`):
            Likelihood method: P(x better) = sigmoid(scale * (score_x - score_y)).

        > Parameters that control the principles

        constitution (`str`, *optional*, defaults to `"principles.yaml"`):
            Constitution YAML file (its comparison questions).
        principles_per_pair (`int`, *optional*, defaults to `3`):
            Principles each pair is judged under; their scores are averaged.
        principle_ids (`str` or `None`, *optional*, defaults to `None`):
            Comma-separated principle ids to judge every pair under, instead of an assignment.

        > Parameters that control the run

        concurrency (`int` or `None`, *optional*, defaults to `None`, from ``EngineOptions``):
            Rows judged at once, each with all its requests (every principle, both orders) sent together, and at
            most this many of the judge's requests in flight; `None`: twice the in-process engine's
            `max_num_seqs`, or 1,024 for an endpoint.
        limit (`int` or `None`, *optional*, defaults to `None`):
            Use only the first N input rows.
    """

    constitution: str = field(default="principles.yaml", metadata={"help": "Constitution YAML file (its comparison questions)."})
    judge_model: str | None = field(
        default=None,
        metadata={"help": "Judge model: a local model folder, a hub id, 'default' (embedded SmolLM2-135M-Instruct) or, "
                          "with --judge-backend openai, the served model name. Default: the same as --model "
                          "(one engine, loaded once)."},
    )
    judge_backend: str | None = field(
        default=None, metadata={"help": "The judge's backend, as --backend. Default: --backend."}
    )
    judge_base_url: str | None = field(
        default=None, metadata={"help": "Judge's OpenAI-compatible base URL. Default: --base-url."}
    )
    extra_judge_models: str | None = field(
        default=None,
        metadata={"help": "More judges, comma-separated (on --judge-backend at --judge-base-url): every judge judges "
                          "every comparison and their verdicts are combined by --combine-judges; the report gives "
                          "each judge's figures and how often they agree. Each judge's judgements are cached apart, "
                          "so adding one reuses the others'."},
    )
    combine_judges: str = field(
        default="mean",
        metadata={"help": "How several judges combine: 'mean' (the mean of their probabilities) or 'majority' (the "
                          "share of their votes; a judge at exactly 0.5 abstains)."},
    )
    fallback_judge_model: str | None = field(
        default=None,
        metadata={"help": "A judge for the comparisons the judge refused or could not answer (another model or "
                          "endpoint). Without one they are left out and counted, never scored 0.5."},
    )
    fallback_judge_backend: str | None = field(
        default=None, metadata={"help": "The fallback judge's backend, as --backend. Default: --judge-backend."}
    )
    fallback_judge_base_url: str | None = field(
        default=None, metadata={"help": "The fallback judge's OpenAI-compatible base URL. Default: --judge-base-url "
                                        "when the backends are the same."}
    )
    fallback_limit: int | None = field(
        default=None, metadata={"help": "At most this many comparisons go to the fallback judge (the rest are left "
                                        "out and counted). Default: every one."}
    )
    model: str = field(
        default="default",
        metadata={"help": "Policy model (samples mode samples from it; the judge defaults to it): 'default', a folder or a hub id."},
    )
    backend: str = field(default=DEFAULT_BACKEND, metadata={"help": "Policy backend. " + BACKEND_HELP})
    base_url: str | None = field(
        default=None, metadata={"help": "openai backend: the policy endpoint's URL, e.g. http://127.0.0.1:8000/v1 "
                                        "(or $OPENAI_BASE_URL)."}
    )
    method: str = field(
        default="likelihood",
        metadata={"help": f"How the judge scores, one of {', '.join(JUDGE_METHODS)}. "
                          + "; ".join(f"{name!r}: {cls.description}" for name, cls in JUDGE_METHODS.items()) + "."},
    )
    cot: bool = field(
        default=False,
        metadata={"help": f"Chain of thought ({' and '.join(_cot_methods())} methods): the judge reasons first, then the "
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
    limit: int | None = field(default=None, metadata={"help": "Use only the first N input rows."})

    def __post_init__(self):
        self.policy_options()  # each backend's name and options, checked before any work
        self.judge_options()
        method = method_class(self.method)  # an unknown name is a UserError with "did you mean"
        method_options(self.method, self)  # its options, checked by its rules
        check_choice("--combine-judges", self.combine_judges, COMBINATIONS)
        check_rules(self, [("fallback_limit", self.fallback_limit is None or self.fallback_limit >= 0, "must be >= 0")])
        judges = [judge_identity for _, _, judge_identity, _ in self.extra_judges()]
        first = backend_identity(self.resolved_judge_backend, self.resolved_judge_model)
        if first in judges or len(set(judges)) < len(judges):
            raise UserError(f"--extra-judge-models {self.extra_judge_models!r} names a judge twice (the first judge is "
                            f"--judge-model {self.resolved_judge_model!r}); name each judge once")
        if self.fallback_judge_model:
            fallback = self.fallback_judge()[2]
            if fallback == first or fallback in judges:
                raise UserError(f"--fallback-judge-model {self.fallback_judge_model!r} is one of the judges; a "
                                "fallback is another model or endpoint")
        if self.cot and not method.supports_cot:
            raise UserError(f"--cot needs --method {' or '.join(_cot_methods())} (the {self.method} method has no verdict "
                            "to reason towards)")
        check_rules(self, [
            ("principles_per_pair", self.principles_per_pair >= 1, "must be >= 1"),
            ("concurrency", self.concurrency is None or self.concurrency >= 1, "must be >= 1"),
            ("limit", self.limit is None or self.limit >= 1, "must be >= 1"),
        ])

    def policy_options(self) -> BackendOptions:
        """The policy backend's options, from this config's fields."""
        return backend_options(self.backend, self)

    def judge_options(self) -> BackendOptions:
        """The judge backend's options: this config's fields, with the judge's endpoint."""
        return backend_options(self.resolved_judge_backend, self, flag="--judge-backend",
                               flags={"base_url": "--judge-base-url"}, base_url=self.resolved_judge_base_url)

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

    def extra_judges(self) -> list[tuple[str, str, str, BackendOptions]]:
        """``--extra-judge-models``: (backend, model, identity, options) of each, on the judge's backend."""
        models = [m.strip() for m in (self.extra_judge_models or "").split(",") if m.strip()]
        backend = self.resolved_judge_backend
        return [(backend, model, backend_identity(backend, model), self.judge_options()) for model in models]

    def fallback_judge(self) -> tuple[str, str, str, BackendOptions]:
        """``--fallback-judge-model``'s (backend, model, identity, options)."""
        backend = self.fallback_judge_backend or self.resolved_judge_backend
        base_url = self.fallback_judge_base_url or (
            self.resolved_judge_base_url if backend == self.resolved_judge_backend else None)
        options = backend_options(backend, self, flag="--fallback-judge-backend",
                                  flags={"base_url": "--fallback-judge-base-url"}, base_url=base_url)
        return backend, self.fallback_judge_model, backend_identity(backend, self.fallback_judge_model), options

    def judge_is_policy(self) -> bool:
        return (self.resolved_judge_model, self.resolved_judge_backend, self.resolved_judge_base_url) == (
            self.model, self.backend, self.base_url)

    def principle_id_list(self) -> list[str] | None:
        if not self.principle_ids:
            return None
        return [p.strip() for p in self.principle_ids.split(",") if p.strip()]


@dataclass
class JudgeConfig(JudgeModelConfig):
    r"""Configuration of ``cai judge``: judge responses into preference pairs (and SFT rows).

    Parameters (besides those of ``JudgeModelConfig``):
        > Parameters that control the data

        input (`str`, flag `--in`):
            `cai generate` output (revision mode), or prompts with optional `responses` (samples mode).
        out (`str`):
            Output preference pairs (JSON Lines); an existing one is resumed. With `shard`, a folder of parts.
        shard (`str` or `None`, *optional*, defaults to `None`):
            `"i/N"`: judge only shard i of N (the rows whose id hashes to i mod N, as `cai generate --shard`
            splits them) into `OUT/part-0000i-of-0000N.jsonl`; its SFT rows go to the same part name in the
            folder `sft` beside `OUT` (or in `sft_out`).
        sft_out (`str` or `None`, *optional*, defaults to `None`):
            Where to write the SFT rows; `None`: `sft.jsonl` beside `out`.
        overwrite (`bool`, *optional*, defaults to `False`):
            Discard an existing output and its judgement cache.
        sync_rows (`int`, *optional*, defaults to `256`):
            Pairs (and their judgements) are written as their rows finish, in that order; the files are fsynced
            every this many rows...
        sync_seconds (`float`, *optional*, defaults to `5.0`):
            ...or this many seconds, whichever comes first (and at the end).

        > Parameters that control the pairs

        mode (`str`, *optional*, defaults to `"revision"`):
            `"revision"`: the initial response against the final revision; `"samples"`: `num_samples` policy
            samples per prompt, best against worst by mean win probability.
        min_margin (`float`, *optional*, defaults to `0.0`):
            Drop pairs whose margin (2 * chosen_probability - 1, in [0, 1]) is below this.
        require_orders_agree (`bool`, *optional*, defaults to `False`):
            Drop pairs whose winner changes when the order of the options is swapped.

        > Parameters that control sampling (samples mode)

        num_samples (`int`, *optional*, defaults to `4`):
            Responses sampled per prompt without `responses`.
        max_tokens (`int`, *optional*, defaults to `256`):
            Maximum new tokens per sampled response.
        temperature (`float`, *optional*, defaults to `0.9`):
            Sampling temperature.
        top_p (`float`, *optional*, defaults to `0.95`):
            Nucleus sampling probability mass.
    """

    input: str | None = field(
        default=None, metadata={"aliases": ["--in"], "help": "Input JSON Lines: `cai generate` output (revision mode), "
                                                              "or prompts with optional 'responses' (samples mode)."}
    )
    out: str | None = field(default=None, metadata={"help": "Output preference pairs (JSON Lines); an existing one is "
                                                             "resumed. With --shard, a folder of parts."})
    shard: str | None = field(
        default=None, metadata={"help": "i/N: judge shard i of N (rows whose id hashes to i mod N, as `cai generate "
                                        "--shard` splits them) into OUT/part-0000i-of-0000N.jsonl."},
    )
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
    keep_flagged: bool = field(
        default=False,
        metadata={"help": "revision mode: also judge rows the generation checks flagged (a critique instead of an answer, "
                          "a copied exemplar, cut off, ...); by default they are left out of the pairs and the SFT "
                          "file and counted by check in the report."},
    )
    keep_duplicates: bool = field(
        default=False,
        metadata={"help": "also judge rows whose prompt or response repeats an earlier row's, exactly or nearly "
                          "(Jaccard >= 0.8 on word bigrams, core/dedup.py); by default they are left out of the pairs "
                          "and the SFT file and counted, with examples, in the report."},
    )
    sft_out: str | None = field(
        default=None, metadata={"help": "Where to write the SFT rows (default: sft.jsonl beside --out)."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Discard an existing output and its judgement cache."})
    sync_rows: int = field(
        default=256, metadata={"help": "Pairs are written as their rows finish; fsync the output every this many rows..."}
    )
    sync_seconds: float = field(
        default=5.0, metadata={"help": "...or every this many seconds, whichever comes first (and at the end)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if not self.input:
            raise UserError("--in is required: the input JSON Lines file (e.g. the output of `cai generate`)")
        if not self.out:
            raise UserError("--out is required: where to write the preference pairs (JSON Lines)")
        check_choice("--mode", self.mode, MODES)
        Shard.parse(self.shard)
        check_rules(self, [
            ("min_margin", 0.0 <= self.min_margin <= 1.0, "must be in [0, 1]"),
            ("num_samples", self.num_samples >= 2, "must be >= 2"),
            ("max_tokens", self.max_tokens >= 1, "must be >= 1"),
            ("temperature", self.temperature >= 0, "must be >= 0"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("sync_rows", self.sync_rows >= 1, "must be >= 1"),
            ("sync_seconds", self.sync_seconds > 0, "must be > 0"),
        ])


@dataclass
class AgreementConfig(JudgeModelConfig):
    r"""Configuration of ``cai judge agreement``: how often the judge agrees with human labels.

    Parameters (besides those of ``JudgeModelConfig``):
        > Parameters that control the data

        pairs (`str`):
            Human-labelled pairs (JSON Lines): `{prompt|messages, chosen, rejected}` or two transcripts.
        out (`str` or `None`, *optional*, defaults to `None`):
            Also save the agreement report (JSON) here.
        details (`str` or `None`, *optional*, defaults to `None`):
            Also save each pair's judgement (JSON Lines) here.
        ties (`str` or `None`, *optional*, defaults to `None`):
            Pairs people found equally good (`cai label`'s OUT.ties.jsonl), counted in the agreement with ties.
    """

    pairs: str | None = field(
        default=None,
        metadata={"help": "Human-labelled pairs (JSON Lines): {'prompt'|'messages', 'chosen', 'rejected'} or two "
                          "transcripts {'chosen': '\\n\\nHuman: ...\\n\\nAssistant: ...', 'rejected': ...}."},
    )
    out: str | None = field(default=None, metadata={"help": "Also save the agreement report (JSON) here."})
    details: str | None = field(default=None, metadata={"help": "Also save each pair's judgement (JSON Lines) here."})
    ties: str | None = field(
        default=None,
        metadata={"help": "Pairs people found equally good (JSON Lines, as `cai label` writes them to OUT.ties.jsonl: "
                          "{'prompt', 'responses': [a, b], 'label': 'tie'}): counted in the agreement with ties."},
    )

    def __post_init__(self):
        super().__post_init__()
        if not self.pairs:
            raise UserError("--pairs is required: a JSON Lines file of human-labelled pairs")
