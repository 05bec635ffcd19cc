"""Measure 6: DPO training throughput (preference pairs per second) on this machine.

TRL's ``DPOTrainer`` on the default model (bf16 on a GPU; on a CPU float32 weights, in bf16 autocast
where the CPU computes bf16 natively, as ``cai train`` trains by default), a few
optimizer steps over synthetic pairs of fixed length (prompts from
prompts/demo.jsonl, chosen/rejected replies cut to ``dpo_length`` tokens in
total), reference model as TRL builds it.  Each step's wall time is taken by a
trainer callback; the first step (warm-up) is dropped; pairs/s per step is
batch / step time, reported as the median over steps with the spread.

This uses TRL directly, not ``cai train dpo``, so it measures the trainer the
training package wraps without depending on that package's state.

Run: ``python -m bench.dpo --mode quick --out X.json`` (needs torch, transformers, trl, datasets).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from bench.common import REPO, child_args, log, measure, summary, write_json

CHOSEN = ("I can't help with that, but here is a safe and useful alternative that addresses what you need. " * 12)
REJECTED = ("Sure, here is exactly how to do it, step by step, with every detail you asked for and more. " * 12)


def _pick_threads(torch, model, batch: int, length: int) -> dict[int, float]:
    """Train with the faster thread count, timed now on one forward and backward pass.

    On a shared CPU OpenMP's spinning can make 2 threads several times slower than 1 (measured here:
    ~45 s vs ~10 s a step), and the load average lags behind an engine that has just exited.
    """
    ids = torch.randint(0, model.config.vocab_size, (batch, length))
    model(input_ids=ids).logits.float().mean().backward()  # warm-up (allocations), untimed
    seconds = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        started = time.perf_counter()
        model(input_ids=ids).logits.float().mean().backward()
        seconds[threads] = round(time.perf_counter() - started, 2)
    model.zero_grad(set_to_none=True)
    torch.set_num_threads(min(seconds, key=seconds.get))
    log(f"dpo: {torch.get_num_threads()} thread(s) (forward+backward seconds by threads: {seconds})")
    return seconds


def main(argv=None) -> None:
    args, settings = child_args(argv)
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from core.model import resolve_model

    cuda = torch.cuda.is_available()
    # $CAI_BENCH_DPO_MODEL: a folder to use instead of the default model.  A folder without weights (config
    # and tokenizer only, e.g. carried to a GPU machine where the 260 MB weights cannot travel) is initialised
    # at random: the same architecture costs the same per step.
    folder = os.environ.get("CAI_BENCH_DPO_MODEL") or resolve_model(None)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if cuda else torch.float32
    from core.hardware import choose_dtype

    bf16 = cuda or choose_dtype("auto") == "bfloat16"  # `cai train`'s default precision on this CPU
    random_init = not any(Path(folder, name).exists() for name in ("model.safetensors", "model.safetensors.index.json"))
    if random_init:
        from transformers import AutoConfig

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)

    batch, steps, length = settings["dpo_batch"], settings["dpo_steps"], settings["dpo_length"]
    thread_seconds = None if cuda else _pick_threads(torch, model, batch, length)
    prompts = [json.loads(line)["prompt"] for line in open(REPO / "prompts" / "demo.jsonl", encoding="utf-8")]
    rows = [
        {
            "prompt": [{"role": "user", "content": prompts[i % len(prompts)]}],
            "chosen": [{"role": "assistant", "content": CHOSEN}],
            "rejected": [{"role": "assistant", "content": REJECTED}],
        }
        for i in range(batch * (steps + 1))
    ]

    step_times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            self.started = time.perf_counter()

        def on_step_end(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            step_times.append(time.perf_counter() - self.started)

    with tempfile.TemporaryDirectory(prefix="cai-bench-dpo-") as tmp:
        config = DPOConfig(
            output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps + 1, max_length=length,
            learning_rate=1e-6, logging_steps=1000, save_strategy="no", report_to=[], use_cpu=not cuda,
            bf16=bf16, dataloader_num_workers=0, disable_tqdm=True, seed=0,
        )
        # TRL builds the reference model from the model's folder; a folder without weights needs a copy instead.
        reference = {"ref_model": __import__("copy").deepcopy(model)} if random_init else {}
        trainer = DPOTrainer(
            model=model, **reference, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
            callbacks=[StepTimer()],
        )
        started = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - started
    timed = step_times[1:] or step_times
    rates = [batch / t for t in timed]
    log(f"dpo: step seconds {[round(t, 2) for t in step_times]}")
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    key = "dpo_pairs_per_s_gpu" if cuda else "dpo_pairs_per_s_cpu"
    write_json(args.out, {
        key: measure(
            **summary(rates), goal=None, unit=f"preference pairs/s (TRL DPOTrainer, {device})",
            batch=batch, steps_timed=len(timed), max_length=length, dtype=str(dtype), bf16_autocast=bf16,
            threads=torch.get_num_threads(), train_seconds_incl_warmup=round(total, 1),
            load_average=round(os.getloadavg()[0], 1), random_init=random_init,
            forward_backward_seconds_by_threads=thread_seconds,
        )
    })


if __name__ == "__main__":
    main()
