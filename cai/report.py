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

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import UserError
from core.shards import part_files, stage_output
from training.methods import TRAINING_METHODS

NO_PRINCIPLE = "(no revision)"
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


# -- what the page reads of each file: checked before use; a file or row that fails is left out and named ----------
class _View(BaseModel):
    """The fields the page uses, with their types (others ignored: rows of older or newer versions still show)."""

    model_config = ConfigDict(extra="ignore", strict=True)


Number = Annotated[float, Field(allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]
Interval = Annotated[list[Number], Field(min_length=2, max_length=2)]


class _Turn(_View):
    role: str | None = None
    content: str | None = None


class _Round(_View):
    principle_id: str | None = None
    critique: str | None = None


class _Flag(_View):
    check: str
    reason: str = ""


class RevisionView(_View):
    """A ``cai generate`` row (core.schema.GenerationRow) as the page reads it."""

    id: str | int | None = None
    tag: str | None = None
    prompt: str | list[_Turn] | None = None
    initial_response: str | None = None
    final_response: str | None = None
    rounds: list[_Round] | None = None
    flags: list[_Flag] | None = None


class _PairSource(_View):
    chosen: str | None = None


class _Score(_View):
    orders: list[Number] | None = None


class PairView(_View):
    """A ``cai judge`` pair (core.schema.PreferenceRow) as the page reads it."""

    id: str | int | None = None
    chosen_probability: Number | None = None
    source: _PairSource | None = None
    principle_scores: dict[str, _Score] | None = None


class _PrincipleStats(_View):
    comparisons: Count | None = None
    mean_confidence: Number | None = None
    order_consistency: Number | None = None
    first_option_wins: Number | None = None
    order_free_comparisons: Count | None = None


class JudgeReportView(_View):
    """A judge report (``OUT.report.json``, judging/report.py) as the page reads it."""

    pairs_made: Count | None = None
    pairs_dropped: Count | None = None
    flagged_rows_left_out: Count | None = None
    dropped_by_reason: dict[str, Count] | None = None
    pairs_with_orders_agreeing: Count | None = None
    mean_confidence: Number | None = None
    order_consistency: Number | None = None
    order_free_comparisons: Count | None = None
    first_option_wins: Number | None = None
    per_principle: dict[str, _PrincipleStats] | None = None
    warnings: list[str] | None = None


class _Agreement(_View):
    agreement: Number | None = None
    agreement_ci95: Interval | None = None
    human_pairs: Count | None = None


class _Judge(_View):
    model: str | None = None
    method: str | None = None


class AgreementView(_Agreement):
    """An agreement report (``cai judge agreement --out``) as the page reads it."""

    agreement: Number
    agreement_ci95: Interval
    per_principle: dict[str, _Agreement] | None = None
    file: str | None = None
    judge: _Judge | None = None


class _WinRate(_View):
    win_rate: Number | None = None
    ci95: Interval | None = None
    n: Count | None = None


class _RewardModel(_View):
    accuracy: Number | None = None
    pairs: Count | None = None
    ci95: Interval | None = None


class EvalView(_View):
    """``eval.json`` (``cai eval``) as the page reads it."""

    win_rate: dict[str, _WinRate] | None = None
    unjudged: Count | None = None
    reward_model: _RewardModel | None = None
    trained_model: str | None = None
    base_model: str | None = None


class TrainingView(_View):
    """A training folder's ``cai_training.json`` as the page reads it."""

    log_history: list[Any] | None = None
    method: str | None = None
    base_model: str | None = None
    global_step: Count | None = None


def problem(view: type[BaseModel], value: object) -> str | None:
    """What is wrong with ``value`` as a ``view`` (its first problem, in words), or None."""
    from core.schema import describe_error

    if not isinstance(value, dict):
        return f"not a JSON object ({type(value).__name__})"
    try:
        view.model_validate(value)
    except ValidationError as exc:
        return describe_error(exc.errors()[0])
    return None


# -- reading the run folder -----------------------------------------------------
@dataclass
class RunFiles:
    """Everything the page shows, read from a run folder; a missing file is an empty part."""

    run_dir: Path
    revisions: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    judge_report: dict | None = None
    prompts: int | None = None  # the prompts generation had (its manifests), for the yield
    agreements: list[tuple[str, dict]] = field(default_factory=list)
    training: list[tuple[str, dict]] = field(default_factory=list)  # (folder name, cai_training.json)
    evaluation: dict | None = None
    skipped_lines: dict[str, int] = field(default_factory=dict)  # file -> unreadable lines left out
    damaged_rows: dict[str, tuple[int, str]] = field(default_factory=dict)  # file -> (rows left out, the first problem)
    damaged_files: list[str] = field(default_factory=list)  # "file: problem", each file left out

    @property
    def has_flags(self) -> bool:
        """Whether the rows carry quality flags at all (rows written before the checks existed do not)."""
        return any("flags" in row for row in self.revisions)


#: The largest JSON report the page reads (judge, agreement, eval and training reports are kilobytes).
MAX_REPORT_BYTES = 64 * 2**20


def _read_json(path: Path, view: type[BaseModel] | None = None, damaged: list[str] | None = None) -> dict | None:
    """A JSON report, or None when there is none; one that cannot be read or fails ``view`` is named in ``damaged``."""
    from core.store import parse_json_line, read_whole_file

    try:
        value = parse_json_line(read_whole_file(path, "report", MAX_REPORT_BYTES))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UserError) as exc:
        wrong = str(exc).removeprefix(f"{path}: ")
    else:
        wrong = problem(view, value) if view is not None else None if isinstance(value, dict) else "not a JSON object"
        if wrong is None:
            return value
    if damaged is not None:
        damaged.append(f"{path.name}: {wrong}")
    return None


def _read_rows(path: Path, run: RunFiles, view: type[BaseModel]) -> list[dict]:
    """The rows of a JSON Lines file that ``view`` accepts; a line that is not JSON (a torn write) is counted in
    ``skipped_lines``, a row of the wrong shape (a damaged or hand-edited file) in ``damaged_rows``: never fatal."""
    from core.store import iter_lines, parse_json_line

    if not path.exists():
        return []
    rows, bad, damaged, first = [], 0, 0, ""
    try:
        for number, line in iter_lines(path, "output", "RUN_DIR"):
            if not line.strip():
                continue
            try:
                row = parse_json_line(line)
            except ValueError:
                bad += 1
                continue
            wrong = problem(view, row)
            if wrong is None:
                rows.append(row)
            else:
                damaged += 1
                first = first or f"line {number}: {wrong}"
    except UserError as exc:  # a runaway line: what was read before it is shown
        run.damaged_files.append(str(exc))
    if bad:
        run.skipped_lines[path.name] = bad
    if damaged:
        run.damaged_rows[path.name] = (damaged, first)
    return rows


def _output_rows(out: Path, run: RunFiles, view: type[BaseModel]) -> list[dict]:
    """A stage's rows: its file's, or its folder's parts'."""
    paths = part_files(out) if out.is_dir() else [out]
    return [row for path in paths for row in _read_rows(path, run, view)]


def _folder_stage(folder: Path) -> str:
    """The stage whose shard parts a folder holds (``cai report OUT``): by the parts' manifests, else by a row."""
    from core.store import read_manifest

    parts = part_files(folder)
    for part in parts:
        stage = (read_manifest(part) or {}).get("stage")
        if stage in ("generate", "judge"):
            return stage
    rows = _read_rows(parts[0], RunFiles(folder), _View)
    return "judge" if rows and "chosen" in rows[0] else "generate"


def _agreement_files(run_dir: Path, named: str | None) -> list[Path]:
    if named:
        paths = [Path(p.strip()) for p in named.split(",") if p.strip()]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise UserError(f"--agreement: no such file {', '.join(missing)}; pass the JSON that "
                            "`cai judge agreement --out FILE` wrote")
        return paths
    # Any JSON in the folder may be one (`cai judge agreement --out`, a recipe's judge check): the content decides.
    return sorted(p for p in run_dir.glob("*.json") if p.is_file())


def _trainer_state_history(folder: Path) -> list:
    """The log history in a Trainer's ``trainer_state.json`` (the last checkpoint's, or the folder's)."""

    def step(path: Path) -> int:
        number = path.parent.name.rsplit("-", 1)[-1]
        return int(number) if number.isdigit() else -1

    states = sorted(folder.glob("checkpoint-*/trainer_state.json"), key=step)
    state = _read_json(states[-1] if states else folder / "trainer_state.json")
    history = (state or {}).get("log_history")
    return history if isinstance(history, list) else []


def load_run(run_dir: str | Path, agreement: str | None = None) -> RunFiles:
    """Read a run folder (or a stage's folder of shard parts). Raises UserError when it is not one (nothing any
    stage writes is in it)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder; pass the folder `cai run` wrote (the recipe's run_dir)")
    from generation.run import prompts_generated
    from judging.report import merged_report, report_path

    run = RunFiles(run_dir)
    if part_files(run_dir):  # a stage's --out folder of shard parts, not a run folder
        stage = _folder_stage(run_dir)
        revisions, preferences = (run_dir, None) if stage == "generate" else (None, run_dir)
    else:
        revisions, preferences = stage_output(run_dir, "revisions"), stage_output(run_dir, "preferences")
    if revisions is not None:
        run.revisions = _output_rows(revisions, run, RevisionView)
        run.prompts = prompts_generated(revisions)
    if preferences is not None:
        run.pairs = _output_rows(preferences, run, PairView)
        report = merged_report(preferences)
        wrong = problem(JudgeReportView, report) if report is not None else None
        if report is None and report_path(preferences).is_file():
            wrong = f"{report_path(preferences).name}: not a readable JSON object"
        if wrong:
            run.damaged_files.append(wrong if report is None else f"the judge report of {preferences.name}: {wrong}")
        else:
            run.judge_report = report
    for path in _agreement_files(run_dir, agreement):
        report = _read_json(path)
        if report is None or "agreement_ci95" not in report:
            if agreement:
                raise UserError(f"{path}: not an agreement report (no 'agreement_ci95'); pass the JSON that "
                                "`cai judge agreement --out FILE` wrote")
            continue
        wrong = problem(AgreementView, report)
        if wrong:
            run.damaged_files.append(f"{path.name}: {wrong}")
        else:
            run.agreements.append((path.name, report))
    for name in TRAINING_METHODS:  # `cai run` writes each method's model folder under its name
        summary = _read_json(run_dir / name / "cai_training.json", TrainingView, run.damaged_files)
        if summary is not None:
            if not summary.get("log_history"):
                summary = {**summary, "log_history": _trainer_state_history(run_dir / name)}
            run.training.append((name, summary))
    run.evaluation = _read_json(run_dir / "eval.json", EvalView, run.damaged_files)
    if not (run.revisions or run.pairs or run.judge_report or run.training or run.evaluation or run.damaged_rows
            or run.damaged_files):
        raise UserError(f"{run_dir}: no run outputs found (revisions.jsonl, preferences.jsonl, eval.json, "
                        f"{'/, '.join(TRAINING_METHODS)}/); pass the folder `cai run` wrote")
    return run


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


def _text_of(messages) -> str:
    if isinstance(messages, str):
        return messages
    if isinstance(messages, list):
        return "\n\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    return ""


def _prompt_turns(prompt) -> list[dict]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list):
        return [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))} for m in prompt if isinstance(m, dict)]
    return []


def row_principles(row: dict) -> list[str]:
    return [str(r.get("principle_id")) for r in row.get("rounds") or [] if isinstance(r, dict)] or [NO_PRINCIPLE]


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
        tiles.append({"label": "preference pairs", "value": str(len(run.pairs)), "note": ", ".join(notes)})
    if report:
        from judging.report import yield_funnel

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


def build_report(run: RunFiles) -> str:
    """The page's HTML."""
    from .report_plots import all_figures

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
        rows=rows,
        principles=principles,
        checks=checks,
        tags=tags,
        has_flags=run.has_flags,
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
