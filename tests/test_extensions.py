"""An extension of each kind is one module and one registry line, and works end to end.

Each module below is written to a folder on ``sys.path`` and registered with the one line docs/extending.md names:
a backend that answers without a model, a row check, a judge method with its own cache record, a training
method and a command.  They then run as a user runs them: ``cai generate`` with the backend (its rows carry the
check's flags), ``cai judge`` with the method (its cached judgements are reused on a rerun, not redone), ``cai
train`` with the method (its device defaults on a GPU, its curves in ``cai report``) and the command itself.
An extension that leaves out part of what its class declares fails here.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from cai.cli import COMMANDS, Command
from cai.cli import main as cai_main
from core.backends.registry import BACKENDS
from generation.checks import ROW_CHECKS
from judging.methods import JUDGE_METHODS
from training.methods import TRAINING_METHODS, TrainingMethod

REPO = Path(__file__).resolve().parent.parent

MODULES = {
    # A backend: answers from the conversation, without a model.
    "canned_backend": '''
        import re
        from dataclasses import dataclass

        from core.backends.base import Backend, BackendOptions, Completion, LabelLogprobs


        @dataclass(frozen=True)
        class CannedOptions(BackendOptions):
            seed: int = 0


        class Canned(Backend):
            name = "canned"
            Options = CannedOptions

            def __init__(self, model, seed=0):
                super().__init__(model)

            async def achat(self, conversation, sampling, seed=None, session=None):
                asked = re.search(r"boil, (\d+)\?", " ".join(m["content"] for m in conversation))
                number = asked.group(1) if asked else "?"
                answered = sum(m["role"] == "assistant" for m in conversation)
                if answered == 0:  # the draft
                    text = f"Water boils at one hundred degrees, question {number}."
                elif answered % 2 == 1:  # a critique
                    text = "It gives no reason."
                else:
                    text = (f"SHOUT: number {number} is loud." if number == "0" else
                            f"At sea level pure water boils at 100 C; higher up it boils lower, question {number}.")
                return Completion(text=text, finish_reason="stop", completion_tokens=len(text.split()))

            async def alabel_logprobs(self, conversation, labels, session=None):
                return LabelLogprobs({label: -1.0 for label in labels}, floor=-5.0)
    ''',
    # A row check.
    "shout_check": '''
        from generation.checks import Check


        class Shouts(Check):
            name = "shouts"
            description = "The final revision starts by shouting."

            def reason(self, row, context):
                return "starts with SHOUT" if row.final.startswith("SHOUT") else None
    ''',
    # A judge method with its own kind of cache record.
    "shorter_method": '''
        from typing import Literal, NamedTuple

        from core.schema import CachedJudgement
        from judging.methods.base import JudgeMethod, Judgement, Verdict

        CALLS = []  # the keys judged (the judge's probe for its prompt version sends keys "0", "1", ...)


        class Counted(NamedTuple):
            text: str


        class WordCount(CachedJudgement):
            """Its cache record: the words of one response."""

            kind: Literal["words"]
            words: int


        class ShorterWins(JudgeMethod):
            description = "the shorter response wins"
            record_model = WordCount

            def requests(self, comparison):
                return [Counted(comparison.x), Counted(comparison.y)]

            async def judge(self, key, request, backend, session=None):
                CALLS.append(key)
                return Judgement({"key": key, "kind": "words", "words": len(request.text.split()), "transient": False})

            def verdict(self, comparison, records):
                verdict = Verdict(comparison.principle.id, order_free=True)
                lengths = [None if record is None else record["words"] for record in records]
                if None in lengths:
                    verdict.error = "not judged"
                else:  # the shorter x is, the likelier it is better
                    verdict.p = verdict.p_x_first = verdict.p_x_second = (lengths[1] + 1) / (sum(lengths) + 2)
                return verdict
    ''',
    # A training method: SFT under another name, with its own GPU batch and curves.
    "short_sft": '''
        from dataclasses import dataclass

        from training.sft import SFTStage, SFTStageConfig


        @dataclass
        class ShortSFTConfig(SFTStageConfig):
            pass


        class ShortSFTStage(SFTStage):
            gpu_train_batch = 3
    ''',
    # A command.
    "hello_command": '''
        def hello(argv):
            print("hello", *argv)
            return 0
    ''',
}

#: the one line each kind adds
LINES = [
    (BACKENDS, "canned", "canned_backend:Canned"),
    (ROW_CHECKS, "shouts", "shout_check:Shouts"),
    (JUDGE_METHODS, "shorter", "shorter_method:ShorterWins"),
    (TRAINING_METHODS, "short-sft", TrainingMethod("short-sft", "short_sft:ShortSFTConfig", "short_sft:ShortSFTStage",
                                                   "SFT, shorter", "sft", curves=(("loss", "the loss"),))),
    (COMMANDS, "hello", Command("hello_command:hello", "Say hello.")),
]


@pytest.fixture
def extensions(tmp_path, monkeypatch, register):
    folder = tmp_path / "extensions"
    folder.mkdir()
    for name, source in MODULES.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(folder))
    for registry, name, target in LINES:
        register(registry, name, target)
    return folder


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_one_module_and_one_line_of_each_kind_work_end_to_end(extensions, tmp_path, tiny_model_dir, capsys):
    import shorter_method

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"At what heat does water boil, {i}?"}) + "\n"
                               for i in range(8)))
    run = tmp_path / "run"
    run.mkdir()
    revisions = run / "revisions.jsonl"
    assert cai_main(["generate", "--prompts", str(prompts), "--out", str(revisions), "--backend", "canned",
                     "--model", "m", "--constitution", str(REPO / "principles.yaml"), "--examples", "0"]) == 0
    generated = rows(revisions)
    assert len(generated) == 8
    shouted = [row["id"] for row in generated if any(flag["check"] == "shouts" for flag in row["flags"])]
    assert shouted == ["p0"]

    # cai judge with the method; then again, from its cache: nothing is judged twice.
    preferences, sft = run / "preferences.jsonl", run / "sft.jsonl"
    judge = ["judge", "--in", str(revisions), "--out", str(preferences), "--sft-out", str(sft), "--backend", "canned",
             "--model", "m", "--method", "shorter", "--constitution", str(REPO / "principles.yaml"),
             "--keep-duplicates"]  # the canned answers differ only in their number
    assert cai_main(judge) == 0, capsys.readouterr().err
    pairs = rows(preferences)
    assert pairs and all(pair["id"] != "p0" for pair in pairs)  # the flagged row is not a pair
    def judged():
        return [key for key in shorter_method.CALLS if len(key) > 8]

    assert len(judged()) == 2 * len(pairs)  # each response counted once (its words are the same under any principle)
    before = judged()
    preferences.unlink()
    assert cai_main(judge) == 0
    assert judged() == before, "cached judgements of the method were judged again"
    def choices(pairs):
        return sorted((pair["id"], pair["chosen"], pair["chosen_probability"]) for pair in pairs)

    assert choices(rows(preferences)) == choices(pairs)

    # cai train with the method, its device defaults on a (described) GPU, its curves in the report.
    from training.device_defaults import Device, choose_settings
    from training.methods import get_method

    config = get_method("short-sft").config_class(data=str(sft), output_dir=str(run / "short-sft"))
    gpu = Device("cuda", "a GPU as described to the chooser", memory_bytes=80 * 2**30, bf16=True)
    assert choose_settings(config, gpu, ["per_device_train_batch_size"], 10**6) == {"per_device_train_batch_size": 3}
    assert cai_main(["train", "short-sft", "--data", str(sft), "--output-dir", str(run / "short-sft"), "--model",
                     tiny_model_dir, "--max-steps", "2", "--logging-steps", "1", "--eval-fraction", "0.25",
                     "--disable-tqdm", "true", "--report-to", "none"]) == 0
    summary = json.loads((run / "short-sft" / "cai_training.json").read_text())
    assert summary["method"] == "short-sft" and summary["global_step"] == 2
    assert cai_main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "Training: short-sft" in page and "the loss" in page

    # The command, listed in `cai --help`.
    capsys.readouterr()
    assert cai_main(["hello", "world"]) == 0
    assert capsys.readouterr().out == "hello world\n"
    assert cai_main(["--help"]) == 0
    assert "  hello  " in capsys.readouterr().out


@pytest.mark.parametrize("leave_out", ["record_model", "gpu_train_batch"])
def test_an_extension_that_leaves_out_what_its_class_declares_fails(extensions, leave_out, tmp_path):
    """A judge method without its record model, a training stage without its GPU batch: neither works."""
    import short_sft
    import shorter_method

    if leave_out == "record_model":
        del shorter_method.ShorterWins.record_model
        from judging.judge import is_valid_judgement

        with pytest.raises(AttributeError, match="record_model"):
            is_valid_judgement({"key": "k", "kind": "words", "words": 3, "transient": False})
    else:
        from training.stages import TrainingStage

        short_sft.ShortSFTStage = type("ShortSFTStage", (TrainingStage,), {})  # a stage written from the base
        from training.device_defaults import Device, choose_settings
        from training.methods import get_method

        config = get_method("short-sft").config_class(data="d.jsonl", output_dir=str(tmp_path / "o"))
        with pytest.raises(AttributeError, match="gpu_train_batch"):
            choose_settings(config, Device("cuda", "a GPU", memory_bytes=2**34), ["per_device_train_batch_size"], 1)
