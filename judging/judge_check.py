"""A recipe's ``judge_check``: measure the judge on labelled pairs before its labels train anything.

``cai run`` calls ``check_judge`` once, before generation, with the recipe's judge.  The run
stops with a UserError when the judge's agreement with the labels is below ``min_agreement``
or its 95% interval includes 0.5 (not distinguishable from chance), unless the recipe sets
``allow_chance: true``, in which case the run goes on and says so.  The figure is saved in
the run folder and in ``$CAI_CACHE/judge-checks`` (``~/.cache/cai``), and reused, in any run folder, while
the judge, the pairs and the check stay the same: the check is paid once per machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from core.backends.base import Backend
from core.log import get_logger
from core.config import build_config, check_rules
from core.errors import UserError
from core.hashing import stable_hash
from core.store import atomic_write_text, read_json_object, read_whole_file

from .config import AgreementConfig, JudgeModelConfig

#: The largest labelled pairs file the judge check reads (hh-harmless's 500 pairs are under 1 MiB).
MAX_PAIRS_BYTES = 2**30


logger = get_logger(__name__)


@dataclass
class JudgeCheckConfig:
    """The recipe's ``judge_check`` section."""

    pairs: str = field(metadata={"help": "Labelled pairs (JSON Lines, any format `cai judge agreement --pairs` reads)."})
    min_agreement: float = field(
        default=0.6, metadata={"help": "Stop unless the judge agrees with the labels at least this often."}
    )
    allow_chance: bool = field(
        default=False,
        metadata={"help": "Go on (saying so) when the judge misses min_agreement or is not distinguishable from chance."},
    )
    limit: int | None = field(default=None, metadata={"help": "Measure on the first N pairs only."})

    def __post_init__(self):
        check_rules(self, [
            ("min_agreement", 0.0 <= self.min_agreement <= 1.0, "must be in [0, 1]"),
            ("limit", self.limit is None or self.limit >= 1, "must be >= 1"),
        ])


def judge_check_config(section, where: str) -> JudgeCheckConfig | None:
    """The recipe's ``judge_check`` mapping as a config (``None`` when the recipe has none)."""
    if section is None:
        return None
    if not isinstance(section, dict) or "pairs" not in section:
        raise UserError(f"{where}: judge_check is a mapping with 'pairs' (a labelled pairs file), e.g. "
                        "judge_check: {pairs: FILE, min_agreement: 0.6, allow_chance: false}")
    return build_config(JudgeCheckConfig, section, where=lambda key: f"{where}: judge_check.{key}", prog="judge_check")


def figures_dir() -> Path:
    """Where judge-check figures are kept for every run on this machine (``$CAI_CACHE/judge-checks``): one file
    per judge and pairs file (and limit), so a new run folder, or ``make clean``, does not measure again."""
    from core.model import cache_dir

    return cache_dir() / "judge-checks"


def _saved_figure(path: Path) -> dict:
    saved = read_json_object(path) or {}  # none yet, or damaged (torn, nested too deeply): measured again
    return saved if isinstance(saved.get("result"), dict) else {}


def _verdict(result: dict, check: JudgeCheckConfig) -> str | None:
    """Why the judge fails the check, or None."""
    if not result.get("human_pairs"):
        return "no pair could be judged"
    low, high = result["agreement_ci95"]
    problems = []
    if result["agreement"] < check.min_agreement:
        problems.append(f"its agreement {result['agreement']:.3f} is below min_agreement {check.min_agreement}")
    if low <= 0.5 <= high:
        problems.append(f"its 95% interval [{low:.3f}, {high:.3f}] includes 0.5 (not distinguishable from chance)")
    return " and ".join(problems) or None


def check_judge(check: JudgeCheckConfig, judge: JudgeModelConfig, out: Path, backend: Backend | None = None) -> dict:
    log = logger.info
    """Measure ``judge`` on ``check.pairs`` (or reuse the figure in ``out``); stop the run when it fails.

    ``backend``: the caller's engine of the judge model (the run's policy), loaded only to measure.

    Returns the agreement result with ``passed`` and, when it failed but the recipe allows it, ``reason``.
    """
    from .agreement import run_agreement

    try:
        pairs_hash = stable_hash(read_whole_file(check.pairs, "labelled pairs file", MAX_PAIRS_BYTES)
                                 .decode("utf-8", "replace"))
    except OSError as exc:
        raise UserError(f"judge_check.pairs {check.pairs!r}: cannot read it ({exc.strerror}); "
                        "give a labelled pairs file (see judging/data/README.md)") from None
    options = {name: getattr(judge, name) for name in (
        "constitution", "judge_model", "judge_backend", "judge_base_url", "model", "backend", "base_url", "method",
        "likelihood_scale", "principles_per_pair", "principle_ids", "seed", "cot", "cot_clamp", "cot_max_tokens",
        "constrained_verdict", "extra_judge_models", "combine_judges", "fallback_judge_model", "fallback_judge_backend",
        "fallback_judge_base_url", "fallback_limit", "api_key_env", "concurrency", "request_timeout", "max_model_len",
        "gpu_memory_utilization", "tensor_parallel_size")}
    key = stable_hash({"pairs": pairs_hash, "limit": check.limit, "judge": options})
    shared = figures_dir() / f"{key}.json"
    source = next((path for path in (out, shared) if _saved_figure(path).get("key") == key), None)
    if source is not None:
        result = _saved_figure(source)["result"]
        log(f"[run] judge check: reusing the figure measured before for this judge and these pairs ({source})")
    else:
        config = AgreementConfig(pairs=check.pairs, limit=check.limit, **options)
        result = {k: v for k, v in run_agreement(config, backend=backend).items() if k != "text"}
    text = json.dumps({"key": key, "result": result}, indent=2) + "\n"
    for path in (out, shared):
        if _saved_figure(path).get("key") != key:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
    reason = _verdict(result, check)
    figure = (f"judge {result['judge']['model']} (method {result['judge']['method']}) agrees with {check.pairs} "
              f"on {result.get('agreement', 0):.3f} of {result.get('human_pairs', 0)} pairs, "
              f"95% CI [{result['agreement_ci95'][0]:.3f}, {result['agreement_ci95'][1]:.3f}]"
              if result.get("human_pairs") else f"judge on {check.pairs}: no pair could be judged")
    if reason is None:
        log(f"[run] judge check passed: {figure}")
        return {**result, "passed": True}
    if not check.allow_chance:
        raise UserError(
            f"judge check failed: {figure}; {reason}. Its labels would train the model on noise. Use a stronger "
            "judge (judge.judge_model, or judge.judge_backend openai with judge_base_url), or, knowingly, set "
            "judge_check.allow_chance: true in the recipe"
        )
    log(f"[run] judge check FAILED, going on because the recipe sets allow_chance: {figure}; {reason}. "
        "Treat its preference pairs as unvalidated.")
    return {**result, "passed": False, "reason": reason}
