"""``--help`` of every ``cai`` command, run as a user runs it (``python -m cai``), and a closed stdout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cai.cli import COMMANDS

REPO = Path(__file__).resolve().parent.parent
from training.methods import METHODS

# `cai train ppo --help` needs the ppo extra's TRL; without it, test_training_stages checks its message
TRAIN_METHODS = tuple(name for name, method in METHODS.items() if method.installed)

# What each command's help must name: its usage line, then options a user reaches for first.
# Keyed by the dispatcher's command table plus each training method, so a new command fails here until listed.
EXPECTED = {
    "": ["usage: cai COMMAND", *COMMANDS],
    "validate": ["usage: cai validate", "path"],
    "constitution import": ["usage: cai constitution import", "--out", "--few-shot", "--force"],
    "generate": ["usage: cai generate", "--prompts", "--out", "--constitution", "--backend", "--max-tokens", "--shard"],
    "judge": ["usage: cai judge", "--in", "--out", "--method", "--judge-model", "--shard"],
    "judge agreement": ["usage: cai judge agreement", "--pairs", "--method", "--limit"],
    "train": ["usage: cai train", *METHODS, "--data", "--output-dir", "cai train METHOD --help"],
    "eval": ["usage: cai eval", "--trained-model", "--prompts", "--out"],
    "run": ["usage: cai run", "--recipe"],
    "status": ["usage: cai status", "--out", "--json"],
    "report": ["usage: cai report", "--run-dir", "--out", "--agreement"],
    "label": ["usage: cai label", "--run-dir", "--source", "--out", "--port"],
    **{f"train {method}": [f"usage: cai train {method}", "--data", "--output-dir", "--max-steps", "--learning-rate"]
       for method in TRAIN_METHODS},
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


def test_every_command_is_covered():
    assert set(COMMANDS) | {f"train {m}" for m in TRAIN_METHODS} | {""} == set(EXPECTED)


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
