"""Device defaults: the settings `cai train` chooses for a CPU or a GPU, only where the user set nothing.

The GPU is faked by passing a `Device` to the pure `choose_settings`, a CPU's flags by faking its /proc/cpuinfo
text (as tests/test_hardware.py does for the engines' dtype); nothing here needs a GPU or trains.
"""

from __future__ import annotations

import pytest
from test_hardware import LAPTOP_AVX2, SAPPHIRE_RAPIDS, SKYLAKE_SERVER, ZEN4

from core.config import parse_config
from core.hardware import parse_cpuinfo
from training.device_defaults import AUTO_FIELDS, CPU, Device, choose_settings, detect_device, training_state_bytes
from training.methods import get_method

H100 = Device("cuda", "NVIDIA H100 80GB HBM3", memory_bytes=80 * 2**30, bf16=True)
H100_KERNELS = Device("cuda", "NVIDIA H100 80GB HBM3", memory_bytes=80 * 2**30, bf16=True, liger_kernel=True,
                      flash_attn=True)
V100 = Device("cuda", "Tesla V100-SXM2-16GB", memory_bytes=16 * 2**30, bf16=False, flash_attn=True)
SMOLLM2_1_7B = 1_711_376_384  # the shape bench/gpu_check.sh measures
REQUIRED = {"sft": [], "reward": [], "dpo": [], "ppo": ["--reward-model", "r"], "rloo": ["--reward-model", "r"],
            "grpo": ["--rewards", "judge"]}


def parse(method: str, *argv: str):
    """`cai train METHOD ARGV` parsed here (on this CPU), as the command parses it."""
    return parse_config(get_method(method).config_class,
                        ["--data", "d", "--output-dir", "o", *REQUIRED[method], *argv], f"cai train {method}")


def on(device: Device, config, parameters: int | None = SMOLLM2_1_7B) -> dict:
    """What `cai train` would choose on ``device`` for the fields the user left unset in ``config``."""
    return choose_settings(config, device, config.auto_settings["chosen"], parameters)


# ---------------------------------------------------------------- the CPU keeps its defaults

CPU_VALUES = {
    "bf16": False, "per_device_train_batch_size": 2, "per_device_eval_batch_size": 2, "gradient_checkpointing": False,
    "dataloader_pin_memory": False, "use_liger_kernel": False, "attn_implementation": "sdpa",
}


@pytest.mark.parametrize("method, extra", [
    ("sft", {"packing": False}),
    ("reward", {"per_device_eval_batch_size": 4}),
    ("dpo", {"precompute_ref_log_probs": False}),
    pytest.param("ppo", {"local_rollout_forward_batch_size": 2}, marks=pytest.mark.ppo),
    pytest.param("rloo", {"per_device_train_batch_size": 4, "per_device_eval_batch_size": 4},  # 4 completions
                 marks=pytest.mark.rl),
    pytest.param("grpo", {"per_device_train_batch_size": 4, "per_device_eval_batch_size": 4}, marks=pytest.mark.rl),
])
def test_cpu_defaults_are_those_of_earlier_releases(method, extra):
    config = parse(method)
    expected = {**CPU_VALUES, **extra}
    assert choose_settings(config, CPU, AUTO_FIELDS) == {name: expected[name] for name in AUTO_FIELDS
                                                         if name in expected}
    device = detect_device()
    if not device.is_gpu:  # this machine is a CPU: the parsed config holds them (bf16 by its flags), and says so
        expected["bf16"] = device.bf16
        assert config.auto_settings["device"] == device.describe()
        assert {name: config.auto_settings["chosen"][name] for name in expected} == expected
        assert {name: getattr(config, name) for name in expected} == expected


# ---------------------------------------------------------------- a CPU: bf16 where the engines' dtype is bfloat16


def on_this_cpu(monkeypatch, cpuinfo: str):
    """The machine is a CPU (no GPU, no other accelerator) whose /proc/cpuinfo reads ``cpuinfo``."""
    import torch

    import training.device_defaults

    monkeypatch.setattr(training.device_defaults, "this_cpu", lambda: parse_cpuinfo(cpuinfo, cores=2))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)


@pytest.mark.parametrize("cpuinfo, native", [
    (ZEN4, True), (SAPPHIRE_RAPIDS, True),  # avx512_bf16, AMX
    (SKYLAKE_SERVER, False), (LAPTOP_AVX2, False),  # bf16 emulated: several times slower than float32
])
@pytest.mark.parametrize("method", ["dpo", "reward", "sft"])
def test_on_a_cpu_bf16_autocast_follows_its_flags(monkeypatch, cpuinfo, native, method):
    on_this_cpu(monkeypatch, cpuinfo)
    config = parse(method)
    assert config.bf16 is native and config.auto_settings["chosen"]["bf16"] is native
    # transformers takes bf16 without a GPU only with use_cpu; float32 leaves use_cpu as it was
    assert config.use_cpu is native and ("use_cpu" in config.auto_settings["chosen"]) is native
    assert config.mixed_precision == ("bf16" if native else "no")
    assert config.auto_settings["precision"] == ("bf16 autocast, float32 weights (auto: native bf16)" if native
                                                 else "float32 weights, no autocast (auto: no native bf16)")
    assert config.auto_settings["device"] == f"cpu: {parse_cpuinfo(cpuinfo, cores=2).describe()}"


def test_on_a_cpu_bf16_set_by_the_user_wins_either_way(monkeypatch, tmp_path):
    on_this_cpu(monkeypatch, ZEN4)
    config = parse("dpo", "--bf16", "false")
    assert config.bf16 is False and config.use_cpu is False and config.mixed_precision == "no"
    assert "bf16" not in config.auto_settings["chosen"]
    assert config.auto_settings["precision"] == "float32 weights, no autocast (bf16 set)"
    mine = tmp_path / "mine.yaml"
    mine.write_text("bf16: false\n")
    assert parse("dpo", "--config", str(mine)).bf16 is False
    # Asked for where the CPU emulates it: given, and use_cpu with it (the user need not know transformers wants it).
    on_this_cpu(monkeypatch, LAPTOP_AVX2)
    config = parse("dpo", "--bf16", "true")
    assert config.bf16 is True and config.use_cpu is True and config.mixed_precision == "bf16"
    assert config.auto_settings["precision"] == "bf16 autocast, float32 weights (bf16 set)"


def test_a_cpu_beside_another_accelerator_keeps_float32(monkeypatch):
    """transformers trains on Apple MPS or Intel XPU when there is one: bf16's use_cpu would move the run off it."""
    import torch

    on_this_cpu(monkeypatch, ZEN4)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    config = parse("dpo")
    assert config.bf16 is False and config.use_cpu is False
    assert detect_device(use_cpu=True).bf16 is True  # --use-cpu true: the CPU it is, bf16 and all


# ---------------------------------------------------------------- a GPU gets GPU-fit settings


def test_dpo_on_an_h100_trains_in_bf16_with_precomputed_reference_and_larger_batches():
    chosen = on(H100, parse("dpo"))
    assert chosen == {
        "bf16": True, "attn_implementation": "sdpa", "use_liger_kernel": False, "precompute_ref_log_probs": True,
        "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
        # 1.7 B parameters x 16 bytes (fp32 weights, grads, AdamW) = 27 GB < 40% of 80 GiB: no recomputation
        "gradient_checkpointing": False, "dataloader_pin_memory": True,
    }


def test_gradient_checkpointing_follows_the_training_state_and_the_gpu_memory():
    config = parse("dpo")
    assert on(H100, config, 7_000_000_000)["gradient_checkpointing"] is True  # 112 GB of state
    assert on(H100, config, None)["gradient_checkpointing"] is True  # size unknown: the memory-safe choice
    assert on(V100, config)["gradient_checkpointing"] is True  # 27 GB of state on a 16 GB GPU
    lora = parse("dpo", "--use-peft")
    assert on(V100, lora)["gradient_checkpointing"] is False  # LoRA: 4 bytes a weight, 6.8 GB
    # A kept reference copy (precompute off) counts too.
    from training.dpo import DPOStage

    assert training_state_bytes(DPOStage, 10, False, "float32", keeps_reference=True) == 200


@pytest.mark.rl
def test_rl_keeps_a_reference_copy_at_beta_above_0_and_leaves_liger_to_the_user():
    from training.rloo import RLOOStage

    assert training_state_bytes(RLOOStage, 10, False, "bfloat16", keeps_reference=True) == 10 * (8 + 2)
    assert RLOOStage.keeps_reference(parse("rloo"), False) and not RLOOStage.keeps_reference(
        parse("rloo", "--beta", "0"), False)
    assert on(H100_KERNELS, parse("rloo"))["use_liger_kernel"] is False


def test_sharding_over_gpus_divides_the_state_and_keeps_dpo_reference_forwards_in_step():
    from dataclasses import replace

    fsdp8 = replace(H100, fsdp=True, shards=8)
    chosen = on(fsdp8, parse("dpo"), 7_000_000_000)
    assert chosen["gradient_checkpointing"] is False  # 126 GB of state over 8 GPUs: 16 GB each
    assert chosen["precompute_ref_log_probs"] is False  # TRL's pass would run the policy before FSDP places it
    assert on(replace(H100, shards=8), parse("dpo"), 7_000_000_000)["precompute_ref_log_probs"] is True  # ZeRO-3


def test_installed_kernels_are_used_where_trl_supports_them():
    sft = on(H100_KERNELS, parse("sft"))
    assert sft["attn_implementation"] == "flash_attention_2" and sft["packing"] is True
    assert sft["use_liger_kernel"] is True and sft["per_device_train_batch_size"] == 16
    # The confidence-aware DPO loss needs the logits, which Liger's fused loss never builds: precompute instead.
    smooth = on(H100_KERNELS, parse("dpo"))
    assert smooth["use_liger_kernel"] is False and smooth["precompute_ref_log_probs"] is True
    # Plain DPO takes Liger's loss, which TRL cannot combine with precomputed reference log-probs.
    plain = on(H100_KERNELS, parse("dpo", "--confidence", "none"))
    assert plain["use_liger_kernel"] is True and plain["precompute_ref_log_probs"] is False
    assert on(H100_KERNELS, parse("reward"))["use_liger_kernel"] is True


def test_a_gpu_without_bf16_keeps_float32_and_sdpa():
    chosen = on(V100, parse("sft"))
    assert chosen["bf16"] is False
    assert chosen["attn_implementation"] == "sdpa" and chosen["packing"] is False  # FlashAttention needs half precision
    assert on(V100, parse("sft", "--fp16", "true"))["attn_implementation"] == "flash_attention_2"
    assert on(H100, parse("sft", "--fp16", "true"))["bf16"] is False  # fp16 asked for: never both


@pytest.mark.ppo
def test_ppo_rollouts_get_trls_batch_on_a_gpu():
    assert on(H100, parse("ppo"))["local_rollout_forward_batch_size"] == 64
    from training.ppo import PPOStage  # its value and reward models count in its training state

    assert training_state_bytes(PPOStage, 10, False, "bfloat16", keeps_reference=True) == 10 * (8 + 2 + 8 + 2)


# ---------------------------------------------------------------- what the user sets wins


def test_flags_and_yaml_win_over_the_device_defaults(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("bf16: false\nper_device_train_batch_size: 3\nprecompute_ref_log_probs: false\n")
    config = parse("dpo", "--config", str(mine), "--gradient-checkpointing", "--attn-implementation", "eager")
    assert (config.bf16, config.per_device_train_batch_size, config.gradient_checkpointing) == (False, 3, True)
    assert config.precompute_ref_log_probs is False and config.attn_implementation == "eager"
    set_by_user = {"bf16", "per_device_train_batch_size", "precompute_ref_log_probs", "gradient_checkpointing",
                   "attn_implementation"}
    assert not set_by_user & set(config.auto_settings["chosen"])
    chosen = on(H100_KERNELS, config)
    assert not set_by_user & set(chosen)
    assert chosen["per_device_eval_batch_size"] == 6  # twice the user's training batch
    assert chosen["dataloader_pin_memory"] is True


def test_a_user_choice_steers_the_related_defaults():
    # Precomputing asked for: Liger's DPO loss cannot come with it, even where installed.
    assert on(H100_KERNELS, parse("dpo", "--confidence", "none", "--precompute-ref-log-probs", "true")) \
        ["use_liger_kernel"] is False
    # Liger turned off by hand: the reference log-probs are precomputed instead.
    assert on(H100_KERNELS, parse("dpo", "--confidence", "none", "--use-liger-kernel", "false")) \
        ["precompute_ref_log_probs"] is True
    # A synced reference changes during training: never precomputed.
    assert on(H100, parse("dpo", "--sync-ref-model", "true"))["precompute_ref_log_probs"] is False


def test_python_values_win_too():
    from training.sft import SFTStageConfig

    config = SFTStageConfig(data="d", output_dir="o", per_device_train_batch_size=5, packing=False)
    chosen = on(H100_KERNELS, config)
    assert "per_device_train_batch_size" not in chosen and "packing" not in chosen
    assert chosen["per_device_eval_batch_size"] == 10


def test_a_bool_flag_alone_means_true():
    config = parse("dpo", "--bf16", "--use-cpu", "true")
    assert config.bf16 is True and "bf16" not in config.auto_settings["chosen"]
