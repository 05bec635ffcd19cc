"""What ``cai report`` reads of a run folder: each stage's outputs (whichever exist), each file and row checked
against the fields the page uses before use (a file or row that fails is left out and named)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import UserError
from core.shards import part_files, stage_output
from training.methods import TRAINING_METHODS

NO_PRINCIPLE = "(no revision)"


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
    """A judge report (``OUT.report.json``, judging/judge_report.py) as the page reads it."""

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
    card: dict | None = None  # the judge card (judging/card.py)
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
    from judging.judge_report import merged_report, report_path

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
    if run.judge_report is not None:
        from judging.card import load_card

        try:  # the card is built from the same files; a damaged one is said, not a traceback
            run.card = load_card(preferences if preferences is not None else run_dir)
        except (TypeError, AttributeError, KeyError, ValueError) as exc:
            run.damaged_files.append(f"the judge card of {run_dir.name}: cannot be built ({type(exc).__name__}: {exc})")
    if not (run.revisions or run.pairs or run.judge_report or run.training or run.evaluation or run.damaged_rows
            or run.damaged_files):
        raise UserError(f"{run_dir}: no run outputs found (revisions.jsonl, preferences.jsonl, eval.json, "
                        f"{'/, '.join(TRAINING_METHODS)}/); pass the folder `cai run` wrote")
    return run


def row_principles(row: dict) -> list[str]:
    return [str(r.get("principle_id")) for r in row.get("rounds") or [] if isinstance(r, dict)] or [NO_PRINCIPLE]
