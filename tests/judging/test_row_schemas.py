"""Every row a builder writes validates against core.schema; a bad row read back is one UserError naming file:line.

Rows come from the stand-in paths (tests/standins.py, tests/judging/judge_standins.py):
``cai generate`` -> ``cai judge`` (both modes, every method) -> ``cai train``'s readers.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from cai.cli import main as cai_main
from core.errors import UserError
from core.schema import (
    GenerationRow,
    JudgementRecord,
    Manifest,
    PreferenceRow,
    SampleRecord,
    SftRow,
    parse_step,
    step_name,
)
from core.store import manifest_path
from generation.config import GenerateConfig
from generation.critique_revise import ReuseIndex
from generation.run import generate
from judge_standins import PreferenceBackend
from judging.config import JudgeConfig
from judging.run import judgements_path, run_judge, samples_path
from training.data import load_preference_rows, load_prompts, load_sft_rows

REPO = Path(__file__).resolve().parents[2]
CONSTITUTION = str(REPO / "principles.yaml")
JUDGEMENTS = TypeAdapter(JudgementRecord)


def rows_of(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def validate_all(model, path) -> list[dict]:
    rows = rows_of(path)
    assert rows, f"{path} is empty"
    for row in rows:
        model.model_validate(row, strict=True)
    return rows


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """A `cai generate` output: 2 rounds, then 3 (rounds 1-2 reused), from a policy that answers GOOD/BAD/plain."""
    tmp = tmp_path_factory.mktemp("generated")
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question {i}?", "tag": "t" if i % 2 else None})
                               + "\n" for i in range(8))
                       + json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                                  {"role": "user", "content": "Hi?"}]}) + "\n")
    for rounds in (2, 3):
        config = GenerateConfig(prompts=str(prompts), out=str(tmp / "revisions.jsonl"), constitution=CONSTITUTION,
                                rounds=rounds, examples=0)
        generate(config, backend=PreferenceBackend())
    return tmp / "revisions.jsonl"


# ---------------------------------------------------------------- step names
def test_step_names_round_trip_and_refuse_others():
    assert [step_name("draft"), step_name("critique", 1), step_name("revision", 12)] == ["draft", "critique 1",
                                                                                          "revision 12"]
    for step in ("draft", "critique 3", "revision 1"):
        assert step_name(*parse_step(step)) == step
    for bad in ("critique", "critique 0", "revision 1 ", "Draft", "draft 1", 7):
        with pytest.raises(ValueError):
            parse_step(bad)
    with pytest.raises(ValueError):
        step_name("critique")


def test_reuse_finds_a_rounds_calls_by_step_not_position():
    calls = [{"step": s, "finish_reason": "stop", "prompt_tokens": i, "completion_tokens": i}
             for i, s in enumerate(["draft", "critique 1", "revision 1", "critique 2", "revision 2"])]
    shuffled = calls[:]
    random.Random(3).shuffle(shuffled)
    row = {"draft_fingerprint": "d", "initial_response": "x", "calls": shuffled,
           "rounds": [{"fingerprint": "r1"}, {"fingerprint": "r2"}]}
    index = ReuseIndex([row])
    assert index.drafts["d"]["call"] == calls[:1]
    assert index.rounds["r1"][1] == calls[1:3] and index.rounds["r2"][1] == calls[3:5]


# ---------------------------------------------------------------- rows the builders write
def test_generated_rows_and_manifest_validate(generated):
    rows = validate_all(GenerationRow, generated)
    assert len(rows) == 9 and all(len(r["rounds"]) == 3 for r in rows)
    assert all(r["reused_calls"] == 5 for r in rows)  # the draft and two rounds came from the 2-round rows
    assert [parse_step(c["step"]) for c in rows[0]["calls"]][-1] == ("revision", 3)
    Manifest.model_validate(json.loads(manifest_path(generated).read_text()), strict=True)


@pytest.mark.parametrize("method,cot", [("pairwise", False), ("pairwise", True), ("likelihood", False),
                                        ("text", False), ("text", True)])
def test_judge_rows_caches_and_manifest_validate(generated, tmp_path, method, cot):
    out = tmp_path / "prefs.jsonl"
    config = JudgeConfig(input=str(generated), out=str(out), constitution=CONSTITUTION, method=method, cot=cot,
                         principles_per_pair=2)
    run_judge(config, backend=PreferenceBackend())
    pairs = validate_all(PreferenceRow, out)
    validate_all(SftRow, tmp_path / "sft.jsonl")
    for record in rows_of(judgements_path(out)):
        JUDGEMENTS.validate_python(record, strict=True)
    Manifest.model_validate(json.loads(manifest_path(out).read_text()), strict=True)
    # What the judge writes, training reads.
    kept = load_preference_rows(out, extra_columns=("chosen_probability", "margin"))
    assert [r["chosen"] for r in kept] == [p["chosen"] for p in pairs]
    assert len(load_sft_rows(tmp_path / "sft.jsonl")) == len(rows_of(tmp_path / "sft.jsonl"))
    assert len(load_prompts(out)) == len(pairs)


def test_samples_mode_rows_and_caches_validate(tmp_path):
    (tmp_path / "prompts.jsonl").write_text(
        json.dumps({"id": "a", "prompt": "Hi?"}) + "\n"
        + json.dumps({"id": "b", "messages": [{"role": "user", "content": "Hello?"}],
                      "responses": ["GOOD", {"content": "BAD", "finish_reason": "stop"}]}) + "\n")
    out = tmp_path / "prefs.jsonl"
    config = JudgeConfig(input=str(tmp_path / "prompts.jsonl"), out=str(out), constitution=CONSTITUTION,
                         mode="samples", num_samples=4, method="pairwise", principles_per_pair=1)
    run_judge(config, backend=PreferenceBackend())
    assert len(validate_all(PreferenceRow, out)) == 2
    validate_all(SftRow, tmp_path / "sft.jsonl")
    validate_all(SampleRecord, samples_path(out))


# ---------------------------------------------------------------- bad rows read back
def _judge(tmp_path, rows, capsys, mode="revision") -> str:
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    code = cai_main(["judge", "--in", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "prefs.jsonl"),
                     "--constitution", CONSTITUTION, "--method", "pairwise", "--mode", mode])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and err.startswith("error: ")
    assert not (tmp_path / "prefs.jsonl").exists()
    return err


@pytest.mark.parametrize("change,expected", [
    ({"prompt": [{"content": "Question 0?"}]},
     r"in.jsonl:2: prompt\[0\].role is missing; a message is"),
    ({"prompt": [{"role": "robot", "content": "Question 0?"}]},
     r"in.jsonl:2: prompt\[0\].role is 'robot'; use one of system, user, assistant"),
    ({"initial_response": 5}, r"in.jsonl:2: initial_response must be text, got 5; is this a `cai generate` output\?"),
    ({"rounds": [{"principle_id": "harm-privacy"}]}, r"in.jsonl:2: rounds\[0\].critique_request is missing"),
    ({"calls": [{"step": "drafting", "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1}]},
     r"in.jsonl:2: calls\[0\].step: .*'drafting' is not a step name"),
])
def test_a_bad_generation_row_stops_the_judge_naming_its_line(generated, tmp_path, capsys, change, expected):
    import re

    good, bad = rows_of(generated)[:2]
    err = _judge(tmp_path, [good, {**bad, **change}], capsys)
    assert re.search(expected, err), err


def test_a_bad_samples_row_stops_the_judge_naming_its_line(tmp_path, capsys):
    err = _judge(tmp_path, [{"prompt": "fine"}, {"messages": [{"role": "user", "content": "x", "extra": 1}, "hi"]}],
                 capsys, mode="samples")
    assert "in.jsonl:2: messages[1] must be an object, got \"hi\"" in err


@pytest.fixture()
def pair_row() -> dict:
    return {"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "GOOD"}],
            "rejected": [{"role": "assistant", "content": "BAD"}], "chosen_probability": 0.8, "margin": 0.6}


@pytest.mark.parametrize("change,expected", [
    ({"chosen_probability": "high"}, r"pairs.jsonl:2: column 'chosen_probability' must be a number, got \"high\""),
    ({"chosen_probability": True}, r"pairs.jsonl:2: column 'chosen_probability' must be a number, got true"),
    ({"chosen": [{"content": "GOOD"}]}, r"pairs.jsonl:2: chosen\[0\].role is missing; a message is .*a row looks like"),
    ({"rejected": [{"role": "user", "content": "BAD"}]},
     r"pairs.jsonl:2: rejected\[0\].role is 'user'; it must be 'assistant'"),
    ({"prompt": [{"role": "user", "content": 3}]}, r"pairs.jsonl:2: prompt\[0\].content must be text, got 3"),
    ({"prompt": []}, r"pairs.jsonl:2: prompt must be a non-empty list of messages"),
])
def test_a_bad_preference_row_for_training_names_its_line(tmp_path, pair_row, change, expected):
    import re

    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(pair_row) + "\n" + json.dumps({**pair_row, **change}) + "\n")
    with pytest.raises(UserError) as info:
        load_preference_rows(path, extra_columns=("chosen_probability",))
    assert re.search(expected, str(info.value)), str(info.value)


def test_a_bad_sft_row_names_its_line(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Yo"}]}) + "\n")
    with pytest.raises(UserError, match=r"sft.jsonl:1: messages\[1\].role is 'bot'; use one of system, user, assist"):
        load_sft_rows(path)


def test_messages_from_elsewhere_keep_only_role_and_content(tmp_path, pair_row):
    # Preference files from other tools may carry e.g. "name": trainers take role and content, as before.
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({**pair_row, "prompt": [{"role": "user", "content": "Hi?", "name": "ann"}]}) + "\n")
    assert load_preference_rows(path)[0]["prompt"] == [{"role": "user", "content": "Hi?"}]
