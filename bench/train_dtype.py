"""Training on CPU, float32 vs bf16 autocast, interleaved.

``THREADS=1 python -m bench.train_dtype``: a DPO step's core, the policy's forward and backward and the
reference's forward on 2 pairs (chosen and rejected) of 256 tokens, the default model, the CPU defaults' batch
(prints one JSON line; bench/results/train_dtype.json keeps one).

``python -m bench.train_dtype --demo``: the whole ``cai train dpo`` command as ``make demo`` runs it
(recipes/demo.yaml's train section: 8 steps, learning rate 5e-5, beta 0.1) on 27 pairs of the demo's lengths
(bench/data/demo_lengths.json: a row's draft and revision, the one not cut off at max_tokens chosen, as the
judge's pairs drop a cut-off winner; each cut to its measured token count from filler prose), once with
``--bf16 true`` and once with ``--bf16 false`` (``--repeats N``: N times each, interleaved), recording wall and
CPU seconds; writes bench/results/train_dtype_demo.json.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from core.model import resolve_model
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parent.parent
DEMO_PAIRS = 27  # the pairs the demo's judge made from its 40 prompts (docs/hardware.md, "Yield")
DEMO_TRAIN = ["--max-steps", "8", "--learning-rate", "5e-5", "--beta", "0.1"]  # recipes/demo.yaml's train section


def step_core():
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

def demo_pairs(path: Path) -> None:
    """Pairs of the demo's shape: its prompts; a row's draft and revision lengths, the draft chosen unless it was cut
    off (most demo pairs choose the draft; the judge drops a pair whose winner was cut off), both cut from filler
    prose to the measured token counts."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(None))
    filler = tokenizer((REPO / "README.md").read_text(encoding="utf-8"))["input_ids"]
    measured = json.loads((REPO / "bench" / "data" / "demo_lengths.json").read_text())
    cap = measured["max_tokens"]
    prompts = [json.loads(line) for line in (REPO / "prompts" / "demo.jsonl").read_text().splitlines() if line.strip()]
    rows = []
    for index, (prompt, draft, revision) in enumerate(zip(prompts, measured["lengths"]["draft"],
                                                          measured["lengths"]["revision"])):
        if len(rows) == DEMO_PAIRS or min(draft, revision) >= cap:
            continue
        chosen, rejected = (draft, revision) if draft < cap else (revision, draft)
        rows.append({"prompt": [{"role": "user", "content": prompt["prompt"]}],
                     "chosen": [{"role": "assistant", "content": tokenizer.decode(filler[index:index + chosen])}],
                     "rejected": [{"role": "assistant",
                                   "content": tokenizer.decode(filler[index + 1:index + 1 + rejected])}],
                     "chosen_probability": 0.7})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def demo(repeats: int):
    """Yields the result so far after every run."""
    work = Path(tempfile.mkdtemp(prefix="train-dtype-demo-"))
    pairs = work / "pairs.jsonl"
    demo_pairs(pairs)
    runs = {"float32": [], "bfloat16": []}
    order = [bf16 for r in range(repeats) for bf16 in (("true", "false") if r % 2 == 0 else ("false", "true"))]
    for number, bf16 in enumerate(order):
        out = work / f"dpo-{number}"
        command = [sys.executable, "-m", "cai", "train", "dpo", "--data", str(pairs), "--output-dir", str(out),
                   *DEMO_TRAIN, "--bf16", bf16, "--disable-tqdm", "true"]
        cpu_before, started = _children_cpu_seconds(), time.perf_counter()
        subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        summary = json.loads((out / "cai_training.json").read_text())
        runs["bfloat16" if bf16 == "true" else "float32"].append({
            # CPU seconds (user + system) of the command: on a shared machine wall time measures the others' load
            "command_s": round(wall, 1), "command_cpu_s": round(_children_cpu_seconds() - cpu_before, 1),
            "train_s": summary["train_seconds"], "precision": summary["device_settings"]["precision"],
            "loadavg": os.getloadavg()})
        yield {"command": " ".join(["python -m bench.train_dtype", *sys.argv[1:]]), "pairs": DEMO_PAIRS, "train": DEMO_TRAIN, "runs": runs}


def _children_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", action="store_true", help="time `cai train dpo` as the demo runs it")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each precision (--demo), interleaved")
    args = parser.parse_args()
    if not args.demo:
        step_core()
        return
    from bench.common import RESULTS, write_json

    for result in demo(args.repeats):  # written after every run: a long run on a busy machine keeps what it has
        write_json(RESULTS / "train_dtype_demo.json", result)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
