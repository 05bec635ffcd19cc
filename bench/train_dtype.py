"""A DPO step's core on CPU, float32 vs bf16 autocast, interleaved: the policy's forward and backward and the
reference's forward on 2 pairs (chosen and rejected) of 256 tokens, the default model, the CPU defaults' batch.

Run: ``THREADS=1 python -m bench.train_dtype`` (prints one JSON line; bench/results/train_dtype.json keeps one).
"""
import json
import os
import time

import torch
from core.model import resolve_model
from transformers import AutoModelForCausalLM

def main():
    torch.manual_seed(0)
    folder = resolve_model(None)
    policy = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    batch, length = 2, 256  # the CPU defaults: per_device_train_batch_size 2, pairs of ~256 tokens
    ids = torch.randint(0, policy.config.vocab_size, (2 * batch, length))  # chosen and rejected
    threads = int(os.environ.get("THREADS", "1"))
    torch.set_num_threads(threads)
    def step(bf16):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            with torch.no_grad():
                ref(input_ids=ids).logits.float().mean()
            loss = policy(input_ids=ids).logits.float().mean()
        loss.backward()
        policy.zero_grad(set_to_none=True)
    step(False); step(True)  # warm-up
    times = {"float32": [], "bfloat16": []}
    for r in range(4):
        for bf16 in ((False, True) if r % 2 == 0 else (True, False)):
            t = time.perf_counter(); step(bf16); times["bfloat16" if bf16 else "float32"].append(time.perf_counter() - t)
    med = {k: sorted(v)[len(v)//2] for k, v in times.items()}
    print(json.dumps({"threads": threads, "batch_pairs": batch, "length": length, "seconds": times,
                      "median_s": med, "float32 / bfloat16": med["float32"] / med["bfloat16"],
                      "loadavg": os.getloadavg()}))

if __name__ == "__main__":
    main()
