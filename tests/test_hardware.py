"""The dtype chosen for the hardware (from faked /proc/cpuinfo texts), and what records it: rows, pairs, manifests,
and the line a resume in another dtype prints.  Stand-in backends model an engine that runs a given dtype."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from core.backends.registry import backend_options
from core.errors import UserError
from core.hardware import choose_dtype, dtype_change_note, parse_cpuinfo
from core.store import read_manifest
from generation.config import GenerateConfig
from generation.run import generate
from standins import NeverLoads, ScriptedBackend

REPO = Path(__file__).parent.parent

# The first processor's block of /proc/cpuinfo on three kinds of x86 CPU (flags shortened to those around the ISA).
LAPTOP_AVX2 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Core(TM) i5-10210U CPU @ 1.60GHz
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi1 bmi2 adx

processor\t: 1
model name\t: Intel(R) Core(TM) i5-10210U CPU @ 1.60GHz
flags\t\t: fpu sse avx512_bf16
"""
SKYLAKE_SERVER = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz
flags\t\t: fpu sse avx f16c fma avx2 avx512f avx512dq avx512cd avx512bw avx512vl
"""
SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu avx2 avx512f avx512_vnni amx_bf16 amx_tile amx_int8
"""
ZEN4 = """processor\t: 0
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni
"""


@pytest.mark.parametrize("text, isa, dtype", [
    (LAPTOP_AVX2, ["avx2"], "float32"),
    (SKYLAKE_SERVER, ["avx2", "avx512f"], "float32"),  # AVX-512 without its BF16 extension emulates bf16
    (SAPPHIRE_RAPIDS, ["avx2", "avx512f", "amx_bf16", "amx_tile"], "bfloat16"),
    (ZEN4, ["avx2", "avx512f", "avx512_bf16"], "bfloat16"),
])
def test_auto_dtype_follows_the_cpu_flags(text, isa, dtype):
    cpu = parse_cpuinfo(text, cores=2)
    assert cpu.isa == isa  # the first processor's flags only (the laptop's second block is not read)
    assert choose_dtype("auto", cpu) == dtype
    assert choose_dtype("float16", cpu) == "float16"  # a dtype asked for is what runs
    assert cpu.model in cpu.describe() and "2 cores" in cpu.describe()


def test_auto_dtype_on_a_gpu_is_bf16_where_supported():
    cpu = parse_cpuinfo(LAPTOP_AVX2)
    assert choose_dtype("auto", cpu, gpu_bf16=True) == "bfloat16"
    assert choose_dtype("auto", cpu, gpu_bf16=False) == "float16"


def test_an_unknown_dtype_is_refused_naming_the_flag():
    with pytest.raises(UserError, match=r"--dtype 'float64' is unknown; choose one of: auto, bfloat16, float16, float32"):
        backend_options("vllm", GenerateConfig(prompts="p", out="o", dtype="float64"))


class DtypeBackend(ScriptedBackend):
    """A stand-in engine that runs in ``dtype`` (as VLLMBackend says once it has chosen)."""

    def __init__(self, dtype: str):
        super().__init__()
        self.dtype = dtype


def write_prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question number {i}?"}) + "\n" for i in range(n)))
    return path


def rows_of(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_rows_and_manifest_record_the_dtype_and_a_resume_in_another_says_so(tmp_path, caplog):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
    out = tmp_path / "out.jsonl"
    cfg = GenerateConfig(prompts=str(prompts), out=str(out), constitution=str(REPO / "principles.yaml"), rounds=1,
                         limit=2)
    generate(cfg, backend=DtypeBackend("float32"))
    assert [row["dtype"] for row in rows_of(out)] == ["float32", "float32"]
    assert read_manifest(out)["config"]["dtype"] == "float32"

    # The same output resumed on a machine whose engine runs bfloat16: the rows there stay (valid data, each
    # says what made it), one line says so, the new row and the manifest record bfloat16.
    cfg.limit = None
    with caplog.at_level(logging.INFO, logger="cai"):
        result = generate(cfg, backend=DtypeBackend("bfloat16"))
    notes = [r.getMessage() for r in caplog.records if "another dtype" in r.getMessage()]
    assert notes == [f"{out}: rows already there were made in another dtype (2 in float32); this run uses bfloat16. "
                     "They are kept (each row records its dtype); pass --dtype to match them, or --overwrite to redo them"]
    assert result["counts"]["already_done"] == 2 and result["counts"]["generated"] == 1
    assert sorted(row["dtype"] for row in rows_of(out)) == ["bfloat16", "float32", "float32"]
    assert read_manifest(out)["config"]["dtype"] == "bfloat16"

    caplog.clear()  # a rerun with nothing to do loads no engine and keeps the manifest's dtype
    with caplog.at_level(logging.INFO, logger="cai"):
        generate(cfg, backend=NeverLoads())
    assert read_manifest(out)["config"]["dtype"] == "bfloat16"
    assert not [r for r in caplog.records if "another dtype" in r.getMessage()]


def test_a_shard_in_another_dtype_says_so(tmp_path, caplog):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 6)
    folder = tmp_path / "rows"

    def shard(i: int, dtype: str):
        cfg = GenerateConfig(prompts=str(prompts), out=str(folder), constitution=str(REPO / "principles.yaml"),
                             rounds=1, shard=f"{i}/2")
        generate(cfg, backend=DtypeBackend(dtype))

    shard(0, "bfloat16")
    with caplog.at_level(logging.INFO, logger="cai"):
        shard(1, "float32")
    notes = [r.getMessage() for r in caplog.records if "another dtype" in r.getMessage()]
    assert len(notes) == 1 and "in bfloat16); this run uses float32" in notes[0], notes


def test_no_note_when_the_dtype_is_the_same_or_unknown():
    assert dtype_change_note("x", "float32", {"float32": 4, None: 2}) is None  # None: rows from before dtypes
    assert dtype_change_note("x", None, {"float32": 4}) is None  # an endpoint: its dtype is the server's
