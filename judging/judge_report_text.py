"""A judge report (``JudgeReport.as_dict`` or ``merged_report``) as the lines a terminal shows, and the yield line."""

from __future__ import annotations


def judges_lines(report: dict) -> list[str]:
    """Each judge's figures and their mutual agreement, when there are several."""
    if not report.get("judges"):
        return []
    lines = ["  each judge:"]
    table = principle_table(report["judges"], [
        ("comparisons", "comparisons"), ("refusals", "refusals"), ("failures", "failures"),
        ("order-cons.", "order_consistency"), ("confidence", "mean_confidence"), ("agreement", "agreement")])
    lines.append(table.replace("principle", "judge    ", 1))
    for pair, figure in report.get("judges_agree", {}).items():
        ci = figure["agreement_ci95"]
        lines.append(f"  judges {pair} agree on {format_figure(figure['agreement'])} of {figure['comparisons']} "
                     "comparisons"
                     + (f" (95% CI [{ci[0]:.3f}, {ci[1]:.3f}])" if ci else ""))
    return lines


def format_figure(value) -> str:
    """A figure as a report shows it: a float to three places, None as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def principle_table(per_principle: dict[str, dict], columns: list[tuple[str, str]]) -> str:
    if not per_principle:
        return ""
    width = max(len(pid) for pid in per_principle)
    header = f"  {'principle':<{width}}  " + "  ".join(f"{title:>11}" for title, _ in columns)
    lines = [header]
    for pid, stats in per_principle.items():
        lines.append(f"  {pid:<{width}}  " + "  ".join(f"{format_figure(stats.get(key)):>11}" for _, key in columns))
    return "\n".join(lines)


def _flag_lines(report: dict) -> list[str]:
    if not report.get("flagged_rows"):
        return []
    by_check = ", ".join(f"{name}: {n}" for name, n in report["flagged_by_check"].items())
    left_out = report["flagged_rows_left_out"]
    what = ("kept (--keep-flagged)" if not left_out else "left out (--keep-flagged keeps them)"
            if left_out == report["flagged_rows"] else f"{left_out} left out, the others kept (--keep-flagged)")
    return [f"  flagged rows:            {report['flagged_rows']} {what}: {by_check}"]


def _duplicate_lines(report: dict) -> list[str]:
    if not report.get("duplicate_rows"):
        return []
    by_kind = ", ".join(f"{name.replace('_', ' ')}: {n}" for name, n in report["duplicates_by_kind"].items() if n)
    left_out = report["duplicate_rows_left_out"]
    what = ("kept (--keep-duplicates)" if not left_out else "left out (--keep-duplicates keeps them)"
            if left_out == report["duplicate_rows"] else f"{left_out} left out, the others kept (--keep-duplicates)")
    return [f"  duplicate rows:          {report['duplicate_rows']} {what}: {by_kind}"]


def _parts_line(report: dict) -> list[str]:
    parts = report.get("parts")
    if not parts:
        return []
    line = f"  parts merged:            {len(parts['merged'])} of {parts['count']}"
    if parts["missing"]:
        line += " (not merged: " + ", ".join(f"{m['part']}: {m['why']}" for m in parts["missing"]) + ")"
    return [line]


def format_judge_report(report: dict) -> str:
    lines = [
        f"judge report{' of ' + report['parts']['folder'] if report.get('parts') else ''}: {report['rows']} rows -> {report['pairs_made']} pairs, {report['pairs_dropped']} dropped"
        + (f", {report['flagged_rows_left_out']} flagged rows left out" if report.get("flagged_rows_left_out") else "")
        + (f", {report['duplicate_rows_left_out']} duplicate rows left out" if report.get("duplicate_rows_left_out")
           else "")
        + (" (" + ", ".join(f"{k}: {v}" for k, v in report["dropped_by_reason"].items()) + ")" if report["dropped_by_reason"] else ""),
        *_parts_line(report),
        *_flag_lines(report),
        *_duplicate_lines(report),
        f"  comparisons judged:      {report['comparisons']} ({report['failures']} failed, "
        f"{report.get('refusals', 0)} refused, "
        f"{report['parse_failures']} parse failures, {report['label_outside_top_k']} with a label outside the top tokens"
        + (f"; {report['by_fallback_judge']} by the fallback judge" if report.get("by_fallback_judge") else "") + ")",
        f"  order consistency:       {format_figure(report['order_consistency'])}"
        + ("  (order-free method: by construction)" if report["order_free_comparisons"] else ""),
        f"  first option wins:       {format_figure(report['first_option_wins'])}",
        f"  mean confidence:         {format_figure(report['mean_confidence'])}",
        f"  longer response wins:    {format_figure(report['longer_response_wins'])}",
        f"  chosen is the revision:  {format_figure(report['chosen_is_revision'])}",
    ]
    table = principle_table(report["per_principle"], [
        ("comparisons", "comparisons"), ("order-cons.", "order_consistency"), ("first-wins", "first_option_wins"),
        ("confidence", "mean_confidence"), ("longer-wins", "longer_response_wins"), ("failures", "failures"),
        ("refusals", "refusals")])
    if table:
        lines += ["  per principle:", table]
    lines += judges_lines(report)
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)


def format_yield(funnel: dict) -> str:
    """One line: ``yield: 0.20 pairs per prompt (40 prompts -> 40 rows -> 9 flagged ... -> 8 pairs)``."""
    steps = [f"{funnel['prompts']} prompts"]
    if funnel["not_generated"]:
        steps.append(f"{funnel['rows']} rows ({funnel['not_generated']} failed to generate)")
    steps += [f"{n} {why} left out" for why, n in funnel["left_out"].items()]
    steps.append(f"{funnel['judged']} judged")
    steps += [f"{n} dropped: {why}" for why, n in funnel["dropped"].items()]
    steps.append(f"{funnel['pairs']} pairs")
    share = "-" if funnel["pairs_per_prompt"] is None else f"{funnel['pairs_per_prompt']:.2f}"
    return f"yield: {share} pairs per prompt ({' -> '.join(steps)})"
