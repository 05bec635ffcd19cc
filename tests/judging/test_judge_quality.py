"""Flagged generation rows in `cai judge`, and a recipe's judge_check (stand-in judge backends)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import UserError
from judge_standins import PreferenceBackend
from standins import NeverLoads
from judging.config import JudgeConfig, JudgeModelConfig
from judging.judge_check import check_judge, judge_check_config
from judging.run import run_judge
from judging.judge_report import format_judge_report

REPO = Path(__file__).resolve().parents[2]
CONSTITUTION = str(REPO / "principles.yaml")


def generate_row(i: int, draft: str, final: str, **extra) -> dict:
    return {
        "id": f"p{i}", "tag": "helpful", "prompt": [{"role": "user", "content": f"Question {i}?"}],
        "initial_response": draft,
        "rounds": [{"principle_id": "harm-privacy", "critique_request": "c", "critique": "It lacks detail.",
                    "revision_request": "r", "revision": final, "fingerprint": f"r{i}"}],
        "final_response": final, "model": "m", "sampling": {}, "seed": 0,
        "calls": [{"step": "draft", "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1},
                  {"step": "critique 1", "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1},
                  {"step": "revision 1", "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1}],
        "token_counts": {"prompt": 3, "completion": 3}, "constitution_version": "1", "draft_fingerprint": f"d{i}",
        "fingerprint": f"f{i}", "source": {"file": "prompts.jsonl", "line": i + 1}, "reused_calls": 0, **extra,
    }


ROWS = [
    generate_row(0, "BAD draft", "GOOD revision with detail", flags=[]),
    # Flags stored on the row by `cai generate`:
    generate_row(1, "BAD draft", "GOOD The user wants a better answer",
                 flags=[{"check": "reads_like_critique", "reason": "starts with 'The user wants'"}]),
    # A row written before the checks existed: its flags are computed when read.
    generate_row(2, "BAD draft", "GOOD Water boils at 212 °F (100 °C) at sea level."),
    generate_row(3, "BAD old draft", "GOOD new answer"),  # no flags key, clean
]


def run(tmp_path: Path, **overrides) -> dict:
    (tmp_path / "revisions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    config = JudgeConfig(input=str(tmp_path / "revisions.jsonl"), out=str(tmp_path / "prefs.jsonl"),
                         constitution=CONSTITUTION, method="pairwise", principles_per_pair=1, **overrides)
    return run_judge(config, backend=PreferenceBackend())


def test_flagged_rows_are_left_out_and_counted_by_check(tmp_path):
    result = run(tmp_path)
    assert [p["id"] for p in result["pairs"]] == ["p0", "p3"]
    assert [r["id"] for r in result["sft"]] == ["p0", "p3"]
    report = result["report"]
    assert report["flagged_rows"] == 2 and report["flagged_rows_left_out"] == 2
    assert report["flagged_by_check"] == {"copies_exemplar": 1, "reads_like_critique": 1}
    assert report["rows"] == 4 and result["counts"]["flagged_rows_left_out"] == 2
    text = format_judge_report(report)
    assert "2 flagged rows left out" in text and "copies_exemplar: 1, reads_like_critique: 1" in text
    saved = json.loads((tmp_path / "prefs.jsonl.report.json").read_text())
    assert saved["flagged_by_check"] == report["flagged_by_check"]


def test_keep_flagged_keeps_them(tmp_path):
    result = run(tmp_path, keep_flagged=True)
    assert [p["id"] for p in result["pairs"]] == ["p0", "p1", "p2", "p3"]
    assert len(result["sft"]) == 4
    assert result["report"]["flagged_rows"] == 2 and result["report"]["flagged_rows_left_out"] == 0
    assert "kept (--keep-flagged)" in format_judge_report(result["report"])


def test_leaving_flagged_rows_out_drops_their_earlier_pairs(tmp_path):
    run(tmp_path, keep_flagged=True)
    run(tmp_path)
    kept = [json.loads(line)["id"] for line in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    assert kept == ["p0", "p3"]


# ---------------------------------------------------------------- judge_check
@pytest.fixture(autouse=True)
def figures(tmp_path, monkeypatch) -> Path:
    """The judge-check figures kept across runs go to this test's folder, not the machine's cache."""
    monkeypatch.setattr("judging.judge_check.figures_dir", lambda: tmp_path / "figures")
    return tmp_path / "figures"


def human_pairs(path: Path, agree: int, disagree: int) -> str:
    rows = [{"prompt": f"q{i}", "chosen": "GOOD", "rejected": "BAD"} for i in range(agree)]
    rows += [{"prompt": f"r{i}", "chosen": "BAD", "rejected": "GOOD"} for i in range(disagree)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


class LoadCounting(PreferenceBackend):
    """Counts its loads (an engine starts once, however often ``load`` is called)."""

    loads = 0

    @property
    def loaded(self) -> bool:
        return self.loads > 0

    def load(self):
        if not self.loaded:
            self.loads += 1
        return self


def judge(**overrides) -> JudgeModelConfig:
    return JudgeModelConfig(**{"constitution": CONSTITUTION, "method": "pairwise", "principles_per_pair": 1, **overrides})


def test_judge_check_passes_a_judge_that_agrees(tmp_path):
    check = judge_check_config({"pairs": human_pairs(tmp_path / "h.jsonl", 30, 2), "min_agreement": 0.8}, "recipe.yaml")
    result = check_judge(check, judge(), tmp_path / "judge_check.json", backend=PreferenceBackend())
    assert result["passed"] and result["human_pairs"] == 32


def test_judge_check_stops_a_judge_at_chance(tmp_path):
    check = judge_check_config({"pairs": human_pairs(tmp_path / "h.jsonl", 11, 9), "min_agreement": 0.5},
                               "recipe.yaml")
    with pytest.raises(UserError) as info:
        check_judge(check, judge(), tmp_path / "judge_check.json", backend=PreferenceBackend())
    message = str(info.value)
    assert "judge check failed" in message and "0.550 of 20 pairs" in message
    assert "includes 0.5 (not distinguishable from chance)" in message and "allow_chance: true" in message


def test_judge_check_below_min_agreement_stops_and_allow_chance_goes_on(tmp_path, caplog):
    pairs = human_pairs(tmp_path / "h.jsonl", 60, 20)  # 0.75, clearly above chance
    strict = judge_check_config({"pairs": pairs, "min_agreement": 0.9}, "recipe.yaml")
    with pytest.raises(UserError, match="below min_agreement 0.9"):
        check_judge(strict, judge(), tmp_path / "a.json", backend=PreferenceBackend())
    lenient = judge_check_config({"pairs": pairs, "min_agreement": 0.9, "allow_chance": True}, "recipe.yaml")
    caplog.set_level("INFO", logger="cai")
    result = check_judge(lenient, judge(), tmp_path / "a.json", backend=PreferenceBackend())
    said = caplog.messages
    assert not result["passed"] and "below min_agreement" in result["reason"]
    assert any("FAILED, going on" in line for line in said)


def test_judge_check_figure_is_reused_while_nothing_changes(tmp_path):
    check = judge_check_config({"pairs": human_pairs(tmp_path / "h.jsonl", 30, 2)}, "recipe.yaml")
    check_judge(check, judge(), tmp_path / "c.json", backend=PreferenceBackend())

    assert check_judge(check, judge(), tmp_path / "c.json", backend=NeverLoads())["passed"]  # the saved figure
    # Another run folder (or the same after `make clean`): the figure kept for this judge and pairs is reused.
    (tmp_path / "c.json").unlink()
    assert check_judge(check, judge(), tmp_path / "other" / "judge_check.json", backend=NeverLoads())["passed"]
    assert json.loads((tmp_path / "other" / "judge_check.json").read_text())["result"]["human_pairs"] == 32
    changed = judge(principles_per_pair=2)
    measured = LoadCounting()
    check_judge(check, changed, tmp_path / "c.json", backend=measured)
    assert measured.loads == 1


@pytest.mark.parametrize("section, message", [
    ({"min_agreement": 0.6}, "judge_check is a mapping with 'pairs'"),
    ({"pairs": "x.jsonl", "min_agrement": 0.6}, "did you mean 'min_agreement'"),
    ({"pairs": "x.jsonl", "min_agreement": 1.5}, "--min-agreement 1.5 must be in [0, 1]"),
])
def test_judge_check_section_errors_name_the_problem(section, message):
    with pytest.raises(UserError) as info:
        judge_check_config(section, "recipes/demo.yaml")
    assert message in str(info.value)


def test_judge_check_names_a_missing_pairs_file(tmp_path):
    check = judge_check_config({"pairs": str(tmp_path / "none.jsonl")}, "recipe.yaml")
    with pytest.raises(UserError, match="cannot read it"):
        check_judge(check, judge(), tmp_path / "c.json", backend=PreferenceBackend())


def test_cai_run_stops_before_any_work_when_the_recipes_judge_check_fails(tmp_path, monkeypatch):
    import yaml

    import judging.agreement
    from cai.pipeline import run_pipeline_from_recipe

    def at_chance(config, backend=None):  # what the 135M judge measures on crowd labels
        assert backend is None or backend.model  # the policy engine is handed over, not a new one
        return {"human_pairs": 100, "agreement": 0.52, "agreement_ci95": [0.42, 0.62],
                "judge": {"model": "m", "method": config.method}}

    monkeypatch.setattr(judging.agreement, "run_agreement", at_chance)
    monkeypatch.setattr("generation.run.make_backend", lambda config: PreferenceBackend())
    recipe = yaml.safe_load((REPO / "recipes" / "demo.yaml").read_text())
    assert recipe["judge_check"]["allow_chance"] is True  # the demo runs knowingly (its comment says why)
    recipe["run_dir"] = str(tmp_path / "run")
    recipe["judge_check"] = {"pairs": str(REPO / "judging" / "data" / "hh_harmless_base_100.jsonl"),
                             "min_agreement": 0.6}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(UserError) as info:
        run_pipeline_from_recipe(path)
    assert "judge check failed" in str(info.value) and "not distinguishable from chance" in str(info.value)
    assert not (tmp_path / "run" / "revisions.jsonl").exists()
    assert json.loads((tmp_path / "run" / "judge_check.json").read_text())["result"]["agreement"] == 0.52
