"""Rows judged on their own finish out of order: the outputs stay whole and valid, resume, and carry a session per row.

A stand-in judge holds each row's requests until every later row is done (``standins.FinishOrder``), so rows
finish in the reverse of the input's order (``cai judge``, ``cai judge agreement`` and ``cai eval``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from core.backends.base import Backend, Completion, session_key
from core.errors import UserError
from core.schema import PreferenceRow
from judge_standins import PreferenceBackend
from standins import FinishOrder
from judging.config import AgreementConfig, JudgeConfig
from judging.run import judgements_path, run_judge
from judging.agreement import run_agreement

REPO = Path(__file__).resolve().parents[2]
CONSTITUTION = str(REPO / "principles.yaml")
N = 6
_NUMBER = re.compile(r"Question (\d+)\?")


def number(conversation) -> int:
    """The row a judge or answer request belongs to (its prompt is "Question i?")."""
    return int(_NUMBER.search(json.dumps(conversation)).group(1))


class Recording(PreferenceBackend):
    """The stand-in judge, recording each request's row and session; ``stop_at`` raises for that row."""

    def __init__(self, stop_at: int | None = None, rows: int = N, calls_per_row: int = 2 * 2, **kwargs):
        # pairwise under 2 principles: each row's 4 requests (2 principles x 2 orders)
        super().__init__(order=FinishOrder(rows, calls_per_row, number), **kwargs)
        self.stop_at = stop_at
        self.sessions: dict[int, set] = {}

    def _seen(self, conversation, session):
        row = number(conversation)
        self.sessions.setdefault(row, set()).add(session)
        if row == self.stop_at:
            raise UserError("the endpoint stopped answering (a stand-in's stop)")

    async def alabel_logprobs(self, conversation, labels, session=None):
        result = await super().alabel_logprobs(conversation, labels, session)
        self._seen(conversation, session)
        return result

    async def achat(self, conversation, sampling, seed=None, session=None):
        result = await super().achat(conversation, sampling, seed, session)
        self._seen(conversation, session)
        return result


def generation_rows(path: Path) -> Path:
    rows = []
    for i in range(N):
        good, bad = ("GOOD revision", "BAD draft") if i % 2 == 0 else ("BAD revision", "GOOD draft")
        rows.append({
            "id": f"p{i}", "tag": None, "prompt": [{"role": "user", "content": f"Question {i}?"}],
            "initial_response": bad, "final_response": good, "model": "m", "sampling": {}, "seed": 0,
            "rounds": [{"principle_id": "harm-privacy", "critique_request": "c", "critique": "k",
                        "revision_request": "r", "revision": good, "fingerprint": f"r{i}"}],
            "calls": [{"step": s, "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1}
                      for s in ("draft", "critique 1", "revision 1")],
            "token_counts": {}, "constitution_version": "1", "draft_fingerprint": f"d{i}", "fingerprint": f"f{i}",
            "source": {"file": "prompts.jsonl", "line": i + 1}, "reused_calls": 0,
        })
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def lines_of(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().split("\n") if line.strip()]


def by_id(rows) -> dict:
    return {row["id"]: row for row in rows}


def test_pairs_finishing_out_of_order_make_a_valid_output_that_resumes(tmp_path):
    source = generation_rows(tmp_path / "revisions.jsonl")

    def config(name: str) -> JudgeConfig:
        return JudgeConfig(input=str(source), out=str(tmp_path / name / "prefs.jsonl"), constitution=CONSTITUTION,
                           method="pairwise", principles_per_pair=2, keep_flagged=True,
                           concurrency=4 * N)  # every row, and each one's 4 requests, in flight at once

    reference_backend = Recording()
    reference = run_judge(config("reference"), backend=reference_backend)
    written = lines_of(tmp_path / "reference" / "prefs.jsonl")
    # Written as they finished (the last rows first); whole, valid, once each; returned in input order.
    assert [p["id"] for p in written] == [f"p{i}" for i in reversed(range(N))]
    for pair in written:
        PreferenceRow.model_validate(pair, strict=True)
    assert [p["id"] for p in reference["pairs"]] == [f"p{i}" for i in range(N)]
    assert [r["id"] for r in lines_of(tmp_path / "reference" / "sft.jsonl")] == [f"p{i}" for i in range(N)]
    # Every call of a row carried that row's session key, and no other row's.
    assert reference_backend.sessions == {i: {session_key(f"p{i}")} for i in range(N)}

    # A run that stops while row 0 (the last to finish) is in flight keeps the rows that finished, whole.
    with pytest.raises(UserError, match="stopped answering"):
        run_judge(config("resumed"), backend=Recording(stop_at=0))
    out = tmp_path / "resumed" / "prefs.jsonl"
    kept = lines_of(out)
    assert sorted(p["id"] for p in kept) == [f"p{i}" for i in range(1, N)]
    manifest = json.loads((tmp_path / "resumed" / "prefs.jsonl.manifest.json").read_text())
    assert manifest["counts"]["pairs"] == N - 1 and manifest["counts"]["stopped"] == "error"
    cached = {r["key"] for r in lines_of(judgements_path(out))}
    assert len(cached) == (N - 1) * 2 * 2  # rows x principles x orders, each written once with its row

    # The rerun judges only row 0, and the output equals the uninterrupted run's (in any order).
    again = Recording(rows=1)
    result = run_judge(config("resumed"), backend=again)
    assert set(again.sessions) == {0} and again.label_calls == 2 * 2
    assert result["counts"]["judgements_run"] == 4 and result["counts"]["new_pairs"] == 1
    final = lines_of(out)
    assert len(final) == N and by_id(final) == by_id(written)
    # A third run has nothing to do and leaves the file as it is.
    before = out.read_bytes()
    idle = Recording(rows=0)
    run_judge(config("resumed"), backend=idle)
    assert idle.label_calls == 0 and out.read_bytes() == before


def test_agreement_out_of_order_sums_in_input_order(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text("".join(json.dumps({"id": f"h{i}", "prompt": f"Question {i}?",
                                        "chosen": "GOOD" if i % 3 else "BAD", "rejected": "BAD" if i % 3 else "GOOD"})
                            + "\n" for i in range(N)))

    def run(backend, name):
        config = AgreementConfig(pairs=str(path), constitution=CONSTITUTION, method="pairwise", principles_per_pair=2,
                                 details=str(tmp_path / name), concurrency=4 * N)
        return run_agreement(config, backend=backend)

    slow, quick = Recording(), PreferenceBackend()
    streamed, plain = run(slow, "slow.jsonl"), run(quick, "quick.jsonl")
    assert streamed["agreement"] == plain["agreement"] == pytest.approx(4 / 6, abs=1e-3)
    assert slow.order.finished == list(reversed(range(N)))  # judged last row first, reported in input order
    assert [d["id"] for d in lines_of(tmp_path / "slow.jsonl")] == [f"h{i}" for i in range(N)]
    assert (tmp_path / "slow.jsonl").read_text() == (tmp_path / "quick.jsonl").read_text()
    assert slow.sessions == {i: {session_key(f"h{i}")} for i in range(N)}


class Answers(Backend):
    """A policy for ``cai eval``: the trained model answers GOOD, the base model BAD, the first prompts last."""

    name = "answers"

    def __init__(self, model: str):
        super().__init__(model)
        self.sessions: dict[int, set] = {}
        self.order = FinishOrder(N, 1, number)

    async def achat(self, conversation, sampling, seed=None, session=None):
        async with self.order.turn(conversation):
            self.sessions.setdefault(number(conversation), set()).add(session)
        text = "GOOD answer" if self.model == "trained" else "BAD answer"
        return Completion(text=text, finish_reason="stop", completion_tokens=2)

    def label_logprobs(self, conversations, labels):
        raise NotImplementedError


def test_eval_streams_answers_and_judgements_and_keeps_prompt_order(tmp_path, monkeypatch):
    from evaluation.run import EvalConfig, evaluate

    prompts = tmp_path / "heldout.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"e{i}", "prompt": f"Question {i}?", "tag": "ab"[i % 2]}) + "\n"
                               for i in range(N)))
    policies: list[Answers] = []

    def build_backend(self, backend, model, **values):
        policies.append(Answers(model))
        return policies[-1]

    monkeypatch.setattr(EvalConfig, "build_backend", build_backend)
    monkeypatch.setattr("evaluation.run.resolve_model", lambda name, flag: name)  # stand-ins, not folders
    judge = Recording()
    result = evaluate(EvalConfig(trained_model="trained", prompts=str(prompts), out=str(tmp_path / "eval.json"),
                                 constitution=CONSTITUTION, method="pairwise", principles_per_pair=2, concurrency=4 * N),
                      judge_backend=judge)
    assert [row["id"] for row in result["rows"]] == [f"e{i}" for i in range(N)]
    assert judge.order.finished == list(reversed(range(N)))  # judged last prompt first, reported in input order
    assert all(row["trained"] == "GOOD answer" and row["base"] == "BAD answer" and row["win"] == 1.0
               for row in result["rows"])
    assert result["win_rate"]["all"]["n"] == N and result["win_rate"]["all"]["win_rate"] == 1.0
    assert [p.model for p in policies] == ["trained", "default"]
    for backend in (*policies, judge):  # each prompt's calls, on every model, carry its session key
        assert backend.sessions == {i: {session_key(f"e{i}")} for i in range(N)}

