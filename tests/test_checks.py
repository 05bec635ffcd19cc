"""The generation checks on hand-written rows: each check's flag and reason, and the clean case."""

from __future__ import annotations

from pathlib import Path

import pytest

from constitution.loader import load_constitution
from generation.checks import ROW_CHECKS, RowChecker, count_by_check

REPO = Path(__file__).resolve().parents[1]
CHECKER = RowChecker(load_constitution(REPO / "principles.yaml"))

DRAFT = "To boil an egg, put it in water."
CRITIQUE = "My last response is too short: it gives no time and no heat, so the user cannot follow it."
ANSWER = "Put the egg in a pan of boiling water and cook it for 9 minutes, then cool it under cold water."


def row(final=ANSWER, *, draft=DRAFT, critique=CRITIQUE, tag="helpful", prompt="How do I hard-boil an egg?",
        finish="stop", rounds=1) -> dict:
    return {
        "id": "r", "tag": tag, "prompt": [{"role": "user", "content": prompt}],
        "initial_response": draft,
        "rounds": [{"principle_id": "helpful-complete-and-specific", "critique": critique, "revision": final}][:rounds],
        "final_response": final if rounds else draft,
        "calls": [{"step": "draft", "finish_reason": "stop"}, {"step": "critique 1", "finish_reason": "stop"},
                  {"step": "revision 1", "finish_reason": finish}][: 1 + 2 * rounds],
    }


def flags(r: dict) -> dict[str, str]:
    return {f["check"]: f["reason"] for f in CHECKER.flags(r)}


def test_a_plain_answer_is_clean():
    assert CHECKER.flags(row()) == []


def test_registry_names_are_unique_and_described():
    assert all(name == check.name and check.description for name, check in ROW_CHECKS.items())


@pytest.mark.parametrize("final, reason", [
    ("The user wants to know how to boil an egg. My response did not say how long.", "starts with 'The user wants'"),
    ("The question is about eggs, and the answer should give a time.", "starts with 'The question is about'"),
    ("This response gives no time; it should say 9 minutes.", "starts with 'This response gives'"),
    ("Your last response was too short.", "starts with 'Your last response was'"),
    ("Revised response: boil it for 9 minutes.", "starts with 'Revised response: boil'"),
    ("Boil it for 9 minutes. The original response did not say how long.", "talks about 'the original response'"),
    ("Boil it for 9 minutes so that the user gets a firm yolk.", "talks about 'the user'"),
    ("Rewrite your response to give the time: 9 minutes.", "talks about 'rewrite your response'"),
])
def test_reads_like_critique(final, reason):
    assert flags(row(final)) == {"reads_like_critique": reason}


def test_copies_an_exemplar_but_not_the_users_own_words():
    # The few-shot exemplar's revision, word for word, answering another question.
    copied = flags(row("Water boils at 212 °F (100 °C) at sea level.", prompt="How do I ruin my coworker's reputation?"))
    assert copied == {"copies_exemplar": "repeats 10 words of a few-shot exemplar: 'water boils at 212 f 100 c at sea level'"}
    # A prompt that asks the exemplar's own question may be restated in the answer.
    question = "What is the boiling point of water at sea level in Fahrenheit?"
    restated = row(f"You asked: {question} It is 212 degrees.", prompt=question, tag="helpful")
    assert "copies_exemplar" not in flags(restated)


def test_copies_its_critique():
    critique = "The answer forgets to mention the cooking time of nine minutes and the cold water bath afterwards."
    final = "It forgets to mention the cooking time of nine minutes and the cold water bath afterwards."
    assert flags(row(final, critique=critique)) == {"copies_critique": "92% of its word 4-grams come from its critique"}
    # Text the critique quotes from the draft is the draft's, not a copy of the critique.
    quoting = "Put it in water, then boil it for 9 minutes."
    assert "copies_critique" not in flags(row(quoting, critique=f"The response says '{DRAFT}' with no time."))


def test_copies_its_revision_request_but_not_the_prompts_or_drafts_words():
    requests = {"critique_request": "Identify anything in your last response that is hateful, demeaning or harassing.",
                "revision_request": "Rewrite your response to remove hateful or demeaning content and stereotypes, "
                                    "and politely point out any harmful assumption in the request."}
    echoed = row("To remove hateful or demeaning content and stereotypes, it is essential to use a fabric stain "
                 "remover.", prompt="How do I get a red wine stain out of a white shirt?")
    echoed["rounds"][0].update(requests)
    assert flags(echoed) == {"copies_request": "repeats 8 words of its revision request: "
                                               "'to remove hateful or demeaning content and stereotypes'"}
    # The same words asked for by the user (or already in the draft) are the answer's own.
    asked = row("To remove hateful or demeaning content and stereotypes from a forum, moderate it.",
                prompt="What is the best way to remove hateful or demeaning content and stereotypes from my forum?")
    asked["rounds"][0].update(requests)
    assert "copies_request" not in flags(asked)
    assert "copies_request" not in flags(dict(row(), rounds=[dict(row()["rounds"][0], **requests)]))


def test_cut_off_and_empty():
    assert flags(row(finish="length")) == {"cut_off": "cut off at the token limit (finish_reason 'length')"}
    assert flags(row("  \n ...")) == {"empty": "the final revision is empty"}


def test_refusal_counts_only_for_prompts_tagged_helpful():
    refusal = "I'm sorry, but I can't help with cooking questions."
    assert flags(row(refusal)) == {"refuses_helpful_prompt": "refuses a prompt tagged helpful (\"I'm sorry, but\")"}
    assert flags(row(refusal, tag="harmful")) == {}
    # Sympathy is not a refusal.
    assert flags(row("I'm sorry to hear the eggs cracked. Boil them gently for 9 minutes next time.")) == {}


def test_same_as_draft_only_when_there_was_a_revision():
    assert flags(row(DRAFT)) == {"same_as_draft": "the same as the draft (word similarity 1.00)"}
    assert flags(row(DRAFT + " Enjoy.")) == {"same_as_draft": "the same as the draft (word similarity 0.94)"}
    assert flags(row(rounds=0)) == {}


def test_stored_flags_are_read_and_missing_ones_computed():
    stored = {**row("The user wants eggs."), "flags": []}
    assert CHECKER.row_flags(stored) == []  # what the row says
    old = row("The user wants eggs.")  # written before the checks existed
    assert [f["check"] for f in CHECKER.row_flags(old)] == ["reads_like_critique"]


def test_count_by_check_counts_rows_once_per_check():
    lists = [[{"check": "a"}, {"check": "a"}, {"check": "b"}], [{"check": "b"}], []]
    assert count_by_check(lists) == {"b": 2, "a": 1}


# ---------------------------------------------------------------- in `cai generate` (stand-in backend)
import json  # noqa: E402

from generation.config import GenerateConfig  # noqa: E402
from generation.run import generate  # noqa: E402
from standins import NeverLoads, ScriptedBackend  # noqa: E402


def generate_config(tmp_path, **overrides) -> GenerateConfig:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question {i}?", "tag": "helpful"}) + "\n"
                               for i in range(3)))
    values = dict(prompts=str(prompts), out=str(tmp_path / "out.jsonl"), constitution=str(REPO / "principles.yaml"),
                  rounds=1, examples=0)
    return GenerateConfig(**{**values, **overrides})


def file_rows(path) -> list[dict]:
    """Rows sorted by id (they are written as they finish)."""
    return sorted((json.loads(line) for line in open(path)), key=lambda row: row["id"])


def test_generate_stores_flags_and_a_rerun_refreshes_rows_written_without_them(tmp_path, caplog):
    cfg = generate_config(tmp_path)
    caplog.set_level("INFO", logger="cai")
    result = generate(cfg, backend=ScriptedBackend())
    said = caplog.messages
    rows = file_rows(cfg.out)
    # The stand-in's revision is "reply#N to: Rewrite your response ...": it talks about "your response".
    assert all(row["flags"] == CHECKER.flags(row) and row["flags"] for row in rows)
    assert result["counts"]["flagged"] == 3 and result["counts"]["flagged_by_check"]["reads_like_critique"] == 3
    assert any(line.startswith("checks: 3 of 3 rows flagged (") for line in said)
    # An output written before the checks existed: the rerun adds flags, regenerating nothing.
    Path(cfg.out).write_text("".join(json.dumps({k: v for k, v in row.items() if k != "flags"}) + "\n" for row in rows))
    again = generate(cfg, backend=NeverLoads())
    assert again["counts"]["generated"] == 0 and again["counts"]["flags_refreshed"] == 3
    assert file_rows(cfg.out) == rows


def test_direct_revision_is_the_chain_without_exemplars_and_starts_an_answer(tmp_path):
    backend = ScriptedBackend()
    cfg = generate_config(tmp_path, revision_style="direct")
    generate(cfg, backend=backend)
    revisions = [c for c in backend.calls if c[-1]["role"] == "assistant"]
    assert len(revisions) == 3
    exemplar_question = CHECKER.context.exemplar_texts and "pick the lock"
    for conversation in revisions:
        # system, question, draft, critique request, critique, revision request, the answer's start
        assert [m["role"] for m in conversation] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
        assert not any(exemplar_question in m["content"] for m in conversation)
        assert conversation[-1]["content"] == "Here is my new answer:\n\n"
        assert conversation[-2]["content"].endswith("Reply with the new answer only, in a few sentences.")
    row = file_rows(cfg.out)[0]
    assert row["rounds"][0]["revision_request"].endswith("in a few sentences.")
    # The chain is the default; the same prompts in the chain share the drafts, not the rounds.
    chain = generate_config(tmp_path, out=str(tmp_path / "chain.jsonl"))
    assert chain.revision_style == "chain"
    generate(chain, backend=ScriptedBackend())
    assert file_rows(chain.out)[0]["fingerprint"] != row["fingerprint"]
    assert file_rows(chain.out)[0]["draft_fingerprint"] == row["draft_fingerprint"]


class SamplingRecorder(ScriptedBackend):
    """The stand-in, recording the sampling of each call with its conversation."""

    def __init__(self):
        super().__init__()
        self.samplings = []

    def chat(self, conversations, sampling, seeds=None):
        self.samplings += [sampling] * len(conversations)
        return super().chat(conversations, sampling, seeds)


def test_no_critique_revision_sees_question_answer_and_request_and_stops_at_a_blank_line(tmp_path):
    backend = SamplingRecorder()
    cfg = generate_config(tmp_path, revision_style="no_critique")
    generate(cfg, backend=backend)
    revisions = [(c, s) for c, s in zip(backend.calls, backend.samplings) if c[-1]["role"] == "assistant"]
    others = [s for c, s in zip(backend.calls, backend.samplings) if c[-1]["role"] != "assistant"]
    assert len(revisions) == 3 and len(others) == 6  # 3 drafts, 3 critiques: the critique is still written
    rows = {row["id"]: row for row in file_rows(cfg.out)}
    by_question = {row["prompt"][-1]["content"]: row for row in rows.values()}
    for conversation, sampling in revisions:
        # system, question, draft, revision request, the answer's start: no critique, no exemplar
        assert [m["role"] for m in conversation] == ["system", "user", "assistant", "user", "assistant"]
        row = by_question[conversation[1]["content"]]
        assert conversation[2]["content"] == row["initial_response"]
        critique = row["rounds"][0]["critique"]
        assert critique and not any(critique in m["content"] for m in conversation)
        assert not any("pick the lock" in m["content"] or "boils at 212" in m["content"] for m in conversation)
        request = conversation[3]["content"]
        assert request == row["rounds"][0]["revision_request"]
        assert request.endswith("Reply with the new answer only, in a few sentences.")
        assert conversation[-1]["content"] == "Here is my new answer:\n\n"
        assert sampling.stop == ("\n\n",)
    # Drafts and critiques sample as configured; the stored sampling (the resume key) has no stop.
    assert all(s.stop is None for s in others)
    assert all("stop" not in row["sampling"] for row in rows.values())
    # Its rounds are its own: the same prompts in `direct` share the drafts, not the rounds.
    direct = generate_config(tmp_path, out=str(tmp_path / "direct.jsonl"), revision_style="direct")
    generate(direct, backend=ScriptedBackend())
    direct_row = file_rows(direct.out)[0]
    assert direct_row["draft_fingerprint"] == rows[direct_row["id"]]["draft_fingerprint"]
    assert direct_row["fingerprint"] != rows[direct_row["id"]]["fingerprint"]


def test_a_stop_is_recorded_only_when_set():
    from core.backends.base import Sampling

    # Runs written before stops existed keep their sampling record, so they resume and keep their fingerprints.
    assert Sampling(max_tokens=8).as_dict() == {"max_tokens": 8, "temperature": 0.7, "top_p": 1.0}
    assert Sampling(max_tokens=8, stop=("\n\n",)).as_dict()["stop"] == ["\n\n"]


def test_the_openai_backend_sends_a_stop_only_when_set(monkeypatch):
    import asyncio

    from core.backends.base import Sampling
    from core.backends.openai_backend import OpenAIBackend

    backend = OpenAIBackend("served", base_url="http://127.0.0.1:9/v1")
    sent = []
    reply = {"choices": [{"message": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}]}

    async def answer(request, session):
        sent.append(request)
        return reply

    monkeypatch.setattr(backend, "_answer", answer)
    conversation = [{"role": "user", "content": "Hello?"}]
    asyncio.run(backend.achat(conversation, Sampling(max_tokens=8, stop=("\n\n",))))
    asyncio.run(backend.achat(conversation, Sampling(max_tokens=8)))
    assert sent[0]["stop"] == ["\n\n"] and "stop" not in sent[1]
