"""``cai generate``."""

from __future__ import annotations

import textwrap
from pathlib import Path

from .config import GenerateConfig
from .store import manifest_path


def _short(text: str, width: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def generate(argv: list[str]) -> int:
    from trl import TrlParser

    from .run import generate as run_generate

    parser = TrlParser([GenerateConfig], prog="cai generate")
    (config,) = parser.parse_args_and_config(argv)
    result = run_generate(config)
    counts = result["counts"]
    print(
        f"{config.out}: {counts['rows']} rows ({counts['generated']} generated now, "
        f"{counts['already_done']} already done, {counts['failed']} failed); manifest {manifest_path(Path(config.out))}"
    )
    for row in result["examples"]:
        print(f"\n--- {row['id']} ({row['tag'] or 'untagged'}) principle {', '.join(r['principle_id'] for r in row['rounds'])}")
        print(textwrap.indent("prompt:  " + _short(row["prompt"][-1]["content"]), "  "))
        print(textwrap.indent("before:  " + _short(row["initial_response"]), "  "))
        print(textwrap.indent("after:   " + _short(row["final_response"]), "  "))
    return 1 if counts["failed"] else 0
