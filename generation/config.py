"""Configuration of ``cai generate`` (defaults, then ``--config`` YAML, then flags: ``core.config.parse_config``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.backends.registry import BACKEND_HELP, DEFAULT_BACKEND, EngineOptions, backend_options
from core.config import check_choice, check_rules
from core.shards import Shard

from .critique_revise import FEW_SHOT_POSITIONS, REVISION_STYLES


@dataclass
class GenerateConfig(EngineOptions):
    r"""Configuration of ``cai generate``: draft, critique and revise an answer to every prompt.

    Parameters:
        > Parameters that control the data

        prompts (`str`):
            Prompts file: JSON Lines with `prompt` or `messages`, optional `id` and `tag`.
        out (`str`):
            Output JSON Lines file; an existing one is resumed. With `shard`, a folder of parts.
        shard (`str` or `None`, *optional*, defaults to `None`):
            `"i/N"`: generate only shard i of N (the prompts whose id hashes to i mod N) into
            `OUT/part-0000i-of-0000N.jsonl` (`core/shards.py`); `None`: every prompt into the file `out`.
        constitution (`str`, *optional*, defaults to `"principles.yaml"`):
            Constitution YAML file: the principles and their critique and revision requests.
        limit (`int` or `None`, *optional*, defaults to `None`):
            Use only the first N prompts.
        overwrite (`bool`, *optional*, defaults to `False`):
            Discard an existing output and start fresh.

        > Parameters that control the model (and the engine options of ``EngineOptions``)

        model (`str`, *optional*, defaults to `"default"`):
            `"default"` (the embedded SmolLM2-135M-Instruct), a local model folder, a hub id or, with
            `backend="openai"`, the served model name.
        backend (`str`, *optional*, defaults to `"vllm"`):
            A backend registered in `core/backends/registry.py`: `"vllm"` (in-process) or `"openai"` (an endpoint).
        base_url (`str` or `None`, *optional*, defaults to `None`):
            The endpoint's OpenAI-compatible URL (openai backend; or set `$OPENAI_BASE_URL`).
        seed (`int`, *optional*, defaults to `0`):
            Seed for principle assignment and sampling.

        > Parameters that control generation

        rounds (`int`, *optional*, defaults to `1`):
            Critique-revision rounds per prompt (0: drafts only).
        revision_style (`str`, *optional*, defaults to `"chain"`):
            How the revision is asked for: `"chain"` (Constitutional AI's conversation, few-shot exemplars
            in front), `"direct"` (the same turns without the exemplars, the reply started as a new answer)
            or `"no_critique"` (`"direct"` without the critique in view, the reply one paragraph): the
            last two are for small models (bench/README.md, "Revision styles").
        few_shot_position (`str`, *optional*, defaults to `"critique"`):
            Where the constitution's few-shot exemplars sit: `"critique"` (in front of the critique and
            revision; the draft is the model's unprompted answer) or `"draft"` (in front of the draft too,
            as Hugging Face's Constitutional AI recipe does: each call extends the previous call's
            conversation, so a server's prefix cache serves all of it, and the draft may imitate the
            exemplars). `"draft"` needs `revision_style="chain"`; it changes the rows' fingerprints
            (rows are regenerated), `"critique"` keeps them.
        max_tokens (`int`, *optional*, defaults to `256`):
            Maximum new tokens per call.
        temperature (`float`, *optional*, defaults to `0.7`):
            Sampling temperature; 0 is greedy.
        top_p (`float`, *optional*, defaults to `0.9`):
            Nucleus sampling probability mass, in (0, 1].

        > Parameters that control the run

        concurrency (`int` or `None`, *optional*, defaults to `None`):
            Rows in flight at once (each has one call in flight); `None`: twice the in-process engine's
            `max_num_seqs`, or 1,024 for an endpoint.
        sync_rows (`int`, *optional*, defaults to `256`):
            Rows are written as they finish; the output is fsynced every this many rows...
        sync_seconds (`float`, *optional*, defaults to `5.0`):
            ...or this many seconds, whichever comes first (and at the end).
        examples (`int`, *optional*, defaults to `2`):
            Before/after examples to print at the end.
    """

    prompts: str = field(metadata={"help": "Prompts file: JSON Lines with 'prompt' or 'messages', optional 'id' and 'tag'."})
    out: str = field(metadata={"help": "Output JSON Lines file; an existing one is resumed. With --shard, a folder "
                                       "of parts."})
    shard: str | None = field(
        default=None, metadata={"help": "i/N: generate shard i of N (prompts whose id hashes to i mod N) into "
                                        "OUT/part-0000i-of-0000N.jsonl; run N of them at once (Slurm, Ray, Kubernetes: "
                                        "recipes/scale-out/README.md)."},
    )
    constitution: str = field(default="principles.yaml", metadata={"help": "Constitution YAML file."})
    model: str = field(
        default="default",
        metadata={"help": "Model: 'default' (embedded SmolLM2-135M-Instruct), a local model folder, a hub id or, with "
                          "--backend openai, the served model name."},
    )
    backend: str = field(default=DEFAULT_BACKEND, metadata={"help": BACKEND_HELP})
    base_url: str | None = field(
        default=None, metadata={"help": "openai backend: the endpoint's URL, e.g. http://127.0.0.1:8000/v1 (or $OPENAI_BASE_URL)."}
    )
    rounds: int = field(default=1, metadata={"help": "Critique-revision rounds per prompt."})
    revision_style: str = field(
        default="chain",
        metadata={"help": "How the revision is asked for. 'chain': Constitutional AI's conversation (draft, critique "
                          "request, critique, revision request, revision), few-shot exemplars in front, for capable "
                          "models. 'direct': the same turns without the exemplars, asking for the new answer only "
                          "and starting the reply with 'Here is my new answer:'. 'no_critique': 'direct' without the "
                          "critique in the revision's view (the critique is still written and stored), the reply ended "
                          "at its first blank line; the default 135M model's revisions then pass the row checks "
                          "far more often (bench/README.md)."},
    )
    few_shot_position: str = field(
        default="critique",
        metadata={"help": "Where the constitution's few-shot exemplars sit. 'critique': in front of the critique and "
                          "revision, the draft being the model's unprompted answer. 'draft': in front of the draft "
                          "too (Hugging Face's Constitutional AI recipe), so every call extends the previous call's "
                          "conversation and a server's prefix cache serves all of it; the draft may imitate the "
                          "exemplars. 'draft' needs --revision-style chain and regenerates existing rows."},
    )
    seed: int = field(default=0, metadata={"help": "Seed for principle assignment and sampling."})
    limit: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    max_tokens: int = field(default=256, metadata={"help": "Maximum new tokens per call."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (0 is greedy)."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling probability mass."})
    sync_rows: int = field(
        default=256, metadata={"help": "Rows are written as they finish; fsync the output every this many rows..."}
    )
    sync_seconds: float = field(
        default=5.0, metadata={"help": "...or every this many seconds, whichever comes first (and at the end)."}
    )
    examples: int = field(default=2, metadata={"help": "Before/after examples to print at the end."})
    overwrite: bool = field(default=False, metadata={"help": "Discard an existing output and start fresh."})

    def __post_init__(self):
        backend_options(self.backend, self)  # the backend's name and its options, checked before any work
        Shard.parse(self.shard)
        check_choice("--revision-style", self.revision_style, REVISION_STYLES)
        check_choice("--few-shot-position", self.few_shot_position, FEW_SHOT_POSITIONS)
        check_rules(self, [
            ("few_shot_position", self.few_shot_position == "critique" or self.revision_style == "chain",
             f"needs --revision-style chain, not {self.revision_style!r}: that style's revision is a conversation "
             "of its own without the exemplars, so the calls would not extend one conversation; use "
             "--revision-style chain, or --few-shot-position critique"),
            ("rounds", self.rounds >= 0, "must be >= 0"),
            ("max_tokens", self.max_tokens >= 1, "must be >= 1"),
            ("temperature", self.temperature >= 0, "must be >= 0"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("concurrency", self.concurrency is None or self.concurrency >= 1, "must be >= 1"),
            ("sync_rows", self.sync_rows >= 1, "must be >= 1"),
            ("sync_seconds", self.sync_seconds > 0, "must be > 0"),
            ("limit", self.limit is None or self.limit >= 1, "must be >= 1"),
            ("examples", self.examples >= 0, "must be >= 0"),
        ])
