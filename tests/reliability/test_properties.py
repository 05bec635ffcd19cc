"""Property tests (hypothesis): arbitrary text is rendered verbatim, fingerprints are stable, and resume is idempotent.

These use tests/standins.py's ScriptedBackend (deterministic, in-process) so each example takes milliseconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from constitution.loader import load_constitution, parse_constitution
from generation.config import GenerateConfig
from generation.critique_revise import ChainSettings, CritiqueReviseTask
from core.backends.base import Sampling
from generation.prompt_files import PromptRecord
from generation.run import generate
from harness import REPO, rows_of
from standins import ScriptedBackend

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Any Unicode text a JSON file can hold (no lone surrogates: the prompts reader refuses those, see the table).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=200).filter(lambda s: s.strip())


def _config(tmp: Path, prompts: Path, constitution: Path | None = None, **overrides) -> GenerateConfig:
    values = dict(prompts=str(prompts), out=str(tmp / "out.jsonl"), constitution=str(constitution or REPO / "principles.yaml"),
                  rounds=1, examples=0)
    values.update(overrides)
    return GenerateConfig(**values)


@SETTINGS
@given(text=TEXT, system=TEXT, ascii_only=st.booleans())
def test_arbitrary_prompt_text_reaches_the_model_and_the_row_verbatim(text, system, ascii_only):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prompts = tmp / "p.jsonl"
        chat = [{"role": "system", "content": system}, {"role": "user", "content": text}]
        prompts.write_text(json.dumps({"id": "plain", "prompt": text}, ensure_ascii=ascii_only) + "\n"
                           + json.dumps({"id": "chat", "messages": chat}, ensure_ascii=ascii_only) + "\n",
                           encoding="utf-8")
        backend = ScriptedBackend()
        generate(_config(tmp, prompts), backend=backend)
        rows = {r["id"]: r for r in rows_of(tmp / "out.jsonl")}
        assert rows["plain"]["prompt"] == [{"role": "user", "content": text}]
        assert rows["chat"]["prompt"] == chat
        for conversation in backend.calls:  # every call carries the prompt turns unchanged
            contents = [m["content"] for m in conversation]
            assert text in contents
        assert sum(1 for c in backend.calls if c[-1] == {"role": "user", "content": text}) == 2  # the two drafts


@SETTINGS
@given(critique=TEXT, revision=TEXT)
def test_arbitrary_principle_text_is_sent_verbatim(critique, revision):
    document = {"version": 1, "principles": [{"id": "only", "critique_request": critique, "revision_request": revision,
                                              "comparison_question": "Which?"}]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        constitution = tmp / "c.yaml"
        constitution.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
        # YAML itself reads some characters as line breaks (U+0085, U+2028, CR): the text is what YAML means.
        loaded = load_constitution(constitution).principles[0]
        critique, revision = loaded.critique_request, loaded.revision_request
        prompts = tmp / "p.jsonl"
        prompts.write_text('{"id": "x", "prompt": "hi"}\n')
        backend = ScriptedBackend()
        generate(_config(tmp, prompts, constitution), backend=backend)
        draft, critique_call, revision_call = backend.calls
        assert critique_call[-1] == {"role": "user", "content": critique}
        assert revision_call[-1] == {"role": "user", "content": revision}
        [row] = rows_of(tmp / "out.jsonl")
        assert row["rounds"][0]["critique_request"] == critique and row["rounds"][0]["revision_request"] == revision


def _task(seed=0, temperature=0.0, rounds=2) -> CritiqueReviseTask:
    constitution = load_constitution(REPO / "principles.yaml")
    return CritiqueReviseTask(constitution, ChainSettings("m", Sampling(max_tokens=32, temperature=temperature), seed, rounds))


@SETTINGS
@given(prompt_id=st.text(min_size=1, max_size=30), text=TEXT, other=TEXT, seed=st.integers(0, 2**31))
def test_fingerprints_are_stable_and_change_with_their_inputs(prompt_id, text, other, seed):
    record = PromptRecord(prompt_id, [{"role": "user", "content": text}], None, 1)
    same = PromptRecord(prompt_id, [{"content": text, "role": "user"}], "a tag", 99)  # key order, tag, line: no effect
    first, second = _task(seed), _task(seed)  # independently built
    assert first.fingerprint(record) == second.fingerprint(same)
    assert first.draft_fingerprint(record) == second.draft_fingerprint(same)
    if other != text:
        assert first.fingerprint(record) != first.fingerprint(PromptRecord(prompt_id, [{"role": "user", "content": other}], None, 1))
    assert first.fingerprint(record) != _task(seed, temperature=0.5).fingerprint(record)
    assert first.fingerprint(record) != _task(seed + 1).fingerprint(record)
    # a principle this prompt does not use can change without touching its fingerprint
    used = {p.id for p in first.principles_for(record)}
    document = yaml.safe_load((REPO / "principles.yaml").read_text())
    unused = next(p for p in document["principles"] if p["id"] not in used)
    unused["revision_request"] += " Edited."
    edited = CritiqueReviseTask(parse_constitution(yaml.safe_dump(document)), first.settings)
    assert edited.fingerprint(record) == first.fingerprint(record)


def test_fingerprints_are_the_same_in_another_process():
    code = ("import sys; sys.path[:0] = [sys.argv[1]];"
            "from generation.prompt_files import PromptRecord; from generation.critique_revise import *;"
            "from core.backends.base import Sampling; from constitution.loader import load_constitution;"
            "t = CritiqueReviseTask(load_constitution(sys.argv[1] + '/principles.yaml'), ChainSettings('m', Sampling(32, 0.0), 7, 2));"
            "print(t.fingerprint(PromptRecord('id-1', [{'role': 'user', 'content': 'caf\\u00e9 {x}'}], None, 1)))")
    outputs = {subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, check=True,
                              env=dict(os.environ, PYTHONHASHSEED=str(h))).stdout.strip() for h in (1, 2)}
    here = _task(7).fingerprint(PromptRecord("id-1", [{"role": "user", "content": "caf\u00e9 {x}"}], None, 1))
    assert outputs == {here}


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whole")
    prompts = tmp / "p.jsonl"
    lines = [json.dumps({"id": f"p{i}", "prompt": f"Question {i} \u2028 {{response}} caf\u00e9?"}, ensure_ascii=False)
             for i in range(10)]
    prompts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    generate(_config(tmp, prompts, rounds=2), backend=ScriptedBackend())
    return prompts, (tmp / "out.jsonl").read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_prefix_of_a_run_plus_a_resume_equals_the_whole_run(whole_run, data):
    prompts, whole = whole_run
    cut = data.draw(st.integers(0, len(whole)), label="bytes kept")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "out.jsonl").write_bytes(whole[:cut])
        backend = ScriptedBackend()
        result = generate(_config(tmp, prompts, rounds=2), backend=backend)
        # the same rows (written as they finish: the resumed ones in any order after the kept ones)
        assert sorted((tmp / "out.jsonl").read_bytes().splitlines()) == sorted(whole.splitlines())
        complete = whole[:cut].count(b"\n")
        assert len(backend.calls) == (10 - complete) * 5  # exactly the missing rows were generated
        assert result["counts"]["rows"] == 10
        assert result["counts"]["torn_lines_dropped"] == int(cut > 0 and whole[cut - 1:cut] != b"\n")
        again = ScriptedBackend()
        generate(_config(tmp, prompts, rounds=2), backend=again)
        assert again.calls == [] and sorted((tmp / "out.jsonl").read_bytes().splitlines()) == sorted(whole.splitlines())
