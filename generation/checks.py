"""Checks on every generation row: is the final revision an answer worth training on?

Each check is a small named unit that reads one row and returns the reason it fails, or
``None``.  ``ROW_CHECKS`` is the one registry; ``RowChecker.flags(row)`` runs them all and gives
the row's ``flags``: ``[{"check": name, "reason": text}]``, empty when the row is clean.
They are cheap and deterministic (regular expressions and word n-grams, no model), so
they run when a row is built and again over an existing output on a rerun.

Thresholds were set by reading real rows of the default model on ``prompts/demo.jsonl``
(the counts are in bench/README.md, "Data quality with the default model"):

- an exemplar is "copied" when the revision shares a run of ``COPY_RUN_WORDS`` consecutive
  words with one (not also in the prompt): the 40 demo drafts (written without the exemplars
  in view) share at most 3 words with them, a natural refusal 6 ("i'm sorry but i can't
  provide"); copies share phrases and sentences ("the question is a harmless fact about", 7;
  the water sentence, 10);
- the critique is "copied" when ``CRITIQUE_SHARE`` of the revision's word 4-grams come
  from the critique and not from the prompt or the draft (the part the critique quotes);
- "same as the draft" is a word-level similarity of ``SAME_AS_DRAFT`` or more.
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from constitution.schema import Constitution
from core.registry import Registry
from core.text import shorten

COPY_RUN_WORDS = 7
CRITIQUE_NGRAM = 4
CRITIQUE_SHARE = 0.5
SAME_AS_DRAFT = 0.9

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """Lower-case words (apostrophes kept inside: "can't"), punctuation dropped."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)}


def _quote(text: str, limit: int = 60) -> str:
    return shorten(text, limit)


@dataclass(frozen=True)
class RowText:
    """What the checks read from a `cai generate` row."""

    prompt: str  # the user turns, joined
    tag: str | None
    draft: str
    critique: str  # the last round's
    requests: str  # the last round's critique and revision requests (the principle's words)
    final: str
    finish_reason: str  # of the call that wrote ``final``
    revised: bool  # at least one round

    @classmethod
    def of(cls, row: dict) -> RowText:
        prompt = row.get("prompt")
        if isinstance(prompt, list):
            prompt = "\n".join(m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user")
        rounds = row.get("rounds") or []
        step = "revision" if rounds else "draft"
        calls = [c for c in row.get("calls") or [] if str(c.get("step", "")).startswith(step)]
        return cls(
            prompt=str(prompt or ""),
            tag=row.get("tag"),
            draft=row.get("initial_response") or "",
            critique=(rounds[-1].get("critique") or "") if rounds else "",
            requests="\n".join(str(rounds[-1].get(key) or "") for key in ("critique_request", "revision_request"))
            if rounds else "",
            final=row.get("final_response") or "",
            finish_reason=(calls[-1].get("finish_reason") or "stop") if calls else "stop",
            revised=bool(rounds),
        )


class Check:
    """One check: ``name`` (the flag's ``check``) and ``reason(row)``, the flag's reason or ``None``."""

    name: str = ""
    description: str = ""

    def reason(self, row: RowText, context: CheckContext) -> str | None:
        raise NotImplementedError


@dataclass(frozen=True)
class CheckContext:
    """What the checks need beyond the row: the constitution's few-shot texts, as word lists."""

    exemplar_texts: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def of(cls, constitution: Constitution | None) -> CheckContext:
        if constitution is None:
            return cls()
        texts = []
        for exemplar in constitution.few_shot:
            texts += [turn.content for turn in exemplar.conversation]
            texts += [exemplar.critique, exemplar.revision]
        return cls(tuple(tuple(words(t)) for t in texts if t.strip()))


class Empty(Check):
    name = "empty"
    description = "The final revision has no words."

    def reason(self, row, context):
        return None if words(row.final) else "the final revision is empty"


class CutOff(Check):
    name = "cut_off"
    description = "The final revision stopped at the token limit (finish_reason 'length')."

    def reason(self, row, context):
        if row.finish_reason == "length":
            return "cut off at the token limit (finish_reason 'length')"
        return None


# A revision that talks about the conversation instead of answering it.  Openings are
# checked on the first sentence; mentions anywhere (an answer never needs them).
_META_OPENING = re.compile(
    r"^\W*(?:\d+[.)]\s*)?(?:"
    r"(?:the|this|that|my|your|our)\s+(?:last\s+|previous\s+|original\s+|initial\s+|above\s+|revised\s+|rewritten\s+|new\s+|updated\s+)?"
    r"(?:response|reply|revision|critique)\b"
    # "The answer is 212 °F" answers; "This answer", "the previous answer", "the answer does not" assess one.
    r"|(?:this|that|my|your|our)\s+(?:\w+\s+)?answer\b"
    r"|the\s+(?:last|previous|original|initial|above|revised|rewritten|new|updated)\s+answer\b"
    r"|the\s+answer\s+(?:was|does|did|should|needs|could|gives|lacks|contains|fails|provides|doesn't|didn't)\b"
    r"|(?:the|a)\s+user(?:'s)?\b|the\s+assistant\b|the\s+(?:question|request|prompt)\s+(?:is|was|asks|here)\b"
    r"|(?:critique|revision|feedback|(?:draft|original|revised|rewritten|improved|new|final|updated|alternative)\s+(?:answer|response|version))\s*:"
    r"|here\s+is\s+(?:the|my|a|your)\s+(?:revised|rewritten|updated|new|improved)\b"
    r"|(?:in|for)\s+(?:my|your|the)\s+(?:last|previous|original)\s+(?:response|answer)\b"
    r"|(?:i|we)\s+(?:should|need\s+to|will|would)\s+(?:rewrite|revise)\b"
    r")",
    re.IGNORECASE,
)
_META_MENTION = re.compile(
    r"\b(?:the\s+user(?:'s)?|the\s+assistant|(?:my|your)\s+(?:last|previous|original|initial)\s+(?:response|answer)"
    r"|the\s+(?:original|initial|previous|revised|rewritten)\s+(?:response|answer)|the\s+response\s+(?:is|was|should|does|did|helps|gives|contains|provides|lacks|fails|has|could|can)"
    r"|(?:rewrite|revise)\s+(?:your|my|the)\s+(?:response|answer)|the\s+draft"
    r"|(?:a|the)\s+(?:rewritten|revised|improved)\s+(?:version|answer|response))\b"
    # Quoting markup (<question>, <answer>) echoed back.
    r"|</?(?:question|answer|critique|response)>",
    re.IGNORECASE,
)


class ReadsLikeCritique(Check):
    name = "reads_like_critique"
    description = "The final revision talks about the response or the user instead of answering."

    def reason(self, row, context):
        opening = _META_OPENING.match(row.final)
        if opening:
            start = " ".join(row.final.split()[: len(opening.group(0).split()) + 1])
            return f"starts with {_quote(start, 40)!r}"
        mentions = [m.group(0) for m in _META_MENTION.finditer(row.final)]
        if mentions:
            return f"talks about {', '.join(repr(m.lower()) for m in dict.fromkeys(mentions))}"
        return None


def longest_shared_run(text: list[str], source: tuple[str, ...], prompt: list[str]) -> list[str]:
    """The longest run of consecutive words that ``text`` shares with ``source`` and that is
    not simply part of ``prompt`` (restating the user's question is not copying)."""
    padded_prompt = " " + " ".join(prompt) + " "
    previous = [0] * (len(source) + 1)
    runs: list[tuple[int, int]] = []  # (length, end in text)
    for i, word in enumerate(text, 1):
        current = [0] * (len(source) + 1)
        for j, other in enumerate(source, 1):
            if word == other:
                current[j] = previous[j - 1] + 1
                if current[j] >= 2:
                    runs.append((current[j], i))
        previous = current
    for length, end in sorted(runs, reverse=True):
        run = text[end - length: end]
        if " " + " ".join(run) + " " not in padded_prompt:
            return run
    return []


class CopiesExemplar(Check):
    name = "copies_exemplar"
    description = f"The final revision repeats {COPY_RUN_WORDS}+ consecutive words of a few-shot exemplar."

    def reason(self, row, context):
        if not context.exemplar_texts:
            return None
        final = words(row.final)
        prompt = words(row.prompt)
        best: list[str] = []
        for source in context.exemplar_texts:
            run = longest_shared_run(final, source, prompt)
            if len(run) > len(best):
                best = run
        if len(best) >= COPY_RUN_WORDS:
            return f"repeats {len(best)} words of a few-shot exemplar: {_quote(' '.join(best))!r}"
        return None


class CopiesCritique(Check):
    name = "copies_critique"
    description = f"{CRITIQUE_SHARE:.0%}+ of the final revision's word {CRITIQUE_NGRAM}-grams come from its critique."

    def reason(self, row, context):
        if not row.revised or not row.critique.strip():
            return None
        final = ngrams(words(row.final), CRITIQUE_NGRAM)
        if not final:
            return None
        critique = ngrams(words(row.critique), CRITIQUE_NGRAM)
        quoted = ngrams(words(row.prompt), CRITIQUE_NGRAM) | ngrams(words(row.draft), CRITIQUE_NGRAM)
        share = len(final & (critique - quoted)) / len(final)
        if share >= CRITIQUE_SHARE:
            return f"{share:.0%} of its word {CRITIQUE_NGRAM}-grams come from its critique"
        return None


class CopiesRequest(Check):
    name = "copies_request"
    description = (f"The final revision repeats {COPY_RUN_WORDS}+ consecutive words of its critique or revision "
                   "request (it answers the instruction, not the user).")

    def reason(self, row, context):
        if not row.revised or not row.requests.strip():
            return None
        # Words the prompt or the draft already had are the answer's own, not copied from the request.
        run = longest_shared_run(words(row.final), tuple(words(row.requests)), words(row.prompt + "\n" + row.draft))
        if len(run) >= COPY_RUN_WORDS:
            return f"repeats {len(run)} words of its revision request: {_quote(' '.join(run))!r}"
        return None


_REFUSAL = re.compile(
    r"\b(?:i\s+(?:can't|cannot|can\s+not|won't|will\s+not|am\s+unable\s+to|am\s+not\s+able\s+to|must\s+decline)"
    r"|i'm\s+(?:unable|not\s+able)\s+to|i'm\s+sorry,?\s+but|i\s+am\s+sorry,?\s+but|i\s+apologi[sz]e,?\s+but"
    r"|as\s+an\s+ai\b)",
    re.IGNORECASE,
)


class RefusesHelpfulPrompt(Check):
    name = "refuses_helpful_prompt"
    description = "The prompt is tagged 'helpful' and the final revision refuses it."

    def reason(self, row, context):
        if row.tag != "helpful":
            return None
        # The opening two sentences: a refusal leads; a later "I can't stress enough" is not one.
        opening = " ".join(re.split(r"(?<=[.!?])\s+", row.final.strip())[:2])
        found = _REFUSAL.search(opening.replace("\u2019", "'"))
        if found:
            return f"refuses a prompt tagged helpful ({found.group(0)!r})"
        return None


class SameAsDraft(Check):
    name = "same_as_draft"
    description = f"The final revision is the draft, or nearly (word similarity {SAME_AS_DRAFT}+)."

    def reason(self, row, context):
        if not row.revised:
            return None
        similarity = difflib.SequenceMatcher(None, words(row.draft), words(row.final), autojunk=False).ratio()
        if similarity >= SAME_AS_DRAFT:
            return f"the same as the draft (word similarity {similarity:.2f})"
        return None


#: name (the flag's ``check``) -> the check's class, or "module:Class" for a check defined elsewhere
ROW_CHECKS: Registry[type[Check]] = Registry("row check", {
    check.name: check
    for check in (Empty, CutOff, ReadsLikeCritique, CopiesExemplar, CopiesCritique, CopiesRequest,
                  RefusesHelpfulPrompt, SameAsDraft)
})


class RowChecker:
    """Runs the registered checks (or ``checks``) on rows, with the constitution's exemplars."""

    def __init__(self, constitution: Constitution | None, checks: Iterable[Check] | None = None):
        self.context = CheckContext.of(constitution)
        self.checks = tuple(checks) if checks is not None else tuple(cls() for _, cls in ROW_CHECKS.items())

    @property
    def version(self) -> str:
        """Changes when a check's code (its module's source: logic, patterns, thresholds) or the exemplars
        change: stored flags are then recomputed."""
        from core.hashing import stable_hash

        return stable_hash([[check.name for check in self.checks],
                            [_source(module) for module in dict.fromkeys(type(c).__module__ for c in self.checks)],
                            [list(text) for text in self.context.exemplar_texts]])

    def flags(self, row: dict) -> list[dict]:
        """The row's flags, computed now: ``[{"check", "reason"}]``, empty when clean."""
        text = RowText.of(row)
        found = []
        for check in self.checks:
            reason = check.reason(text, self.context)
            if reason:
                found.append({"check": check.name, "reason": reason})
        return found

    def row_flags(self, row: dict) -> list[dict]:
        """The flags stored on the row, or computed for a row written before checks existed."""
        stored = row.get("flags")
        return stored if isinstance(stored, list) else self.flags(row)


def _source(module: str) -> str:
    """The source of a check's module; its name when the source is not on disk (a frozen build)."""
    try:
        return inspect.getsource(sys.modules[module])
    except (OSError, TypeError):
        return module


def count_by_check(flag_lists: Iterable[list[dict]]) -> dict[str, int]:
    """Rows per check (a row with two flags counts under both)."""
    counts: dict[str, int] = {}
    for flags in flag_lists:
        for name in dict.fromkeys(f.get("check") for f in flags):
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
