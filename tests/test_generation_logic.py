"""Prompts files, resume, incremental regeneration and failures, on a stand-in backend (pure logic)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import UserError
from generation.config import GenerateConfig
from generation.prompt_files import PromptFileError, read_prompts
from generation.run import generate
from core.store import JsonlStore, errors_path, manifest_path
from standins import FinishOrder, ScriptedBackend

REPO = Path(__file__).parent.parent


def write_prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question number {i}?", "tag": "t"}) + "\n" for i in range(n)))
    return path


def config(tmp_path: Path, **overrides) -> GenerateConfig:
    values = dict(prompts=str(tmp_path / "prompts.jsonl"), out=str(tmp_path / "out.jsonl"),
                  constitution=str(REPO / "principles.yaml"), rounds=2)
    values.update(overrides)
    return GenerateConfig(**values)


def run(cfg, backend=None):
    backend = backend or ScriptedBackend()
    return generate(cfg, backend=backend), backend


def rows_of(path) -> list[dict]:
    """Rows sorted by id: they are written as they finish, in no fixed order."""
    return sorted((json.loads(line) for line in Path(path).read_text().splitlines()), key=lambda row: row["id"])


def test_prompt_file_errors_are_all_listed_with_line_numbers(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(
        b'{"prompt": "fine"}\n'
        b'{"prompt": "broken"\n'
        b'{"messages": [{"role": "user", "content": 3}]}\n'
        b'\n'
        b'{"id": "x", "prompt": "a"}\n'
        b'{"id": "x", "prompt": "b"}\n'
        b'{"text": "no prompt"}\n'
        b'{"prompt": "caf\xe9"}\n'
        b'[1, 2]\n'
        b'{"prompt": "ok", "tag": 5}\n'
        b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    )
    with pytest.raises(PromptFileError) as info:
        read_prompts(path)
    lines = [line for line, _ in info.value.problems]
    assert lines == [2, 3, 6, 7, 8, 9, 10, 11]
    message = str(info.value)
    assert f"{path}:2: invalid JSON" in message
    assert f"{path}:6: duplicate id 'x' (first on line 5)" in message
    assert f"{path}:8: not valid UTF-8" in message
    assert "missing 'prompt' (text) or 'messages'" in message


def test_prompt_ids_default_to_content_hash(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "b"}]}\n')
    first, second = read_prompts(path)
    assert first.id != second.id and len(first.id) == 16
    assert read_prompts(path)[0].id == first.id
    assert second.messages[0]["role"] == "system"


def test_bad_prompts_generate_nothing(tmp_path):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "fine"}\n{"oops": 1}\n')
    backend = ScriptedBackend()
    with pytest.raises(PromptFileError):
        generate(config(tmp_path), backend=backend)
    assert backend.calls == [] and not (tmp_path / "out.jsonl").exists()


def test_rows_have_the_full_record_and_rerun_generates_nothing(tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", 5)
    cfg = config(tmp_path)
    result, backend = run(cfg)
    assert result["counts"]["generated"] == 5
    assert len(backend.calls) == 5 * (1 + 2 * 2)
    rows = rows_of(cfg.out)
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(5)]
    row = rows[0]
    assert row["prompt"] == [{"role": "user", "content": "Question number 0?"}]
    assert len(row["rounds"]) == 2 and row["final_response"] == row["rounds"][-1]["revision"]
    assert row["rounds"][0]["principle_id"] != row["rounds"][1]["principle_id"]
    assert [c["step"] for c in row["calls"]] == ["draft", "critique 1", "revision 1", "critique 2", "revision 2"]
    assert row["token_counts"]["completion"] == sum(c["completion_tokens"] for c in row["calls"])
    assert row["source"] == {"file": cfg.prompts, "line": 1}
    manifest = json.loads(manifest_path(Path(cfg.out)).read_text())
    assert manifest["counts"]["rows"] == 5 and manifest["constitution"]["principles"] >= 12

    again, backend2 = run(cfg)
    assert backend2.calls == [] and again["counts"]["already_done"] == 5
    assert rows_of(cfg.out) == rows


def test_critique_extends_the_draft_conversation(tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", 1)
    _, backend = run(config(tmp_path, rounds=1))
    draft, critique, revision = backend.calls
    assert revision[: len(critique)] == critique  # revision extends the critique conversation
    assert critique[-3]["content"] == "Question number 0?" and critique[-2]["role"] == "assistant"


def test_without_few_shot_each_call_extends_the_last(tmp_path):
    constitution = tmp_path / "c.yaml"
    constitution.write_text((REPO / "principles.yaml").read_text().split("\nfew_shot:")[0] + "\n")
    write_prompts(tmp_path / "prompts.jsonl", 1)
    _, backend = run(config(tmp_path, constitution=str(constitution), rounds=2))
    for earlier, later in zip(backend.calls, backend.calls[1:]):
        assert later[: len(earlier)] == earlier


def test_torn_last_line_is_dropped_and_redone(tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", 4)
    cfg = config(tmp_path)
    run(cfg)
    whole = rows_of(cfg.out)
    data = Path(cfg.out).read_bytes()
    Path(cfg.out).write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 1] + b'{"id": "p3", "initial_resp')
    result, backend = run(cfg)
    assert result["counts"]["generated"] == 1 and result["counts"]["torn_lines_dropped"] == 1
    assert rows_of(cfg.out) == whole


def test_damaged_middle_line_is_an_error_naming_the_line(tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", 3)
    cfg = config(tmp_path)
    run(cfg)
    lines = Path(cfg.out).read_text().splitlines(keepends=True)
    lines[1] = "garbage\n"
    Path(cfg.out).write_text("".join(lines))
    with pytest.raises(UserError, match=r"out.jsonl:2: .*--overwrite"):
        run(cfg)


def test_edited_principle_regenerates_only_its_rows_and_reuses_drafts(tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", 12)
    text = (REPO / "principles.yaml").read_text()
    constitution = tmp_path / "c.yaml"
    constitution.write_text(text)
    cfg = config(tmp_path, constitution=str(constitution), rounds=1)
    run(cfg)
    before = {r["id"]: r for r in rows_of(cfg.out)}
    target = before["p0"]["rounds"][0]["principle_id"]
    users = {i for i, r in before.items() if r["rounds"][0]["principle_id"] == target}
    old = before["p0"]["rounds"][0]["critique_request"]
    constitution.write_text(text.replace(old.split()[0] + " " + old.split()[1], "EDITED " + old.split()[1], 1))
    assert constitution.read_text() != text

    result, backend = run(cfg)
    assert result["counts"]["generated"] == len(users)
    assert all(call[-1]["role"] == "user" for call in backend.calls)
    assert len(backend.calls) == 2 * len(users)  # critique + revision; drafts reused
    after = {r["id"]: r for r in rows_of(cfg.out)}
    assert len(after) == 12 and len(rows_of(cfg.out)) == 12  # stale rows dropped
    for i in before:
        if i in users:
            assert after[i]["initial_response"] == before[i]["initial_response"]
            assert after[i]["rounds"][0]["critique_request"].startswith("EDITED")
            assert after[i]["fingerprint"] != before[i]["fingerprint"]
        else:
            assert after[i] == before[i]


def test_more_rounds_reuse_earlier_rounds(tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", 3)
    run(config(tmp_path, rounds=1))
    first = rows_of(tmp_path / "out.jsonl")
    result, backend = run(config(tmp_path, rounds=2))
    assert len(backend.calls) == 3 * 2  # only round 2
    second = rows_of(tmp_path / "out.jsonl")
    assert [r["rounds"][0] for r in second] == [r["rounds"][0] for r in first]


def test_failed_rows_go_to_errors_file_and_are_retried(tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", 4)
    cfg = config(tmp_path)
    failing = ScriptedBackend(fail_when=lambda conv: "number 2" in conv[-1]["content"])
    result, _ = run(cfg, failing)
    assert result["counts"]["failed"] == 1 and result["counts"]["generated"] == 3
    errors = rows_of(errors_path(Path(cfg.out)))
    assert errors[0]["id"] == "p2" and errors[0]["step"] == "draft" and "400" in errors[0]["error"]
    result, backend = run(cfg)
    assert result["counts"]["generated"] == 1 and len(backend.calls) == 5
    assert sorted(r["id"] for r in rows_of(cfg.out)) == ["p0", "p1", "p2", "p3"]
    assert not errors_path(Path(cfg.out)).exists()  # the retried row succeeded: no errors file is left


def test_output_from_another_configuration_is_refused_unless_overwrite(tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", 2)
    run(config(tmp_path))
    with pytest.raises(UserError, match=r"different configuration \(sampling"):
        run(config(tmp_path, temperature=0.1))
    result, _ = run(config(tmp_path, temperature=0.1, overwrite=True))
    assert result["counts"]["generated"] == 2 and len(rows_of(tmp_path / "out.jsonl")) == 2


def test_limit_then_more_keeps_done_rows(tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", 6)
    run(config(tmp_path, limit=2))
    result, backend = run(config(tmp_path))
    assert result["counts"]["already_done"] == 2 and result["counts"]["generated"] == 4
    result, backend = run(config(tmp_path, limit=3))
    assert backend.calls == [] and len(rows_of(tmp_path / "out.jsonl")) == 6


def test_config_validation_quotes_bad_values():
    with pytest.raises(UserError, match=r"--top-p 1.5 must be in"):
        GenerateConfig(prompts="p", out="o", top_p=1.5)
    with pytest.raises(UserError, match=r"did you mean 'vllm'"):
        GenerateConfig(prompts="p", out="o", backend="vlm")


def test_store_append_is_whole_lines(tmp_path):
    store = JsonlStore(tmp_path / "s.jsonl")
    store.append([{"a": 1}, {"b": "{response} {0.__class__} {{7*7}}"}])
    assert store.load() == [{"a": 1}, {"b": "{response} {0.__class__} {{7*7}}"}]


def test_prompts_are_streamed_and_a_file_edited_mid_run_stops_cleanly(tmp_path):
    # Prompts are read again as rows finish (their text is not held for the run): an edit made
    # in place while the run goes on stops it with an error; a rerun brings every row up to date.
    prompts = write_prompts(tmp_path / "prompts.jsonl", 6)

    class EditingBackend(ScriptedBackend):
        def chat(self, conversations, sampling, seeds=None):
            replies = super().chat(conversations, sampling, seeds)
            prompts.write_text(prompts.read_text().replace("Question number 4?", "Question number four?"))
            return replies

    with pytest.raises(UserError, match=r"prompts.jsonl.*changed during the run"):
        run(config(tmp_path, concurrency=2), EditingBackend())  # two rows in flight: p4 is read after the edit
    finished = rows_of(tmp_path / "out.jsonl")
    assert finished  # rows finished before the stop stay
    result, _ = run(config(tmp_path))
    rows = {row["id"]: row for row in rows_of(tmp_path / "out.jsonl")}
    assert sorted(rows) == [f"p{i}" for i in range(6)]
    assert rows["p4"]["prompt"][-1]["content"] == "Question number four?"
    assert result["counts"]["already_done"] >= 3 and result["counts"]["rows"] == 6


# ---------------------------------------------------------------- streaming
def question_number(conversation) -> int:
    question = next(m["content"] for m in conversation if m["content"].startswith("Question number"))
    return int(question.split("number ")[1].rstrip("?"))


class ReversedBackend(ScriptedBackend):
    """Rows finish in the reverse of the prompts' order: a row's calls wait until every later row is done."""

    def __init__(self, rows: int, calls_per_row: int = 3):
        super().__init__()
        self.order = FinishOrder(rows, calls_per_row, question_number)

    async def achat(self, conversation, sampling, seed=None, session=None):
        async with self.order.turn(conversation):
            return self.chat([conversation], sampling, [seed])[0]


def test_rows_finishing_out_of_order_make_a_valid_output_that_resumes(tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", 8)
    cfg = config(tmp_path, rounds=1)
    reference = tmp_path / "reference.jsonl"
    run(config(tmp_path, rounds=1, out=str(reference)))
    run(cfg, ReversedBackend(rows=8))
    in_file = [json.loads(line)["id"] for line in Path(cfg.out).read_text().splitlines()]
    assert in_file == [f"p{i}" for i in reversed(range(8))]  # written as they finished: the last prompt first
    assert rows_of(cfg.out) == rows_of(reference)  # each row as an in-order run makes it
    # A kill that kept the first three rows written (and tore the fourth): the rerun completes the same rows.
    lines = Path(cfg.out).read_bytes().split(b"\n")
    Path(cfg.out).write_bytes(b"\n".join(lines[:3]) + b"\n" + lines[3][:20])
    result, backend = run(cfg, ReversedBackend(rows=5))
    assert result["counts"]["already_done"] == 3 and result["counts"]["generated"] == 5
    assert len(backend.calls) == 5 * 3 and result["counts"]["torn_lines_dropped"] == 1
    assert backend.order.finished == [4, 3, 2, 1, 0]
    assert rows_of(cfg.out) == rows_of(reference)


def test_every_call_of_a_row_carries_the_rows_session_key(tmp_path):
    import sys

    sys.path.insert(0, str(REPO / "tests" / "reliability"))
    from servers import StandinServer

    write_prompts(tmp_path / "prompts.jsonl", 6)
    with StandinServer(keep_bodies=True) as server:
        generate(config(tmp_path, rounds=2, backend="openai", base_url=server.base_url, model="standin",
                        session_header="X-Affinity"))
        sessions: dict[str, set[str]] = {}
        for body, headers in zip(server.bodies, server.headers):
            question = next(m["content"] for m in body["messages"] if m["role"] == "user" and "number" in m["content"])
            sessions.setdefault(question, set()).add({k.lower(): v for k, v in headers.items()}["x-affinity"])
    assert len(sessions) == 6 and all(len(keys) == 1 for keys in sessions.values())  # one key per row, on all 5 calls
    assert len({key for keys in sessions.values() for key in keys}) == 6  # and a different key for each row
