"""``--help`` of every ``cai`` command, run as a user runs it (``python -m cai``), and a closed stdout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cai.cli import COMMANDS
from training.methods import TRAINING_METHODS

REPO = Path(__file__).resolve().parent.parent

# What each command's help must name besides its usage line: the options a user reaches for first.
# Every registered command and training method is checked (its usage line at least), whatever the registries hold.
OPTIONS = {
    "": [*COMMANDS],
    "validate": ["path"],
    "constitution import": ["--out", "--few-shot", "--overwrite"],
    "generate": ["--prompts", "--out", "--constitution", "--backend", "--max-tokens", "--shard"],
    "judge": ["--in", "--out", "--method", "--judge-model", "--shard"],
    "judge agreement": ["--pairs", "--method", "--limit"],
    "train": [*TRAINING_METHODS, "--data", "--output-dir", "cai train METHOD --help"],
    "eval": ["--trained-model", "--prompts", "--out"],
    "run": ["--recipe"],
    "status": ["--out", "--json"],
    "report": ["--run-dir", "--out", "--agreement"],
    "label": ["--run-dir", "--source", "--out", "--port"],
    **{f"train {method}": ["--data", "--output-dir", "--max-steps", "--learning-rate"] for method in TRAINING_METHODS},
}
# `cai train ppo --help` needs the ppo extra's TRL; without it, tests/training/test_rl.py checks its message
INSTALLED_METHODS = [name for name, method in TRAINING_METHODS.items() if method.installed]
EXPECTED = {
    name: [f"usage: cai {name or 'COMMAND'}", *OPTIONS.get(name, [])]
    for name in ["", *COMMANDS, *(f"train {method}" for method in INSTALLED_METHODS)]
}


def cai(*args: str, **options) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "cai", *args], cwd=REPO, env=env, text=True,
                            stderr=subprocess.PIPE, **options)


@pytest.fixture(scope="module")
def helps() -> dict[str, tuple[int, str, str]]:
    """Every command's ``--help``, started together: most import TRL, which takes seconds each."""
    started = {name: cai(*name.split(), "--help", stdout=subprocess.PIPE) for name in EXPECTED}
    results = {}
    for name, process in started.items():
        out, err = process.communicate(timeout=300)
        results[name] = (process.returncode, out, err)
    return results


@pytest.mark.parametrize("name", list(EXPECTED), ids=lambda name: name or "cai")
def test_help_exits_0_and_names_the_command_and_its_options(helps, name):
    code, out, err = helps[name]
    assert code == 0, err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]
    # HfArgumentParser lists an option as "--max_tokens MAX_TOKENS, --max-tokens MAX_TOKENS": look for either form.
    text = out.replace("_", "-")
    missing = [want for want in EXPECTED[name] if want.replace("_", "-") not in text]
    assert not missing, f"`cai {name} --help` does not mention {missing}:\n{out}"
    assert out.replace("_", "-").startswith(EXPECTED[name][0])


@pytest.mark.parametrize(("args", "code"), [
    (["--help"], 141),
    (["train", "--help"], 141),
    (["validate", "principles.yaml"], 141),
    (["validate", "--help"], 0),  # argparse's help ignores write errors itself
], ids=lambda value: " ".join(value) if isinstance(value, list) else str(value))
def test_a_closed_stdout_ends_quietly(args, code):
    """``cai --help | head -1``: the reader has gone before cai writes; no BrokenPipeError traceback."""
    read, write = os.pipe()
    os.close(read)  # the reader exits first, so every write to the pipe fails
    try:
        process = cai(*args, stdout=write)
    finally:
        os.close(write)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err  # 141 = 128 + SIGPIPE, as a shell reports a command its pipe closed
    assert err == ""  # no traceback, no "Exception ignored" from the exit flush
