"""Import the published Constitutional AI constitution (Anthropic's JSON format).

Critiques: ``{"id": {"prompt": ["\\n\\nCritiqueRequest: ...\\n\\nCritique:"],
"edit_request": "\\n\\nRevisionRequest: ...\\n\\nRevision:"}}``.  Few-shot: a JSON
list of ``\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nCritiqueRequest: ...`` transcripts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from core.store import atomic_write_text

from .loader import ConstitutionError, Problem, parse_constitution
from .schema import Constitution

_MARKER = re.compile(r"\n\n(Human|Assistant|CritiqueRequest|Critique|RevisionRequest|Revision):[ ]?")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def _strip(text: str, prefix: str, suffix: str) -> str:
    text = text.strip("\n")
    head, tail = prefix.strip("\n"), suffix.strip("\n")
    if text.startswith(head):
        text = text[len(head):]
    if text.endswith(tail):
        text = text[: -len(tail)]
    return text.strip()


def _comparison_question(critique_request: str) -> str:
    # The published file has no judge question; ask about the problems its critique request names.
    return f"Which response has fewer of the problems that this request asks about? {critique_request}"


#: The largest file an import reads: published constitutions are a few hundred kilobytes.
MAX_IMPORT_BYTES = 64 * 2**20


def _read_json(path: Path):
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_IMPORT_BYTES + 1)
        if len(raw) > MAX_IMPORT_BYTES:
            raise ConstitutionError([Problem(str(path), None, f"larger than {MAX_IMPORT_BYTES // 2**20} MiB; "
                                                              "is it the right file?")])
        return json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise ConstitutionError([Problem(str(path), exc.lineno, f"not valid JSON: {exc.msg}")]) from None
    except RecursionError:
        raise ConstitutionError([Problem(str(path), None, "nested too deeply; is it the right file?")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConstitutionError([Problem(str(path), None, f"cannot read as UTF-8 JSON: {reason}")]) from None


def parse_transcript(text: str, where: str) -> dict:
    """One few-shot transcript to an exemplar mapping."""
    pieces = _MARKER.split(text)
    if pieces[0].strip():
        raise ConstitutionError([Problem(where, None, "transcript must start with '\\n\\nHuman: '")])
    turns = [(pieces[i], pieces[i + 1].strip()) for i in range(1, len(pieces) - 1, 2)]
    turns = [(label, body) for label, body in turns if body]  # the trailing empty "Human:" cue
    fields: dict[str, str] = {}
    conversation = []
    for label, body in turns:
        if label in _ROLES and not fields:
            conversation.append({"role": _ROLES[label], "content": body})
        elif label not in _ROLES:
            key = re.sub(r"(?<!^)([A-Z])", r"_\1", label).lower()  # CritiqueRequest -> critique_request
            fields[key] = body
    missing = [k for k in ("critique_request", "critique", "revision_request", "revision") if k not in fields]
    if missing or not conversation:
        raise ConstitutionError(
            [Problem(where, None, f"transcript lacks {', '.join(missing) or 'Human/Assistant turns'}")]
        )
    return {"conversation": conversation, **fields}


def import_anthropic(critiques_path: str | Path, few_shot_path: str | Path | None = None) -> Constitution:
    critiques_path = Path(critiques_path)
    data = _read_json(critiques_path)
    if not isinstance(data, dict) or not data:
        raise ConstitutionError([Problem(str(critiques_path), 1, 'expected a JSON object {"id": {"prompt": [...], "edit_request": ...}}')])
    principles, problems = [], []
    for key, entry in data.items():
        if not isinstance(entry, dict) or "prompt" not in entry or "edit_request" not in entry:
            problems.append(Problem(str(critiques_path), None, f"entry {key!r} needs 'prompt' and 'edit_request'"))
            continue
        prompts = entry["prompt"] if isinstance(entry["prompt"], list) else [entry["prompt"]]
        texts = [*prompts, entry["edit_request"]]
        if not prompts or not all(isinstance(text, str) and text.strip() for text in texts):
            problems.append(Problem(str(critiques_path), None, f"entry {key!r}: 'prompt' (text or a list of texts) "
                                                               "and 'edit_request' (text) must be non-empty text"))
            continue
        revision = _strip(entry["edit_request"], "\n\nRevisionRequest: ", "\n\nRevision:")
        for n, prompt in enumerate(prompts):
            critique = _strip(prompt, "\n\nCritiqueRequest: ", "\n\nCritique:")
            principles.append(
                {
                    "id": key if n == 0 else f"{key}-{n + 1}",
                    "critique_request": critique,
                    "revision_request": revision,
                    "comparison_question": _comparison_question(critique),
                    "tags": ["anthropic"],
                    "weight": 1.0,
                }
            )
    few_shot = []
    if few_shot_path is not None:
        few_shot_path = Path(few_shot_path)
        transcripts = _read_json(few_shot_path)
        if not isinstance(transcripts, list):
            problems.append(Problem(str(few_shot_path), 1, "expected a JSON list of transcripts"))
        else:
            for i, text in enumerate(transcripts):
                if not isinstance(text, str):
                    problems.append(Problem(str(few_shot_path), None, f"transcript [{i}] must be text, got "
                                                                      f"{type(text).__name__}"))
                    continue
                try:
                    few_shot.append(parse_transcript(text, f"{few_shot_path}[{i}]"))
                except ConstitutionError as exc:
                    problems.extend(exc.problems)
    if problems:
        raise ConstitutionError(problems)
    document = {"version": 1, "principles": principles, "few_shot": few_shot}
    # Round-trip through the validating loader so an import can never write an invalid file.
    return parse_constitution(dump_constitution_dict(document), str(critiques_path))


def dump_constitution_dict(document: dict) -> str:
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)


def write_constitution(constitution: Constitution, out: str | Path) -> None:
    atomic_write_text(Path(out), dump_constitution_dict(constitution.model_dump(mode="json", exclude_none=True)))
