"""``core.hardware.freed_memory_kept``: inside, memory a step frees stays with the process for the next step (on a
CPU, fresh pages cost the kernel a fault and a zeroing each); on leaving it goes back to the system, so an engine
that starts next finds it free. Each case runs in its own process, which measures its own resident memory."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MIB = 2**20

SCRIPT = """
import json, numpy, psutil
from core.hardware import freed_memory_kept

def rss():
    return psutil.Process().memory_info().rss

with freed_memory_kept():
    before = rss()
    block = numpy.ones(300 * 2**20 // 8)  # 300 MiB, written
    del block
    inside = rss() - before
after = rss() - before
print(json.dumps({"kept_inside": inside, "kept_after": after}))
"""


def run_script(script: str, env_extra: dict, tmp_path: Path | None = None) -> dict:
    """Run ``script`` in a fresh interpreter (from a file in ``tmp_path`` where it spawns processes, which import
    its main module) without this process's GLIBC_TUNABLES; its last line of output is JSON."""
    if tmp_path is None:
        argv = [sys.executable, "-c", script]
    else:
        (tmp_path / "script.py").write_text(script)
        argv = [sys.executable, str(tmp_path / "script.py")]
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | env_extra | {"PYTHONPATH": str(REPO)}
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(env_extra: dict) -> dict:
    return run_script(SCRIPT, env_extra)


@pytest.mark.skipif(platform.system() != "Linux", reason="glibc's malloc")
def test_freed_memory_is_kept_inside_and_given_back_on_leaving():
    result = measure({})
    assert result["kept_inside"] > 250 * MIB
    assert result["kept_after"] < 50 * MIB


@pytest.mark.skipif(platform.system() != "Linux", reason="glibc's malloc")
def test_the_users_own_malloc_settings_are_left_alone():
    result = measure({"GLIBC_TUNABLES": "glibc.malloc.check=0"})
    assert result["kept_inside"] < 50 * MIB  # glibc's defaults: a 300 MiB block is unmapped when freed


SPAWN_SCRIPT = """
import json, multiprocessing, os
from core.hardware import spawned_processes_keep_freed_memory

def kept(queue):
    import numpy, psutil
    before = psutil.Process().memory_info().rss
    block = numpy.ones(300 * 2**20 // 8)  # 300 MiB, written
    del block
    queue.put([os.environ.get("GLIBC_TUNABLES"), psutil.Process().memory_info().rss - before])

def in_a_spawned_process():
    context = multiprocessing.get_context("spawn")  # as vLLM starts its engine's processes
    queue = context.Queue()
    process = context.Process(target=kept, args=(queue,))
    process.start()
    result = queue.get(timeout=60)
    process.join()
    return result

if __name__ == "__main__":
    with spawned_processes_keep_freed_memory():
        inside = in_a_spawned_process()
    after = in_a_spawned_process()
    print(json.dumps({"inside": inside, "after": after, "here": os.environ.get("GLIBC_TUNABLES")}))
"""


def spawn(tmp_path: Path, env_extra: dict) -> dict:
    return run_script(SPAWN_SCRIPT, env_extra, tmp_path)


@pytest.mark.skipif(platform.system() != "Linux", reason="glibc's malloc")
def test_only_processes_spawned_inside_keep_freed_memory(tmp_path):
    from core.hardware import MALLOC_TUNABLES

    result = spawn(tmp_path, {})
    (tunables, kept), (tunables_after, kept_after) = result["inside"], result["after"]
    assert tunables == MALLOC_TUNABLES and kept > 250 * MIB
    assert tunables_after is None and kept_after < 50 * MIB  # started after: glibc's defaults again
    assert result["here"] is None


@pytest.mark.skipif(platform.system() != "Linux", reason="glibc's malloc")
def test_a_spawned_process_gets_the_users_own_malloc_settings(tmp_path):
    result = spawn(tmp_path, {"GLIBC_TUNABLES": "glibc.malloc.check=0"})
    assert result["inside"][0] == result["after"][0] == result["here"] == "glibc.malloc.check=0"
    assert result["inside"][1] < 50 * MIB


HOLE_SCRIPT = """
import ctypes, json, psutil
from core.hardware import freed_memory_kept, give_back_freed_memory

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def rss():
    return psutil.Process().memory_info().rss

before = rss()
with freed_memory_kept():  # a trainer's buffers: on the heap, and still referenced when training ends
    block = libc.malloc(300 * 2**20)
    ctypes.memset(block, 1, 300 * 2**20)
    after_it = libc.malloc(2**20)
libc.free(block)  # freed later, below a block still in use: glibc does not trim the hole by itself
hole = rss() - before
give_back_freed_memory()
print(json.dumps({"hole": hole, "given_back": rss() - before}))
"""


@pytest.mark.skipif(platform.system() != "Linux", reason="glibc's malloc")
def test_memory_freed_after_training_goes_back_before_an_engine_starts():
    result = run_script(HOLE_SCRIPT, {})
    assert result["hole"] > 250 * MIB
    assert result["given_back"] < 50 * MIB
