"""``few_shot_position``: the exemplars in front of the critique (default) or the draft too (pure logic, stand-in)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from constitution.loader import load_constitution
from core.backends.base import Sampling
from core.config import parse_config
from core.errors import UserError
from core.store import manifest_path
from generation.config import GenerateConfig
from generation.critique_revise import ChainSettings, CritiqueReviseTask
from generation.prompt_files import PromptRecord
from generation.run import generate
from standins import ScriptedBackend

REPO = Path(__file__).parent.parent
CONSTITUTION = load_constitution(REPO / "principles.yaml")
EXEMPLAR_MESSAGES = [m for exemplar in CONSTITUTION.few_shot for m in exemplar.messages()]


def write_prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question number {i}?"}) + "\n" for i in range(n)))
    return path


def config(tmp_path: Path, **overrides) -> GenerateConfig:
    values = dict(prompts=str(tmp_path / "prompts.jsonl"), out=str(tmp_path / "out.jsonl"),
                  constitution=str(REPO / "principles.yaml"), rounds=1, examples=0)
    return GenerateConfig(**{**values, **overrides})


def rows_of(path) -> dict[str, dict]:
    return {row["id"]: row for row in map(json.loads, Path(path).read_text().splitlines())}


def run(cfg):
    backend = ScriptedBackend()
    return generate(cfg, backend=backend), backend


def replies(row: dict) -> list[str]:
    """The row's replies in call order: draft, then each round's critique and revision."""
    return [row["initial_response"]] + [text for r in row["rounds"] for text in (r["critique"], r["revision"])]


@pytest.mark.parametrize("rounds", [1, 3])
def test_with_the_exemplars_in_front_of_the_draft_every_call_extends_the_previous_one(tmp_path, rounds):
    write_prompts(tmp_path / "prompts.jsonl", 1)
    result, backend = run(config(tmp_path, rounds=rounds, few_shot_position="draft"))
    assert result["counts"]["generated"] == 1
    calls = backend.calls
    assert len(calls) == 1 + 2 * rounds
    row = rows_of(tmp_path / "out.jsonl")["p0"]
    system = [{"role": "system", "content": CONSTITUTION.system_prompt}]
    assert calls[0] == system + EXEMPLAR_MESSAGES + [{"role": "user", "content": "Question number 0?"}]
    for earlier, later, reply in zip(calls, calls[1:], replies(row)):
        # the previous call's messages, its reply, then this call's request: one growing conversation
        assert later[: len(earlier) + 1] == earlier + [{"role": "assistant", "content": reply}]
        assert len(later) == len(earlier) + 2 and later[-1]["role"] == "user"
    assert [c["step"] for c in row["calls"]][:3] == ["draft", "critique 1", "revision 1"]


def test_by_default_the_draft_is_unprompted_and_the_critique_adds_the_exemplars(tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", 1)
    _, backend = run(config(tmp_path))
    draft, critique, revision = backend.calls
    assert draft == [{"role": "system", "content": CONSTITUTION.system_prompt},
                     {"role": "user", "content": "Question number 0?"}]
    assert critique[1: 1 + len(EXEMPLAR_MESSAGES)] == EXEMPLAR_MESSAGES
    assert critique[: len(draft)] != draft  # the exemplars come between system prompt and question
    assert revision[: len(critique)] == critique


def task(position: str | None = None, constitution=CONSTITUTION, rounds: int = 1) -> CritiqueReviseTask:
    chosen = {} if position is None else {"few_shot_position": position}
    settings = ChainSettings("scripted", Sampling(max_tokens=256, temperature=0.7, top_p=0.9), 0, rounds, **chosen)
    return CritiqueReviseTask(constitution, settings)


PROMPT = PromptRecord("p0", [{"role": "user", "content": "Question number 0?"}], "t", 1)


def test_the_default_keeps_the_fingerprints_rows_were_written_with():
    # The values main computed before the option existed, with the constitution of that time (its system prompt
    # has since asked for short answers): existing outputs resume without regenerating.
    then = CONSTITUTION.model_copy(update={"system_prompt": (
        "You are a helpful, honest and harmless assistant. Answer the user's request directly and usefully; "
        "decline only what would cause real harm, and explain briefly why.")})
    for rounds, row_fingerprint in ((1, "f5022f248cdfe236"), (2, "269dde9fae9188bd")):
        for position in (None, "critique"):
            assert task(position, then, rounds=rounds).draft_fingerprint(PROMPT) == "49ae16fac544849e"
            assert task(position, then, rounds=rounds).fingerprint(PROMPT) == row_fingerprint
    assert "few_shot_position" not in task("critique").settings.as_dict()
    assert task("draft").settings.as_dict()["few_shot_position"] == "draft"


def test_the_exemplars_in_front_of_the_draft_change_the_draft_and_row_fingerprints():
    default, draft = task("critique", rounds=2), task("draft", rounds=2)
    assert draft.draft_fingerprint(PROMPT) != default.draft_fingerprint(PROMPT)
    principles = draft.principles_for(PROMPT)
    rounds_default = default.round_fingerprints(default.draft_fingerprint(PROMPT), principles)
    rounds_draft = draft.round_fingerprints(draft.draft_fingerprint(PROMPT), principles)
    assert not set(rounds_default) & set(rounds_draft)
    # With no exemplars the draft's conversation is the same either way, and so are the fingerprints.
    bare = CONSTITUTION.model_copy(update={"few_shot": []})
    assert task("draft", bare).fingerprint(PROMPT) == task("critique", bare).fingerprint(PROMPT)


def test_switching_the_position_regenerates_the_rows_and_rounds_build_on_its_drafts(tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", 3)
    run(config(tmp_path))
    default_rows = rows_of(tmp_path / "out.jsonl")

    result, backend = run(config(tmp_path, few_shot_position="draft"))
    assert result["counts"]["generated"] == 3 and len(backend.calls) == 3 * 3  # drafts redone: they see the exemplars
    assert all(call[1: 1 + len(EXEMPLAR_MESSAGES)] == EXEMPLAR_MESSAGES for call in backend.calls)
    draft_rows = rows_of(tmp_path / "out.jsonl")
    assert len(draft_rows) == 3
    for i, row in draft_rows.items():
        assert row["draft_fingerprint"] != default_rows[i]["draft_fingerprint"]
        assert row["initial_response"] != default_rows[i]["initial_response"]
    settings = json.loads(manifest_path(Path(tmp_path / "out.jsonl")).read_text())["config"]["settings"]
    assert settings["few_shot_position"] == "draft"

    again, backend = run(config(tmp_path, few_shot_position="draft"))
    assert backend.calls == [] and again["counts"]["already_done"] == 3
    more, backend = run(config(tmp_path, few_shot_position="draft", rounds=2))
    assert more["counts"]["generated"] == 3 and len(backend.calls) == 3 * 2  # round 2 only, on the same conversation
    for i, row in rows_of(tmp_path / "out.jsonl").items():
        assert row["initial_response"] == draft_rows[i]["initial_response"]
        assert row["rounds"][0] == draft_rows[i]["rounds"][0]

    back, backend = run(config(tmp_path))
    assert back["counts"]["generated"] == 3 and len(backend.calls) == 3 * 3
    assert {i: r["fingerprint"] for i, r in rows_of(tmp_path / "out.jsonl").items()} == \
        {i: r["fingerprint"] for i, r in default_rows.items()}


@pytest.mark.parametrize("style", ["direct", "no_critique"])
def test_the_draft_position_with_a_separate_revision_conversation_is_refused(style):
    with pytest.raises(UserError, match=rf"--few-shot-position 'draft' needs --revision-style chain, not '{style}'"):
        GenerateConfig(prompts="p", out="o", few_shot_position="draft", revision_style=style)
    assert GenerateConfig(prompts="p", out="o", revision_style=style).few_shot_position == "critique"


def test_unknown_position_is_refused_with_a_suggestion():
    with pytest.raises(UserError, match=r"--few-shot-position 'drafts' is unknown; did you mean 'draft'\?"):
        GenerateConfig(prompts="p", out="o", few_shot_position="drafts")


def test_the_position_comes_from_yaml_and_the_flag_overrides_it(tmp_path):
    (tmp_path / "g.yaml").write_text("prompts: p.jsonl\nout: o.jsonl\nfew_shot_position: draft\n")
    from_yaml = parse_config(GenerateConfig, ["--config", str(tmp_path / "g.yaml")], prog="cai generate")
    assert from_yaml.few_shot_position == "draft"
    flag = parse_config(GenerateConfig, ["--config", str(tmp_path / "g.yaml"), "--few-shot-position", "critique"],
                        prog="cai generate")
    assert flag.few_shot_position == "critique"
