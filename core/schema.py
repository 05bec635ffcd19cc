"""The rows every stage writes and reads, in one module: a row's format changes here and in its one builder.

- ``GenerationRow``: one ``cai generate`` row; built by ``generation.critique_revise.CritiqueReviseTask._row``.
- ``PreferenceRow``: one ``cai judge`` pair, TRL's conversational preference format plus the
  judge's columns; built by ``judging.pairs.build_pair``.
- ``SftRow``: one ``cai judge`` SFT row (``messages``); built by ``judging.pairs.sft_row``.
- ``JudgementRecord`` (``OrderJudgement`` | ``LikelihoodJudgement``): one cached judgement
  (``OUT.judgements.jsonl``); built by the judge's methods (``judging.methods``).
- ``SampleRecord``: one cached policy sample (``OUT.samples.jsonl``); built by ``judging.sampling.sample_candidates``.
- ``Manifest``: the manifest beside every output; built by ``core.store.write_manifest``.

A new column is added to its model here and to its builder; nothing else changes.
Builders write plain dicts (validating a generation row takes about 14 us, 7% of
generate's own CPU time per row with a stand-in model), and tests/judging/test_row_schemas.py
checks that every builder's rows validate against these models.  Rows are validated where they
cross a trust boundary: a file a user hands to a command (``validate_fields``,
``parse_messages``), with errors that name the file, the line and the fix.

``Message`` is the one chat-message validator; ``parse_messages`` applies it to a
message list and says what is wrong in words.  Steps of the critique-revise chain are
named by ``step_name`` ("draft", "critique N", "revision N") and read by ``parse_step``.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model, field_validator

from core.errors import UserError
from core.text import shorten

# -- messages ---------------------------------------------------------------------------------
ROLES = ("system", "user", "assistant")
MESSAGE_SHAPE = '{"role": ..., "content": "text"}'


class Message(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


Messages = Annotated[list[Message], Field(min_length=1)]


class MessageError(ValueError):
    """What is wrong with a message list, in words (``messages[1].role is 'tool'; use one of ...``)."""


_MESSAGES = TypeAdapter(Messages)


def parse_messages(value: Any, name: str = "messages", roles: Sequence[str] = ROLES,
                   other_keys: Literal["forbid", "drop"] = "forbid") -> list[dict[str, str]]:
    """``value`` checked as a non-empty list of ``Message`` with roles in ``roles``; plain dicts back.

    ``other_keys="drop"`` keeps only ``role`` and ``content`` of each message (inputs from
    elsewhere may carry e.g. ``name``); ``"forbid"`` refuses them.  Raises MessageError
    naming the message (``name[i]``) and the fix.
    """
    if not isinstance(value, list) or not value:
        raise MessageError(f"{name} must be a non-empty list of messages {MESSAGE_SHAPE}")
    if other_keys == "drop":
        value = [{k: m[k] for k in ("role", "content") if k in m} if isinstance(m, dict) else m for m in value]
    try:
        _MESSAGES.validate_python(value, strict=True)
    except ValidationError as exc:
        raise MessageError(describe_error(exc.errors()[0], name, hint=f"a message is {MESSAGE_SHAPE}")) from None
    for i, message in enumerate(value):
        if message["role"] not in roles:
            raise MessageError(f"{name}[{i}].role is {message['role']!r}; {_choices(roles)}")
    return [dict(m) for m in value]  # copies, keys in the order given


def _choices(choices: Sequence[str]) -> str:
    return f"it must be {choices[0]!r}" if len(choices) == 1 else f"use one of {', '.join(choices)}"


# -- steps of the critique-revise chain ---------------------------------------------------------
DRAFT, CRITIQUE, REVISION = "draft", "critique", "revision"
_STEP = re.compile(r"^(critique|revision) ([1-9][0-9]*)$")


def step_name(kind: str, round: int | None = None) -> str:
    """``"draft"``, or ``"critique N"`` / ``"revision N"`` for round N (counted from 1)."""
    if kind == DRAFT and round is None:
        return DRAFT
    if kind in (CRITIQUE, REVISION) and isinstance(round, int) and round >= 1:
        return f"{kind} {round}"
    raise ValueError(f"no step {kind!r} (round {round!r}); steps are draft, critique N and revision N")


def parse_step(step: str) -> tuple[str, int | None]:
    """``"critique 2"`` -> ``("critique", 2)``; ``"draft"`` -> ``("draft", None)``; ValueError otherwise."""
    if step == DRAFT:
        return DRAFT, None
    match = _STEP.match(step) if isinstance(step, str) else None
    if match is None:
        raise ValueError(f"{step!r} is not a step name (draft, critique N, revision N)")
    return match.group(1), int(match.group(2))


#: A probability as rows and caches hold it: a finite number in [0, 1], never text (a hand-edited "0.7").
Probability = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False, strict=True)]
#: A log-probability: a finite number <= 0.
LogProbability = Annotated[float, Field(le=0, allow_inf_nan=False, strict=True)]


# -- cai generate -------------------------------------------------------------------------------
class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Call(_Row):
    """One model call of the chain, in the order made (a reused draft or round keeps its calls)."""

    step: str = Field(description="draft, critique N or revision N (see step_name).")
    finish_reason: str | None = Field(description='"stop", "length" (cut off at max_tokens), ...')
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None = Field(default=None, description="Prompt tokens served from the prefix cache, where "
                                      "the engine says (absent otherwise, and in rows written before it was kept).")

    @field_validator("step")
    @classmethod
    def _known_step(cls, step: str) -> str:
        parse_step(step)
        return step


class Round(_Row):
    """One critique-revision round under one principle."""

    principle_id: str
    critique_request: str
    critique: str
    revision_request: str
    revision: str
    fingerprint: str = Field(description="Key of the round: the previous key, the principle, the few-shot exemplars.")


class TokenCounts(_Row):
    prompt: int
    completion: int


class GenerationSource(_Row):
    line: int = Field(description="Line of the prompt in the prompts file.")
    file: str = Field(description="The prompts file.")


class Flag(_Row):
    """One failed check on a generation row (generation/checks.py)."""

    check: str = Field(description="The check's name, e.g. 'reads_like_critique'.")
    reason: str = Field(description="Why, in words: \"starts with 'The user wants'\".")


class GenerationRow(_Row):
    id: str
    tag: str | None
    prompt: Messages
    initial_response: str
    rounds: list[Round]
    final_response: str = Field(description="The last revision, or the draft when there are no rounds.")
    model: str
    sampling: dict[str, Any] = Field(description="core.backends.base.Sampling.as_dict().")
    seed: int
    calls: list[Call]
    token_counts: TokenCounts
    constitution_version: str
    draft_fingerprint: str
    fingerprint: str = Field(description="The row's key: the last round's fingerprint, or the draft's.")
    source: GenerationSource
    reused_calls: int = Field(description="Calls taken from an earlier row instead of made.")
    dtype: str | None = Field(default=None, description="The dtype of the engine that made the row's calls "
                              "(None: an endpoint, or a row written before dtypes were recorded).")
    flags: list[Flag] = Field(default_factory=list, description="The checks the final revision fails; empty when "
                              "clean (rows written before the checks get them on the next `cai generate`).")


# -- cai judge: pairs and SFT rows ------------------------------------------------------------------
class PrincipleScore(_Row):
    """The verdict under one principle, oriented to the pair (P(chosen better))."""

    chosen_probability: Probability | None
    orders: list[float] | None = Field(default=None, description="P(chosen better) with chosen shown as (A), as (B).")
    orders_agree: bool | None = None
    bounded: bool | None = Field(default=None, description="Present (true) when a label was outside the top-k.")
    error: str | None = Field(default=None, description="Present when this principle's judgement failed.")
    refused: bool | None = Field(default=None, description="Present (true) when the judge declined to judge.")
    judges: dict[str, Probability | None] | None = Field(
        default=None, description="Several judges: each one's P(chosen better), combined into chosen_probability.")
    fallback_judge: str | None = Field(default=None, description="Present when the fallback judge gave it (the "
                                                                 "judges refused or could not answer).")


class PairSource(_Row):
    file: str
    line: int
    chosen: str = Field(description='Where the chosen response came from: "final_response", "sample 2", ...')
    rejected: str
    method: str


class PreferenceRow(_Row):
    """TRL's conversational preference format (prompt, chosen, rejected) plus the judge's columns."""

    prompt: Messages
    chosen: Messages
    rejected: Messages
    chosen_probability: Probability = Field(description="P(chosen better than rejected), the soft label.")
    margin: Probability = Field(description="2 * chosen_probability - 1.")
    principle_ids: list[str]
    principle_scores: dict[str, PrincipleScore]
    judge_model: str
    judge_dtype: str | None = Field(default=None, description="The dtype of the judge's engine in the run that "
                                    "wrote the pair (None: an endpoint, or written before dtypes were recorded).")
    orders_agree: bool
    id: str
    fingerprint: str
    source: PairSource

    @field_validator("chosen", "rejected")
    @classmethod
    def _assistant_turns(cls, messages: list[Message]) -> list[Message]:
        if any(m.role != "assistant" for m in messages):
            raise ValueError("chosen and rejected hold assistant turns only")
        return messages


class SftSource(_Row):
    line: int
    response: str


class SftRow(_Row):
    """TRL's conversational language-modelling format (``messages``) plus where the answer came from."""

    messages: Messages
    id: str
    principle_ids: list[str]
    revisions: int
    source: SftSource
    judge_prefers: str | None


# -- cai judge: caches ------------------------------------------------------------------------------
class CachedJudgement(_Row):
    """What every cached judgement holds, whatever its method (a judge method's ``record_model`` extends it,
    with a ``kind`` Literal of its own)."""

    key: str
    transient: bool = Field(description="A failed request: kept for this run only, never written.")
    judge: str | None = Field(default=None, description="The judge model that gave it (its key holds it too); absent "
                                                        "in older records.")


class OrderJudgement(CachedJudgement):
    """One order of a pairwise or text comparison: P(the first response better)."""

    kind: Literal["order"]
    p_first: Probability | None
    error: str | None
    bounded: bool | None = None
    logprob_a: float | None = None
    logprob_b: float | None = None
    floor: float | None = None
    reply: str | None = None
    parse_failure: bool | None = None
    reasoning: str | None = None
    outcome: Literal["judged", "refused", "parse_failure", "error"] | None = Field(
        default=None, description="What happened (judging/refusal.py); absent in records written before it, which "
                                  "read from their other fields as before.")


class LikelihoodJudgement(CachedJudgement):
    """One response's log-likelihood as the reply of an assistant told to follow (or violate) a principle."""

    kind: Literal["likelihood"]
    logprob: LogProbability | None
    tokens: int | None
    error: str | None


JudgementRecord = Annotated[Union[OrderJudgement, LikelihoodJudgement], Field(discriminator="kind")]


class SampleRecord(_Row):
    key: str
    id: str
    index: int
    text: str
    finish_reason: str | None
    error: str | None


# -- manifests --------------------------------------------------------------------------------------
class Manifest(BaseModel):
    """The manifest beside every output; stages add their own sections (constitution, report, ...)."""

    model_config = ConfigDict(extra="allow")

    stage: str
    output: str
    updated: str = Field(description="UTC time, ISO 8601.")
    command: list[str] | None
    versions: dict[str, str]
    config: dict[str, Any]
    counts: dict[str, Any]


# -- validating input ---------------------------------------------------------------------------------
def describe_error(error: dict, name: str | None = None, hint: str = "") -> str:
    """One pydantic error in words: ``chosen[0].role is 'tool'; use one of system, user, assistant``.

    ``name`` goes in front of the error's location; ``hint`` (the expected shape) follows a
    missing key, an unknown key or a value that is not an object.
    """
    loc = ((name,) if name else ()) + tuple(error["loc"])
    where = _dotted(loc)
    kind, value = error["type"], error.get("input")
    hint = f"; {hint}" if hint else ""
    if kind == "missing":
        return f"{where} is missing{hint}"
    if kind == "extra_forbidden":
        return f"{_dotted(loc[:-1]) or 'the row'} has an unknown key {loc[-1]!r}{hint or '; remove it'}"
    if kind == "literal_error":
        return f"{where} is {value!r}; {_choices(re.findall(_QUOTED, error['ctx']['expected']))}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{where} must be an object, got {_short(value)}{hint}"
    if kind == "list_type":
        return f"{where} must be a list, got {_short(value)}"
    if kind == "too_short":
        if error.get("ctx", {}).get("actual_length"):
            return f"{where} must have at least {error['ctx']['min_length']} items, got {_short(value)}"
        return f"{where} must not be empty"
    if kind == "string_type":
        return f"{where} must be text, got {_short(value)}"
    if kind in ("float_type", "int_type", "float_parsing", "int_parsing", "int_from_float"):
        return f"{where} must be a number, got {_short(value)}"
    if kind == "bool_type":
        return f"{where} must be true or false, got {_short(value)}"
    if kind == "value_error":
        return f"{where}: {error['ctx']['error']}"
    return f"{where}: {error['msg']} (got {_short(value)})"


_QUOTED = re.compile(r"'([^']*)'")


def _dotted(loc: Sequence) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return shorten(text, 80)


@functools.cache
def _part_of(model: type[BaseModel], names: tuple[str, ...]) -> type[BaseModel]:
    """``model`` cut down to ``names``, each optional (checked when present), other keys ignored."""
    fields = {}
    for name in names:
        info = model.model_fields[name]
        annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        fields[name] = (annotation, None)
    return create_model(f"{model.__name__}Part", __config__=ConfigDict(extra="ignore"), **fields)


def validate_fields(model: type[BaseModel], row: dict, names: Sequence[str], where: str, fix: str = "") -> None:
    """Check the ``names`` columns of ``row`` that are present against ``model``'s types.

    A reader that uses only some columns checks those (a row may come from an older or
    newer version); raises UserError ``where: column: problem; fix`` listing each problem.
    """
    try:
        _part_of(model, tuple(names)).model_validate(row, strict=True)
    except ValidationError as exc:
        problems = "; ".join(describe_error(e) for e in exc.errors()[:3])
        raise UserError(f"{where}: {problems}" + (f"; {fix}" if fix else "")) from None
