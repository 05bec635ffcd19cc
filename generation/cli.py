"""``cai generate``."""

from __future__ import annotations

import textwrap

from core.config import parse_config
from core.progress import printable_line
from core.shards import Shard, part_path
from core.store import manifest_path

from .config import GenerateConfig


def generate(argv: list[str]) -> int:
    from .run import generate as run_generate

    config = parse_config(GenerateConfig, argv, prog="cai generate")
    result = run_generate(config)
    counts = result["counts"]
    out = part_path(config.out, Shard.parse(config.shard))
    print(
        f"{out}: {counts['rows']} rows ({counts['generated']} generated now, "
        f"{counts['already_done']} already done, {counts['failed']} failed); manifest {manifest_path(out)}"
    )
    for row in result["examples"]:
        print(f"\n--- {printable_line(row['id'], 80)} ({printable_line(row['tag'] or 'untagged', 80)}) principle "
              f"{', '.join(r['principle_id'] for r in row['rounds'])}")
        print(textwrap.indent("prompt:  " + printable_line(row["prompt"][-1]["content"]), "  "))
        print(textwrap.indent("before:  " + printable_line(row["initial_response"]), "  "))
        print(textwrap.indent("after:   " + printable_line(row["final_response"]), "  "))
    return 1 if counts["failed"] else 0
