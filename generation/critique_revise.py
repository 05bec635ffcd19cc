"""The critique-revise chain: draft, then ``rounds`` x (critique, revision) per prompt.

Inputs: a prompt (id and chat messages). Outputs: ``initial_response``, ``rounds``
(principle id, critique request, critique, revision request, revision) and
``final_response``.  Critique and revision requests are user turns appended to
the same conversation, so each call extends the previous one and vLLM's prefix
cache serves the shared part.  Few-shot exemplars, when the constitution has
them, sit in front of the critique conversation and, by default, not the draft
(the model's unprompted answer); their prefix is shared by every prompt.  With
``few_shot_position: draft`` they sit in front of the draft too (Hugging Face's
Constitutional AI recipe): the draft's conversation is then the start of the
critique's, so every call of a row extends the previous one's conversation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from constitution.assignment import assign_principles
from core.hashing import stable_hash
from constitution.schema import Constitution, Principle

from core.backends.base import Backend, Completion, Sampling, session_key
from .checks import RowChecker
from core.schema import CRITIQUE, DRAFT, REVISION, parse_step, step_name
from .prompt_files import PromptRecord


REVISION_STYLES = ("chain", "direct", "no_critique")
# Where the constitution's few-shot exemplars sit: in front of the critique only (the draft is the model's
# unprompted answer), or in front of the draft too (one conversation from the draft on).
FEW_SHOT_POSITIONS = ("critique", "draft")
# A style's revision replies that end at the first of these strings (not kept): ``no_critique``'s
# reply is one paragraph, so the 135M model stops before it rambles into the token limit or into
# talk about its answer.
REVISION_STOPS: dict[str, tuple[str, ...]] = {"no_critique": ("\n\n",)}


@dataclass(frozen=True)
class ChainSettings:
    model: str
    sampling: Sampling
    seed: int
    rounds: int
    revision_style: str = "chain"
    few_shot_position: str = "critique"

    def as_dict(self) -> dict:
        settings = {"model": self.model, "sampling": self.sampling.as_dict(), "seed": self.seed, "rounds": self.rounds}
        if self.revision_style != "chain":
            settings["revision_style"] = self.revision_style
        if self.few_shot_position != "critique":
            settings["few_shot_position"] = self.few_shot_position
        return settings

    def sampling_for(self, kind: str) -> Sampling:
        """The sampling of a step of ``kind`` (draft, critique, revision): the style's stops on revisions."""
        stop = REVISION_STOPS.get(self.revision_style) if kind == REVISION else None
        return replace(self.sampling, stop=stop) if stop else self.sampling


ANSWER_PREFIX = "Here is my new answer:\n\n"
NEW_ANSWER_ONLY = " Reply with the new answer only, in a few sentences."


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
        {"role": "user", "content": principle.revision_request.strip() + NEW_ANSWER_ONLY},
        {"role": "assistant", "content": ANSWER_PREFIX},
    ]


def uncritiqued_revision(prompt: Sequence[dict], answer: str, principle: Principle) -> list[dict]:
    """``revision_style: no_critique``: the revision's own conversation (after the system prompt).

    ``direct`` without the critique turns: the question, the answer, the principle's revision
    request asking for the new answer only, the reply started with ``ANSWER_PREFIX`` (and ended at
    a blank line, ``REVISION_STOPS``).  The critique is still written and stored with the round,
    but the revision does not see it: the 135M model's critiques are mostly off topic or echo the
    exemplars' ("The question is a harmless fact about water"), and a revision that reads one
    repeats it (bench/README.md: on the demo prompts 38/40 rows pass the checks this way, 23/40 or fewer
    with the critique in view).
    """
    return list(prompt) + [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": principle.revision_request.strip() + NEW_ANSWER_ONLY},
        {"role": "assistant", "content": ANSWER_PREFIX},
    ]


def revision_turns(style: str, prompt: Sequence[dict], answer: str, critique: str, principle: Principle) -> list[dict]:
    """The revision's own conversation (after the system prompt) for a style other than ``chain``."""
    if style == "no_critique":
        return uncritiqued_revision(prompt, answer, principle)
    return direct_revision(prompt, answer, critique, principle)


def _call_record(step: str, completion: Completion) -> dict:
    record = {
        "step": step,
        "finish_reason": completion.finish_reason,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
    }
    if completion.cached_tokens is not None:  # where the engine says (core/ledger.py sums it)
        record["cached_tokens"] = completion.cached_tokens
    return record


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
    output_tokens: int = 0  # generated by this run (reused calls not counted)
    dtype: str | None = None  # the engine's, recorded as provenance


class RowResult(NamedTuple):
    """What one prompt's chain gave: its row, or the failure that stopped it; tokens generated for it."""

    row: dict | None
    failure: dict | None
    output_tokens: int


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
        # What the draft's conversation starts with; with the exemplars in front it is the critique's start.
        self.draft_head = self.head + (self.few_shot if settings.few_shot_position == "draft" else [])
        self.checker = RowChecker(constitution)

    @property
    def calls_per_row(self) -> int:
        """The calls a row's chain makes when nothing is reused: its draft, then a critique and a revision a round."""
        return 1 + 2 * self.settings.rounds

    # -- keys -------------------------------------------------------------
    def principles_for(self, prompt: PromptRecord) -> list[Principle]:
        return assign_principles(prompt.id, self.constitution.principles, self.settings.rounds, self.settings.seed)

    def draft_fingerprint(self, prompt: PromptRecord) -> str:
        # The exemplars count only when the draft sees them, so default drafts keep their fingerprints;
        # rounds chain from the draft's fingerprint, so they change with it.
        exemplars = {"few_shot": self._few_shot_hash} if self.draft_head != self.head else {}
        return stable_hash(
            {
                "id": prompt.id,
                "messages": prompt.messages,
                "system": self.constitution.system_prompt,
                "model": self.settings.model,
                "sampling": self.settings.sampling.as_dict(),
                "seed": self.settings.seed,
                **exemplars,
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
    async def run_row(self, backend: Backend, prompt: PromptRecord, reuse: ReuseIndex) -> RowResult:
        """One prompt's chain, each call submitted as soon as the previous one returns: a row, or a
        failure when a request failed for good (the failure names the step)."""
        principles = self.principles_for(prompt)
        draft_fp = self.draft_fingerprint(prompt)
        state = _RowState(prompt, principles, draft_fp, self.round_fingerprints(draft_fp, principles),
                          dtype=backend.dtype)
        session = session_key(prompt.id)

        cached = reuse.drafts.get(state.draft_fingerprint)
        if cached is not None:
            state.initial, state.calls = cached["text"], list(cached["call"])
            state.reused_calls += 1
        else:
            state.initial = await self._call(backend, state, step_name(DRAFT), self.draft_head + prompt.messages, session)
            if state.error is not None:
                return RowResult(None, state.error, state.output_tokens)
        state.context = self.head + self.few_shot + prompt.messages + [{"role": "assistant", "content": state.initial}]

        for r, principle in enumerate(principles):
            cached = reuse.rounds.get(state.round_fingerprints[r])
            if cached is not None and len(state.rounds) == r:
                round_, calls = cached
                state.rounds.append(dict(round_))
                state.calls.extend(calls)
                state.context += [
                    {"role": "user", "content": principle.critique_request},
                    {"role": "assistant", "content": round_["critique"]},
                    {"role": "user", "content": principle.revision_request},
                    {"role": "assistant", "content": round_["revision"]},
                ]
                state.reused_calls += 2
                continue
            state.context.append({"role": "user", "content": principle.critique_request})
            critique = await self._call(backend, state, step_name(CRITIQUE, r + 1), state.context, session)
            if state.error is not None:
                return RowResult(None, state.error, state.output_tokens)
            # The chain's context goes on as in Constitutional AI either way: later rounds critique in it.
            state.context += [
                {"role": "assistant", "content": critique},
                {"role": "user", "content": principle.revision_request},
            ]
            if self.settings.revision_style != "chain":
                answer = state.rounds[-1]["revision"] if state.rounds else state.initial
                turns = revision_turns(self.settings.revision_style, prompt.messages, answer, critique, principle)
                conversation = self.head + turns
                revision_request = next(t["content"] for t in reversed(turns) if t["role"] == "user")
            else:
                conversation, revision_request = state.context, principle.revision_request
            revision = await self._call(backend, state, step_name(REVISION, r + 1), conversation, session)
            if state.error is not None:
                return RowResult(None, state.error, state.output_tokens)
            state.rounds.append(
                {
                    "principle_id": principle.id,
                    "critique_request": principle.critique_request,
                    "critique": critique,
                    "revision_request": revision_request,
                    "revision": revision,
                    "fingerprint": state.round_fingerprints[r],
                }
            )
            state.context.append({"role": "assistant", "content": revision})
        return RowResult(self._row(state), None, state.output_tokens)

    async def _call(self, backend: Backend, state: _RowState, step: str, conversation: list[dict], session: str) -> str:
        """One call of the row's chain: its text, with the call recorded (or ``state.error`` set)."""
        # Conversations are copied: the row's context grows after the call is sent.
        sampling = self.settings.sampling_for(parse_step(step)[0])
        completion = await backend.achat(list(conversation), sampling, self._seed(state.prompt, step), session=session)
        if completion.error:
            state.error = {
                "id": state.prompt.id,
                "line": state.prompt.line,
                "step": step,
                "error": completion.error,
                "fingerprint": state.round_fingerprints[-1] if state.round_fingerprints else state.draft_fingerprint,
            }
            return ""
        state.calls.append(_call_record(step, completion))
        state.output_tokens += completion.completion_tokens
        return completion.text

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
            "dtype": state.dtype,
        }
        row["flags"] = self.checker.flags(row)
        return row
