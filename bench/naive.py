"""Measure 2's naive side: the draft -> critique -> revision chain one prompt at a time
through transformers ``generate``, as many reimplementations do.

Same model folder (the default model, in its stored dtype), same conversations
(system prompt, few-shot exemplars before the critique, the same critique and
revision requests), same sampling (temperature 0.7, top-p 0.9) and, per call,
the same number of new tokens the engine produced for that prompt and step
(``min_new_tokens = max_new_tokens``), so tokens/s compare like for like.
``bench.run`` divides the engine's tokens/s by this one.

Run: ``python -m bench.naive --mode quick --lengths L.json --out X.json``.
"""

from __future__ import annotations

import json
import time

from bench.common import REPO, child_args, log, measure, summary, write_json


def main(argv=None) -> None:
    args, settings = child_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from constitution.loader import load_constitution
    from core.backends.base import Sampling
    from generation.critique_revise import ChainSettings, CritiqueReviseTask
    from core.model import model_identity, resolve_model
    from generation.prompt_files import read_prompts

    folder = resolve_model(None)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # float32: on this CPU transformers runs it about twice as fast as the stored bfloat16, so the
    # naive side gets its better dtype and the ratio is conservative.
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    log(f"naive: transformers {model.dtype} on {torch.get_num_threads()} threads")

    prompts = read_prompts(REPO / "prompts" / "demo.jsonl")[: settings["naive_prompts"]]
    sampling = Sampling(max_tokens=settings["max_tokens"], temperature=0.7, top_p=0.9)
    task = CritiqueReviseTask(
        load_constitution(REPO / "principles.yaml"),
        ChainSettings(model=model_identity(None), sampling=sampling, seed=0, rounds=1),
    )
    lengths = json.loads(open(args.lengths).read()) if args.lengths else {}

    def generate(conversation, new_tokens: int) -> tuple[str, int]:
        ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(
                **ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True,
                temperature=sampling.temperature, top_p=sampling.top_p, pad_token_id=tokenizer.eos_token_id,
            )
        new = out[0, ids["input_ids"].shape[1]:]
        return tokenizer.decode(new, skip_special_tokens=True), int(new.shape[0])

    def chain(prompt) -> int:
        steps = lengths.get(prompt.id) or [settings["max_tokens"]] * 3
        cap = settings.get("naive_token_cap")
        steps = [min(n, cap) if cap else n for n in steps]
        principle = task.principles_for(prompt)[0]
        draft, a = generate(task.draft_head + prompt.messages, max(1, steps[0]))
        context = task.head + task.few_shot + prompt.messages + [
            {"role": "assistant", "content": draft},
            {"role": "user", "content": principle.critique_request},
        ]
        critique, b = generate(context, max(1, steps[1]))
        context += [{"role": "assistant", "content": critique}, {"role": "user", "content": principle.revision_request}]
        _, c = generate(context, max(1, steps[2]))
        return a + b + c

    torch.manual_seed(0)
    # Give the naive side its faster thread count: on a shared 2-core machine OpenMP's spinning
    # makes 2 threads several times slower than 1; on a quiet one 2 may win.
    speeds = {}
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        generate(task.head + prompts[0].messages, 2)
        started = time.perf_counter()
        generate(task.head + prompts[0].messages, 8)
        speeds[threads] = time.perf_counter() - started
    torch.set_num_threads(min(speeds, key=speeds.get))
    log(f"naive: {torch.get_num_threads()} thread(s) (8-token warm-up seconds by threads: {speeds})")
    rates = []
    for repeat in range(settings["naive_repeats"]):
        started = time.perf_counter()
        tokens = sum(chain(p) for p in prompts)
        elapsed = time.perf_counter() - started
        rates.append(tokens / elapsed)
        log(f"  naive repeat {repeat + 1}: {tokens} tokens in {elapsed:.2f} s = {rates[-1]:.1f} tokens/s")
    results = {
        "naive_tokens_per_s": measure(
            **summary(rates), goal=None, unit="output tokens/s (transformers generate, one prompt at a time)",
            prompts=len(prompts), dtype=str(model.dtype), threads=torch.get_num_threads(),
        )
    }
    write_json(args.out, results)


if __name__ == "__main__":
    main()
