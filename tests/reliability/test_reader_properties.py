"""Property tests (hypothesis): every reader of a file a user hands over, driven with mutated rows.

Each reader gets a file of good rows (a generation output, pairs, human labels, SFT rows, a labels file, a run
folder) whose first row hypothesis damages: one value anywhere in it replaced by something of another type (a
number, null, a list, a deeply nested list, a lone surrogate, NaN, ...) or removed, or the line itself cut,
given bytes that are not UTF-8, or nested past the recursion limit.  Each reader must either accept the file (a
tolerant reader may skip and count the row) or refuse it with a UserError naming the file: never another
exception, which would reach the user as a traceback.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import UserError

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "report"))

from run_folder import make_run_folder, pair_row, revision_row, ROWS  # noqa: E402

HOSTILE_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70), st.floats(),
    st.text(max_size=12), st.just("\ud800 lone"), st.just(""), st.just([5]), st.just(["x"]), st.just([{}]),
    st.just({"x": 1}), st.just([[[[]]]]), st.just({"role": "user"}), st.just([{"role": 5, "content": None}]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
LINE_DAMAGE = st.sampled_from(["none", "none", "none", "cut", "not-utf8", "nested-deep"])


def _paths(value, prefix=()) -> list[tuple]:
    """Every place in a JSON value: dict keys and list positions, at any depth."""
    found = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found.append(prefix + (key,))
        found += _paths(child, prefix + (key,))
    return found


@st.composite
def mutated(draw, row: dict) -> bytes:
    """``row`` with one value replaced or removed, as one JSON line (maybe damaged as a line too)."""
    row = json.loads(json.dumps(row))
    path = draw(st.sampled_from(_paths(row)))
    parent = row
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(HOSTILE_VALUES)
    line = json.dumps(row).encode()  # ensure_ascii: a lone surrogate is written as its \ud800 escape
    damage = draw(LINE_DAMAGE)
    if damage == "cut":
        line = line[: draw(st.integers(min_value=0, max_value=len(line) - 1))]
    elif damage == "not-utf8":
        at = draw(st.integers(min_value=0, max_value=len(line)))
        line = line[:at] + b"\xff\xfe" + line[at:]
    elif damage == "nested-deep":
        line = b'{"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    return line


GENERATION_ROWS = [revision_row(i, *spec) for i, spec in enumerate(ROWS[:3], start=1)]
PAIR_ROWS = [pair_row(i, row, 0.7) for i, row in enumerate(GENERATION_ROWS, start=1)]
HUMAN_PAIRS = [json.loads(line) for line in (REPO / "judging/data/human_pairs.jsonl").read_text().splitlines()[:2]]
SFT_ROWS = [json.loads(line) for line in (REPO / "tests/training/sft.jsonl").read_text().splitlines()[:2]]
TRAINING_PAIRS = [json.loads(line) for line in (REPO / "tests/training/preferences.jsonl").read_text().splitlines()[:2]]
LABEL_ROWS = [{"id": "x", "key": "k1", "prompt": [{"role": "user", "content": "hi"}],
               "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}],
               "label": "human"}]


def _write(folder: Path, name: str, first: bytes, rest: list[dict]) -> Path:
    path = folder / name
    path.write_bytes(first + b"\n" + b"".join(json.dumps(r).encode() + b"\n" for r in rest))
    return path


def _judge_items(path: Path) -> None:
    from judging.items import read_jsonl, revision_item

    for line, row in read_jsonl(path):
        revision_item(line, row, str(path))


def _judge_samples(path: Path) -> None:
    from judging.items import read_jsonl, samples_item

    for line, row in read_jsonl(path):
        samples_item(line, {"prompt": row.get("prompt"), "responses": [row.get("initial_response"),
                                                                        row.get("final_response")]}, str(path))


def _prompts(path: Path) -> None:
    from generation.prompt_files import scan_prompts

    scan_prompts(path)


def _human_pairs(path: Path) -> None:
    from judging.agreement import read_human_pairs

    read_human_pairs(path)


def _sft(path: Path) -> None:
    from training.data import load_sft_rows

    load_sft_rows(path)


def _preferences(path: Path) -> None:
    from training.data import load_preference_rows

    load_preference_rows(path, extra_columns=("chosen_probability",))


def _output_resume(path: Path) -> None:
    from core.store import JsonlStore

    JsonlStore(path).load()


# (reader id, file name, good rows (the first is mutated), reader)
READERS = [
    ("judge --in (generation rows)", "r.jsonl", GENERATION_ROWS, _judge_items),
    ("judge --mode samples", "r.jsonl", GENERATION_ROWS, _judge_samples),
    ("generate --prompts", "p.jsonl", [{"id": "a", "prompt": "hi", "tag": "t"}, {"id": "b", "prompt": "ho"}], _prompts),
    ("judge agreement --pairs", "h.jsonl", HUMAN_PAIRS, _human_pairs),
    ("train sft --data", "sft.jsonl", SFT_ROWS, _sft),
    ("train dpo --data", "prefs.jsonl", TRAINING_PAIRS, _preferences),
    ("an output resumed", "out.jsonl", GENERATION_ROWS, _output_resume),
]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("reader", READERS, ids=[r[0] for r in READERS])
@given(data=st.data())
@SETTINGS
def test_a_reader_accepts_a_mutated_row_or_refuses_it_naming_the_file(reader, data):
    name, file_name, rows, read = reader
    line = data.draw(mutated(rows[0]))
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), file_name, line, rows[1:])
        try:
            read(path)
        except UserError as exc:
            assert file_name in str(exc), str(exc)


@given(data=st.data())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_label_server_loads_mutated_pairs_and_labels(data):
    from cai.label_session import LabelSession, load_pairs

    pairs_line, labels_line = data.draw(mutated(PAIR_ROWS[0])), data.draw(mutated(LABEL_ROWS[0]))
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder)
        _write(run, "preferences.jsonl", pairs_line, PAIR_ROWS[1:])
        labels = _write(run, "labels.jsonl", labels_line, [])
        try:
            pairs = load_pairs(run, "preferences")
        except UserError as exc:
            assert "preferences.jsonl" in str(exc), str(exc)
            return
        try:
            LabelSession(pairs, labels).state()
        except UserError as exc:
            assert "labels.jsonl" in str(exc), str(exc)


@pytest.mark.parametrize("file_name", ["revisions.jsonl", "preferences.jsonl"])
@given(data=st.data())
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_report_page_is_written_for_a_run_folder_with_a_mutated_row(file_name, data):
    """The report is tolerant by design: a damaged row is left out and counted, the page always written."""
    from cai.report import build_report, load_run

    with tempfile.TemporaryDirectory() as folder:
        run = make_run_folder(Path(folder))
        rows = [json.loads(line) for line in (run / file_name).read_text().splitlines()]
        line = data.draw(mutated(rows[0]))
        _write(run, file_name, line, rows[1:])
        loaded = load_run(run)
        page = build_report(loaded)
        assert "<html" in page
        shown = len(loaded.revisions if file_name == "revisions.jsonl" else loaded.pairs)
        left_out = sum(count for count, _ in loaded.damaged_rows.values()) + sum(loaded.skipped_lines.values())
        assert shown + left_out == len(rows) - (not line.strip())  # a blank line is no row
