"""Shards against a fleet of real servers: two vLLM OpenAI servers on 127.0.0.1, one CPU core each.

Two shards run at once, one per server; a fault proxy in front of one server that stays down trips that
shard's circuit breaker alone, and its rerun completes the folder.  Then Ray (a local ``ray.init``) runs the
two shard tasks of recipes/scale-out/ray_shards.py against the two servers.  The servers take two
cores: run it alone on a small machine.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from cai.status import status
from core.shards import shard_of
from reliability.harness import REPO, cli_env, rows_of, start_cli, write_prompts
from reliability.servers import FaultProxy

pytestmark = [pytest.mark.engine,
              pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two one-core servers need two cores")]


def shard_args(prompts: Path, out: Path, base_url: str | None, model: str, shard: str | None = None) -> list[str]:
    args = ["generate", "--prompts", str(prompts), "--out", str(out), "--backend", "openai", "--model", model,
            "--seed", "0", "--max-tokens", "24", "--examples", "0", "--constitution", str(REPO / "principles.yaml")]
    return args + (["--base-url", base_url] if base_url else []) + (["--shard", shard] if shard else [])


def ids_of(folder: Path) -> list[str]:
    return sorted(row["id"] for part in folder.glob("part-*.jsonl") for row in rows_of(part))


def test_two_shards_on_two_servers_and_a_fault_stops_only_its_shard(vllm_server_pair, served_model, tmp_path):
    first, second = vllm_server_pair
    prompts = write_prompts(tmp_path / "prompts.jsonl", 40)
    ids = [f"p{i}" for i in range(40)]
    on_second = sum(shard_of(i, 2) == 1 for i in ids)
    assert on_second >= 17  # more than the circuit breaker's 16 failures in a row
    out = tmp_path / "revisions"
    # The second server's fault proxy resets every connection: an endpoint that stays down.
    with FaultProxy(second.removesuffix("/v1")) as proxy:
        proxy.down = True
        processes = [start_cli(shard_args(prompts, out, url, served_model, f"{index}/2"), tmp_path / f"shard{index}.log")
                     for index, url in enumerate((first, proxy.base_url))]
        codes = [process.wait(600) for process in processes]
    logs = [(tmp_path / f"shard{index}.log").read_text() for index in (0, 1)]
    assert codes[0] == 0, logs[0][-3000:]
    assert codes[1] == 1 and "is not answering" in logs[1], logs[1][-3000:]

    result = status(out)
    zero, one = result["parts"]
    assert zero["finished"] and zero["rows"] == zero["total"] == 40 - on_second and zero["failed"] == 0
    assert not one["finished"] and one["state"].startswith("stopped (error)")
    assert one["rows"] < on_second and not result["all_finished"]

    # The rerun of the stopped shard, against its server now answering, completes the folder.
    rerun = start_cli(shard_args(prompts, out, second, served_model, "1/2"), tmp_path / "rerun.log")
    assert rerun.wait(600) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    result = status(out)
    assert result["all_finished"] and result["rows"] == result["total"] == 40 and result["failed"] == 0
    assert ids_of(out) == sorted(ids)
    rows = [row for part in out.glob("part-*.jsonl") for row in rows_of(part)]
    assert all(row["final_response"].strip() and row["rounds"] for row in rows)


def load_ray_recipe():
    spec = importlib.util.spec_from_file_location("ray_shards", REPO / "recipes" / "scale-out" / "ray_shards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ray_runs_the_shard_tasks_against_the_two_servers(vllm_server_pair, served_model, tmp_path):
    ray = pytest.importorskip("ray")
    recipe = load_ray_recipe()
    prompts = write_prompts(tmp_path / "prompts.jsonl", 8)
    out = tmp_path / "revisions"
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    try:
        # num_gpus=0: these shards use servers (on a GPU cluster each task takes num_gpus=1 and its own engine)
        results = recipe.run_shards(shard_args(prompts, out, None, served_model), 2, num_gpus=0,
                                    base_urls=list(vllm_server_pair),
                                    env={**cli_env(), "PYTHONPATH": str(REPO)})
    finally:
        ray.shutdown()
    assert [r["returncode"] for r in results] == [0, 0], [r["stderr"][-2000:] for r in results]
    commands = [r["command"] for r in results]
    for index, (command, url) in enumerate(zip(commands, vllm_server_pair)):
        assert command[command.index("--shard") + 1] == f"{index}/2"
        assert command[command.index("--base-url") + 1] == url  # shard i on server i
    result = status(out)
    assert result["all_finished"] and result["rows"] == 8
    assert ids_of(out) == sorted(f"p{i}" for i in range(8))
