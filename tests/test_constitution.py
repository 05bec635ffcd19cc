"""The constitution: schema, every validation error with its line, the importer, assignment."""

from __future__ import annotations

import collections
import textwrap
from pathlib import Path

import pytest

from cai.cli import main as cai_main
from constitution.assignment import assign_principles, rank_principles
from constitution.importer import import_anthropic, parse_transcript
from constitution.loader import ConstitutionError, load_constitution, parse_constitution
from constitution.schema import Principle

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent

GOOD = textwrap.dedent(
    """\
    version: 1
    principles:
      - id: one
        critique_request: Critique one.
        revision_request: Revise one.
        comparison_question: Which one?
      - id: two
        critique_request: Critique two.
        revision_request: Revise two.
        comparison_question: Which two?
        weight: 2
    """
)


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConstitutionError) as info:
        parse_constitution(text, "c.yaml")
    return [str(p) for p in info.value.problems]


def test_shipped_constitution_is_valid_and_complete():
    constitution = load_constitution(REPO / "principles.yaml")
    assert len(constitution.principles) >= 12
    assert len(constitution.few_shot) >= 2
    tags = {tag for p in constitution.principles for tag in p.tags}
    assert {"harm", "honesty", "helpfulness"} <= tags


def test_good_file_parses_with_defaults():
    constitution = parse_constitution(GOOD, "c.yaml")
    assert [p.id for p in constitution.principles] == ["one", "two"]
    assert constitution.principles[0].weight == 1.0
    assert constitution.principles[0].tags == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 1\nprinciples: [\n", "c.yaml:3: malformed YAML, column 1"),
        ("version: 1\nprinciples:\n  - id: x\n  critique_request: y\n", "c.yaml:4: malformed YAML"),
        (GOOD.replace("    comparison_question: Which one?\n", "    comparison_question: Which one?\n    weight: 1\n    weight: 2\n"),
         "c.yaml:8: duplicate key 'weight' (first on line 7)"),
        (GOOD.replace("id: two", "id: one"), "c.yaml:7: duplicate principle id 'one' (first on line 3)"),
        (GOOD.replace("critique_request: Critique one.", "critique_request: ''"), "c.yaml:4: principles.0.critique_request"),
        (GOOD.replace("critique_request: Critique one.", "critique_request: '   '"), "must not be empty"),
        (GOOD.replace("    revision_request: Revise one.\n", ""), "c.yaml:3: principles.0.revision_request: required field is missing"),
        (GOOD.replace("comparison_question: Which two?", "comparison_question: Which two?\n    colour: red"),
         "c.yaml:11: principles.1.colour: unknown field 'colour'"),
        (GOOD.replace("weight: 2", "weight: 0"), "c.yaml:11: principles.1.weight: weight must be positive, got 0"),
        (GOOD.replace("weight: 2", "weight: -1"), "weight must be positive, got -1"),
        ("version: 1\nprinciples: !!python/object:os.system {}\n", "c.yaml:2: unsupported YAML tag"),
        ("", "file is empty"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("version: 1\nprinciples: []\n", "principles"),
    ],
)
def test_each_problem_is_reported_with_its_line(text, expected):
    assert any(expected in p for p in problems_of(text)), problems_of(text)


def test_every_problem_is_reported_at_once():
    text = GOOD.replace("id: two", "id: one").replace("weight: 2", "weight: 0").replace("Revise one.", "''")
    found = problems_of(text)
    assert len(found) == 3, found


def test_validate_command_exit_codes(tmp_path, capsys):
    assert cai_main(["validate", str(REPO / "principles.yaml")]) == 0
    bad = tmp_path / "dup.yaml"
    bad.write_text(GOOD.replace("id: two", "id: one"))
    assert cai_main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:7: duplicate principle id 'one'" in err


def test_unknown_command_suggests(capsys):
    with pytest.raises(SystemExit) as info:
        cai_main(["generte"])
    assert "unknown command 'generte'; did you mean 'cai generate'?" in str(info.value)


def test_import_anthropic_fixture_validates_and_keeps_texts(tmp_path, capsys):
    out = tmp_path / "imported.yaml"
    assert cai_main(["constitution", "import", "--format", "anthropic", str(DATA / "anthropic_critiques.json"),
                     "--few-shot", str(DATA / "anthropic_few_shot.json"), "--out", str(out)]) == 0
    constitution = load_constitution(out)
    assert len(constitution.principles) == 16
    first = constitution.principle("harmful0")
    assert first.critique_request.startswith("Identify specific ways")
    assert not first.critique_request.endswith("Critique:")
    assert first.revision_request.startswith("Please rewrite") and "Revision" not in first.revision_request[-12:]
    assert len(constitution.few_shot) == 2
    moon = constitution.few_shot[1]
    assert [m.role for m in moon.conversation] == ["user", "assistant", "user", "assistant"]
    assert moon.revision.startswith("No, that was wrong.")
    # Refuses to clobber an existing file unless told to, as every command: --overwrite (--force, the old name, too).
    out.write_text("kept")
    assert cai_main(["constitution", "import", str(DATA / "anthropic_critiques.json"), "--out", str(out)]) == 1
    assert out.read_text() == "kept" and "pass --overwrite to replace it" in capsys.readouterr().err
    for flag in ("--overwrite", "--force"):
        out.write_text("kept")
        assert cai_main(["constitution", "import", str(DATA / "anthropic_critiques.json"), "--out", str(out), flag]) == 0
        assert len(load_constitution(out).principles) == 16


def test_import_rejects_malformed_transcript():
    with pytest.raises(ConstitutionError, match="lacks"):
        parse_transcript("\n\nHuman: hi\n\nAssistant: hello", "few.json[0]")


def test_import_reports_bad_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": {"prompt": [}\n')
    with pytest.raises(ConstitutionError, match=r"bad.json:1: not valid JSON"):
        import_anthropic(bad)


def _principles(n: int) -> list[Principle]:
    return [Principle(id=f"p{i}", critique_request="c", revision_request="r", comparison_question="q") for i in range(n)]


def test_assignment_is_deterministic_and_seeded():
    principles = _principles(8)
    first = [assign_principles(f"k{i}", principles, 2)[0].id for i in range(200)]
    assert first == [assign_principles(f"k{i}", principles, 2)[0].id for i in range(200)]
    other_seed = [assign_principles(f"k{i}", principles, 2, seed=1)[0].id for i in range(200)]
    assert first != other_seed


def test_rounds_get_distinct_principles_then_cycle():
    principles = _principles(3)
    chosen = [p.id for p in assign_principles("key", principles, 5)]
    assert len(set(chosen[:3])) == 3 and chosen[3:] == chosen[:2]


def test_adding_a_principle_moves_about_one_in_n():
    principles = _principles(10)
    keys = [f"prompt-{i}" for i in range(3000)]
    before = {k: rank_principles(k, principles)[0].id for k in keys}
    after = {k: rank_principles(k, principles + _principles(11)[10:])[0].id for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "p10" for k in moved)  # only moves to the new principle
    assert 0.05 < len(moved) / len(keys) < 0.13  # about 1/11


def test_weights_shift_assignments_proportionally():
    principles = _principles(2)
    heavy = Principle(id="p1", critique_request="c", revision_request="r", comparison_question="q", weight=3.0)
    counts = collections.Counter(rank_principles(f"k{i}", [principles[0], heavy])[0].id for i in range(4000))
    assert 0.70 < counts["p1"] / 4000 < 0.80  # 3/(3+1)
