"""The constitutional judge as the live reward of ``cai train rloo`` and ``cai train grpo`` (direct RLAIF).

Each completion is scored under the principles assigned to its prompt (``select_principles``: the same
assignment as ``cai judge``) by the same judge methods, backends and cache:

- groupwise: its mean probability of beating each other completion of its prompt (each comparison in both
  orders where the method shows two responses), as ``cai judge --mode samples`` ranks a row's samples: with two
  completions, the chosen one's reward is the pair's ``chosen_probability`` and the other's its complement;
- pointwise: its probability of beating the row's reference answer (``--judge-reference``).

Judgements go to the cache file as they are made (a resumed run reuses them) and every reward, with its
completion, to ``judge_rewards.jsonl`` in the output folder (``cai report`` plots their distribution).  A
judgement that fails (an endpoint down, a reply that does not parse) stops training with one message: no
reward is made up.  ``training.rl`` reaches this module by name (its ``judge`` reward source).
"""

from __future__ import annotations

import json
from pathlib import Path

from constitution.loader import load_constitution
from core import aio
from core.backends.gpu_memory import ENGINE_OVERHEAD, EngineNeed, cuda_memory, estimate_need, split_gpu_memory
from core.backends.base import Backend
from core.errors import UserError
from core.hashing import stable_hash
from core.log import get_logger
from core.model import resolve_model
from core.redact import redact_text
from core.store import JsonlAppender, JsonlStore

from .config import JudgeModelConfig
from .engines import judge_identity, judge_settings, make_judge_backend
from .judge import Comparison, Judge, is_valid_judgement
from .pairs import select_principles
from .run import load_cache
from .scoring import ensemble

logger = get_logger(__name__)

CACHE_NAME = "judge_judgements.jsonl"
REWARDS_NAME = "judge_rewards.jsonl"


def judge_config_of(config) -> JudgeModelConfig:
    """The judge's settings from a training config's ``judge_*`` fields (``training.rl.RLFields``)."""
    return JudgeModelConfig(model=config.judge_model, backend=config.judge_backend, base_url=config.judge_base_url,
                            method=config.judge_method, constitution=config.constitution,
                            principles_per_pair=config.principles_per_pair, seed=config.seed)


def judge_memory_share(judge_config: JudgeModelConfig, policy_memory_bytes: int,
                       memory: tuple[int, int] | None = None) -> float | None:
    """The in-process judge engine's ``gpu_memory_utilization`` beside the policy in training (its weights,
    gradients and optimizer state, ``policy_memory_bytes``), or None (an endpoint, or no GPU); a UserError
    before anything loads when they do not fit together (``core/backends/gpu_memory.py``).  ``memory``:
    ``(free, total)`` bytes, the current GPU's by default."""
    options = judge_config.judge_options()
    if not options.in_process or options.devices() > 1:
        return None  # served elsewhere, or spread over several GPUs (vLLM's own default per GPU)
    memory = memory if memory is not None else cuda_memory()
    if memory is None:
        return None
    free, total = memory
    policy = EngineNeed("the policy in training (--model)", policy_memory_bytes, 0, ENGINE_OVERHEAD)
    judge = estimate_need(f"--judge-model {judge_config.model}", resolve_model(judge_config.model, "--judge-model"),
                          judge_config.max_model_len)
    return split_gpu_memory([policy, judge], total, free, judge_config.gpu_memory_utilization)[1]


def completion_text(completion) -> str:
    """A completion as TRL passes it: text, or a list of messages whose last one is the answer."""
    if isinstance(completion, str):
        return completion
    return completion[-1]["content"] if completion else ""


class JudgeReward:
    """TRL's reward function for the ``judge`` source: ``reward(prompts, completions, id=..., reference=...)``."""

    __name__ = "judge"  # TRL logs ``rewards/judge/mean``

    def __init__(self, judge_config: JudgeModelConfig, mode: str, output_dir: str | Path,
                 cache_path: str | Path | None = None, backend: Backend | None = None, memory_share: float | None = None):
        self.judge_config, self.mode = judge_config, mode
        self.constitution = load_constitution(judge_config.constitution)
        self.identity = judge_identity(judge_config)
        self.cache_path = Path(cache_path) if cache_path else Path(output_dir) / CACHE_NAME
        cache = load_cache(JsonlStore(self.cache_path), is_valid_judgement, logger.info)
        # A judge engine built here (loaded when a judgement is missing) is closed here; the caller's stays theirs.
        self._owned = make_judge_backend(judge_config, memory_share) if backend is None else None
        self.judge = Judge(judge_settings(judge_config), backend=backend if backend is not None else self._owned, cache=cache)
        self.cache_out = JsonlAppender(self.cache_path, flag="--judge-cache")
        self.rewards_out = JsonlAppender(Path(output_dir) / REWARDS_NAME, flag="--output-dir")

    def __call__(self, prompts: list, completions: list, id: list[str] | None = None,  # noqa: A002 - TRL's column
                 reference: list[str] | None = None, trainer_state=None, **kwargs) -> list[float]:
        texts = [completion_text(c) for c in completions]
        keys = [row_id or stable_hash(list(prompt)) for row_id, prompt in zip(id or [""] * len(prompts), prompts)]
        principles = {key: select_principles(self.constitution, self.judge_config, key) for key in set(keys)}
        if self.mode == "pointwise":
            opponents = {i: [reference[i]] for i in range(len(texts))}
        else:
            groups: dict[str, list[int]] = {}
            for i, key in enumerate(keys):
                groups.setdefault(key + json.dumps(prompts[i], sort_keys=True), []).append(i)
            opponents = {i: [texts[j] for j in members if j != i] for members in groups.values() for i in members}
        # x against y and y against x share their judgements (the same cache keys), so each runs once.
        comparisons: dict[tuple[int, str], list[Comparison]] = {}
        for i, others in opponents.items():
            for other in others:
                if other != texts[i] and (i, other) not in comparisons:
                    comparisons[(i, other)] = [Comparison.of(prompts[i], texts[i], other, p) for p in principles[keys[i]]]
        flat = [c for cs in comparisons.values() for c in cs]
        if self.judge.missing(flat):
            self.judge.backend  # noqa: B018 - built here, in the trainer's thread, not on the event loop
        judged = aio.run_sync(self.judge.ajudge(flat))
        for record in judged.records:
            self.cache_out.write(record)
        verdicts = iter(judged.verdicts)
        p_better = {pair: ensemble([next(verdicts).p for _ in cs]) for pair, cs in comparisons.items()}
        failed = [pair for pair, p in p_better.items() if p is None]
        if failed:
            errors = [v.error for v in judged.verdicts if v.error]
            step = getattr(trainer_state, "global_step", "?")
            raise UserError(
                f"the judge reward ({self.identity}) failed on {len(failed)} of {len(p_better)} comparisons at step "
                f"{step}: {redact_text(errors[0] if errors else 'no verdict')}; training stopped and no model was "
                f"saved. Check the judge (--judge-backend, --judge-base-url) and run again; the {len(self.judge.cache)} "
                f"judgements made so far are kept in {self.cache_path}"
            )
        rewards = []
        for i, text in enumerate(texts):
            # an identical text is a tie, as in `cai judge`
            wins = [0.5 if other == text else p_better[(i, other)] for other in opponents[i]]
            rewards.append(sum(wins) / len(wins) if wins else 0.5)
        step = getattr(trainer_state, "global_step", None)
        for i, reward in enumerate(rewards):
            self.rewards_out.write({"step": step, "id": keys[i], "mode": self.mode, "completion": texts[i],
                                    "reward": round(reward, 6)})
        return rewards

    def close(self) -> None:
        self.cache_out.close()
        self.rewards_out.close()
        if self._owned is not None:
            self._owned.close()
            self._owned = None


def judge_reward(config, policy_memory_bytes: int = 0) -> JudgeReward:
    """The ``judge`` reward source of ``training.rl``: built before the policy loads, its engine on first use."""
    judge_config = judge_config_of(config)
    if judge_config.backend == "vllm" and judge_config.model != "default":
        resolve_model(judge_config.model, "--judge-model")  # a missing folder is refused before any work
    share = judge_memory_share(judge_config, policy_memory_bytes)
    return JudgeReward(judge_config, config.judge_mode, config.output_dir, config.judge_cache, memory_share=share)
