"""``cai eval``: did training help? The trained model against its base, judged in both orders.

Both models answer held-out prompts greedily; the judge compares each pair of
answers under the prompt's principles (the same assignment as ``cai judge``).
A prompt counts as a win when the judge's probability that the trained answer is
better exceeds 0.5 (a tie counts half).  Win rates come with a 95% Wilson
interval, overall and per prompt tag, so harmlessness on harmful requests and
helpfulness (no needless refusal) on ordinary ones are read apart.  With
``--reward-model`` and ``--pairs``, the reward model's accuracy on held-out
pairs is reported too.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from core.log import get_logger
from core.errors import UserError
from constitution.loader import load_constitution
from core.backends.base import Backend, Sampling, session_key
from core.progress import Progress
from core.backends.registry import backend_class, backend_identity
from core.model import DEFAULT_MODEL, resolve_model
from generation.prompt_files import read_prompts
from core.stage import StageRun
from core.store import atomic_write_text, check_outputs, check_own_json
from judging.config import JudgeModelConfig
from judging.engines import judge_settings, make_judge_backend, side_by_side_shares
from judging.judge import Comparison, Judge
from judging.pairs import select_principles
from judging.scoring import ensemble, wilson_interval


logger = get_logger(__name__)


@dataclass
class EvalConfig(JudgeModelConfig):
    prompts: str = field(default="prompts/heldout.jsonl", metadata={"help": "Held-out prompts (JSON Lines, with tags)."})
    trained_model: str = field(default="", metadata={"help": "The trained model folder (from `cai train`)."})
    base_model: str = field(default="default", metadata={"help": "The model it started from ('default' or a folder)."})
    out: str = field(default="eval.json", metadata={"help": "Where to write answers, verdicts and win rates (JSON)."})
    max_tokens: int = field(default=128, metadata={"help": "Maximum new tokens per answer (greedy)."})
    reward_model: str | None = field(default=None, metadata={"help": "Reward model folder to score on --pairs."})
    pairs: str | None = field(default=None, metadata={"help": "Held-out preference pairs for the reward model's accuracy."})

    def __post_init__(self):
        if not self.trained_model:
            raise UserError("cai eval needs --trained-model DIR (a folder written by `cai train`)")
        if self.extra_judge_models or self.fallback_judge_model:
            raise UserError("cai eval judges with one judge: --extra-judge-models and --fallback-judge-model are for "
                            "`cai judge` and `cai judge agreement`; drop them here")
        if self.judge_model is None:
            # The trained model must not judge itself: by default the base model judges.
            self.judge_model = self.base_model
        if bool(self.reward_model) != bool(self.pairs):
            raise UserError("--reward-model and --pairs go together (the accuracy needs both)")
        super().__post_init__()


def _answering_failed(prompts, failures: list[tuple[int, str]]) -> UserError:
    failures.sort()
    return UserError(f"answering failed for {[prompts[i].id for i, _ in failures[:5]]}: {failures[0][1]}")


def answer(backend: Backend, prompts, max_tokens: int, concurrency: int | None = None) -> list[str]:
    """Greedy answers to the prompts, each sent as soon as a slot frees; a UserError when any failed.
    ``backend`` is loaded here if it is not yet; its owner closes it."""
    sampling = Sampling(max_tokens=max_tokens, temperature=0.0)
    texts: list[str] = [""] * len(prompts)
    failures: list[tuple[int, str]] = []

    async def answer_one(index: int):
        prompt = prompts[index]
        return index, await backend.achat(prompt.messages, sampling, session=session_key(prompt.id))

    def land(answered) -> int:
        index, reply = answered
        if reply.error:
            failures.append((index, reply.error))
        texts[index] = reply.text
        return reply.completion_tokens

    with StageRun() as run:
        with run.stoppable():
            backend.load()
            run.progress = Progress("eval answers", len(prompts))
            run.stream(range(len(prompts)), answer_one, concurrency or backend.concurrency, land)
        run.raise_if_stopped()
    if failures:
        raise _answering_failed(prompts, failures)
    return texts


def win_rate(wins: list[float]) -> dict:
    n = len(wins)
    score = sum(wins)
    low, high = wilson_interval(score, n)
    return {"n": n, "win_rate": score / n if n else None, "ci95": [low, high]}


def reward_accuracy(reward_model: str, pairs_path: str) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from training.data import load_preference_rows

    rows = load_preference_rows(pairs_path)
    tokenizer = AutoTokenizer.from_pretrained(reward_model)
    model = AutoModelForSequenceClassification.from_pretrained(reward_model).eval()

    def score(messages) -> float:
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
        with torch.no_grad():
            return float(model(input_ids=ids["input_ids"]).logits[0, 0])

    correct = sum(score(r["prompt"] + r["chosen"]) > score(r["prompt"] + r["rejected"]) for r in rows)
    low, high = wilson_interval(correct, len(rows))
    return {"pairs": len(rows), "accuracy": correct / len(rows) if rows else None, "ci95": [low, high]}


def judge_answers_for_base(config: EvalConfig) -> bool:
    """Whether the judge is the base model on the base's backend, so one engine answers for the base and judges."""
    return (config.resolved_judge_backend == config.backend and config.resolved_judge_base_url == config.base_url
            and backend_identity(config.backend, config.resolved_judge_model)
            == backend_identity(config.backend, config.base_model))


def eval_memory_shares(config: EvalConfig) -> tuple[float, float] | None:
    """``(base, judge)`` GPU memory shares when eval's judge is another model than the base: the two load side
    by side (the trained model's engine is closed before them).  None when the judge answers for the base (one
    engine), or no split is needed; too little memory is a UserError, before any model loads."""
    if judge_answers_for_base(config):
        return None
    shares = side_by_side_shares(config, [("--base-model", config.base_model, config.policy_options()),
                                          ("--judge-model", config.resolved_judge_model, config.judge_options())])
    return None if shares is None else (shares[0], shares[1])


def evaluate(config: EvalConfig, judge_backend: Backend | None = None) -> dict:
    """``cai eval``: the trained model answers (its engine alone), then the base model answers and the judge
    compares (one engine when the judge is the base, else two side by side, each with its share of the GPU).

    ``judge_backend``: an engine already loaded that judges (``cai run``'s policy, the base model); the trained
    model's engine then loads beside it, with the memory share in ``config``."""
    log = logger.info
    check_outputs("eval", {"--out": config.out}, {"--prompts": config.prompts, "--constitution": config.constitution,
                                                   "--pairs": config.pairs})
    check_own_json(config.out, "eval", "win_rate")
    if config.reward_model and config.reward_model != DEFAULT_MODEL:
        resolve_model(config.reward_model, "--reward-model")  # loaded by transformers here, whatever the backend
    for flag, name in (("--trained-model", config.trained_model), ("--base-model", config.base_model)):
        backend_class(config.backend).check_model(name, flag)  # a missing folder is refused before any model loads
    owned = judge_backend is None
    shares = eval_memory_shares(config) if owned else None  # a judge beside the base: before any model loads
    constitution = load_constitution(config.constitution)
    prompts = read_prompts(config.prompts, config.limit)

    log(f"[eval] {config.trained_model} answers {len(prompts)} held-out prompts")
    with StageRun() as run:
        with run.stoppable():
            trained = answer(run.closes(config.build_backend(config.backend, config.trained_model)), prompts,
                             config.max_tokens, config.concurrency)
        run.raise_if_stopped()
    # The judge answers for the base model too when it is that model on the same backend.
    if owned:
        same_model = judge_answers_for_base(config)
        judge_backend = make_judge_backend(config, None if shares is None else shares[1])
    else:
        same_model = (judge_backend.name == config.backend and backend_identity(config.backend, judge_backend.model)
                      == backend_identity(config.backend, config.base_model))
    principles = [select_principles(constitution, config, prompt.id) for prompt in prompts]
    base: list[str] = [""] * len(prompts)
    per_prompt: list[list] = [[] for _ in prompts]
    failures: list[tuple[int, str]] = []

    def land(judged) -> int:
        index, reply, verdicts, tokens = judged
        if reply.error:
            failures.append((index, reply.error))
        base[index], per_prompt[index] = reply.text, verdicts
        return tokens

    with StageRun() as run:
        with run.stoppable():
            if owned:
                run.closes(judge_backend)
            if same_model:
                base_backend = judge_backend
            else:
                share = {} if shares is None else {config.policy_options().memory_share_field: shares[0]}
                base_backend = run.closes(config.build_backend(config.backend, config.base_model, **share))
            judge_backend.load()
            base_backend.load()
            judge = Judge(judge_settings(config), backend=judge_backend, concurrency=config.concurrency)
            sampling = Sampling(max_tokens=config.max_tokens, temperature=0.0)
            log(f"[eval] {config.base_model} answers the same prompts; each answer is judged against the trained "
                f"model's under its principles ({config.method}) as soon as it is ready")

            async def answer_and_judge(index: int):
                """One prompt: the base model's answer, then its comparisons with the trained answer, all at once."""
                prompt = prompts[index]
                session = session_key(prompt.id)
                reply = await base_backend.achat(prompt.messages, sampling, session=session)
                if reply.error:
                    return index, reply, [], reply.completion_tokens
                comparisons = [Comparison.of(prompt.messages, trained[index], reply.text, p) for p in principles[index]]
                judged = await judge.ajudge(comparisons, session)
                return index, reply, judged.verdicts, reply.completion_tokens + judged.output_tokens

            run.progress = Progress("eval", len(prompts))
            run.stream(range(len(prompts)), answer_and_judge, config.concurrency or judge_backend.concurrency, land)
        run.raise_if_stopped()
    if failures:
        raise _answering_failed(prompts, failures)

    rows, wins_by_tag = [], defaultdict(list)
    for i, prompt in enumerate(prompts):
        p = ensemble([v.p for v in per_prompt[i]])
        win = None if p is None else (1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0)
        if win is not None:
            wins_by_tag["all"].append(win)
            wins_by_tag[prompt.tag or "untagged"].append(win)
        rows.append({"id": prompt.id, "tag": prompt.tag, "prompt": prompt.messages, "trained": trained[i],
                     "base": base[i], "p_trained_better": p, "win": win,
                     "principles": [v.principle_id for v in per_prompt[i]]})
    result = {
        "trained_model": backend_identity(config.backend, config.trained_model),
        "base_model": backend_identity(config.backend, config.base_model),
        "judge": judge_settings(config).as_dict(),
        "win_rate": {tag: win_rate(wins) for tag, wins in sorted(wins_by_tag.items())},
        "unjudged": sum(1 for r in rows if r["win"] is None),
        "rows": rows,
    }
    if config.reward_model:
        result["reward_model"] = {"folder": config.reward_model, "pairs_file": config.pairs,
                                  **reward_accuracy(config.reward_model, config.pairs)}
    atomic_write_text(Path(config.out), json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result


def format_eval(result: dict) -> str:
    lines = [f"win rate of {result['trained_model']} against {result['base_model']} (judge: {result['judge']['method']}):"]
    for tag, stats in result["win_rate"].items():
        low, high = stats["ci95"]
        lines.append(f"  {tag:<12} {stats['win_rate']:.2f}  95% CI [{low:.2f}, {high:.2f}]  n={stats['n']}")
    if result["unjudged"]:
        lines.append(f"  {result['unjudged']} prompt(s) could not be judged")
    if "reward_model" in result:
        rm = result["reward_model"]
        lines.append(f"reward model accuracy on {rm['pairs']} pairs of {rm['pairs_file']}: {rm['accuracy']:.2f} "
                     f"95% CI [{rm['ci95'][0]:.2f}, {rm['ci95'][1]:.2f}] (its held-out figure is in its cai_training.json)")
    return "\n".join(lines)
