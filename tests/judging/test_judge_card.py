"""Refusals, a fallback judge, several judges, calibration against people, doubtful pairs first and the judge card
(stand-in judges: ``judge_standins.py``; what each one models is said there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from cai.label_session import LabelSession, judge_doubt, load_pairs
from core.errors import UserError
from core.schema import JudgementRecord, PreferenceRow
from judge_standins import REFUSAL, FixedBackend, PreferenceBackend, RefusingBackend, options
from judging.agreement import run_agreement
from judging.calibration import Labelled, calibration
from judging.card import card_path, load_card
from judging.config import AgreementConfig, JudgeConfig
from judging.ensemble import combine
from judging.judge import Verdict
from judging.run import judgements_path, run_judge
from judging.refusal import declines, label_mass_refusal
from test_judge_quality import generate_row

REPO = Path(__file__).resolve().parents[2]
CONSTITUTION = str(REPO / "principles.yaml")
PRINCIPLES = "harm-privacy,helpful-complete-and-specific"
PRIVACY = "Which response better respects people's privacy?"
# The judges are stand-ins given to the run; named as an endpoint's served models (never contacted).
ENDPOINT = {"judge_backend": "openai", "judge_base_url": "http://127.0.0.1:9/v1"}


def refuses_privacy(conversation) -> bool:
    return PRIVACY in conversation[0]["content"]


ROWS = [generate_row(i, f"BAD draft number {i}", f"GOOD revision number {i} with more words", flags=[])
        for i in range(6)]


def judge_run(tmp_path: Path, backend, judge_backends=None, **overrides) -> dict:
    (tmp_path / "revisions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    settings = {"method": "pairwise", "principle_ids": PRINCIPLES, "judge_model": "stand-in-judge", **ENDPOINT,
                **overrides}
    config = JudgeConfig(input=str(tmp_path / "revisions.jsonl"), out=str(tmp_path / "preferences.jsonl"),
                         constitution=CONSTITUTION, **settings)
    return run_judge(config, backend=backend, judge_backends=judge_backends)


def cached(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in judgements_path(tmp_path / "preferences.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- refusals
def test_refusal_detectors():
    assert declines(REFUSAL) and declines("As an AI, I am not able to judge this.")
    assert not declines("Response A is better because it is kinder.") and not declines("")
    assert label_mass_refusal(-8.0, -8.5, -9.0)  # 5e-4 of the probability on the labels
    assert not label_mass_refusal(-0.1, -2.5, -9.0)
    assert label_mass_refusal(None, None, -9.0)  # both outside the top tokens, at most 2e-4
    assert not label_mass_refusal(None, None, None)  # nothing bounds them: a failure, not a refusal


@pytest.mark.parametrize("method", ["pairwise", "text"])
def test_a_refusing_judge_is_reported_refusing_at_its_rate_and_per_principle(tmp_path, method):
    """Text form (a declining reply) and log-probability form (no mass on the labels): the judge refuses every
    comparison under harm-privacy and none under the other principle, so half the comparisons."""
    backend = RefusingBackend(refuses_privacy)
    result = judge_run(tmp_path, backend, method=method, constrained_verdict=False)
    report = result["report"]
    assert report["refusals"] == 6 and report["refusal_rate"] == 0.5
    assert report["parse_failures"] == 0 and report["failures"] == 0  # a refusal is neither
    assert report["per_principle"]["harm-privacy"]["refusals"] == 6
    assert report["per_principle"]["harm-privacy"]["refusal_rate"] == 1.0
    assert report["per_principle"]["helpful-complete-and-specific"]["refusals"] == 0
    assert backend.refused == 12  # both orders of each refused comparison
    # What happened is on each judgement; the refused comparisons are left out, never scored 0.5.
    outcomes = sorted(r["outcome"] for r in cached(tmp_path))
    assert outcomes == ["judged"] * 12 + ["refused"] * 12
    for record in cached(tmp_path):
        TypeAdapter(JudgementRecord).validate_python(record)
        assert record["judge"] == "stand-in-judge"
    for pair in result["pairs"]:
        PreferenceRow.model_validate(pair)
        privacy = pair["principle_scores"]["harm-privacy"]
        assert privacy["chosen_probability"] is None and privacy["refused"] is True
        assert pair["chosen_probability"] == pair["principle_scores"]["helpful-complete-and-specific"][
            "chosen_probability"]
    assert "refused" in result["text"] and "never scored 0.5" in result["text"]


def test_a_record_written_before_outcomes_reads_as_before():
    from judging.refusal import outcome

    old = {"key": "k", "kind": "order", "p_first": None, "error": "verdict did not parse: 'x'", "transient": False,
           "parse_failure": True}
    TypeAdapter(JudgementRecord).validate_python(old)
    assert outcome(old) == "parse_failure"
    assert outcome({**old, "parse_failure": False, "error": None, "p_first": 0.7}) == "judged"


def test_a_judge_refusing_everything_makes_no_pairs_and_says_why(tmp_path):
    result = judge_run(tmp_path, RefusingBackend(lambda conversation: True))
    assert result["pairs"] == [] and result["report"]["dropped_by_reason"] == {"judge refused": 6}
    assert result["report"]["refusal_rate"] == 1.0


# ---------------------------------------------------------------- the fallback judge
def test_the_fallback_judge_takes_exactly_the_refused_comparisons(tmp_path):
    fallback = PreferenceBackend(model="fallback-judge")
    result = judge_run(tmp_path, RefusingBackend(refuses_privacy), {"fallback-judge": fallback},
                       fallback_judge_model="fallback-judge")
    # Both orders of the 6 refused comparisons, and nothing else.
    assert fallback.label_calls == 12
    assert all(refuses_privacy(conversation) for conversation in fallback.seen)
    report = result["report"]
    assert report["refusals"] == 6 and report["by_fallback_judge"] == 6 and report["handed_to_fallback"] == 6
    assert report["comparisons"] == 12 and report["beyond_fallback_limit"] == 0
    for pair in result["pairs"]:
        privacy = pair["principle_scores"]["harm-privacy"]
        assert privacy["fallback_judge"] == "fallback-judge" and privacy["refused"] is True
        assert privacy["chosen_probability"] > 0.5
    judges = {r["judge"] for r in cached(tmp_path)}
    assert judges == {"stand-in-judge", "fallback-judge"}


def test_the_fallback_judge_is_bounded_and_counted(tmp_path):
    fallback = PreferenceBackend(model="fallback-judge")
    result = judge_run(tmp_path, RefusingBackend(refuses_privacy), {"fallback-judge": fallback},
                       fallback_judge_model="fallback-judge", fallback_limit=2)
    report = result["report"]
    assert fallback.label_calls == 4
    assert report["handed_to_fallback"] == 2 and report["beyond_fallback_limit"] == 4
    assert report["by_fallback_judge"] == 2 and report["refusals"] == 6
    left_out = [p for p in result["pairs"] if p["principle_scores"]["harm-privacy"]["chosen_probability"] is None]
    assert len(left_out) == 4


def test_a_fallback_that_is_one_of_the_judges_is_refused():
    with pytest.raises(UserError, match="fallback-judge-model"):
        JudgeConfig(input="x", out="y", judge_model="a", fallback_judge_model="a")


# ---------------------------------------------------------------- several judges
def verdict(p_first: float, p_second: float) -> Verdict:
    return Verdict("p", p=(p_first + p_second) / 2, p_x_first=p_first, p_x_second=p_second)


def test_judges_combine_by_mean_and_by_majority():
    a, b, c = verdict(0.9, 0.7), verdict(0.2, 0.4), verdict(0.6, 0.8)
    mean = combine([a, b, c], ["a", "b", "c"], "mean")
    assert mean.p == pytest.approx((0.8 + 0.3 + 0.7) / 3)
    assert mean.p_x_first == pytest.approx((0.9 + 0.2 + 0.6) / 3)
    majority = combine([a, b, c], ["a", "b", "c"], "majority")
    assert majority.p == pytest.approx(2 / 3)  # two of three judges vote for x
    assert combine([a, b], ["a", "b"], "majority").p == 0.5  # an even vote
    refused = Verdict("p", refused=True, error="refused")
    assert combine([a, refused], ["a", "r"], "mean").p == pytest.approx(0.8)  # left out, not a 0.5
    nobody = combine([refused, Verdict("p", refused=True)], ["r", "s"], "mean")
    assert nobody.p is None and nobody.refused


def longer_wins(conversation) -> float:
    shown = options(conversation)
    return 0.9 if len(shown["A"]) > len(shown["B"]) else 0.1


LABELLED = [  # the person prefers GOOD; the chosen response is the longer in the first two only
    {"prompt": "Q1?", "chosen": "GOOD long answer here", "rejected": "BAD"},
    {"prompt": "Q2?", "chosen": "GOOD answer, longer", "rejected": "BAD short"},
    {"prompt": "Q3?", "chosen": "GOOD", "rejected": "BAD long long answer"},
    {"prompt": "Q4?", "chosen": "GOOD", "rejected": "BAD and a much longer one"},
]


def agreement_run(tmp_path: Path, how: str, **overrides) -> dict:
    pairs = tmp_path / "labels.jsonl"
    pairs.write_text("".join(json.dumps(row) + "\n" for row in LABELLED))
    config = AgreementConfig(pairs=str(pairs), constitution=CONSTITUTION, method="pairwise",
                             principle_ids="harm-privacy", judge_model="quality", extra_judge_models="length",
                             combine_judges=how, details=str(tmp_path / "details.jsonl"), **ENDPOINT, **overrides)
    return run_agreement(config, backend=PreferenceBackend(model="quality"),
                         judge_backends={"length": FixedBackend(longer_wins, model="length")})


@pytest.mark.parametrize("how", ["mean", "majority"])
def test_two_judges_combined_with_their_mutual_agreement(tmp_path, how):
    result = agreement_run(tmp_path, how)
    details = [json.loads(line) for line in (tmp_path / "details.jsonl").read_text().splitlines()]
    for detail in details:
        own = detail["principles"]["harm-privacy"]["judges"]
        expected = (own["quality"] + own["length"]) / 2 if how == "mean" else (
            0.5 if (own["quality"] > 0.5) != (own["length"] > 0.5) else float(own["quality"] > 0.5))
        assert detail["p_human_choice"] == pytest.approx(expected)
    # Each judge's own figures: the quality judge agrees with people on all four, the length judge on two.
    assert result["judges"]["quality"]["agreement"] == 1.0
    assert result["judges"]["length"]["agreement"] == 0.5
    assert result["judges_agree"]["length | quality"]["agreement"] == 0.5
    assert result["judges_agree"]["length | quality"]["comparisons"] == 4
    assert result["combine"] == how
    assert "judges length | quality agree on 0.500 of 4" in result["text"]
    assert result["text"].startswith(f"judges quality + length combined by {how}")
    if how == "majority":  # the two disagreements are even votes: ties, counted both ways
        assert result["calibration"]["judge_ties"] == 2
        assert result["calibration"]["counting_ties"]["agreement"] == 0.5
        assert result["calibration"]["excluding_ties"]["agreement"] == 1.0


def test_adding_a_judge_reuses_the_others_judgements(tmp_path):
    first = PreferenceBackend(model="quality")
    judge_run(tmp_path, first, judge_model="quality")
    assert first.label_calls == 24
    again, length = PreferenceBackend(model="quality"), FixedBackend(longer_wins, model="length")
    result = judge_run(tmp_path, again, {"length": length}, judge_model="quality", extra_judge_models="length")
    assert again.label_calls == 0 and length.label_calls == 24  # only the new judge's judgements run
    records = cached(tmp_path)
    assert sorted(r["judge"] for r in records) == ["length"] * 24 + ["quality"] * 24
    assert len({r["key"] for r in records}) == 48  # kept apart by judge
    scores = result["pairs"][0]["principle_scores"]["harm-privacy"]
    assert set(scores["judges"]) == {"quality", "length"}
    assert result["report"]["judges_agree"]["length | quality"]["comparisons"] == 12


# ---------------------------------------------------------------- ties and calibration
def test_ties_are_counted_both_ways():
    figures = calibration([Labelled(0.8), Labelled(0.3), Labelled(0.5), Labelled(0.5, human_tie=True),
                           Labelled(0.7, human_tie=True), Labelled(None)])
    assert figures["judged"] == 5 and figures["left_out"] == 1
    assert figures["judge_ties"] == 2 and figures["human_ties"] == 2
    # Counting ties: 0.8 agrees, and the tie both called; the rest disagree.
    assert figures["counting_ties"]["agreed"] == 2 and figures["counting_ties"]["pairs"] == 5
    # Excluding ties: of 0.8 and 0.3, one agrees.
    assert figures["excluding_ties"]["agreement"] == 0.5 and figures["excluding_ties"]["pairs"] == 2
    low, high = figures["excluding_ties"]["ci95"]
    assert low < 0.5 < high
    assert [entry["bin"] for entry in figures["reliability"]] == [[0.7, 0.8], [0.8, 0.9]]
    assert [entry["agreement"] for entry in figures["reliability"]] == [0.0, 1.0]
    assert figures["ece"] == pytest.approx((0.7 + 0.2) / 2)


def test_agreement_with_human_ties_gives_both_figures_and_per_principle_intervals(tmp_path):
    ties = tmp_path / "labels.ties.jsonl"
    ties.write_text(json.dumps({"prompt": "Q5?", "responses": ["GOOD one", "GOOD two"], "label": "tie"}) + "\n")
    result = agreement_run(tmp_path, "mean", ties=str(ties))
    assert result["calibration"]["human_ties"] == 1 and result["pairs"] == 5
    assert result["calibration"]["counting_ties"]["pairs"] == 5
    assert result["calibration"]["excluding_ties"]["pairs"] <= 4
    principle = result["per_principle"]["harm-privacy"]["calibration"]
    assert principle["excluding_ties"]["ci95"] is not None and principle["counting_ties"]["ci95"] is not None
    assert "agreement counting ties" in result["text"] and "agreement excluding ties" in result["text"]
    assert "reliability" in result["text"]


def test_a_bad_ties_row_is_an_error_naming_the_line(tmp_path):
    ties = tmp_path / "ties.jsonl"
    ties.write_text(json.dumps({"prompt": "Q?", "responses": ["only one"], "label": "tie"}) + "\n")
    with pytest.raises(UserError, match=r"ties.jsonl:1: not a tie row"):
        agreement_run(tmp_path, "mean", ties=str(ties))


# ---------------------------------------------------------------- doubtful pairs first
def preference(i: int, margin: float, orders_agree: bool = True, judges: dict | None = None) -> dict:
    score = {"chosen_probability": (1 + margin) / 2, "orders_agree": orders_agree,
             **({"judges": judges} if judges else {})}
    return {"id": f"r{i}", "prompt": [{"role": "user", "content": f"Q{i}?"}],
            "chosen": [{"role": "assistant", "content": f"GOOD {i}"}],
            "rejected": [{"role": "assistant", "content": f"BAD {i}"}],
            "chosen_probability": (1 + margin) / 2, "margin": margin, "orders_agree": orders_agree,
            "principle_scores": {"harm-privacy": score}}


def test_doubtful_pairs_are_labelled_first_and_the_agreement_says_how_they_were_sampled(tmp_path):
    rows = [preference(0, 0.9), preference(1, 0.1), preference(2, 0.8, orders_agree=False),
            preference(3, 0.6, judges={"a": 0.9, "b": 0.3}), preference(4, 0.5)]
    (tmp_path / "preferences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert judge_doubt(rows[2]) == (pytest.approx(1.2), ("order-inconsistent", "margin 0.80"))
    pairs = load_pairs(tmp_path, order="doubt")
    assert [p.id for p in pairs] == ["r3", "r2", "r1", "r4", "r0"]
    assert [p.id for p in load_pairs(tmp_path)] == ["r0", "r1", "r2", "r3", "r4"]
    # Label the two most doubtful pairs, choosing the GOOD response.
    labels = tmp_path / "human_labels.jsonl"
    session = LabelSession(pairs, labels, order="doubt")
    for pair in pairs[:2]:
        session.record(pair.key, "1" if "GOOD" in pair.responses[0] else "2")
    written = [json.loads(line) for line in labels.read_text().splitlines()]
    assert [row["sampling"]["order"] for row in written] == ["doubt", "doubt"]
    assert [row["sampling"]["rank"] for row in written] == [0, 1]
    assert written[0]["sampling"]["reasons"] == ["judges disagree", "margin 0.60"]
    config = AgreementConfig(pairs=str(labels), constitution=CONSTITUTION, method="pairwise",
                             principle_ids="harm-privacy", out=str(tmp_path / "agreement.json"), **ENDPOINT)
    result = run_agreement(config, backend=PreferenceBackend())
    assert result["sampling"]["orders"] == {"doubt": 2}
    assert "2 of 2 pairs were labelled doubtful-first" in result["sampling"]["statement"]
    assert "understates" in result["text"]


# ---------------------------------------------------------------- the card
def test_the_judge_card_holds_it_all_and_loads_from_the_run_folder(tmp_path):
    result = judge_run(tmp_path, RefusingBackend(refuses_privacy))
    assert Path(result["card_path"]) == card_path(tmp_path / "preferences.jsonl")
    written = json.loads(card_path(tmp_path / "preferences.jsonl").read_text())
    assert written["card_version"] == 1 and written["people"] is None
    assert written["statistics"]["refusals"] == 6 and written["statistics"]["rows"] == 6
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(row) + "\n" for row in LABELLED))
    run_agreement(AgreementConfig(pairs=str(labels), constitution=CONSTITUTION, method="pairwise",
                                  principle_ids=PRINCIPLES, out=str(tmp_path / "agreement.json"),
                                  judge_model="stand-in-judge", **ENDPOINT),
                  backend=RefusingBackend(refuses_privacy))
    card = load_card(tmp_path)
    assert card == json.loads(card_path(tmp_path / "preferences.jsonl").read_text())  # refreshed by the agreement
    assert card["people"]["judge_matches"] and card["people"]["excluding_ties"]["agreement"] == 1.0
    assert card["people"]["refusals"] == 4
    rows = {row["id"]: row for row in card["principles"]}
    privacy = rows["harm-privacy"]
    assert privacy["rows"] == 6 and privacy["revision_pairs"] == 6 and privacy["revision_preferred"] == 1.0
    assert 0 < privacy["revision_change"] <= 1
    assert privacy["refusals"] == 6 and privacy["refusal_rate"] == 1.0
    assert privacy["agreement_excluding_ties"]["pairs"] == 0  # every labelled comparison under it was refused
    assert rows["helpful-complete-and-specific"]["agreement_excluding_ties"]["agreement"] == 1.0
    assert any("harm-privacy: the judge refuses 6 of 6" in w for w in card["warnings"])
    assert load_card(tmp_path / "nothing-here") is None


def test_cai_eval_refuses_the_flags_it_does_not_use():
    from evaluation.run import EvalConfig

    with pytest.raises(UserError, match="one judge"):
        EvalConfig(trained_model="dpo", extra_judge_models="other")
