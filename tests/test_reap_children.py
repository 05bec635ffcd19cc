"""The end of every command ends the processes it started, and leaves multiprocessing's resource tracker alone:
the tracker ignores TERM and ends by itself with the command (ending it waited out two grace periods, then
killed it, and Python warned that it "died unexpectedly")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = """
import json, multiprocessing, time
from multiprocessing import resource_tracker
import psutil
from core.signals import reap_children

if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,))
    child.start()
    resource_tracker.ensure_running()
    tracker = resource_tracker._resource_tracker._pid
    reaped = reap_children(set())
    print(json.dumps({"reaped": reaped, "child": child.pid, "tracker": tracker,
                      "child_alive": psutil.pid_exists(child.pid) and psutil.Process(child.pid).status() != "zombie",
                      "tracker_alive": psutil.Process(tracker).is_running()}))
"""


def test_reaping_ends_the_commands_children_and_leaves_the_resource_tracker():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["child"] in result["reaped"] and not result["child_alive"]
    assert result["tracker"] not in result["reaped"] and result["tracker_alive"]
    assert "died unexpectedly" not in done.stderr
