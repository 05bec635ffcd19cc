"""Run ``cai generate`` (or ``cai judge``) as N Ray tasks, one shard each, on an existing Ray cluster.

Each task asks Ray for ``--num-gpus`` GPUs (1 by default: Ray sets the task's ``CUDA_VISIBLE_DEVICES``, so
each shard's in-process vLLM engine has a GPU of its own) and runs ``cai ... --shard i/N`` as a subprocess,
so an engine's memory and threads go away with its shard.  With ``--base-urls``, shard i talks to server
i mod len (shards against a fleet of servers, or one router: then pass ``--num-gpus 0``).  A task whose
node is lost is retried by Ray (``max_retries``) and resumes from its part; a shard that ends with an error
is reported and the others go on (run the script again to finish the folder: finished parts are skipped).

    ray job submit --working-dir . -- python recipes/scale-out/ray_shards.py --shards 8 -- \\
        generate --prompts /shared/prompts.jsonl --out /shared/revisions --model /shared/models/policy
    cai status /shared/revisions

Paths must be on storage every node sees.  Prints one line per shard and exits non-zero when any failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import ray


def shard_command(cai_args: list[str], index: int, count: int, base_url: str | None = None) -> list[str]:
    """The shard's command: the same ``cai`` command every shard runs, plus its ``--shard`` (and endpoint)."""
    command = [sys.executable, "-m", "cai", *cai_args, "--shard", f"{index}/{count}"]
    return command + (["--base-url", base_url] if base_url else [])


@ray.remote(max_retries=3)
def run_shard(command: list[str], env: dict[str, str]) -> dict:
    """One shard, as a subprocess of the Ray worker (which holds the GPU Ray gave this task)."""
    completed = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
    return {"command": command, "returncode": completed.returncode, "stdout": completed.stdout[-2000:],
            "stderr": completed.stderr[-4000:]}


def run_shards(cai_args: list[str], count: int, num_gpus: float = 1, base_urls: list[str] | None = None,
               env: dict[str, str] | None = None) -> list[dict]:
    """Start the ``count`` shard tasks at once (Ray queues them until GPUs are free) and wait for all."""
    tasks = []
    for index in range(count):
        base_url = base_urls[index % len(base_urls)] if base_urls else None
        command = shard_command(cai_args, index, count, base_url)
        tasks.append(run_shard.options(num_gpus=num_gpus).remote(command, dict(env or {})))
    return ray.get(tasks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s --shards N [options] -- generate|judge CAI_OPTIONS")
    parser.add_argument("--shards", type=int, required=True, help="N: how many shards (Ray tasks).")
    parser.add_argument("--num-gpus", type=float, default=1, help="GPUs per shard (0 for shards on --base-urls).")
    parser.add_argument("--base-urls", default=None, help="Comma-separated OpenAI-compatible URLs; shard i uses "
                                                          "URL i mod their number (with --backend openai).")
    parser.add_argument("--address", default="auto", help="The Ray cluster to join (default: the one this runs in).")
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, cai_args = parser.parse_args(argv[:split]), argv[split + 1:]
    if not cai_args or cai_args[0] not in ("generate", "judge"):
        parser.error("after --, give the cai command to shard: generate ... or judge ...")
    if args.shards < 1:
        parser.error("--shards must be >= 1")
    ray.init(address=args.address)
    urls = [url for url in (args.base_urls or "").split(",") if url] or None
    results = run_shards(cai_args, args.shards, args.num_gpus, urls)
    for index, result in enumerate(results):
        state = "ok" if result["returncode"] == 0 else f"exit {result['returncode']}: {result['stderr'].strip()[-300:]}"
        print(f"shard {index}/{args.shards}: {state}")
    return 0 if all(result["returncode"] == 0 for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
