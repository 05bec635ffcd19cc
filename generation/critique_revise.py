"""The critique-revise chain: draft, then ``rounds`` x (critique, revision) per prompt.

Inputs: a prompt (id and chat messages). Outputs: ``initial_response``, ``rounds``
(principle id, critique request, critique, revision request, revision) and
``final_response``.  Critique and revision requests are user turns appended to
the same conversation, so each call extends the previous one and vLLM's prefix
cache serves the shared part.  Few-shot exemplars, when the constitution has
them, sit in front of the critique conversation (not the draft, which must be
the model's unprompted answer); their prefix is shared by every prompt.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from constitution.assignment import assign_principles
from core.hashing import stable_hash
from constitution.schema import Constitution, Principle

from core.backends.base import Backend, Completion, Sampling
from .checks import RowChecker
from core.progress import Progress
from core.schema import CRITIQUE, DRAFT, REVISION, parse_step, step_name
from .prompts import PromptRecord


REVISION_STYLES = ("chain", "direct")


@dataclass(frozen=True)
class ChainSettings:
    model: str
    sampling: Sampling
    seed: int
    rounds: int
    revision_style: str = "chain"

    def as_dict(self) -> dict:
        settings = {"model": self.model, "sampling": self.sampling.as_dict(), "seed": self.seed, "rounds": self.rounds}
        if self.revision_style != "chain":
            settings["revision_style"] = self.revision_style
        return settings


ANSWER_PREFIX = "Here is my new answer:\n\n"


def direct_revision(prompt: Sequence[dict], answer: str, critique: str, principle: Principle) -> list[dict]:
    """``revision_style: direct``: the revision's own conversation (after the system prompt).

    The chain's turns without the few-shot exemplars, the revision request asking for the new
    answer only, and the reply started with ``ANSWER_PREFIX`` (the backend continues a final
    assistant message and returns only what follows).  On the demo prompts the 135M model then
    writes answers more often, and copies the exemplars less, than in the chain.
    """
    return list(prompt) + [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": principle.critique_request},
        {"role": "assistant", "content": critique},
        {"role": "user", "content": principle.revision_request.strip() + " Reply with the new answer only, in a few sentences."},
        {"role": "assistant", "content": ANSWER_PREFIX},
    ]


def _call_record(step: str, completion: Completion) -> dict:
    return {
        "step": step,
        "finish_reason": completion.finish_reason,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
    }


@dataclass
class _RowState:
    prompt: PromptRecord
    principles: list[Principle]
    draft_fingerprint: str
    round_fingerprints: list[str]
    initial: str | None = None
    rounds: list[dict] = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)
    context: list[dict] = field(default_factory=list)
    error: dict | None = None
    reused_calls: int = 0
    critique: str = ""  # of the round in progress
    revision: str = ""
    revision_request: str = ""  # the user turn sent for the revision in progress
    revision_conversation: list[dict] | None = None  # direct: the revision's own conversation


class ReuseIndex:
    """Drafts and rounds of earlier rows, by the fingerprint of what produced them (with their calls, by step)."""

    def __init__(self, rows: Sequence[dict] = ()):
        self.drafts: dict[str, dict] = {}
        self.rounds: dict[str, tuple[dict, list[dict]]] = {}
        for row in rows:
            calls = {call.get("step"): call for call in row.get("calls") or []}
            if row.get("draft_fingerprint") and row.get("initial_response") is not None:
                draft = {"text": row["initial_response"], "call": self._calls(calls, DRAFT)}
                self.drafts[row["draft_fingerprint"]] = draft
            for r, round_ in enumerate(row.get("rounds") or [], start=1):
                if round_.get("fingerprint"):
                    steps = (step_name(CRITIQUE, r), step_name(REVISION, r))
                    self.rounds[round_["fingerprint"]] = (round_, self._calls(calls, *steps))

    @staticmethod
    def _calls(calls: dict[str, dict], *steps: str) -> list[dict]:
        return [calls[step] for step in steps if step in calls]


class CritiqueReviseTask:
    """Builds ``core.schema.GenerationRow`` rows (``_row``) for the prompts of one prompts file."""

    def __init__(self, constitution: Constitution, settings: ChainSettings, source_file: str | None = None):
        self.constitution = constitution
        self.settings = settings
        self.source_file = source_file  # recorded in each row's source
        self.head = [{"role": "system", "content": constitution.system_prompt}] if constitution.system_prompt else []
        self.few_shot = [m for exemplar in constitution.few_shot for m in exemplar.messages()]
        self._few_shot_hash = stable_hash(self.few_shot) if self.few_shot else None
        self.checker = RowChecker(constitution)

    # -- keys -------------------------------------------------------------
    def principles_for(self, prompt: PromptRecord) -> list[Principle]:
        return assign_principles(prompt.id, self.constitution.principles, self.settings.rounds, self.settings.seed)

    def draft_fingerprint(self, prompt: PromptRecord) -> str:
        return stable_hash(
            {
                "id": prompt.id,
                "messages": prompt.messages,
                "system": self.constitution.system_prompt,
                "model": self.settings.model,
                "sampling": self.settings.sampling.as_dict(),
                "seed": self.settings.seed,
            }
        )

    def round_fingerprints(self, draft_fingerprint: str, principles: Sequence[Principle]) -> list[str]:
        fingerprints, previous = [], draft_fingerprint
        style = {} if self.settings.revision_style == "chain" else {"revision_style": self.settings.revision_style}
        for principle in principles:
            previous = stable_hash({"previous": previous, "principle": principle.texts(), "few_shot": self._few_shot_hash,
                                    **style})
            fingerprints.append(previous)
        return fingerprints

    def fingerprint(self, prompt: PromptRecord) -> str:
        """The row's key: changes when anything that produced the row changes."""
        draft = self.draft_fingerprint(prompt)
        rounds = self.round_fingerprints(draft, self.principles_for(prompt))
        return rounds[-1] if rounds else draft

    def _seed(self, prompt: PromptRecord, step: str) -> int:
        # Per-request seeds make each row independent of batch composition and of resumes.
        return int(stable_hash([self.settings.seed, prompt.id, step], 8), 16) % (2**31)

    # -- running ----------------------------------------------------------
    def run_batch(
        self, backend: Backend, prompts: Sequence[PromptRecord], reuse: ReuseIndex, progress: Progress | None = None
    ) -> tuple[list[dict], list[dict]]:
        """Rows for ``prompts`` and failures (rows whose request failed for good)."""
        states = []
        for prompt in prompts:
            principles = self.principles_for(prompt)
            draft_fp = self.draft_fingerprint(prompt)
            states.append(_RowState(prompt, principles, draft_fp, self.round_fingerprints(draft_fp, principles)))

        for state in states:
            cached = reuse.drafts.get(state.draft_fingerprint)
            if cached is not None:
                state.initial, state.calls = cached["text"], list(cached["call"])
                state.reused_calls += 1
        self._stage(backend, step_name(DRAFT), [s for s in states if s.initial is None], progress)
        for state in states:
            if state.error is None:
                state.context = self.head + self.few_shot + state.prompt.messages + [
                    {"role": "assistant", "content": state.initial}
                ]

        for r in range(self.settings.rounds):
            pending = []
            for state in states:
                if state.error is not None:
                    continue
                cached = reuse.rounds.get(state.round_fingerprints[r])
                if cached is not None and len(state.rounds) == r:
                    round_, calls = cached
                    state.rounds.append(dict(round_))
                    state.calls.extend(calls)
                    state.context += [
                        {"role": "user", "content": state.principles[r].critique_request},
                        {"role": "assistant", "content": round_["critique"]},
                        {"role": "user", "content": state.principles[r].revision_request},
                        {"role": "assistant", "content": round_["revision"]},
                    ]
                    state.reused_calls += 2
                else:
                    pending.append(state)
            for state in pending:
                principle = state.principles[r]
                state.context.append({"role": "user", "content": principle.critique_request})
            self._stage(backend, step_name(CRITIQUE, r + 1), pending, progress)
            pending = [s for s in pending if s.error is None]
            for state in pending:
                principle = state.principles[r]
                if self.settings.revision_style == "direct":
                    answer = state.rounds[-1]["revision"] if state.rounds else state.initial
                    turns = direct_revision(state.prompt.messages, answer, state.critique, principle)
                    state.revision_conversation = self.head + turns
                    state.revision_request = next(t["content"] for t in reversed(turns) if t["role"] == "user")
                else:
                    state.revision_request = principle.revision_request
                # The chain's context goes on as in Constitutional AI either way: later rounds critique in it.
                state.context += [
                    {"role": "assistant", "content": state.critique},
                    {"role": "user", "content": principle.revision_request},
                ]
            self._stage(backend, step_name(REVISION, r + 1), pending, progress)
            for state in pending:
                if state.error is None:
                    principle = state.principles[r]
                    state.rounds.append(
                        {
                            "principle_id": principle.id,
                            "critique_request": principle.critique_request,
                            "critique": state.critique,
                            "revision_request": state.revision_request,
                            "revision": state.revision,
                            "fingerprint": state.round_fingerprints[r],
                        }
                    )
                    state.context.append({"role": "assistant", "content": state.revision})

        rows, failures = [], []
        for state in states:
            if state.error is not None:
                failures.append(state.error)
            else:
                rows.append(self._row(state))
        return rows, failures

    def _stage(self, backend: Backend, step: str, states: list[_RowState], progress: Progress | None) -> None:
        if not states:
            return
        kind, _ = parse_step(step)
        if kind == DRAFT:
            conversations = [self.head + s.prompt.messages for s in states]
        elif step.startswith("revision") and self.settings.revision_style == "direct":
            conversations = [s.revision_conversation for s in states]
        else:
            conversations = [s.context for s in states]
        seeds = [self._seed(s.prompt, step) for s in states]
        started = time.monotonic()
        completions = backend.chat(conversations, self.settings.sampling, seeds)
        elapsed = time.monotonic() - started
        for state, completion in zip(states, completions):
            if completion.error:
                state.error = {
                    "id": state.prompt.id,
                    "line": state.prompt.line,
                    "step": step,
                    "error": completion.error,
                    "fingerprint": state.round_fingerprints[-1] if state.round_fingerprints else state.draft_fingerprint,
                }
                continue
            state.calls.append(_call_record(step, completion))
            if kind == DRAFT:
                state.initial = completion.text
            elif kind == CRITIQUE:
                state.critique = completion.text
            else:
                state.revision = completion.text
        if progress is not None:
            progress.stage(step, len(states), sum(c.completion_tokens for c in completions), elapsed)

    def _row(self, state: _RowState) -> dict:
        """The row as ``core.schema.GenerationRow`` describes it: a new field goes there and here."""
        prompt = state.prompt
        final = state.rounds[-1]["revision"] if state.rounds else state.initial
        row = {
            "id": prompt.id,
            "tag": prompt.tag,
            "prompt": prompt.messages,
            "initial_response": state.initial,
            "rounds": state.rounds,
            "final_response": final,
            "model": self.settings.model,
            "sampling": self.settings.sampling.as_dict(),
            "seed": self.settings.seed,
            "calls": state.calls,
            "token_counts": {
                "prompt": sum(c["prompt_tokens"] for c in state.calls),
                "completion": sum(c["completion_tokens"] for c in state.calls),
            },
            "constitution_version": str(self.constitution.version),
            "draft_fingerprint": state.draft_fingerprint,
            "fingerprint": state.round_fingerprints[-1] if state.round_fingerprints else state.draft_fingerprint,
            "source": {"line": prompt.line, "file": self.source_file},
            "reused_calls": state.reused_calls,
        }
        row["flags"] = self.checker.flags(row)
        return row
