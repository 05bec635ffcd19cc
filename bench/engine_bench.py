"""Measures 1, 3 and 4 on one in-process vLLM engine (one engine per process).

1. Ceiling ratio: ``cai generate``'s streaming engine (``generation.run.generate`` with
   the in-process ``VLLMBackend``: every row runs draft, critique, revision on its own,
   rows written as they finish) on N prompts, output tokens/s, divided by vLLM's
   ceiling on the same engine: the same calls (the engine's conversations, seeds and
   lengths, rebuilt from its rows) as independent requests all submitted at once (what
   one ``LLM.generate`` over them does), with ``min_tokens = max_tokens =`` the length
   the engine produced, so both sides emit the same tokens.  The lockstep design the
   engine had before (batches of 64 prompts: all drafts, wait, all critiques, wait, all
   revisions) runs the same prompts in the same repeats, for its ratio.  The prefix
   cache is reset before every timed run and the sides rotate.
3. Prefix caching: the share of prompt tokens served from the cache in one
   engine run (vLLM's ``prefix_cache_queries``/``prefix_cache_hits`` counters),
   and the engine's tokens/s, which ``bench.run`` divides by the same figure
   from an engine started with prefix caching off (``--prefix-caching off``).
4. The judge (``judging.judge.Judge``): pairs/s reading label log-probabilities
   (method pairwise, one next-token read per order) vs a generated text verdict
   with reasoning (method text --cot), and vs a bare verdict constrained to
   "(A)"/"(B)", on the same pairs (draft vs final revision from the chain) and
   model, both orders each; and how often the modes give a pair the same outcome.

Run: ``python -m bench.engine_bench --mode quick --out X.json`` (``bench.run`` does it).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench.common import REPO, child_args, log, measure, summary, write_json


def _metrics() -> dict[str, float]:
    from vllm.v1.metrics.reader import get_metrics_snapshot

    found = {}
    for metric in get_metrics_snapshot():
        if metric.name in ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits"):
            found[metric.name] = float(getattr(metric, "value", 0) or 0)
    return found


def _hit_share(before: dict, after: dict) -> tuple[float | None, float]:
    queries = after.get("vllm:prefix_cache_queries", 0) - before.get("vllm:prefix_cache_queries", 0)
    hits = after.get("vllm:prefix_cache_hits", 0) - before.get("vllm:prefix_cache_hits", 0)
    return (hits / queries if queries else None), queries


def _raw_plan(task, prompts, rows):
    """Per stage: the conversations the engine sent and its seeds and lengths, rebuilt from its rows."""
    by_id = {row["id"]: row for row in rows}
    stages = {"draft": [], "critique 1": [], "revision 1": []}
    for prompt in prompts:
        row = by_id[prompt.id]
        calls = {c["step"]: c for c in row["calls"]}
        round_ = row["rounds"][0]
        draft = task.draft_head + prompt.messages
        critique = task.head + task.few_shot + prompt.messages + [
            {"role": "assistant", "content": row["initial_response"]},
            {"role": "user", "content": round_["critique_request"]},
        ]
        revision = critique + [
            {"role": "assistant", "content": round_["critique"]},
            {"role": "user", "content": round_["revision_request"]},
        ]
        for step, conversation in (("draft", draft), ("critique 1", critique), ("revision 1", revision)):
            stages[step].append(
                {
                    "conversation": conversation,
                    "seed": task._seed(prompt, step),
                    "length": calls[step]["completion_tokens"],
                    "prompt_tokens": calls[step]["prompt_tokens"],
                }
            )
    return stages


def _raw_params(stages, sampling):
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return {
        step: [
            SamplingParams(
                max_tokens=max(1, item["length"]),
                min_tokens=max(1, item["length"]),
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=item["seed"],
                output_kind=RequestOutputKind.FINAL_ONLY,
            )
            for item in items
        ]
        for step, items in stages.items()
    }


def _run_ceiling(backend, stages, params) -> tuple[float, int, list]:
    """Every call as an independent request, all submitted at once; (seconds, output tokens, outputs)."""
    import asyncio

    from core import aio

    requests = [(backend._token_ids(item["conversation"]), params[step][i])
                for step, items in stages.items() for i, item in enumerate(items)]

    async def one(n, token_ids, param):
        final = None
        async for output in backend.engine.generate({"prompt_token_ids": token_ids}, param, f"ceiling-{n}"):
            final = output
        return final

    async def everything():
        return await asyncio.gather(*(one(f"{time.monotonic_ns()}-{n}", ids, param)
                                      for n, (ids, param) in enumerate(requests)))

    started = time.perf_counter()
    outputs = aio.run_sync(everything())
    elapsed = time.perf_counter() - started
    return elapsed, sum(len(o.outputs[0].token_ids) for o in outputs), outputs


def _run_engine(config_of, backend) -> tuple[float, int, list]:
    """``cai generate`` as a user runs it (a fresh output each time), with the engine already loaded."""
    from generation.run import generate

    config = config_of()
    started = time.perf_counter()
    result = generate(config, backend=backend)
    elapsed = time.perf_counter() - started
    if result["counts"]["failed"]:
        raise RuntimeError(f"engine run failed: {result['failed'][:2]}")
    rows = [json.loads(line) for line in open(config.out, encoding="utf-8")]
    return elapsed, sum(r["token_counts"]["completion"] for r in rows), rows


def _run_lockstep(task, backend, prompts, batch_size: int = 64) -> tuple[float, int]:
    """The design the engine had before: per batch of prompts, all drafts, then all critiques, then all revisions."""
    from core.schema import step_name

    tokens = 0
    started = time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start: start + batch_size]
        contexts = [task.draft_head + p.messages for p in batch]
        drafts = backend.chat(contexts, task.settings.sampling, [task._seed(p, step_name("draft")) for p in batch])
        contexts = [task.head + task.few_shot + p.messages + [{"role": "assistant", "content": d.text}]
                    for p, d in zip(batch, drafts)]
        principles = [task.principles_for(p)[0] for p in batch]
        contexts = [c + [{"role": "user", "content": pr.critique_request}] for c, pr in zip(contexts, principles)]
        critiques = backend.chat(contexts, task.settings.sampling,
                                 [task._seed(p, step_name("critique", 1)) for p in batch])
        contexts = [c + [{"role": "assistant", "content": k.text}, {"role": "user", "content": pr.revision_request}]
                    for c, k, pr in zip(contexts, critiques, principles)]
        revisions = backend.chat(contexts, task.settings.sampling,
                                 [task._seed(p, step_name("revision", 1)) for p in batch])
        tokens += sum(c.completion_tokens for c in drafts + critiques + revisions)
    return time.perf_counter() - started, tokens


def _prompts_file(path, count: int) -> None:
    """``count`` distinct prompts: the demo's, then variants of them (another id, the question numbered)."""
    lines = [json.loads(line) for line in (REPO / "prompts" / "demo.jsonl").read_text().splitlines() if line.strip()]
    out = []
    for n in range(count):
        row = dict(lines[n % len(lines)])
        variant = n // len(lines)
        if variant:
            row["id"] = f"{row['id']}-v{variant}"
            row["prompt"] = f"Question {n + 1}. {row['prompt']}"
        out.append(json.dumps(row))
    path.write_text("\n".join(out) + "\n")


# -- the judge -----------------------------------------------------------------
def bench_judge(task, backend, prompts, rows, settings, results) -> None:
    """Measure 4 through the judging package, same pairs and model, both orders each:

    * ``pairwise``: labels read from next-token log-probabilities (one prefill per order);
    * ``text`` with reasoning (``--cot``): the judge writes its reasoning, then its verdict -
      the usual generated-text judge, and the headline ratio;
    * ``text`` without reasoning: a bare verdict constrained to "(A)"/"(B)" (three decode steps).

    Runs alternate between the three."""
    from judging.judge import Comparison, Judge, JudgeSettings

    by_id = {row["id"]: row for row in rows}
    principles = {p.id: p for p in task.constitution.principles}
    comparisons = []
    for prompt in prompts:
        row = by_id[prompt.id]
        principle = principles[row["rounds"][0]["principle_id"]]
        comparisons.append(Comparison.of(prompt.messages, row["final_response"], row["initial_response"], principle))
    while len(comparisons) < settings["judge_pairs"]:
        comparisons += comparisons[: settings["judge_pairs"] - len(comparisons)]
    comparisons = comparisons[: settings["judge_pairs"]]
    model = task.settings.model
    modes = {"logprob": ("pairwise", False), "text_reasoning": ("text", True), "text_bare": ("text", False)}

    def timed(mode: str):
        method, cot = modes[mode]
        judge = Judge(JudgeSettings(model=model, method=method, cot=cot, cot_max_tokens=settings["judge_cot_tokens"]),
                      backend=backend, cache={})
        backend.reset_prefix_cache()
        started = time.perf_counter()
        verdicts = judge.judge(comparisons)
        return len(comparisons) / (time.perf_counter() - started), verdicts, judge.cache

    def order_labels(verdict):
        """Which response wins in each order (x shown first, then second); None where it failed."""
        if verdict.error or verdict.p_x_first is None:
            return (None, None)
        return tuple(None if p == 0.5 else ("revision" if p > 0.5 else "draft")
                     for p in (verdict.p_x_first, verdict.p_x_second))

    def pair_label(verdict):
        first, second = order_labels(verdict)
        return first if first is not None and first == second else "no preference (orders split)"

    def agreement(a, b):
        pairs = sum(pair_label(x) == pair_label(y) for x, y in zip(a, b)) / len(a)
        judgements = [(u, v) for x, y in zip(a, b) for u, v in zip(order_labels(x), order_labels(y))]
        return pairs, sum(u is not None and u == v for u, v in judgements) / len(judgements)

    Judge(JudgeSettings(model=model, method="pairwise"), backend=backend, cache={}).judge(comparisons[:1])  # warm-up
    Judge(JudgeSettings(model=model, method="text"), backend=backend, cache={}).judge(comparisons[:1])
    rates = {mode: [] for mode in modes}
    agree = {"reasoning_pairs": [], "reasoning_judgements": [], "bare_pairs": [], "bare_judgements": []}
    second_calls, stated = [], []
    for repeat in range(settings["judge_repeats"]):
        order = list(modes)[repeat % 3:] + list(modes)[: repeat % 3]
        out = {mode: timed(mode) for mode in order}
        for mode in modes:
            rates[mode].append(out[mode][0])
        lp = out["logprob"][1]
        for name, mode in (("reasoning", "text_reasoning"), ("bare", "text_bare")):
            pairs, judgements = agreement(lp, out[mode][1])
            agree[f"{name}_pairs"].append(pairs)
            agree[f"{name}_judgements"].append(judgements)
        records = list(out["text_reasoning"][2].values())
        stated.append(sum("reply" in r and r.get("reply") == r.get("reasoning") and not r.get("parse_failure")
                          for r in records) / len(records))
        second_calls.append(sum("reasoning" in r and r.get("reply") != r.get("reasoning") for r in records) / len(records))
    # The floor for any judge on these pairs: the same label prompts, both orders, one token each with no
    # log-probabilities and nothing around it.  pairwise close to this means the label path wastes nothing.
    from core.backends.base import Sampling
    from judging import prompts as judge_prompts

    floor_conversations = [
        judge_prompts.pairwise_label_conversation(c.prompt, first, second, c.principle.comparison_question)
        for c in comparisons for first, second in ((c.x, c.y), (c.y, c.x))
    ]
    backend.reset_prefix_cache()
    started = time.perf_counter()
    backend.chat(floor_conversations, Sampling(max_tokens=1, temperature=0.0))
    floor_rate = len(comparisons) / (time.perf_counter() - started)
    speedup = [a / b for a, b in zip(rates["logprob"], rates["text_reasoning"])]
    bare = [a / b for a, b in zip(rates["logprob"], rates["text_bare"])]
    results["judge_speedup"] = measure(
        **summary(speedup), goal=">= 3",
        unit="x (pairs/s, label log-probs / generated text verdict with reasoning)",
        logprob_pairs_per_s=summary(rates["logprob"])["value"],
        text_with_reasoning_pairs_per_s=summary(rates["text_reasoning"])["value"],
        reasoning_max_tokens=settings["judge_cot_tokens"],
        pairs=len(comparisons),
        api="judging.judge.Judge: method pairwise vs method text --cot (both orders each)",
        one_token_prefill_floor_pairs_per_s=floor_rate,
        speedup_vs_bare_text_verdict=summary(bare),
        bare_text_verdict_pairs_per_s=summary(rates["text_bare"])["value"],
        note=("a bare verdict generates 3 tokens after the same prefill as the label read, so no label "
              "read can be much faster than it; the saving is the reasoning"),
    )
    results["judge_agreement"] = measure(
        **summary(agree["reasoning_pairs"]), goal=">= 0.9",
        unit="share of pairs given the same outcome (revision, draft, or orders split), log-probs vs text with reasoning",
        per_judgement=summary(agree["reasoning_judgements"])["value"],
        vs_bare_text_verdict_pairs=summary(agree["bare_pairs"])["value"],
        vs_bare_text_verdict_per_judgement=summary(agree["bare_judgements"])["value"],
        reasoning_stated_its_verdict_share=summary(stated)["value"],
        verdict_asked_after_reasoning_share=summary(second_calls)["value"],
    )


def main(argv=None) -> None:
    args, settings = child_args(argv)
    from constitution.loader import load_constitution
    from core.backends.base import Sampling
    from core.backends.registry import create_backend
    from generation.config import GenerateConfig
    from generation.critique_revise import ChainSettings, CritiqueReviseTask
    from core.model import model_identity, resolve_model
    from generation.prompt_files import read_prompts

    prefix_on = args.prefix_caching == "on"
    results: dict = {}
    work = Path(tempfile.mkdtemp(prefix="cai-bench-"))
    prompts_path = work / "prompts.jsonl"
    _prompts_file(prompts_path, settings["prompts"])
    prompts = read_prompts(prompts_path)
    sampling = Sampling(max_tokens=settings["max_tokens"], temperature=0.7, top_p=0.9)
    task = CritiqueReviseTask(
        load_constitution(REPO / "principles.yaml"),
        ChainSettings(model=model_identity(None), sampling=sampling, seed=0, rounds=1),
    )

    def config_of() -> GenerateConfig:
        return GenerateConfig(prompts=str(prompts_path), out=str(work / "out.jsonl"), overwrite=True, examples=0,
                              constitution=str(REPO / "principles.yaml"), rounds=1, max_tokens=settings["max_tokens"],
                              temperature=0.7, top_p=0.9, seed=0)

    started = time.perf_counter()
    backend = create_backend("vllm", resolve_model(None), seed=0, enable_prefix_caching=prefix_on,
                             disable_log_stats=False)
    start_s = time.perf_counter() - started
    log(f"engine started in {start_s:.0f} s (prefix caching {args.prefix_caching}); "
        f"{len(prompts)} prompts, up to {backend.concurrency} rows in flight")
    results[f"_engine_start_s_prefix_{args.prefix_caching}"] = start_s
    try:
        # Warm-up: one engine run gives the conversations, seeds and lengths the ceiling replays.
        _, _, rows = _run_engine(config_of, backend)
        stages = _raw_plan(task, prompts, rows)
        params = _raw_params(stages, sampling)
        _, _, ceiling_outs = _run_ceiling(backend, stages, params) if prefix_on else (0, 0, [])
        # Same conversations? The ceiling's prompt token counts must equal the engine's.
        flat = [item for items in stages.values() for item in items]
        mismatched = sum(len(o.prompt_token_ids) != item["prompt_tokens"] for o, item in zip(ceiling_outs, flat))
        if mismatched:
            log(f"warning: {mismatched} ceiling prompts differ in length from the engine's")

        rates = {"engine": [], "ceiling": [], "lockstep": []}
        ratios, lockstep_ratios, hit_shares, query_counts, token_totals = [], [], [], [], []
        sides = ("engine", "ceiling", "lockstep") if prefix_on else ("engine",)
        for repeat in range(settings["repeats"]):
            order = sides[repeat % len(sides):] + sides[: repeat % len(sides)]
            this = {}
            for side in order:
                backend.reset_prefix_cache()
                if side == "engine":
                    before = _metrics()
                    elapsed, tokens, _ = _run_engine(config_of, backend)
                    share, queries = _hit_share(before, _metrics())
                    if share is not None:
                        hit_shares.append(share)
                    query_counts.append(queries)
                    token_totals.append(tokens)
                elif side == "ceiling":
                    elapsed, tokens, _ = _run_ceiling(backend, stages, params)
                else:
                    elapsed, tokens = _run_lockstep(task, backend, prompts)
                this[side] = tokens / elapsed
                rates[side].append(this[side])
                log(f"  repeat {repeat + 1} {side}: {tokens} tokens in {elapsed:.2f} s = {this[side]:.0f} tokens/s")
            if "ceiling" in this:
                ratios.append(this["engine"] / this["ceiling"])
                lockstep_ratios.append(this["lockstep"] / this["ceiling"])

        key = "engine_tokens_per_s" if prefix_on else "engine_tokens_per_s_prefix_off"
        results[key] = measure(**summary(rates["engine"]), goal=None, unit="output tokens/s",
                               prompts=len(prompts), max_tokens=settings["max_tokens"],
                               output_tokens=token_totals[0] if token_totals else None)
        if prefix_on:
            results["ceiling_ratio"] = measure(
                **summary(ratios), goal=">= 0.85", unit="x (streaming engine tokens/s / vLLM ceiling tokens/s)",
                ceiling_tokens_per_s=summary(rates["ceiling"])["value"],
                engine_tokens_per_s=summary(rates["engine"])["value"],
                lockstep_ratio=summary(lockstep_ratios),
                lockstep_tokens_per_s=summary(rates["lockstep"])["value"],
                rows_in_flight=backend.concurrency,
                ceiling_prompt_length_mismatches=mismatched,
                prompts=len(prompts), max_tokens=settings["max_tokens"],
                note=("engine: `generation.run.generate` (the `cai generate` path: rows streamed, checked and "
                      "written); ceiling: the same calls, lengths and seeds as independent requests submitted at "
                      "once to the same engine; lockstep: batches of 64 prompts, one stage at a time (the design "
                      "before streaming)"),
            )
            results["prefix_cache_hit_share"] = measure(
                **summary(hit_shares) if hit_shares else {"value": None}, goal=None,
                unit="share of prompt tokens served from the prefix cache (one chain run, cache reset before)",
                prompt_tokens_queried=query_counts[0] if query_counts else None,
            )
            # lengths of the engine's calls, for the naive loop to reproduce
            results["_lengths"] = {
                row["id"]: [c["completion_tokens"] for c in row["calls"]] for row in rows
            }
            judge_prompts = prompts[: settings["judge_pairs"]]
            bench_judge(task, backend, judge_prompts, [r for r in rows if r["id"] in {p.id for p in judge_prompts}],
                        settings, results)
    finally:
        backend.close()
    write_json(args.out, results)


if __name__ == "__main__":
    main()
