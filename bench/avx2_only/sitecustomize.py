"""A model of an AVX2-only x86 CPU on one that has AVX-512 (bench/dtype_bench.py --isa avx2).

vLLM's CPU build asks torch what the CPU has, to choose its kernel library (_C_AVX2, _C_AVX512 or _C)
and its attention ISA; torch answers from cpuinfo whatever ATEN_CPU_CAPABILITY says.  Every process
with this folder on PYTHONPATH (the engine's spawned workers too) is told: no AVX-512, no AVX-512
BF16, no AMX.  ONEDNN_MAX_CPU_ISA=AVX2 (set beside it) caps the oneDNN of vLLM's linear layers.
"""

import torch.cpu


def _no() -> bool:
    return False


for _name in ("_is_avx512_supported", "_is_avx512_vnni_supported", "_is_avx512_bf16_supported",
              "_is_amx_tile_supported", "_is_amx_fp16_supported"):
    if hasattr(torch.cpu, _name):
        setattr(torch.cpu, _name, _no)
