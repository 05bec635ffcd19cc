"""bfloat16 vs float32 on this CPU, side by side in one run: generation and prompt log-probabilities.

Each engine runs in its own child process (one engine per process), one dtype after the other in
A-B-B-A order so that load from other work on the machine falls on both sides alike.  A child
starts ``VLLMBackend`` on the default model with the dtype given, warms it up, then times:

* generation: the demo prompts (prompts/demo.jsonl), greedy, ``--gen-tokens`` tokens each, all
  submitted at once (what ``cai generate``'s first call of every row does): output tokens/s;
* prompt log-probabilities: the first ``--pairs`` human-labelled hh pairs, chosen and rejected
  response each scored as a whole conversation (what the likelihood judge reads), prefix cache
  reset first: prompt tokens/s.

``--isa avx2`` runs the same children with the AVX-512 path switched off: ``bench/avx2_only``'s
sitecustomize tells torch (and through it vLLM, which picks its kernel library ``_C_AVX2`` and its
attention ISA by asking torch) that the CPU has no AVX-512, no AVX-512 BF16 and no AMX;
``ONEDNN_MAX_CPU_ISA=AVX2`` caps the oneDNN that vLLM's linear layers run on, and
``ATEN_CPU_CAPABILITY=avx2`` caps torch's own kernels.  A model of an AVX2-only CPU, not one.

Run: ``python -m bench.dtype_bench --out bench/results/dtype.json [--isa native avx2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, log, machine, run_child, write_json

AVX2_ONLY = {"PYTHONPATH": str(REPO / "bench" / "avx2_only"), "ATEN_CPU_CAPABILITY": "avx2",
             "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _child(args) -> None:
    from core.backends.base import Sampling
    from core.backends.vllm_backend import VLLMBackend
    from core.model import resolve_model
    from generation.prompt_files import iter_prompts
    from judging.agreement import read_human_pairs

    started = time.perf_counter()
    backend = VLLMBackend(resolve_model(None), dtype=args.dtype).load()
    start_seconds = time.perf_counter() - started
    try:
        prompts = [p.messages for p in iter_prompts(REPO / "prompts" / "demo.jsonl")][: args.gen_prompts]
        sampling = Sampling(max_tokens=args.gen_tokens, temperature=0.0)
        backend.chat(prompts[:2], Sampling(max_tokens=8, temperature=0.0))  # warm-up
        backend.reset_prefix_cache()
        t = time.perf_counter()
        replies = backend.chat(prompts, sampling)
        gen_seconds = time.perf_counter() - t
        output_tokens = sum(r.completion_tokens for r in replies)

        pairs = read_human_pairs(REPO / "judging" / "data" / "hh_harmless_base_100.jsonl", args.pairs)
        conversations = [pair.prompt + [{"role": "assistant", "content": text}]
                         for pair in pairs for text in (pair.chosen, pair.rejected)]
        prompt_tokens = sum(len(backend._token_ids(c)) for c in conversations)
        backend.reset_prefix_cache()
        t = time.perf_counter()
        scored = backend.response_logprobs(conversations)
        logprob_seconds = time.perf_counter() - t
        errors = [s.error for s in scored if s.error]
    finally:
        backend.close()
    write_json(args.out, {
        "dtype": args.dtype, "isa": args.isa, "engine_start_s": round(start_seconds, 1),
        "generation": {"prompts": len(prompts), "max_tokens": args.gen_tokens, "output_tokens": output_tokens,
                       "seconds": round(gen_seconds, 2), "output_tok_s": round(output_tokens / gen_seconds, 1),
                       "sample": replies[0].text[:200]},
        "prompt_logprobs": {"sequences": len(conversations), "prompt_tokens": prompt_tokens,
                            "seconds": round(logprob_seconds, 2),
                            "prompt_tok_s": round(prompt_tokens / logprob_seconds, 1), "errors": errors[:3]},
        "loadavg_after": os.getloadavg(),
    })


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--isa", nargs="+", choices=["native", "avx2"], default=["native", "avx2"])
    parser.add_argument("--order", default="bfloat16,float32,float32,bfloat16",
                        help="dtypes in the order their engines run (A-B-B-A by default)")
    parser.add_argument("--gen-prompts", type=int, default=32)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.isa = args.isa[0]
        return _child(args)

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for isa in args.isa:
            for i, dtype in enumerate(args.order.split(",")):
                env = dict(os.environ, **(AVX2_ONLY if isa == "avx2" else {}))
                if isa == "avx2":
                    env["PYTHONPATH"] = os.pathsep.join([AVX2_ONLY["PYTHONPATH"], os.environ.get("PYTHONPATH", "")])
                child = ["--child", "--dtype", dtype, "--isa", isa, "--gen-prompts", str(args.gen_prompts),
                         "--gen-tokens", str(args.gen_tokens), "--pairs", str(args.pairs)]
                result = run_child("bench.dtype_bench", child, Path(tmp) / f"{isa}-{i}.json", 1800, log, env=env)
                log(json.dumps(result))
                runs.append(result)
    summary = {}
    for isa in args.isa:
        for part, key in (("generation", "output_tok_s"), ("prompt_logprobs", "prompt_tok_s")):
            by_dtype = {}
            for run in runs:
                if run.get("isa") == isa and part in run:
                    by_dtype.setdefault(run["dtype"], []).append(run[part][key])
            if {"bfloat16", "float32"} <= by_dtype.keys():
                bf16, fp32 = (sum(v) / len(v) for v in (by_dtype["bfloat16"], by_dtype["float32"]))
                summary[f"{isa} {part} {key}"] = {"bfloat16": round(bf16, 1), "float32": round(fp32, 1),
                                                  "float32 / bfloat16": round(fp32 / bf16, 2)}
    write_json(args.out, {"machine": machine(), "command": " ".join(["python -m bench.dtype_bench", *sys.argv[1:]]),
                          "summary": summary, "runs": runs})
    log(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
