"""DPO through ``cai train dpo`` with the device's defaults, as a share of the GPU's bf16 peak.

What runs (``bash bench/gpu_check.sh`` on a GPU machine; bench/README.md, "DPO's share of a GPU's peak"):

- a model of SmolLM2-1.7B's shape, 1.71 B parameters: the default model's config scaled to 2,048 wide, 24
  layers, 32 heads, 8,192 MLP, with its tokenizer, weights initialised at random (the GPU machine has no copy of
  the weights; the same shape costs the same per token);
- 300 hh-style preference pairs: ``judging/data/hh_harmless_base_100.jsonl`` (Anthropic hh-rlhf
  harmless-base), three times, as TRL conversational pairs with a judge's ``chosen_probability`` (the default
  loss, confidence-aware DPO, reads it);
- one epoch of ``cai train dpo --data PAIRS --model FOLDER --output-dir DIR``: nothing else is set, so every
  device-dependent setting is the device's default (``training/device_defaults.py``: on a GPU bf16, batch 8,
  precomputed reference log-probabilities, ...), recorded in the run's ``cai_training.json``.

How FLOPs and tokens are counted (printed with the figure):

- N = the model's parameters, the embedding matrix included (it is tied to the output layer, whose matrix
  product is real work); attention's own FLOPs (quadratic in length) are left out, as 6N leaves them out.
- Tokens = for each pair, the tokens of prompt+chosen and of prompt+rejected as TRL tokenises them (the chat
  template applied to the whole conversation), each cut at DPO's ``max_length``; padding is not counted.
  One epoch: the policy trains on each of those tokens once, 6N each (forward and backward), and the reference
  model reads each once, 2N each (one forward, in the pass before training when reference log-probabilities
  are precomputed, else in the steps).
- MFU = (6N + 2N) x tokens / seconds / the GPU's bf16 dense peak, over the seconds ``cai train`` reports from
  building the trainer (tokenising, the reference pass) to the end of training (``train_seconds`` in
  ``cai_training.json``; loading and saving the model are outside it).  The training loop alone (the
  trainer's ``train_runtime``) is given too, with the FLOPs it ran.

``--dry-run``: the same steps on the CPU, with a tiny model of the same architecture and 12 pairs, against a
nominal peak of 1 TFLOP/s: it checks the script end to end (the figure means nothing).  It also lists the
Python distributions ``cai train dpo`` imported that neither the device image has nor ``gpu_check.sh`` carries
(``missing_on_device``: must be empty).

Run: ``python -m bench.dpo_mfu [--dry-run] [--model-source FOLDER] [--out FILE.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAIRS_SOURCE = REPO / "judging" / "data" / "hh_harmless_base_100.jsonl"
#: where ``gpu_check.sh --prepare`` puts the default model's config and tokenizer (no weights) for the device
CARRIED_MODEL = REPO / ".gpu-check" / "model"

#: model shapes over the default model's config (SmolLM2-135M-Instruct: the same architecture and tokenizer)
SHAPES = {
    "1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
             "num_key_value_heads": 32, "head_dim": 64},  # SmolLM2-1.7B
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16},
}
#: bf16 dense peak FLOP/s (vendor specifications, no sparsity), by a name ``torch.cuda.get_device_name`` contains
BF16_PEAK = [("H100 PCIe", 756e12), ("H100", 989.4e12), ("H200", 989.4e12), ("H800", 989.4e12), ("GH200", 989.4e12),
             ("A100", 312e12), ("L40S", 362.05e12), ("B200", 2250e12)]
DRY_RUN_PEAK = 1e12

#: distributions ``bench/gpu_check.sh --prepare`` downloads as Python 3.12 wheels (at the versions installed here)
CARRIED = ("trl", "datasets", "dill", "multiprocess", "pydantic", "pydantic-core", "annotated-types",
           "typing-inspection", "typing-extensions", "jsonlines", "tenacity")
#: imported here when installed, optional to their importer: sniffio by httpcore (huggingface_hub's HTTP stack)
OPTIONAL = ("sniffio",)
#: distributions installed on the GPU machine's image ('cuda'): what the check need not carry
DEVICE_IMAGE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp""".split()


def log(message: str) -> None:
    print(f"[dpo_mfu {time.strftime('%H:%M:%S')}] {message}", flush=True)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def bf16_peak(device_name: str) -> float | None:
    return next((peak for name, peak in BF16_PEAK if name.lower() in device_name.lower()), None)


def make_model(source: Path, shape: str, folder: Path, cuda: bool) -> int:
    """A model folder of ``shape`` with ``source``'s architecture and tokenizer, weights at random (seed 0);
    returns its parameter count (a tied matrix counted once)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(source)
    for name, value in SHAPES[shape].items():
        setattr(config, name, value)
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):  # initialised where it is fast: on the GPU there
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    del model
    return parameters


def write_pairs(path: Path, count: int) -> list[dict]:
    """``count`` hh-style pairs (the bundled 100, repeated) as TRL conversational rows, each with the judge's
    ``chosen_probability`` that ``cai train dpo``'s default (confidence-aware) loss reads, spread over 0.6-0.95."""
    from judging.agreement import read_human_pairs

    pairs = read_human_pairs(PAIRS_SOURCE)
    rows = [{"prompt": pair.prompt, "chosen": [{"role": "assistant", "content": pair.chosen}],
             "rejected": [{"role": "assistant", "content": pair.rejected}],
             "chosen_probability": round(0.6 + 0.35 * (i * 37 % 100) / 100, 3)} for i, pair in enumerate(pairs)]
    rows = [rows[i % len(rows)] for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return rows


def dpo_max_length() -> int | None:
    """DPO's ``max_length`` as ``cai train dpo`` uses it when unset (the config class's default)."""
    import dataclasses

    from training.dpo import DPOStageConfig

    return next(f.default for f in dataclasses.fields(DPOStageConfig) if f.name == "max_length")


def count_tokens(folder: Path, rows: list[dict], max_length: int | None) -> dict:
    """Tokens of prompt+chosen and prompt+rejected per pair, as TRL tokenises them, each cut at ``max_length``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)

    def length(messages) -> int:
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        return min(len(ids), max_length) if max_length else len(ids)

    chosen = [length(row["prompt"] + row["chosen"]) for row in rows]
    rejected = [length(row["prompt"] + row["rejected"]) for row in rows]
    return {"pairs": len(rows), "tokens": sum(chosen) + sum(rejected), "mean_sequence": (sum(chosen) + sum(rejected))
            / (2 * len(rows)), "longest_sequence": max(chosen + rejected), "max_length": max_length}


def requirements_closure(names) -> set[str]:
    """``names`` and every distribution they require, transitively, as installed here (extras left out)."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    seen, todo = set(), [normalise(name) for name in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            needs = requires(name) or []
        except PackageNotFoundError:
            continue
        for text in needs:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(normalise(requirement.name))
    return seen


def missing_on_device(importtime: str) -> list[str]:
    """Distributions whose modules ``python -X importtime`` reports imported that the device lacks: neither in
    its image (nor required by a package of it: the device's own versions bring their own) nor carried."""
    from importlib.metadata import packages_distributions

    owners = packages_distributions()
    modules = {line.split("|")[-1].strip().split(".")[0] for line in importtime.splitlines()
               if line.startswith("import time:") and "|" in line}
    there = requirements_closure(DEVICE_IMAGE) | {normalise(name) for name in CARRIED + OPTIONAL} | {"cai-engine"}
    missing = set()
    for module in modules:
        dists = {normalise(dist) for dist in owners.get(module, [])}
        if dists and not dists & there:  # a namespace (google) is there when one of its distributions is
            missing |= dists
    return sorted(missing)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.dpo_mfu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, a tiny model and 12 pairs: the script end to end.")
    parser.add_argument("--model-source", default=None,
                        help="Folder with the default model's config and tokenizer (default: .gpu-check/model when "
                             "there, else the embedded default model's folder).")
    parser.add_argument("--pairs", type=int, default=None, help="Pairs (default 300; 12 with --dry-run).")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="The GPU's bf16 dense peak in TFLOP/s (default: from its name, for H100, H200, A100, ...).")
    parser.add_argument("--out", default=None, help="Write the figures here (JSON).")
    parser.add_argument("--workdir", default=None, help="Where the model, pairs and trained folder go (default: a temp dir).")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        raise SystemExit("dpo_mfu: no CUDA GPU here; on CPU pass --dry-run (a tiny model: the figure means nothing)")
    device = torch.cuda.get_device_name(0) if cuda else "CPU (dry run)"
    peak = (args.peak_tflops * 1e12 if args.peak_tflops else bf16_peak(device) if cuda else DRY_RUN_PEAK)
    if peak is None:
        raise SystemExit(f"dpo_mfu: no bf16 peak known for {device!r}; pass --peak-tflops")
    if args.model_source:
        source = Path(args.model_source)
    elif CARRIED_MODEL.is_dir():
        source = CARRIED_MODEL
    else:
        from core.model import resolve_model

        source = Path(resolve_model(None))
    shape = "tiny" if args.dry_run else "1.7b"
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dpo_mfu-"))
    work.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    parameters = make_model(source, shape, work / "model", cuda)
    log(f"model of the {shape} shape: {parameters / 1e9:.3f} B parameters ({time.perf_counter() - started:.0f} s)")
    rows = write_pairs(work / "pairs.jsonl", args.pairs or (12 if args.dry_run else 300))
    if cuda:
        torch.cuda.empty_cache()

    # The dry run also lists what `cai train dpo` imports (-X importtime), to check what the device lacks.
    command = [sys.executable, *(["-X", "importtime"] if args.dry_run else []), "-m", "cai", "train", "dpo",
               "--data", str(work / "pairs.jsonl"), "--model", str(work / "model"), "--output-dir", str(work / "dpo")]
    log("$ python " + " ".join(command[1:]))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    output = done.stdout + "\n".join(line for line in done.stderr.splitlines() if not line.startswith("import time:"))
    print(output[-4000:], flush=True)
    if done.returncode:
        raise SystemExit(f"dpo_mfu: `cai train dpo` failed (exit {done.returncode}); its output is above")
    summary = json.loads((work / "dpo" / "cai_training.json").read_text())
    loop = next((entry for entry in reversed(summary.get("log_history") or []) if "train_runtime" in entry), {})

    tokens = count_tokens(work / "model", rows, dpo_max_length())
    chosen = summary.get("device_settings", {}).get("chosen", {})
    precomputed = bool(chosen.get("precompute_ref_log_probs"))
    flops = 8 * parameters * tokens["tokens"]  # 6N trained + 2N reference, per token
    seconds = summary["train_seconds"]
    loop_flops = (6 if precomputed else 8) * parameters * tokens["tokens"]
    result = {
        "device": device, "dry_run": args.dry_run, "shape": shape, "parameters": parameters,
        "bf16_peak_flops": peak, "pairs": tokens["pairs"], "epochs": 1, "steps": summary.get("global_step"),
        "tokens": tokens, "device_settings": summary.get("device_settings"),
        "train_seconds": seconds, "train_runtime": loop.get("train_runtime"), "wall_seconds_cai_train": round(wall, 1),
        "flops": flops, "mfu": flops / seconds / peak,
        "loop_flops": loop_flops, "loop_mfu": loop_flops / loop["train_runtime"] / peak if loop else None,
        "pairs_per_s": tokens["pairs"] / seconds,
        "tokens_counted": (f"N = {parameters:,} parameters (tied embedding once; attention FLOPs not counted); "
                           f"tokens = prompt+chosen and prompt+rejected of each of the {tokens['pairs']} pairs as TRL "
                           f"tokenises them (chat template), each cut at max_length {tokens['max_length']}, padding "
                           f"not counted: {tokens['tokens']:,} (mean {tokens['mean_sequence']:.0f} a sequence); one "
                           "epoch: each trained once (6N) and read once by the reference model (2N, "
                           f"{'precomputed before training' if precomputed else 'in the steps'})"),
        "command": "cai train dpo --data PAIRS --model FOLDER --output-dir DIR (device defaults; one epoch)",
        "missing_on_device": missing_on_device(done.stderr) if args.dry_run else None,
    }
    print(f"\nDPO on {device}: {tokens['pairs']} pairs, {result['steps']} steps in {seconds:.1f} s "
          f"({result['pairs_per_s']:.2f} pairs/s, {tokens['tokens'] / seconds:,.0f} tokens/s)")
    print(f"MFU {result['mfu']:.1%} of {peak / 1e12:,.0f} TFLOP/s bf16 peak ({flops / seconds / 1e12:.2f} TFLOP/s: "
          f"8N x {tokens['tokens']:,} tokens over train_seconds {seconds:.1f})"
          + (f"; training loop alone {result['loop_mfu']:.1%} ({'6N' if precomputed else '8N'} a token over "
             f"train_runtime {loop['train_runtime']:.1f} s)" if loop else ""))
    print(f"tokens counted: {result['tokens_counted']}")
    print(f"device settings: {summary.get('device_settings')}")
    if args.dry_run:
        print("dry run: a tiny model on the CPU against a nominal 1 TFLOP/s; the figure means nothing")
    if result["missing_on_device"]:
        print(f"warning: imported but neither on the device nor carried: {', '.join(result['missing_on_device'])}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
