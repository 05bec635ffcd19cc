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


def measure(env_extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | env_extra
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux", reason="glibc's malloc")
def test_freed_memory_is_kept_inside_and_given_back_on_leaving():
    result = measure({})
    assert result["kept_inside"] > 250 * MIB
    assert result["kept_after"] < 50 * MIB


@pytest.mark.skipif(platform.system() != "Linux", reason="glibc's malloc")
def test_the_users_own_malloc_settings_are_left_alone():
    result = measure({"GLIBC_TUNABLES": "glibc.malloc.check=0"})
    assert result["kept_inside"] < 50 * MIB  # glibc's defaults: a 300 MiB block is unmapped when freed
