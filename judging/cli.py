"""``cai judge`` and ``cai judge agreement``."""

from __future__ import annotations

import textwrap

from core.config import parse_config
from core.progress import printable_line
from core.shards import Shard

from .config import AgreementConfig, JudgeConfig


def judge(argv: list[str]) -> int:
    from .run import run_judge

    config = parse_config(JudgeConfig, argv, prog="cai judge")
    result = run_judge(config)
    counts = result["counts"]
    print(result["text"])
    print(
        f"{result['out']}: {counts['pairs']} pairs ({counts['new_pairs']} new, {counts['dropped']} rows dropped; "
        f"{counts['judgements_run']} judgements run, {counts['judgements_cached']} cached); "
        f"SFT rows {result['sft_path']} ({counts['sft_rows']}); report {result['report_path']}"
        + (f"; judge card {result['card_path']}" if result.get("card_path") else "")
    )
    shard = Shard.parse(config.shard)
    if not shard.whole:  # where the folder of parts stands
        from .judge_report import merged_report

        judged = ((merged_report(config.out) or {}).get("parts") or {}).get("merged", [])
        print(f"{config.out}: {len(judged)} of {shard.count} parts judged; `cai status {config.out}` shows their "
              "report, merged")
    for pair in result["pairs"][:1]:
        print(f"\n--- {pair['id']}: chosen ({pair['source']['chosen']}) with P = {pair['chosen_probability']:.3f}")
        print(textwrap.indent("prompt:   " + printable_line(pair["prompt"][-1]["content"]), "  "))
        print(textwrap.indent("chosen:   " + printable_line(pair["chosen"][0]["content"]), "  "))
        print(textwrap.indent("rejected: " + printable_line(pair["rejected"][0]["content"]), "  "))
    return 1 if result["report"]["failures"] and not counts["pairs"] else 0


def agreement(argv: list[str]) -> int:
    from .agreement import run_agreement

    config = parse_config(AgreementConfig, argv, prog="cai judge agreement")
    result = run_agreement(config)
    print(result["text"])
    return 0 if result.get("human_pairs") else 1
