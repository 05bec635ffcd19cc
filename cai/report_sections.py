"""The report page's plot sections: each plot of ``report_plots`` with its title and caption, and a note where a
plot is missing and why."""

from __future__ import annotations

from .report_plots import (agreement_figure, confidence_figure, dropped_figure, flags_figure, judge_principles_figure,
                           length_figure, order_figure, reward_distribution_figure, rows_per_principle_figure, to_svg,
                           training_figure, win_rate_figure)
from .run_files import RunFiles


def _entry(figure, element_id: str, title: str, caption: str = "") -> dict | None:
    if figure is None:
        return None
    return {"id": element_id, "title": title, "svg": to_svg(figure, element_id), "caption": caption}


def all_figures(run: RunFiles) -> list[dict]:
    """The page's plot sections: ``{"id", "title", "figures": [...], "notes": [...]}``."""
    sections = []

    def section(section_id: str, title: str, figures: list[dict | None], notes: list[str]) -> None:
        figures = [f for f in figures if f]
        if figures or notes:
            sections.append({"id": section_id, "title": title, "figures": figures, "notes": notes})

    notes = []
    if not run.revisions:
        notes.append("No revisions.jsonl in this run folder.")
    elif not run.has_flags:
        notes.append("These rows carry no quality flags (they were written before the checks existed).")
    elif not any(row.get("flags") for row in run.revisions):
        notes.append(f"All {len(run.revisions)} rows pass the quality checks.")
    section("data", "Generated data", [
        _entry(rows_per_principle_figure(run), "plot-principles", "Rows per principle"),
        _entry(flags_figure(run), "plot-flags", "Flags per check",
               "Rows the quality checks flagged, by check; `cai judge` leaves flagged rows out unless --keep-flagged."),
        _entry(length_figure(run), "plot-lengths", "Draft to revision length",
               "Each point is a row; below the dashed line the revision is shorter than the draft."),
    ], notes)

    report = run.judge_report or {}
    notes = []
    if report.get("order_consistency") is not None:
        kind = "order-free method: by construction" if report.get("order_free_comparisons") else \
            f"first option wins {report.get('first_option_wins')}"
        notes.append(f"Order consistency {report['order_consistency']:.2f} ({kind}); "
                     f"{report.get('pairs_with_orders_agreeing', 0)} of {report.get('pairs_made', 0)} pairs agree in both orders.")
    if not run.pairs and not report:
        notes.append("No preferences.jsonl or judge report in this run folder.")
    section("judge", "Judge", [
        _entry(confidence_figure(run), "plot-confidence", "Judge confidence",
               "How sure the judge is of each pair it made; near 0.5 it barely prefers either response."),
        _entry(order_figure(run), "plot-order", "Order consistency per pair",
               "Each pair judged with the chosen response as option (A) and as option (B); in the top-right "
               "quadrant the winner survives the swap, near the diagonal the position did not matter."),
        _entry(judge_principles_figure(run), "plot-judge-principles", "Judge per principle",
               "Mean confidence per principle; for order-sensitive methods also how often the winner survives "
               "swapping the options and how often the first option wins (0.5: no position bias)."),
        _entry(dropped_figure(run), "plot-dropped", "What became of each input row"),
    ], notes)

    figures = [_entry(agreement_figure(report), f"plot-agreement-{i}", f"Agreement with human labels: {name}",
                      f"{report.get('file', name)}: judge {report.get('judge', {}).get('model', '?')} "
                      f"(method {report.get('judge', {}).get('method', '?')}).")
               for i, (name, report) in enumerate(run.agreements)]
    notes = [] if figures else ["No agreement report here. Measure the judge: `cai judge agreement --pairs FILE "
                                f"--out {run.run_dir}/agreement.json` (label your own pairs with `cai label {run.run_dir}`)."]
    section("agreement", "Judge against human labels", figures, notes)

    figures, notes = [], []
    for name, summary in run.training:
        entry = _entry(training_figure(name, summary), f"plot-training-{name}", f"Training: {name}",
                       f"{summary.get('method', name)} from {summary.get('base_model', '?')}, "
                       f"{summary.get('global_step', '?')} steps.")
        rewards = _entry(reward_distribution_figure(summary), f"plot-rewards-{name}", f"Rewards: {name}",
                         "Every completion's reward per source while training. The judge's is its probability of "
                         "beating the other completions of the prompt (groupwise: a group's mean is 0.5 by "
                         "construction) or the reference answer (pointwise); a judge at chance makes it noise.")
        if entry:
            figures.extend([entry, rewards])
        else:
            notes.append(f"{name}/cai_training.json has no log history (trained before the history was kept); "
                         f"last log: {summary.get('last_log') or '-'}")
    section("training", "Training", figures, notes)

    evaluation = run.evaluation or {}
    notes = []
    if evaluation.get("unjudged"):
        notes.append(f"{evaluation['unjudged']} prompt(s) could not be judged.")
    if evaluation.get("reward_model"):
        rm = evaluation["reward_model"]
        if rm.get("accuracy") is not None and rm.get("ci95"):
            notes.append(f"Reward model accuracy on {rm.get('pairs')} pairs: {rm['accuracy']:.2f} "
                         f"(95% CI [{rm['ci95'][0]:.2f}, {rm['ci95'][1]:.2f}]).")
    section("eval", "Evaluation", [
        _entry(win_rate_figure(run), "plot-winrate", "Win rate per tag",
               f"{evaluation.get('trained_model', '?')} against {evaluation.get('base_model', '?')} on held-out prompts."),
    ], notes)
    return sections
