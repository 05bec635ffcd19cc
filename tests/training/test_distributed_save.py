"""Saving from several processes: the accelerate recipes parse, a 2-process CPU run writes one loadable folder,
and weights sharded by FSDP are gathered (and LoRA merged) into exactly the single-process folder.

accelerate runs FSDP and DeepSpeed only on GPUs, and DeepSpeed is not installed here: the FSDP2 gather runs
under torchrun with gloo (tests/training/fsdp_save_worker.py); ZeRO-3 is checked as far as its config file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes" / "accelerate"
WORKER = Path(__file__).with_name("fsdp_save_worker.py")

pytestmark = pytest.mark.multiprocess


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRL_EXPERIMENTAL_SILENCE="1",
                OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def _free_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("name, kind", [
    ("single_gpu.yaml", "NO"), ("multi_gpu.yaml", "MULTI_GPU"), ("fsdp.yaml", "FSDP"),
    ("deepspeed_zero3.yaml", "DEEPSPEED"),
])
def test_accelerate_recipes_parse_as_accelerate_reads_them(name, kind):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(RECIPES / name)
    assert config.distributed_type.value == kind
    if kind == "FSDP":  # sharded, and saved whole: what `cai train`'s gather expects
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if kind == "DEEPSPEED":  # without the 16-bit gather accelerate cannot hand rank 0 the full weights
        assert config.deepspeed_config["zero_stage"] == 3
        assert config.deepspeed_config["zero3_save_16bit_model"] is True
    assert name in (RECIPES / "README.md").read_text()


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_fsdp_sharded_weights_are_gathered_and_merged_into_the_single_process_folder(tmp_path, tiny_model_dir, kind):
    out = tmp_path / f"fsdp-{kind}"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _free_port(),
         str(WORKER), tiny_model_dir, str(out), kind],
        env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    sys.path.insert(0, str(WORKER.parent))
    try:
        from fsdp_save_worker import model_with_lora
    finally:
        sys.path.remove(str(WORKER.parent))
    import torch

    expected = model_with_lora(tiny_model_dir, kind == "lora")  # the same model, never sharded
    if kind == "lora":
        expected = expected.merge_and_unload()
    expected_weights = {name: tensor for name, tensor in expected.state_dict().items() if name != "lm_head.weight"}
    saved = _weights(out)
    assert set(saved) == set(expected_weights)  # lm_head is tied to the embeddings, as in a one-process save
    for name, tensor in expected_weights.items():
        assert torch.equal(saved[name], tensor), name
    if kind == "lora":  # merging changed the base weights
        assert not torch.equal(saved["model.layers.0.self_attn.q_proj.weight"],
                               _weights(Path(tiny_model_dir))["model.layers.0.self_attn.q_proj.weight"])
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)


def test_two_cpu_processes_train_and_rank_0_writes_one_loadable_folder(tmp_path, tiny_model_dir, preference_file):
    """`accelerate launch` of the multi-GPU recipe with 2 CPU processes (gloo): the folder matches a one-process run."""
    folders = {}
    for processes in (1, 2):
        out = tmp_path / f"dpo-{processes}"
        result = subprocess.run(
            [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(RECIPES / "multi_gpu.yaml"),
             "--num_processes", str(processes), "--mixed_precision", "no", "--main_process_port", _free_port(),
             "-m", "cai", "train", "dpo", "--data", preference_file, "--output-dir", str(out),
             "--model", tiny_model_dir, "--max-steps", "2", "--learning-rate", "1e-2", "--use-cpu", "true",
             "--disable-tqdm", "true"],
            env=_env(), capture_output=True, text=True, timeout=600, cwd=REPO,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        folders[processes] = out
    one, two = _weights(folders[1]), _weights(folders[2])
    assert {name: t.shape for name, t in two.items()} == {name: t.shape for name, t in one.items()}
    summaries = {n: json.loads((folder / "cai_training.json").read_text()) for n, folder in folders.items()}
    assert summaries[2]["global_step"] == 2 and summaries[2]["device_settings"]["device"].startswith("cpu")
    # Two processes saw twice the pairs in the same two steps: it really ran data-parallel.
    epochs = {n: summary["log_history"][-1]["epoch"] for n, summary in summaries.items()}
    assert epochs[2] == pytest.approx(2 * epochs[1])
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(folders[2])
