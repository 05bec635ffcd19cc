"""The report's plots: matplotlib figures rendered to SVG text that the page inlines.

Each ``*_figure`` takes the run's data and returns a ``Figure`` or ``None`` when there is
nothing to plot; ``report_sections.all_figures`` groups them into the page's sections with a note where a
plot is missing and why.  Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no
global state) and text stays text in the SVG (``svg.fonttype: none``), escaped by matplotlib.
"""

from __future__ import annotations

import io
from collections import Counter

from core.text import shorten
from training.methods import TRAINING_METHODS

from .run_files import NO_PRINCIPLE, RunFiles, row_principles

BLUE, ORANGE, GREEN, RED, GREY = "#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8C8C8C"
STYLE = {
    "svg.fonttype": "none",       # text as <text>, searchable and small
    "svg.hashsalt": "cai-report",  # stable ids: the same run gives the same page
    "text.parse_math": False,     # a '$' in a principle id or tag is text, not math
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
}


def short(label: str, width: int = 36) -> str:
    """A tick label short enough to leave room for the plot (the row browser shows it in full)."""
    return shorten(label, width, placeholder="\u2026")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def to_svg(figure, element_id: str) -> str:
    """The figure as an ``<svg>`` element (no XML prolog) with ``id=element_id``."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({**STYLE, "svg.id": element_id}):
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _styled(build):
    """Run ``build`` under the report's matplotlib style (fonts and spines are read when artists are made)."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        return build()


def _barh(ax, labels: list[str], series: list[tuple[str, list[float], str]], width: int = 36) -> None:
    """Stacked horizontal bars, one row per label, largest total on top."""
    left = [0.0] * len(labels)
    for name, values, color in series:
        ax.barh(range(len(labels)), values, left=left, color=color, label=name)
        left = [a + b for a, b in zip(left, values)]
    ax.set_yticks(range(len(labels)), [short(label, width) for label in labels])
    for y, total in enumerate(left):
        ax.text(total, y, f" {total:g}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.margins(x=0.12)


# -- data ---------------------------------------------------------------------------------
def rows_per_principle_figure(run: RunFiles):
    if not run.revisions:
        return None
    passing, flagged = Counter(), Counter()
    for row in run.revisions:
        for principle in row_principles(row):
            (flagged if row.get("flags") else passing)[principle] += 1
    names = sorted(set(passing) | set(flagged), key=lambda p: (-(passing[p] + flagged[p]), p))

    def build():
        fig = _figure(7, 0.8 + 0.28 * len(names))
        ax = fig.add_subplot()
        series = [("passes the checks", [passing[p] for p in names], BLUE)]
        if run.has_flags:
            series.append(("flagged", [flagged[p] for p in names], ORANGE))
        _barh(ax, names, series)
        ax.set_xlabel("rows (a row revised under k principles counts once for each)")
        if run.has_flags:
            fig.legend(loc="outside upper right", frameon=False, ncols=2)
        return fig

    return _styled(build)


def flags_figure(run: RunFiles):
    counts = Counter(str(f.get("check", "flag")) for row in run.revisions for f in row.get("flags") or []
                     if isinstance(f, dict))
    if not counts:
        return None
    names = sorted(counts, key=lambda c: (-counts[c], c))

    def build():
        fig = _figure(7, 0.8 + 0.28 * len(names))
        ax = fig.add_subplot()
        _barh(ax, names, [("rows", [counts[c] for c in names], ORANGE)])
        ax.set_xlabel(f"rows flagged, of {len(run.revisions)} (a row may fail several checks)")
        return fig

    return _styled(build)


def length_figure(run: RunFiles):
    points = [(len(str(r.get("initial_response") or "").split()), len(str(r.get("final_response") or "").split()),
               bool(r.get("flags"))) for r in run.revisions if r.get("rounds")]
    if not points:
        return None

    def build():
        fig = _figure(7, 3.2)
        scatter, histogram = fig.subplots(1, 2, width_ratios=[1, 1.2])
        top = max(max(d, f) for d, f, _ in points) or 1
        for flagged, color, name in ((False, BLUE, "passes the checks"), (True, ORANGE, "flagged")):
            chosen = [(d, f) for d, f, fl in points if fl == flagged]
            if chosen:
                scatter.scatter([d for d, _ in chosen], [f for _, f in chosen], s=14, color=color, alpha=0.75, label=name)
        scatter.plot([0, top], [0, top], color=GREY, linewidth=0.8, linestyle="--", label="same length")
        scatter.set_xlabel("draft (words)")
        scatter.set_ylabel("final revision (words)")
        scatter.legend(frameon=False, fontsize=7)
        changes = [f - d for d, f, _ in points]
        histogram.hist(changes, bins=min(20, max(5, len(changes) // 2)), color=BLUE, edgecolor="white")
        histogram.axvline(0, color=GREY, linewidth=0.8, linestyle="--")
        histogram.set_xlabel("revision minus draft (words)")
        histogram.set_ylabel("rows")
        return fig

    return _styled(build)


# -- judge ----------------------------------------------------------------------------------
def confidence_figure(run: RunFiles):
    probabilities = [p["chosen_probability"] for p in run.pairs if isinstance(p.get("chosen_probability"), (int, float))]
    if not probabilities:
        return None

    def build():
        fig = _figure(7, 2.8)
        ax = fig.add_subplot()
        edges = [0.5 + i * 0.025 for i in range(21)]
        ax.hist(probabilities, bins=edges, color=BLUE, edgecolor="white")
        mean = sum(probabilities) / len(probabilities)
        ax.axvline(mean, color=RED, linewidth=1, label=f"mean {mean:.3f}")
        ax.set_xlim(0.5, 1.0)
        ax.set_xlabel("judge's P(chosen is better) per pair (0.5 = no preference)")
        ax.set_ylabel("pairs")
        ax.legend(frameon=False)
        return fig

    return _styled(build)


def order_figure(run: RunFiles):
    """Per pair: P(chosen better) with chosen shown first against shown second; off the diagonal, order mattered."""
    points = []
    for pair in run.pairs:
        orders = [s["orders"] for s in (pair.get("principle_scores") or {}).values()
                  if isinstance(s, dict) and isinstance(s.get("orders"), list) and len(s["orders"]) == 2
                  and all(isinstance(v, (int, float)) for v in s["orders"])]
        if orders:
            points.append((sum(o[0] for o in orders) / len(orders), sum(o[1] for o in orders) / len(orders)))
    if not points or all(abs(a - b) < 1e-9 for a, b in points):
        return None  # no pairs, or an order-free method: every point on the diagonal says nothing
    consistent = sum(1 for a, b in points if (a - 0.5) * (b - 0.5) > 0)

    def build():
        fig = _figure(7, 3.2)
        ax = fig.add_subplot()
        ax.scatter([a for a, _ in points], [b for _, b in points], s=14, color=BLUE, alpha=0.75)
        ax.axvline(0.5, color=GREY, linewidth=0.8, linestyle="--")
        ax.axhline(0.5, color=GREY, linewidth=0.8, linestyle="--")
        ax.plot([0, 1], [0, 1], color=GREY, linewidth=0.6)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("P(chosen better), chosen shown first (A)")
        ax.set_ylabel("... chosen shown second (B)")
        ax.set_title(f"{consistent} of {len(points)} pairs keep their winner when the options swap", fontsize=9)
        return fig

    return _styled(build)


def judge_principles_figure(run: RunFiles):
    """Per principle: mean confidence and, for order-sensitive methods, order consistency and first-option wins."""
    per = (run.judge_report or {}).get("per_principle") or {}
    names = [name for name, stats in per.items() if stats.get("comparisons")]
    if not names:
        return None
    measures = [("mean confidence", "mean_confidence", BLUE), ("order consistency", "order_consistency", GREEN),
                ("first option wins", "first_option_wins", ORANGE)]
    order_free = all(per[n].get("order_free_comparisons") == per[n].get("comparisons") for n in names)
    if order_free:
        measures = measures[:1]  # an order-free method is consistent by construction

    def build():
        fig = _figure(7, 1.1 + 0.3 * len(names) * len(measures) ** 0.5)
        ax = fig.add_subplot()
        height = 0.8 / len(measures)
        for k, (label, key, color) in enumerate(measures):
            values = [per[n].get(key) for n in names]
            ys = [i + (k - (len(measures) - 1) / 2) * height for i in range(len(names))]
            ax.barh([y for y, v in zip(ys, values) if v is not None], [v for v in values if v is not None],
                    height=height, color=color, label=label)
        ax.set_yticks(range(len(names)), [short(n) for n in names])
        ax.invert_yaxis()
        ax.axvline(0.5, color=GREY, linewidth=0.8, linestyle="--")
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of comparisons")
        fig.legend(loc="outside upper right", frameon=False, ncols=len(measures))
        return fig

    return _styled(build)


def dropped_figure(run: RunFiles):
    report = run.judge_report or {}
    outcomes = {"pair made": report.get("pairs_made") or 0, **(report.get("dropped_by_reason") or {})}
    flagged = report.get("flagged_rows_left_out") or 0
    if flagged and "flagged" not in " ".join(outcomes):
        outcomes["left out: flagged by the checks"] = flagged
    outcomes = {k: v for k, v in outcomes.items() if v}
    if not outcomes:
        return None
    names = sorted(outcomes, key=lambda k: (k != "pair made", -outcomes[k], k))

    def build():
        fig = _figure(7, 0.8 + 0.28 * len(names))
        ax = fig.add_subplot()
        _barh(ax, names, [("rows", [outcomes[n] for n in names], GREY)], width=48)
        ax.patches[0].set_color(GREEN)
        ax.set_xlabel("input rows")
        return fig

    return _styled(build)


# -- agreement and eval: a share with its 95% interval, against chance ------------------------
def interval_figure(entries: list[tuple[str, float, list[float], int]], xlabel: str):
    """``entries``: (label, share, [low, high], n); one point with its interval per label, chance at 0.5."""
    if not entries:
        return None

    def build():
        fig = _figure(7, 1.0 + 0.32 * len(entries))
        ax = fig.add_subplot()
        for y, (label, share, (low, high), n) in enumerate(entries):
            color = GREY if low <= 0.5 <= high else (GREEN if share > 0.5 else RED)
            ax.errorbar([share], [y], xerr=[[share - low], [high - share]], fmt="o", color=color, capsize=3)
            ax.text(1.02, y, f"{share:.2f} [{low:.2f}, {high:.2f}]  n={n}", va="center", fontsize=8,
                    transform=ax.get_yaxis_transform())
        ax.set_yticks(range(len(entries)), [short(e[0]) for e in entries])
        ax.invert_yaxis()
        ax.axvline(0.5, color=GREY, linewidth=0.8, linestyle="--")
        ax.set_xlim(0, 1)
        ax.set_xlabel(xlabel)
        return fig

    return _styled(build)


def agreement_figure(report: dict):
    entries = [("all pairs", report["agreement"], report["agreement_ci95"], report.get("human_pairs", 0))]
    for name, stats in (report.get("per_principle") or {}).items():
        if stats.get("agreement") is not None and stats.get("agreement_ci95"):
            entries.append((name, stats["agreement"], stats["agreement_ci95"], stats.get("human_pairs", 0)))
    return interval_figure(entries, "share of pairs where the judge prefers the human's choice (grey: includes chance)")


def reliability_figure(bins: list[dict]):
    """The reliability diagram: per bin of the judge's stated confidence, how often people agreed (with its 95%
    interval), against the diagonal of a calibrated judge; the point's size grows with its pairs."""
    if not bins:
        return None

    def build():
        fig = _figure(4.6, 3.6)
        ax = fig.add_subplot()
        ax.plot([0.5, 1.0], [0.5, 1.0], color=GREY, linestyle="--", linewidth=0.8, label="calibrated")
        xs = [b["mean_confidence"] for b in bins]
        ys = [b["agreement"] for b in bins]
        lows = [y - b["ci95"][0] for y, b in zip(ys, bins)]
        highs = [b["ci95"][1] - y for y, b in zip(ys, bins)]
        ax.errorbar(xs, ys, yerr=[lows, highs], fmt="none", ecolor=BLUE, elinewidth=0.8, capsize=2)
        ax.scatter(xs, ys, s=[18 + 4 * min(b["pairs"], 60) for b in bins], color=BLUE, zorder=3, label="judge")
        for x, y, b in zip(xs, ys, bins):
            ax.annotate(f"n={b['pairs']}", (x, y), textcoords="offset points", xytext=(6, -10), fontsize=7)
        ax.set_xlim(0.48, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("judge's stated confidence, max(p, 1 - p)")
        ax.set_ylabel("how often people agreed")
        ax.legend(loc="lower right", frameon=False, fontsize=8)
        return fig

    return _styled(build)


def win_rate_figure(run: RunFiles):
    rates = (run.evaluation or {}).get("win_rate") or {}
    entries = [(tag, s["win_rate"], s["ci95"], s.get("n", 0)) for tag, s in rates.items()
               if s.get("win_rate") is not None and s.get("ci95")]
    entries.sort(key=lambda e: e[0] != "all")
    return interval_figure(entries, "trained model's win rate against its base (ties count half)")


# -- training -------------------------------------------------------------------------------
def training_figure(method: str, summary: dict):
    """The curves the training method declares (``TrainingMethod.curves``), the first three its log holds."""
    history = [e for e in summary.get("log_history") or [] if isinstance(e, dict)]
    panels = []
    for key, label in TRAINING_METHODS.get(method).curves:
        points = [(e.get("step", i), e[key]) for i, e in enumerate(history)
                  if isinstance(e.get(key), (int, float)) and e.get(key) == e.get(key)]
        if points:
            panels.append((label, points))
    panels = panels[:3]
    if not panels:
        return None

    def build():
        fig = _figure(7, 2.4)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (label, points) in zip(axes, panels):
            ax.plot([s for s, _ in points], [v for _, v in points], color=BLUE, marker="o" if len(points) < 30 else None,
                    markersize=3, linewidth=1.2)
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("step")
        return fig

    return _styled(build)


def reward_distribution_figure(summary: dict):
    """RLOO and GRPO: the distribution of every completion's reward, one panel per reward source."""
    sources = [(name, values) for name, values in (summary.get("reward_values") or {}).items()
               if isinstance(values, list) and values]
    if not sources:
        return None

    def build():
        fig = _figure(7, 2.4)
        axes = fig.subplots(1, len(sources), squeeze=False)[0]
        for ax, (name, values) in zip(axes, sources):
            ax.hist(values, bins=min(20, max(5, len(values) // 4)), color=GREEN if name == "judge" else BLUE,
                    edgecolor="white")
            ax.set_title(f"{name} ({len(values)} completions)", fontsize=9)
            ax.set_xlabel("reward")
        axes[0].set_ylabel("completions")
        return fig

    return _styled(build)


__all__ = ["NO_PRINCIPLE", "to_svg"]
