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
4. The judge: pairs/s reading label log-probabilities (one next-token call per
   order) vs generating a short text verdict and parsing "(A)"/"(B)", on the
   same pairs (draft vs final revision from the chain) and model; and how often
   the two modes give a pair the same label.

Run: ``python -m bench.engine_bench --mode quick --out X.json`` (``bench.run`` does it).
"""

from __future__ import annotations

import re
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
_VERDICT = re.compile(r"\(\s*([AB])\s*\)")
_BARE = re.compile(r"\b([AB])\b")


def _judge_conversation(question: str, prompt: str, a: str, b: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": (
                f"Consider this request: {prompt}\n\n"
                f"Response (A): {a}\n\nResponse (B): {b}\n\n"
                f"{question} Answer with (A) or (B)."
            ),
        }
    ]


def parse_verdict(text: str) -> str | None:
    match = _VERDICT.search(text) or _BARE.search(text)
    return match.group(1) if match else None


def _judge_items(task, prompts, rows, count):
    """Pairs (draft vs final revision), each in both orders: A=draft and A=revision."""
    by_id = {row["id"]: row for row in rows}
    principles = {p.id: p for p in task.constitution.principles}
    pairs = []
    for prompt in prompts:
        row = by_id[prompt.id]
        question = principles[row["rounds"][0]["principle_id"]].comparison_question
        text = prompt.messages[-1]["content"]
        first = _judge_conversation(question, text, row["initial_response"], row["final_response"])
        second = _judge_conversation(question, text, row["final_response"], row["initial_response"])
        pairs.append((first, second))
    while len(pairs) < count:  # reuse pairs when N prompts < pairs asked for
        pairs += pairs[: count - len(pairs)]
    return pairs[:count]


def _logprob_labels(results) -> list[str]:
    """'revision' or 'draft' per pair from both orders' label log-probabilities."""
    labels = []
    for first, second in zip(results[0::2], results[1::2]):
        def value(result, label):
            v = result.logprobs.get(label)
            return v if v is not None else (result.floor if result.floor is not None else -100.0)

        # order 1: B is the revision; order 2: A is the revision.
        score = (value(first, "B") - value(first, "A")) + (value(second, "A") - value(second, "B"))
        labels.append("revision" if score > 0 else "draft")
    return labels


def _text_labels(completions) -> tuple[list[str | None], int]:
    labels, unparsed = [], 0
    for first, second in zip(completions[0::2], completions[1::2]):
        votes = 0
        for completion, revision_is in ((first, "B"), (second, "A")):
            verdict = parse_verdict(completion.text)
            if verdict is None:
                unparsed += 1
            else:
                votes += 1 if verdict == revision_is else -1
        labels.append("revision" if votes > 0 else "draft" if votes < 0 else None)
    return labels, unparsed


def bench_judge_package(task, backend, prompts, rows, settings, results) -> bool:
    """Measure 4 through the judging package: ``Judge`` with method ``pairwise`` (label log-probabilities,
    both orders) vs method ``text`` (a generated verdict, strictly parsed, both orders), same pairs and
    model; and, once, ``text`` with chain of thought (reasoning, then the verdict).  False if the
    package is not importable (then the backend-level fallback runs)."""
    try:
        from judging.judge import Comparison, Judge, JudgeSettings
    except Exception as exc:  # noqa: BLE001 - the package is optional here
        log(f"judging package not usable ({exc}); measuring at the backend level")
        return False
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

    def timed(method: str, cot: bool = False):
        judge = Judge(JudgeSettings(model=model, method=method, cot=cot, cot_max_tokens=settings["judge_cot_tokens"]),
                      backend=backend, cache={})
        llm.reset_prefix_cache()
        started = time.perf_counter()
        verdicts = judge.judge(comparisons)
        return len(comparisons) / (time.perf_counter() - started), verdicts

    def label(verdict):
        if verdict.error or verdict.p is None or verdict.p == 0.5:
            return None
        return "revision" if verdict.p > 0.5 else "draft"

    Judge(JudgeSettings(model=model, method="pairwise"), backend=backend, cache={}).judge(comparisons[:1])  # warm-up
    Judge(JudgeSettings(model=model, method="text"), backend=backend, cache={}).judge(comparisons[:1])
    logprob_rates, text_rates, agreement, parse_failures = [], [], [], []
    for repeat in range(settings["judge_repeats"]):
        order = ("pairwise", "text") if repeat % 2 == 0 else ("text", "pairwise")
        out = {}
        for method in order:
            out[method] = timed(method)
        logprob_rates.append(out["pairwise"][0])
        text_rates.append(out["text"][0])
        lp = [label(v) for v in out["pairwise"][1]]
        tx = [label(v) for v in out["text"][1]]
        agreement.append(sum(a is not None and a == b for a, b in zip(lp, tx)) / len(comparisons))
        parse_failures.append(sum(v.parse_failures for v in out["text"][1]) / (2 * len(comparisons)))
    ratios = [a / b for a, b in zip(logprob_rates, text_rates)]
    # The floor for any judge on these pairs: the same label prompts, both orders, one token each with no
    # log-probabilities and nothing around it.  pairwise close to this means the label path wastes nothing;
    # what separates pairwise from text is then only the verdict's decode steps.
    from generation.backends.base import Sampling
    from judging import prompts as judge_prompts

    floor_conversations = [
        judge_prompts.pairwise_label_conversation(c.prompt, first, second, c.principle.comparison_question)
        for c in comparisons for first, second in ((c.x, c.y), (c.y, c.x))
    ]
    llm.reset_prefix_cache()
    started = time.perf_counter()
    backend.chat(floor_conversations, Sampling(max_tokens=1, temperature=0.0))
    floor_rate = len(comparisons) / (time.perf_counter() - started)
    cot_rate, cot_verdicts = timed("text", cot=True)
    cot = [label(v) for v in cot_verdicts]
    results["judge_speedup"] = measure(
        **summary(ratios), goal=">= 3", unit="x (pairs/s, label log-probs / generated text verdict)",
        logprob_pairs_per_s=summary(logprob_rates)["value"], text_pairs_per_s=summary(text_rates)["value"],
        pairs=len(comparisons), api="judging.judge.Judge method pairwise vs text (both orders each)",
        one_token_prefill_floor_pairs_per_s=floor_rate,
        speedup_vs_text_with_reasoning=summary(logprob_rates)["value"] / cot_rate,
        text_with_reasoning_pairs_per_s=cot_rate, reasoning_max_tokens=settings["judge_cot_tokens"],
    )
    results["judge_agreement"] = measure(
        **summary(agreement), goal=">= 0.9", unit="share of pairs with the same label (pairwise vs text)",
        text_parse_failure_share=summary(parse_failures)["value"],
        agreement_with_text_with_reasoning=sum(a is not None and a == b for a, b in zip(lp, cot)) / len(comparisons),
    )
    return True


def bench_judge(task, backend, prompts, rows, settings, results):
    from generation.backends.base import Sampling

    llm = backend.llm
    pairs = _judge_items(task, prompts, rows, settings["judge_pairs"])
    conversations = [c for pair in pairs for c in pair]
    label_conversations = [c + [{"role": "assistant", "content": "The better response is ("}] for c in conversations]
    verdict = Sampling(max_tokens=settings["judge_verdict_tokens"], temperature=0.0, top_p=1.0)

    # warm-up both paths
    backend.label_logprobs(label_conversations[:2], ["A", "B"])
    backend.chat(conversations[:2], verdict)
    one_token = Sampling(max_tokens=1, temperature=0.0, top_p=1.0)
    logprob_rates, text_rates, floor_rates, agreement, per_judgement = [], [], [], [], []
    unparsed_share = []
    for _ in range(settings["judge_repeats"]):
        llm.reset_prefix_cache()
        started = time.perf_counter()
        scored = backend.label_logprobs(label_conversations, ["A", "B"])
        logprob_time = time.perf_counter() - started
        llm.reset_prefix_cache()
        started = time.perf_counter()
        texts = backend.chat(conversations, verdict, seeds=[0] * len(conversations))
        text_time = time.perf_counter() - started
        # The floor for any judge: reading the same prompts and emitting one token, no log-probabilities.
        llm.reset_prefix_cache()
        started = time.perf_counter()
        backend.chat(label_conversations, one_token, seeds=[0] * len(conversations))
        floor_rates.append(len(pairs) / (time.perf_counter() - started))
        logprob_rates.append(len(pairs) / logprob_time)
        text_rates.append(len(pairs) / text_time)
        lp_labels = _logprob_labels(scored)
        tx_labels, unparsed = _text_labels(texts)
        agreement.append(sum(a == b for a, b in zip(lp_labels, tx_labels)) / len(pairs))
        unparsed_share.append(unparsed / len(conversations))
        same = 0
        for lp, tx in zip(scored, texts):
            best = max(("A", "B"), key=lambda label: lp.logprobs.get(label) if lp.logprobs.get(label) is not None else -1e9)
            same += parse_verdict(tx.text) == best
        per_judgement.append(same / len(texts))
    ratios = [a / b for a, b in zip(logprob_rates, text_rates)]
    results["judge_speedup"] = measure(
        **summary(ratios), goal=">= 3", unit="x (pairs/s log-prob labels / pairs/s text verdict)",
        logprob_pairs_per_s=summary(logprob_rates)["value"], text_pairs_per_s=summary(text_rates)["value"],
        one_token_chat_pairs_per_s=summary(floor_rates)["value"],
        pairs=len(pairs), verdict_max_tokens=settings["judge_verdict_tokens"],
        verdict_tokens_generated=sum(t.completion_tokens for t in texts),
        api="VLLMBackend.label_logprobs vs VLLMBackend.chat (judging package not yet used)",
    )
    results["judge_agreement"] = measure(
        **summary(agreement), goal=">= 0.9", unit="share of pairs with the same label in both modes",
        per_judgement_agreement=summary(per_judgement)["value"],
        unparsed_verdict_share=summary(unparsed_share)["value"],
        example_verdicts=[t.text[:80] for t in texts[:4]],
    )


def main(argv=None) -> None:
    args, settings = child_args(argv)
    from constitution.loader import load_constitution
    from generation.backends.base import Sampling, create_backend
    from generation.critique_revise import ChainSettings, CritiqueReviseTask, ReuseIndex
    from generation.model import model_identity, resolve_model
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
            if not bench_judge_package(task, backend, prompts, rows, settings, results):
                bench_judge(task, backend, prompts, rows, settings, results)
    finally:
        backend.close()
    write_json(args.out, results)


if __name__ == "__main__":
    main()
