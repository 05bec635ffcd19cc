"""``cai report RUN_DIR``: one self-contained HTML page about a run folder.

The page reads every stage's outputs (whichever exist): ``revisions.jsonl`` (rows, their
quality flags), ``preferences.jsonl`` and its ``.report.json`` (the judge; for sharded jobs' folders
``revisions/`` and ``preferences/``, their parts, and the parts' judge reports merged), agreement
reports (any ``*.json`` with ``agreement_ci95``, as ``cai judge agreement --out`` writes), the training folders'
``cai_training.json`` (the trainer's log history) and ``eval.json`` (win rates).  Plots are
matplotlib SVG inlined in the page (``cai/report_plots.py``); the row browser and its filters
are a few lines of inline JavaScript.  Nothing on the page reaches the network.

Text written by users and models is data: Jinja2 escapes everything it renders, and JSON
embedded in a ``<script>`` goes through ``tojson`` (which escapes ``<``, ``>`` and ``&``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError

from .run_files import RunFiles, load_run, row_principles

_TOKEN = re.compile(r"\s+|\w+|[^\w\s]")


@dataclass
class ReportConfig:
    """What ``cai report`` reads and where it writes the page."""

    run_dir: str = field(default="", metadata={"help": "The run folder (what `cai run` wrote), or a stage's --out "
                                                      "folder of shard parts: RUN_DIR, or --run-dir."})
    out: str | None = field(default=None, metadata={"help": "Where to write the page. Default: RUN_DIR/report.html."})
    agreement: str | None = field(
        default=None,
        metadata={"help": "Agreement report(s) from `cai judge agreement --out FILE` to plot, comma-separated. "
                          "Default: every agreement report (*.json with 'agreement_ci95') in RUN_DIR."},
    )

    def out_path(self) -> Path:
        return Path(self.out) if self.out else Path(self.run_dir) / "report.html"


# -- the row browser ----------------------------------------------------------------
#: The most tokens (words, spaces, punctuation) of one text the row browser marks changes in: the diff (an LCS
#: in C, rapidfuzz) takes O(n^2/64) time and memory, a few milliseconds and megabytes at this size.  Longer texts
#: are shown without marks, saying so.
MAX_DIFF_TOKENS = 10_000


def word_diff(before: str, after: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Word-level diff: ``before`` as (kind, text) pieces with kind "same" or "del", ``after`` with "same" or "ins".

    Texts longer than MAX_DIFF_TOKENS come back whole, unmarked (``too_long_to_diff`` says so).  The diff is a
    longest common subsequence of tokens, in time bounded by their lengths whatever the texts (difflib's
    matcher took minutes on repetitive ones: "ha " x 1,000 against "no " x 1,000).
    """
    from rapidfuzz.distance import Indel

    a, b = _TOKEN.findall(before), _TOKEN.findall(after)
    if too_long_to_diff(a, b):
        return [("same", before)] if before else [], [("same", after)] if after else []
    left: list[tuple[str, str]] = []
    right: list[tuple[str, str]] = []

    def put(pieces: list[tuple[str, str]], kind: str, tokens: list[str]) -> None:
        text = "".join(tokens)
        if not text:
            return
        if pieces and pieces[-1][0] == kind:
            pieces[-1] = (kind, pieces[-1][1] + text)
        else:
            pieces.append((kind, text))

    for op in Indel.opcodes(a, b):
        if op.tag == "equal":
            put(left, "same", a[op.src_start:op.src_end])
            put(right, "same", b[op.dest_start:op.dest_end])
        else:
            put(left, "del", a[op.src_start:op.src_end])
            put(right, "ins", b[op.dest_start:op.dest_end])
    return _join_runs(left), _join_runs(right)


def too_long_to_diff(before: str | list[str], after: str | list[str]) -> bool:
    """Whether either text (or token list) is longer than the row browser marks changes in."""
    count = lambda text: len(text) if isinstance(text, list) else len(_TOKEN.findall(text))  # noqa: E731
    return max(count(before), count(after)) > MAX_DIFF_TOKENS


def _join_runs(pieces: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A space alone between two changed pieces joins them: a rewritten phrase reads as one change."""
    out: list[tuple[str, str]] = []
    for kind, text in pieces:
        if out and kind == out[-1][0]:
            out[-1] = (kind, out[-1][1] + text)
        elif (kind != "same" and len(out) >= 2 and out[-1][0] == "same" and not out[-1][1].strip()
              and out[-2][0] == kind):
            space = out.pop()[1]
            out[-1] = (kind, out[-1][1] + space + text)
        else:
            out.append((kind, text))
    return out


def _prompt_turns(prompt) -> list[dict]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list):
        return [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))} for m in prompt if isinstance(m, dict)]
    return []


def _judge_of(pair: dict) -> dict:
    """The judge's view of a revision-mode pair: P(the revision is better)."""
    p = pair.get("chosen_probability")
    chosen = (pair.get("source") or {}).get("chosen")
    if not isinstance(p, (int, float)):
        return {}
    if chosen == "final_response":
        return {"p_revision": p, "prefers": "revision"}
    if chosen == "initial_response":
        return {"p_revision": 1 - p, "prefers": "draft"}
    return {"p_chosen": p, "prefers": str(chosen)}


def browser_rows(run: RunFiles) -> list[dict]:
    """One entry per generation row: its texts (diffed), principle(s), flags and the judge's probability."""
    judged = {str(p.get("id")): _judge_of(p) for p in run.pairs}
    rows = []
    for index, row in enumerate(run.revisions):
        draft = str(row.get("initial_response") or "")
        final = str(row.get("final_response") or "")
        draft_pieces, final_pieces = word_diff(draft, final)
        flags = [{"check": str(f.get("check", "flag")), "reason": str(f.get("reason", ""))}
                 for f in row.get("flags") or [] if isinstance(f, dict)]
        rounds = [r for r in row.get("rounds") or [] if isinstance(r, dict)]
        row_id = str(row.get("id", index))
        judge = judged.get(row_id, {})
        rows.append({
            "id": row_id,
            "tag": str(row.get("tag") or ""),
            "prompt": _prompt_turns(row.get("prompt")),
            "draft": draft_pieces,
            "critiques": [{"principle": str(r.get("principle_id", "")), "text": str(r.get("critique") or "")}
                          for r in rounds],
            "revision": final_pieces,
            "principles": row_principles(row),
            "flags": flags,
            "judge": judge,
            "judge_state": judge.get("prefers", "none") if judge.get("prefers") in (None, "revision", "draft") else "other",
            "words": [len(draft.split()), len(final.split())],
            "diff_note": (f"too long to mark the changes in (over {MAX_DIFF_TOKENS:,} words and spaces); "
                          "shown as written") if too_long_to_diff(draft, final) else "",
        })
    return rows


# -- the page ---------------------------------------------------------------------------
def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    # autoescape everywhere: every template here is HTML, and every value in it may be model text.
    return Environment(loader=PackageLoader("cai", "templates"), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True)


def render_template(name: str, **values) -> str:
    return _environment().get_template(name).render(**values)


def _tiles(run: RunFiles) -> list[dict]:
    """The headline numbers, each with what it means."""
    tiles = []
    if run.revisions:
        flagged = sum(1 for row in run.revisions if row.get("flags"))
        tiles.append({"label": "generation rows", "value": str(len(run.revisions)),
                      "note": f"{flagged} flagged" if run.has_flags else "no quality flags on these rows"})
    report = run.judge_report or {}
    if run.pairs or report:
        notes = [f"{report['pairs_dropped']} rows dropped"] if report.get("pairs_dropped") is not None else []
        if report.get("flagged_rows_left_out"):
            notes.append(f"{report['flagged_rows_left_out']} flagged rows left out")
        if report.get("duplicate_rows_left_out"):
            notes.append(f"{report['duplicate_rows_left_out']} duplicate rows left out")
        tiles.append({"label": "preference pairs", "value": str(len(run.pairs)), "note": ", ".join(notes)})
    if report:
        from judging.judge_report import yield_funnel

        funnel = yield_funnel(report, run.prompts)
        if funnel["pairs_per_prompt"] is not None:
            lost = [f"{n} {why}" for why, n in funnel["left_out"].items()] + [
                f"{n} {why}" for why, n in funnel["dropped"].items()]
            tiles.append({"label": "yield (pairs per prompt)", "value": f"{funnel['pairs_per_prompt']:.2f}",
                          "note": f"{funnel['pairs']} pairs from {funnel['prompts']} prompts"
                                  + ("; lost: " + ", ".join(lost) if lost else ""),
                          "warn": funnel["pairs_per_prompt"] < 0.5})
    if report.get("mean_confidence") is not None:
        order = report.get("order_consistency")
        note = ("order-free method" if report.get("order_free_comparisons")
                else f"order consistency {order:.2f}" if order is not None else "")
        tiles.append({"label": "judge mean confidence", "value": f"{report['mean_confidence']:.2f}", "note": note})
    for name, agreement in run.agreements[:1]:
        low, high = agreement["agreement_ci95"]
        chance = low <= 0.5 <= high
        tiles.append({"label": "agreement with humans", "value": f"{agreement['agreement']:.2f}",
                      "note": f"95% CI [{low:.2f}, {high:.2f}]" + (": chance" if chance else ""), "warn": chance})
    overall = ((run.evaluation or {}).get("win_rate") or {}).get("all")
    if overall and overall.get("win_rate") is not None and overall.get("ci95"):
        low, high = overall["ci95"]
        tiles.append({"label": "eval win rate", "value": f"{overall['win_rate']:.2f}",
                      "note": f"95% CI [{low:.2f}, {high:.2f}], n={overall['n']}"})
    return [{"note": "", "warn": False, **tile} for tile in tiles]


def _warnings(run: RunFiles) -> list[str]:
    found = list((run.judge_report or {}).get("warnings") or [])
    for name, agreement in run.agreements:
        low, high = agreement["agreement_ci95"]
        if low <= 0.5 <= high:
            found.append(f"{name}: the judge's agreement with human labels ({agreement['agreement']:.2f}, 95% CI "
                         f"[{low:.2f}, {high:.2f}]) is not distinguishable from chance; do not trust its pairs.")
    for file, count in run.skipped_lines.items():
        found.append(f"{file}: {count} unreadable line(s) left out (a run still writing, or a torn last line).")
    for file, (count, first) in run.damaged_rows.items():
        found.append(f"{file}: {count} damaged row(s) left out (the first, {first}).")
    for damaged in run.damaged_files:
        found.append(f"damaged, left out: {damaged}.")
    return found


def _pct(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def _agreement_cell(figure: dict | None) -> str:
    """An agreement with people as "0.62 [0.51, 0.72] (n=80)", or "-" without pairs."""
    if not figure or not figure.get("pairs"):
        return "-"
    low, high = figure["ci95"]
    return f"{figure['agreement']:.2f} [{low:.2f}, {high:.2f}] (n={figure['pairs']})"


def card_view(run: RunFiles) -> dict | None:
    """The judge card as the page shows it: headline figures, the per-principle table and its notes."""
    from .report_plots import reliability_figure, to_svg

    card = run.card
    if card is None:
        return None
    stats, people = card["statistics"], card.get("people") or {}
    figures = [
        ("comparisons judged", str(stats.get("comparisons") or 0),
         f"{stats.get('failures') or 0} failed, {stats.get('parse_failures') or 0} parse failures"),
        ("refusals", str(stats.get("refusals") or 0), f"{_pct(stats.get('refusal_rate'))} of the comparisons"),
    ]
    if card.get("fallback"):
        fallback = card["fallback"]
        figures.append(("fallback judge", str(fallback["answered"]),
                        f"answered by {fallback['model']}; {fallback['beyond_limit']} beyond its limit"))
    if people:
        figures += [("agreement excluding ties", _agreement_cell(people.get("excluding_ties")), "with people"),
                    ("agreement counting ties", _agreement_cell(people.get("counting_ties")),
                     f"{people.get('judge_ties') or 0} judge ties, {people.get('human_ties') or 0} human ties")]
        if people.get("ece") is not None:
            figures.append(("calibration error", f"{people['ece']:.3f}", "mean gap from the diagonal (ECE)"))
    for pair, figure in (card.get("judges_agree") or {}).items():
        figures.append((f"judges agree: {pair}", _pct(figure.get("agreement")), f"of {figure['comparisons']} comparisons"))
    rows = [{
        "id": row["id"], "rows": row["rows"], "flagged": row["flagged"],
        "flags": ", ".join(f"{name} {n}" for name, n in row["flags_by_check"].items()),
        "change": _pct(row["revision_change"]), "preferred": _pct(row["revision_preferred"]),
        "comparisons": row["comparisons"], "refusals": row["refusals"], "refusal_rate": _pct(row["refusal_rate"]),
        "failures": row["failures"], "confidence": "-" if row["mean_confidence"] is None else f"{row['mean_confidence']:.2f}",
        "agreement": _agreement_cell(row["agreement_excluding_ties"]),
        "agreement_ties": _agreement_cell(row["agreement_counting_ties"]),
    } for row in card["principles"]]
    diagram = reliability_figure(people.get("reliability") or [])
    judges = [{"name": name, **{key: figures_of.get(key) for key in ("comparisons", "refusals", "failures",
                                                                     "order_consistency", "mean_confidence")}}
              for name, figures_of in (card.get("judges") or {}).items()]
    return {"figures": [{"label": label, "value": value, "note": note} for label, value, note in figures],
            "rows": rows, "reliability": to_svg(diagram, "plot-reliability") if diagram is not None else None,
            "sampling": ((people.get("sampling") or {}).get("statement")), "people_file": people.get("file"),
            "judge": (card.get("judge") or {}).get("model"), "method": (card.get("judge") or {}).get("method"),
            "judges": judges, "combine": card.get("combine"),
            "notes": [w for w in card.get("warnings") or [] if w.startswith("principle ")]}


LEDGER_COLUMNS = (("calls", "calls"), ("prompt_tokens", "prompt tokens"), ("completion_tokens", "output tokens"),
                  ("cached_tokens", "cached tokens"), ("wall_s", "wall s"), ("device_s", "device s"))


def _ledger(run: RunFiles) -> dict | None:
    """The cost ledger's table (core/ledger.py): a run folder's, or a stage's folder of parts'."""
    from core.ledger import output_ledger, run_ledger
    from core.shards import part_files

    ledger = output_ledger(run.run_dir) if part_files(run.run_dir) else run_ledger(run.run_dir, run.revisions)
    if ledger is None or not ledger["stages"]:
        return None

    def cell(value) -> str:
        return "-" if value is None else f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"

    rows = [{"stage": name, "cells": [cell(entry.get(key)) for key, _ in LEDGER_COLUMNS]}
            for name, entry in ledger["stages"].items()]
    total = ledger["total"]
    rows.append({"stage": "total", "cells": ["", *(cell(total.get(key)) for key, _ in LEDGER_COLUMNS[1:5]), ""]})
    return {"columns": [title for _, title in LEDGER_COLUMNS], "rows": rows, "notes": ledger["notes"]}


def _duplicates(run: RunFiles) -> dict | None:
    """The judge's duplicate rows (core/dedup.py): counts by kind, and the first examples with both texts."""
    from core.dedup import method_record

    report = run.judge_report or {}
    if not report.get("duplicate_rows"):
        return None
    method = method_record()
    kinds = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in (report.get("duplicates_by_kind") or {}).items()
                      if n)
    left_out = report.get("duplicate_rows_left_out") or 0
    return {"summary": f"{report['duplicate_rows']} input rows repeat an earlier row ({kinds}); {left_out} left out "
                       "of the pairs" + ("" if left_out else " (--keep-duplicates)") + ". Near: Jaccard similarity of "
                       f"{method['shingle']} shingle sets >= {method['near_threshold']} (MinHash LSH candidates, "
                       "the similarity computed exactly).",
            "examples": [e for e in report.get("duplicate_examples") or [] if isinstance(e, dict)]}


def build_report(run: RunFiles) -> str:
    """The page's HTML."""
    from .report_sections import all_figures

    rows = browser_rows(run)
    principles = sorted({p for row in rows for p in row["principles"]})
    checks = sorted({f["check"] for row in rows for f in row["flags"]})
    tags = sorted({row["tag"] for row in rows if row["tag"]})
    return render_template(
        "report.html.j2",
        generator=GENERATOR,
        title=f"cai report: {run.run_dir}",
        run_dir=str(run.run_dir),
        tiles=_tiles(run),
        warnings=_warnings(run),
        sections=all_figures(run),
        card=card_view(run),
        rows=rows,
        principles=principles,
        checks=checks,
        tags=tags,
        has_flags=run.has_flags,
        ledger=_ledger(run),
        duplicates=_duplicates(run),
    )


#: the page's ``<meta name="generator">``: how ``cai report`` knows a file it may replace
GENERATOR = "cai report"


def is_report_page(path: Path) -> bool:
    """Whether ``path`` is a page ``cai report`` wrote (its generator tag is near the top)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    # (pages written before the generator tag: by their title)
    return f'<meta name="generator" content="{GENERATOR}">'.encode() in head or b"<title>cai report: " in head


def check_report_out(out: Path, flag: str = "--out", fix: str = "choose another --out") -> None:
    """Refuse to write the page over a folder, or over a file that is not a page ``cai report`` wrote (a run's
    rows, a manifest, the judge report, a user's own page)."""
    if out.is_dir():
        raise UserError(f"{flag} {out}: is a folder; pass a file path for the page")
    if out.exists() and out.stat().st_size and not is_report_page(out):
        raise UserError(f"{flag} {out} exists and is not a page written by `cai report`; it was left as it is: {fix}")


def write_report(run_dir: str | Path, out: str | Path | None = None, agreement: str | None = None,
                 overwrite: bool = False) -> Path:
    """Write the page for ``run_dir`` (default ``RUN_DIR/report.html``) and return its path; a file there that
    is not such a page is refused unless ``overwrite`` (``cai run --overwrite``)."""
    from core.store import atomic_write_text

    out = Path(out) if out else Path(run_dir) / "report.html"
    if not overwrite:
        check_report_out(out)
    run = load_run(run_dir, agreement)
    atomic_write_text(out, build_report(run))
    return out


def positional_run_dir(argv: list[str]) -> list[str]:
    """``cai report RUN_DIR ...`` -> ``--run-dir RUN_DIR ...`` (the config parser takes flags only)."""
    if argv and not argv[0].startswith("-"):
        return ["--run-dir", argv[0], *argv[1:]]
    return list(argv)


def report_command(argv: list[str]) -> int:
    """Entry point of ``cai report RUN_DIR [--out FILE] [--agreement FILE[,FILE]]``."""
    from core.config import parse_config

    config = parse_config(ReportConfig, positional_run_dir(argv), prog="cai report")
    if not config.run_dir:
        raise UserError("cai report: name the run folder: cai report RUN_DIR (the folder `cai run` wrote)")
    path = write_report(config.run_dir, config.out_path(), config.agreement)
    print(f"report: {path}")
    return 0
