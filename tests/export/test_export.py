"""`cai export`: the folder `datasets` loads (and TRL's DPOTrainer trains on), its card (validated offline, read
back), what is left out, no credentials anywhere in it, the output folder's safety, and the push decision."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from cai.card import card_to_push, push_folder, validate_card
from cai.cli import main
from cai.export import ExportConfig, export_run
from core.errors import UserError
from core.ledger import calls_ledger, format_ledger, run_ledger
from export_run import EVAL_PROMPT, SECRET_PARTS


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def exported(run_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "dataset"
    assert main([ "export", str(run_folder), "--out", str(out)]) == 0
    return out


def test_preferences_load_as_the_judges_pairs(exported, run_folder):
    import datasets

    pairs = datasets.load_dataset(str(exported), "preferences", split="train")
    source = {p["id"]: p for p in rows_of(run_folder / "preferences.jsonl")}
    # The run's pairs, less the one whose prompt holds an evaluation prompt (the judge left the duplicates out).
    assert sorted(pairs["id"]) == sorted(set(source) - {"history"}) == ["cook", "garden", "joke", "vaccine"]
    for pair in pairs:
        assert pair["prompt"] == source[pair["id"]]["prompt"] and pair["chosen"] == source[pair["id"]]["chosen"]
        assert pair["rejected"] == source[pair["id"]]["rejected"]
        assert json.loads(pair["principle_scores"]) == source[pair["id"]]["principle_scores"]
    sft = datasets.load_dataset(str(exported), "sft", split="train")
    assert sorted(sft["id"]) == sorted(pairs["id"]) and sft[0]["messages"][-1]["role"] == "assistant"
    generations = datasets.load_dataset(str(exported), "generations", split="train")
    assert sorted(generations["id"]) == ["cook", "garden", "joke", "vaccine"]
    assert all(call["cached_tokens"] is not None for row in generations for call in row["calls"])
    assert datasets.load_dataset(str(exported), split="train")["id"] == pairs["id"]  # the default config


def test_card_validates_and_says_where_the_data_came_from(exported, run_folder):
    card = (exported / "README.md").read_text()
    meta = validate_card(card)
    assert meta["license"] == "unknown" and meta["task_categories"] == ["text-generation"]
    assert meta["size_categories"] == ["n<1K"]
    assert [(c["config_name"], c["data_files"][0]["path"]) for c in meta["configs"]] == [
        ("preferences", "preferences/train-00000-of-00001.parquet"), ("sft", "sft/train-00000-of-00001.parquet"),
        ("generations", "generations/train-00000-of-00001.parquet")]
    manifest = json.loads((run_folder / "revisions.jsonl.manifest.json").read_text())
    assert f"hash `{manifest['constitution']['hash']}`" in card
    assert "- id: harm-privacy" in card  # the constitution's text
    assert "| generation (draft, critique, revision) | `served-policy` | openai |" in card
    assert "| judge (likelihood) | `served-judge` | openai |" in card
    # the judge's figures: agreement with human labels, and on this run's pairs
    assert "| `judge_check.json` | `served-judge` | 100 | 0.530 | [0.430, 0.630] | False |" in card
    assert "not distinguishable from chance" in card
    assert "The judge card (`judging.card`, version 1)" in card and '"model": "served-judge"' in card
    report = json.loads((run_folder / "preferences.jsonl.report.json").read_text())
    assert f"| pairs made | {report['pairs_made']} |" in card and "| duplicate rows left out | 2 |" in card
    # what was left out, and why
    assert ("| generations | 7 | 1 | 1 | 0 | 0 | 1 | 0 | 4 |" in card and "| preferences | 5 | 0 | 0 | 0 | 0 | 1 | 0 | 4 |"
            in card)
    assert "Checked against: `heldout.jsonl` (1 of 2 prompts checked" in card
    # the ledger, its token counts those of the rows' calls
    steps = calls_ledger(rows_of(run_folder / "revisions.jsonl"))
    assert steps["draft"]["calls"] == 7 and steps["critique"]["cached_tokens"]
    for step, entry in steps.items():
        assert re.search(rf"\| {step} \| {entry['calls']} \| {entry['prompt_tokens']:,} \| "
                         rf"{entry['completion_tokens']:,} \| {entry['cached_tokens']:,} \|", card), step
    assert format_ledger(run_ledger(run_folder), markdown=True) in card


def test_no_credentials_in_any_exported_file(exported, run_folder):
    # The run was given a base URL with a user, a password and a key (generate, judge and the recipe).
    files = [path for path in exported.rglob("*") if path.is_file()]
    assert {path.name for path in files} >= {"README.md", "train-00000-of-00001.parquet"}
    for path in files:
        data = path.read_bytes()
        assert not any(secret.encode() in data for secret in SECRET_PARTS), path
    assert "http://models.internal:8000/v1" in (exported / "README.md").read_text()  # redacted, not dropped


def test_ledger_tokens_are_the_rows_calls(run_folder, tmp_path):
    from export_run import make_run_folder

    rows = rows_of(run_folder / "revisions.jsonl")
    manifest = json.loads((run_folder / "revisions.jsonl.manifest.json").read_text())
    ledger = manifest["ledger"]
    expected = {step: {key: sum(c.get(key) or 0 for r in rows for c in r["calls"] if c["step"].startswith(step))
                       for key in ("prompt_tokens", "completion_tokens", "cached_tokens")} for step in
                ("draft", "critique", "revision")}
    assert {step: {key: ledger["stages"][step][key] for key in expected[step]} for step in expected} == expected
    assert ledger["runs"] == 1 and ledger["wall_s"] >= 0 and ledger["device"] == "endpoint" and ledger["device_s"] is None
    judge = json.loads((run_folder / "preferences.jsonl.manifest.json").read_text())["ledger"]
    assert judge["stages"]["judge"]["calls"] > 0 and judge["stages"]["judge"]["prompt_tokens"] is None

    # An old manifest without a ledger still reads: the rows' calls are summed instead.
    old = make_run_folder(tmp_path)
    path = old / "revisions.jsonl.manifest.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "ledger"}))
    assert run_ledger(old, rows_of(old / "revisions.jsonl"))["stages"]["draft"] == {
        **ledger["stages"]["draft"], "wall_s": None, "device_s": None}


def test_dpo_trainer_trains_on_the_export_unchanged(exported, tiny_model_dir, tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    pairs = datasets.load_dataset(str(exported), "preferences", split="train")
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                         args=DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=2, per_device_train_batch_size=2,
                                        logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                                        max_length=256),
                         train_dataset=pairs, processing_class=AutoTokenizer.from_pretrained(tiny_model_dir))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert trainer.state.global_step == 2 and len(losses) == 2 and all(loss == loss for loss in losses)


def test_keep_duplicates_and_other_eval_sets(run_folder, tmp_path):
    evals = tmp_path / "other-eval.jsonl"
    evals.write_text(json.dumps({"prompt": "Tell me a short joke about cats that a young child would enjoy"}) + "\n")
    result = export_run(ExportConfig(run_dir=str(run_folder), out=str(tmp_path / "x"), keep_duplicates=True,
                                     eval_sets=[str(evals)]))
    # duplicates kept; the joke row overlaps the given set (whole prompt, 12 words); the history row is not checked now
    assert result["configs"]["generations"] == 6 and result["left_out"]["generations"] == 1
    card = (tmp_path / "x" / "README.md").read_text()
    assert "Duplicates were kept (`--keep-duplicates`)." in card and "`other-eval.jsonl` (1 of 1 prompts checked" in card
    assert EVAL_PROMPT not in card  # rows' texts are data in the Parquet files, not on the card


def test_the_output_folder_is_never_written_over_or_inside_the_run(run_folder, tmp_path, capsys):
    before = {p: p.stat().st_mtime_ns for p in run_folder.rglob("*")}
    assert main(["export", str(run_folder), "--out", str(run_folder / "dataset")]) == 1
    assert "is inside the run folder" in capsys.readouterr().err
    assert main(["export", str(run_folder), "--out", str(run_folder.parent)]) == 1
    assert "holds the run folder" in capsys.readouterr().err
    out = tmp_path / "ds"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["export", str(run_folder), "--out", str(out)]) == 1
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep me"
    assert main(["export", str(run_folder), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "mine.txt").exists() and (out / "README.md").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    assert {p: p.stat().st_mtime_ns for p in run_folder.rglob("*")} == before
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "y")]) == 1
    assert "no such run folder" in capsys.readouterr().err


# -- the Hub ----------------------------------------------------------------------------------------------------
class FakeHfApi:
    """HfApi's calls as push_folder makes them, recorded; the repo's card is ``existing`` (None: no card)."""

    def __init__(self, existing: str | None, tmp_path: Path):
        self.existing, self.tmp_path, self.calls, self.commits = existing, tmp_path, [], []

    def create_repo(self, repo, repo_type, private, exist_ok):
        self.calls.append(("create_repo", repo, repo_type, private, exist_ok))

    def file_exists(self, repo, filename, repo_type):
        return self.existing is not None

    def hf_hub_download(self, repo, filename, repo_type):
        path = self.tmp_path / "downloaded-README.md"
        path.write_text(self.existing)
        return str(path)

    def create_commit(self, repo, operations, commit_message, repo_type):
        self.commits.append({op.path_in_repo: op for op in operations})


THEIRS = "---\nlicense: mit\ntags:\n- edited-on-the-hub\n---\n\n# Their prose\n"


@pytest.mark.parametrize("existing, overwrite, license, kept", [
    (None, False, "unknown", []),
    (THEIRS, False, "mit", ["license", "tags"]),
    (THEIRS, True, "unknown", []),
    ("# a card with no metadata\n", False, "unknown", []),
])
def test_push_keeps_the_repo_cards_metadata_unless_overwrite(exported, tmp_path, monkeypatch, existing, overwrite,
                                                             license, kept):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    api = FakeHfApi(existing, tmp_path)
    result = push_folder(exported, "me/cai-data", overwrite=overwrite, api=api)
    assert result == {"repo": "me/cai-data", "kept_metadata": kept}
    (commit,) = api.commits
    assert set(commit) == {"README.md", "preferences/train-00000-of-00001.parquet", "sft/train-00000-of-00001.parquet",
                           "generations/train-00000-of-00001.parquet"}
    card = commit["README.md"].path_or_fileobj
    meta = validate_card(card.decode() if isinstance(card, bytes) else card.read().decode())
    assert meta["license"] == license and meta["configs"][0]["config_name"] == "preferences"
    assert ("edited-on-the-hub" in meta["tags"]) == (kept != [])


def test_push_needs_the_hub(exported, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    api = FakeHfApi(None, tmp_path)
    with pytest.raises(UserError, match=r"the Hub is offline here \(HF_HUB_OFFLINE=1"):
        push_folder(exported, "me/cai-data", api=api)
    assert api.calls == [] and api.commits == []
    assert card_to_push("ours", None, False) == ("ours", [])
    assert yaml.safe_load((exported / "README.md").read_text().split("---")[1])["pretty_name"]


def test_status_and_the_report_page_show_the_ledger_and_the_duplicates(run_folder, tmp_path):
    from cai.report import build_report, load_run
    from cai.status import format_status, status

    steps = calls_ledger(rows_of(run_folder / "revisions.jsonl"))
    result = status(run_folder / "revisions.jsonl")
    assert {step: result["ledger"]["stages"][step]["prompt_tokens"] for step in steps} == {
        step: entry["prompt_tokens"] for step, entry in steps.items()}
    text = format_status(result)
    assert re.search(rf"draft +7 +{steps['draft']['prompt_tokens']} +{steps['draft']['completion_tokens']} ", text)
    judge = format_status(status(run_folder / "preferences.jsonl"))
    assert re.search(r"\njudge +\d+ +- ", judge) and "2 duplicate rows left out" in judge

    page = build_report(load_run(run_folder))
    assert '<section id="cost">' in page and '<section id="duplicates">' in page
    assert "<td>vaccine-copy</td><td>vaccine</td><td>prompt</td><td>exact</td>" in page
    assert f'<td>draft</td><td class="num">7</td><td class="num">{steps["draft"]["prompt_tokens"]:,}</td>' in page


@pytest.mark.parametrize("ledger", [5, {"stages": 5, "wall_s": "x"}, {"stages": {"draft": {"calls": "7"}},
                                                                      "wall_s": float("nan"), "runs": "a"}])
def test_a_damaged_ledger_is_read_as_missing_parts(run_folder, tmp_path, ledger):
    from cai.status import format_status, status
    from export_run import make_run_folder

    run = make_run_folder(tmp_path)
    path = run / "revisions.jsonl.manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "ledger": ledger}))
    table = run_ledger(run)
    assert table["stages"].get("generation", {}).get("wall_s") in (0, None)  # nothing usable: no time, no error
    format_status(status(run / "revisions.jsonl"))
    assert export_run(ExportConfig(run_dir=str(run), out=str(tmp_path / "x")))["configs"]["preferences"] == 4


def test_a_local_model_folder_is_named_by_its_name_not_its_path():
    from cai.export import generation_record, model_name

    assert model_name("/home/me/.cache/cai/models/SmolLM2-135M-Instruct") == "SmolLM2-135M-Instruct"
    assert model_name("./runs/demo/dpo") == "dpo" and model_name("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert model_name("served-policy") == "served-policy" and model_name(None) is None
    assert generation_record({"model": "/root/models/m", "calls": []})["model"] == "m"
