"""The GPU check (bench/gpu_check.sh, bench/dpo_mfu.py: DPO's share of a GPU's bf16 peak) runs end to end on the CPU in
its dry run (a tiny model): `cai train dpo` trains, the tokens are counted, the MFU figure is printed with how
they were counted, and nothing `cai train dpo` imports is missing from what the GPU machine has or is carried to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_the_dry_run_trains_counts_and_prints_the_mfu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run", "--workdir", str(tmp_path / "w")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "dpo_mfu_dry.json").read_text())

    tokens = result["tokens"]
    assert result["dry_run"] and result["shape"] == "tiny" and tokens["pairs"] == 12
    assert result["steps"] == 6  # one epoch of 12 pairs at the CPU's batch of 2: the device defaults applied
    assert result["device_settings"]["chosen"]["per_device_train_batch_size"] == 2
    assert 0 < tokens["longest_sequence"] <= tokens["max_length"] and tokens["tokens"] > 2 * 12 * 10
    assert result["flops"] == 8 * result["parameters"] * tokens["tokens"]  # 6N trained + 2N reference a token
    assert result["mfu"] == pytest.approx(result["flops"] / result["train_seconds"] / 1e12)
    assert result["missing_on_device"] == []  # everything cai train dpo imports is on the device or carried
    assert f"MFU {result['mfu']:.1%} of 1 TFLOP/s bf16 peak" in done.stdout
    assert "tokens counted: N = " in done.stdout and "padding not counted" in done.stdout
    assert "the figure means nothing" in done.stdout


def test_peaks_by_device_name():
    from bench.dpo_mfu import bf16_peak

    assert bf16_peak("NVIDIA H100 80GB HBM3") == bf16_peak("NVIDIA H200") == 989.4e12
    assert bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert bf16_peak("Some Future GPU") is None  # the script then asks for --peak-tflops
