#!/usr/bin/env bash
# One command on a GPU machine: DPO on the 1.7 B shape through `cai train dpo` with the GPU
# defaults, as a share of the GPU's bf16 peak (bench/dpo_mfu.py says how FLOPs and tokens are counted).
#
#   bash bench/gpu_check.sh --prepare   # here, once: Python 3.12 wheels of what the device image lacks (TRL,
#                                       # datasets, pydantic, ...) and the default model's config and tokenizer,
#                                       # into .gpu-check/ (git ignores it; about 5 MB)
#   bash bench/gpu_check.sh --dry-run   # here, on CPU: the same steps with a tiny model (make gpu-check-dry;
#                                       # tests/test_gpu_check.py runs it)
#   bash bench/gpu_check.sh             # on the GPU machine, from the repo root, with .gpu-check/ copied beside
#                                       #   the tree and $OUT naming a folder for the results (7 minutes is enough)
#
# On the GPU machine it installs the carried wheels into /tmp/site (no registry need be reachable there), checks that
# everything `cai train dpo` imports loads (seconds, before any GPU work), then runs the measurement; the
# figures land in $OUT/dpo_mfu.json and the whole log in $OUT/gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.gpu-check
PYTHON=${PYTHON:-.venv/bin/python}

case "${1:-}" in
--prepare)
    # The versions installed here (what the test suite passes with), as wheels for the device's Python 3.12.
    mkdir -p "$CARRY/wheels" "$CARRY/model"
    rm -f "$CARRY"/wheels/*.whl
    specs=$("$PYTHON" -c "
from importlib.metadata import version
from bench.dpo_mfu import CARRIED
print(' '.join(f'{name}=={version(name)}' for name in CARRIED))")
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$CARRY/wheels" $specs
    # The default model's config and tokenizer (its weights stay: the measurement initialises them at random).
    "$PYTHON" - "$CARRY/model" <<'EOF'
import shutil, sys
from pathlib import Path
from core.model import resolve_model
source, target = Path(resolve_model(None)), Path(sys.argv[1])
for path in source.iterdir():
    if path.is_file() and not path.name.endswith((".safetensors", ".bin", ".gguf")):
        shutil.copy(path, target / path.name)
EOF
    ls "$CARRY/wheels"
    du -sh "$CARRY"
    ;;
--dry-run)
    exec "$PYTHON" -m bench.dpo_mfu --dry-run --out "${OUT:-/tmp}/dpo_mfu_dry.json" "${@:2}"  # e.g. --workdir DIR
    ;;
"")
    set -o pipefail
    : "${OUT:?on the device, \$OUT names the folder the tool brings back}"
    if ! ls "$CARRY"/wheels/*.whl >/dev/null 2>&1 || [ ! -f "$CARRY/model/config.json" ]; then
        echo "gpu_check: $CARRY/ is missing or incomplete: run 'bash bench/gpu_check.sh --prepare' here and copy $CARRY beside the tree"
        exit 2
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$CARRY"/wheels/*.whl
    export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
    {
        nvidia-smi -L || true
        python3 -c "
import importlib.metadata as m, torch
import training.cli, training.dpo, trl, datasets, pydantic  # what cai train dpo loads, before any GPU work
print('python', __import__('sys').version.split()[0], '| torch', torch.__version__, '| cuda', torch.cuda.is_available())
print(' '.join(f'{d} {m.version(d)}' for d in ('transformers', 'accelerate', 'peft', 'trl', 'datasets', 'pyarrow', 'pydantic')))"
        python3 -m bench.dpo_mfu --out "$OUT/dpo_mfu.json" --workdir /tmp/dpo_mfu
    } 2>&1 | tee "$OUT/gpu_check.log"
    ;;
*)
    echo "usage: bash bench/gpu_check.sh [--prepare | --dry-run]" >&2
    exit 2
    ;;
esac
