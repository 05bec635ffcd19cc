"""recipes/scale-out: the Slurm job array and the Kubernetes Indexed Job, rendered and run.

Each recipe's shard command is rendered as the scheduler would (Slurm: ``SLURM_ARRAY_TASK_ID`` and
``SLURM_ARRAY_TASK_COUNT``; Kubernetes: ``JOB_COMPLETION_INDEX`` and the container's env), run through a
``cai`` on PATH that records its arguments, against the stand-in server; the arguments must be those of
the shard command tests/test_shards.py runs, and the folder must hold the unsharded run's rows.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from core.yamlfile import read_yaml
from reliability.harness import REPO, rows_of, write_prompts
from reliability.servers import StandinServer
from test_shards import generate_args

RECIPES = REPO / "recipes" / "scale-out"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale-out")
    prompts = write_prompts(root / "prompts.jsonl", 16)
    shim = root / "bin" / "cai"
    shim.parent.mkdir()
    # A `cai` that logs its arguments (one JSON list a line) and runs this checkout's cai.
    shim.write_text(f"#!/bin/sh\n{shlex.quote(sys.executable)} -c 'import json, sys; "
                    f"print(json.dumps(sys.argv[1:]))' \"$@\" >> {shlex.quote(str(root / 'argv.jsonl'))}\n"
                    f"exec {shlex.quote(sys.executable)} -m cai \"$@\"\n")
    shim.chmod(0o755)
    with StandinServer() as server:
        yield {"root": root, "prompts": prompts, "server": server, "bin": shim.parent}


def cai_args(setup) -> str:
    """What the recipes take in CAI_ARGS to run against the stand-in (the rest is the recipe's own)."""
    args = generate_args(setup["prompts"], "OUT", setup["server"].base_url)
    fixed = {"--prompts", "--out", "--model", "--seed"}
    kept, skip = [], False
    for i, arg in enumerate(args[1:]):
        if skip:
            skip = False
            continue
        if arg in fixed:
            skip = True
            continue
        kept.append(arg)
    return shlex.join(kept)


def flags(argv: list[str]) -> dict[str, str]:
    """``generate --a 1 --b 2`` -> {"--a": "1", "--b": "2"} (every cai flag here takes a value)."""
    assert argv[0] == "generate"
    return dict(zip(argv[1::2], argv[2::2]))


def run_rendered(setup, command: list[str], env: dict[str, str], out: Path) -> None:
    env = {**os.environ, **env, "PATH": f"{setup['bin']}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "PROMPTS": str(setup["prompts"]), "OUT": str(out), "MODEL": "standin", "CAI_ARGS": cai_args(setup)}
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def logged(setup) -> list[list[str]]:
    path = setup["root"] / "argv.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    path.unlink()
    return lines


def expected_argv(setup, out: Path, shard: str) -> dict[str, str]:
    return flags(generate_args(setup["prompts"], out, setup["server"].base_url, "--shard", shard))


def unsharded_rows(setup) -> dict[str, dict]:
    out = setup["root"] / "all.jsonl"
    if not out.exists():
        from cai.cli import main as cai_main

        assert cai_main(generate_args(setup["prompts"], out, setup["server"].base_url)) == 0
    return {row["id"]: row for row in rows_of(out)}


def folder_rows(folder: Path) -> dict[str, dict]:
    return {row["id"]: row for part in sorted(folder.glob("part-*.jsonl")) for row in rows_of(part)}


def sbatch_options(script: str) -> dict[str, str]:
    options = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line.removeprefix("#SBATCH ").partition("=")
            options[key] = value
    return options


def test_the_slurm_array_runs_one_shard_per_task(setup):
    script = (RECIPES / "generate.sbatch").read_text()
    options = sbatch_options(script)
    assert options["--array"] == "0-7" and "--requeue" in options and options["--gres"] == "gpu:1"
    out = setup["root"] / "slurm"
    # Rendered for an array of 2 tasks (--array=0-1): each task gets its index and the array's size.
    for task in range(2):
        run_rendered(setup, ["bash", str(RECIPES / "generate.sbatch")],
                     {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": "2"}, out)
    argvs = logged(setup)
    assert [flags(argv) for argv in argvs] == [expected_argv(setup, out, f"{task}/2") for task in range(2)]
    assert folder_rows(out) == unsharded_rows(setup)
    # Without the array's environment (run outside sbatch) the script stops with a message, running nothing.
    done = subprocess.run(["bash", str(RECIPES / "generate.sbatch")], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"]})
    assert done.returncode != 0 and "sbatch --array" in done.stderr


def test_the_kubernetes_indexed_job_runs_one_shard_per_index(setup):
    job = read_yaml(RECIPES / "generate-job.yaml", "Kubernetes Job").data  # the project's safe YAML reader
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 8
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # what backoffLimitPerIndex requires
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {item["name"]: item["value"] for item in container["env"]}
    assert int(env["SHARDS"]) == spec["completions"]
    assert container["command"] == ["/bin/sh", "-c"] and "$JOB_COMPLETION_INDEX/$SHARDS" in container["args"][0]
    out = setup["root"] / "k8s"
    for index in range(2):  # rendered for completions: 2
        run_rendered(setup, ["/bin/sh", "-c", container["args"][0]],
                     {**env, "SHARDS": "2", "JOB_COMPLETION_INDEX": str(index)}, out)
    argvs = logged(setup)
    assert [flags(argv) for argv in argvs] == [expected_argv(setup, out, f"{index}/2") for index in range(2)]
    assert folder_rows(out) == unsharded_rows(setup)
