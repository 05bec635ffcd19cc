"""Measures 1, 3 and 4 on one in-process vLLM engine (one engine per process).

1. Engine efficiency: ``CritiqueReviseTask.run_batch`` with ``VLLMBackend`` on N
   prompts (draft, critique, revision), output tokens/s, divided by raw vLLM
   doing the same three calls with the same conversations and lengths: one
   ``LLM.chat`` per stage with nothing around it, on the same ``vllm.LLM``.
   Lengths: the raw calls get ``min_tokens = max_tokens = `` the length the
   engine produced for that call (same seeds and sampling), so both sides emit
   exactly the same number of tokens.  The prefix cache is reset before every
   timed run and the two sides alternate (ABBA), so neither inherits the
   other's cache or a quieter moment of the shared machine.
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

import time

from bench.common import REPO, child_args, log, measure, summary, write_json


def _metrics(llm) -> dict[str, float]:
    found = {}
    for metric in llm.get_metrics():
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
        draft = task.head + prompt.messages
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

    return {
        step: [
            SamplingParams(
                max_tokens=max(1, item["length"]),
                min_tokens=max(1, item["length"]),
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=item["seed"],
            )
            for item in items
        ]
        for step, items in stages.items()
    }


def _run_raw(llm, stages, params) -> tuple[float, int, list]:
    """The three stages as three ``LLM.chat`` calls; (seconds, output tokens, outputs)."""
    tokens, outputs = 0, []
    started = time.perf_counter()
    for step, items in stages.items():
        outs = llm.chat([item["conversation"] for item in items], params[step], use_tqdm=False)
        outputs.append(outs)
    elapsed = time.perf_counter() - started
    for outs in outputs:
        tokens += sum(len(o.outputs[0].token_ids) for o in outs)
    return elapsed, tokens, outputs


def _run_engine(task, backend, prompts, reuse_cls) -> tuple[float, int, list]:
    started = time.perf_counter()
    rows, failures = task.run_batch(backend, prompts, reuse_cls())
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"engine run failed: {failures[:2]}")
    return elapsed, sum(r["token_counts"]["completion"] for r in rows), rows


# -- the judge -----------------------------------------------------------------
def bench_judge(task, backend, prompts, rows, settings, results) -> None:
    """Measure 4 through the judging package, same pairs and model, both orders each:

    * ``pairwise``: labels read from next-token log-probabilities (one prefill per order);
    * ``text`` with reasoning (``--cot``): the judge writes its reasoning, then its verdict -
      the usual generated-text judge, and the headline ratio;
    * ``text`` without reasoning: a bare verdict constrained to "(A)"/"(B)" (three decode steps).

    Runs alternate between the three."""
    from judging.judge import Comparison, Judge, JudgeSettings

    llm = backend.llm
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
        llm.reset_prefix_cache()
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
    llm.reset_prefix_cache()
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
    from generation.critique_revise import ChainSettings, CritiqueReviseTask, ReuseIndex
    from core.model import model_identity, resolve_model
    from generation.prompts import read_prompts

    prefix_on = args.prefix_caching == "on"
    results: dict = {}
    prompts = read_prompts(REPO / "prompts" / "demo.jsonl")[: settings["prompts"]]
    sampling = Sampling(max_tokens=settings["max_tokens"], temperature=0.7, top_p=0.9)
    task = CritiqueReviseTask(
        load_constitution(REPO / "principles.yaml"),
        ChainSettings(model=model_identity(None), sampling=sampling, seed=0, rounds=1),
    )
    started = time.perf_counter()
    backend = create_backend(
        "vllm", resolve_model(None), seed=0, show_progress=False,
        enable_prefix_caching=prefix_on, disable_log_stats=False,
    )
    start_s = time.perf_counter() - started
    log(f"engine started in {start_s:.0f} s (prefix caching {args.prefix_caching})")
    results[f"_engine_start_s_prefix_{args.prefix_caching}"] = start_s
    llm = backend.llm
    try:
        # Warm-up: one engine run gives the conversations, seeds and lengths the raw side replays.
        _, _, rows = _run_engine(task, backend, prompts, ReuseIndex)
        stages = _raw_plan(task, prompts, rows)
        params = _raw_params(stages, sampling)
        _, _, raw_outs = _run_raw(llm, stages, params) if prefix_on else (0, 0, [])
        # Same conversations? The raw side's prompt token counts must equal the engine's.
        mismatched = sum(
            len(o.prompt_token_ids) != item["prompt_tokens"]
            for step, outs in zip(stages, raw_outs) for o, item in zip(outs, stages[step])
        )
        if mismatched:
            log(f"warning: {mismatched} raw prompts differ in length from the engine's")

        engine_rates, raw_rates, ratios, hit_shares, query_counts, token_totals = [], [], [], [], [], []
        for repeat in range(settings["repeats"]):
            order = ("engine", "raw") if repeat % 2 == 0 else ("raw", "engine")
            if not prefix_on:
                order = ("engine",)  # this engine only gives the prefix-off tokens/s
            rates = {}
            for side in order:
                llm.reset_prefix_cache()
                if side == "engine":
                    before = _metrics(llm)
                    elapsed, tokens, _ = _run_engine(task, backend, prompts, ReuseIndex)
                    share, queries = _hit_share(before, _metrics(llm))
                    if share is not None:
                        hit_shares.append(share)
                    query_counts.append(queries)
                    token_totals.append(tokens)
                else:
                    elapsed, tokens, _ = _run_raw(llm, stages, params)
                rates[side] = tokens / elapsed
                log(f"  repeat {repeat + 1} {side}: {tokens} tokens in {elapsed:.2f} s = {rates[side]:.0f} tokens/s")
            engine_rates.append(rates["engine"])
            if "raw" in rates:
                raw_rates.append(rates["raw"])
                ratios.append(rates["engine"] / rates["raw"])

        # Where the engine's time goes: time inside LLM.generate vs everything around it.
        inside = []
        original = llm.generate

        def timed_generate(*a, **k):
            t = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                inside.append(time.perf_counter() - t)

        llm.generate = timed_generate
        llm.reset_prefix_cache()
        total, _, _ = _run_engine(task, backend, prompts, ReuseIndex)
        llm.generate = original
        overhead = (total - sum(inside)) / total

        key = "engine_tokens_per_s" if prefix_on else "engine_tokens_per_s_prefix_off"
        results[key] = measure(**summary(engine_rates), goal=None, unit="output tokens/s",
                               prompts=len(prompts), max_tokens=settings["max_tokens"],
                               output_tokens=token_totals[0] if token_totals else None)
        if prefix_on:
            results["engine_efficiency"] = measure(
                **summary(ratios), goal=">= 0.9", unit="x (engine tokens/s / raw vLLM tokens/s)",
                raw_tokens_per_s=summary(raw_rates)["value"],
                engine_tokens_per_s=summary(engine_rates)["value"],
                overhead_outside_llm_generate=round(overhead, 4),
                raw_prompt_length_mismatches=mismatched,
                prompts=len(prompts), max_tokens=settings["max_tokens"],
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
            bench_judge(task, backend, prompts, rows, settings, results)
    finally:
        backend.close()
    write_json(args.out, results)


if __name__ == "__main__":
    main()
