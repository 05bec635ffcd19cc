"""Shards (``--shard i/N``, ``core/shards.py``): the parts of a folder add up to the unsharded run, a part of
another split or configuration is refused, ``cai status`` sums the parts, and every reader takes the folder.

Against the fast stand-in server (tests/reliability/servers.py) with the openai backend, sampling at
temperature 0.7 with a fixed seed: each request carries its row's own seed, so a row's text does not depend
on which shard (or which other rows) it ran with.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest

from cai.cli import main as cai_main
from cai.status import status
from core.errors import UserError
from core.shards import Shard, part_of, shard_of
from reliability.harness import REPO, rows_of, write_prompts
from reliability.servers import StandinServer


@pytest.fixture(scope="module")
def standin():
    with StandinServer() as server:
        yield server


def generate_args(prompts: Path, out: Path, base_url: str, *extra: str, model: str = "standin") -> list[str]:
    """The shard command the recipes in recipes/scale-out run (there with a real server and model)."""
    return ["generate", "--prompts", str(prompts), "--out", str(out), "--backend", "openai", "--base-url", base_url,
            "--model", model, "--seed", "0", "--temperature", "0.7", "--max-tokens", "64", "--examples", "0",
            "--constitution", str(REPO / "principles.yaml"), *extra]


def judge_args(source: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return ["judge", "--in", str(source), "--out", str(out), "--backend", "openai", "--base-url", base_url,
            "--model", "standin", "--method", "pairwise", "--keep-flagged", "--keep-duplicates", "--constitution",
            str(REPO / "principles.yaml"), *extra]


def by_id(rows: list[dict]) -> dict[str, dict]:
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), "a row is in more than one part"
    return {row["id"]: row for row in rows}


def folder_rows(folder: Path) -> list[dict]:
    return [row for part in sorted(folder.glob("part-*.jsonl")) for row in rows_of(part)]


@pytest.fixture(scope="module")
def runs(standin, tmp_path_factory):
    """30 prompts generated once unsharded and once as shards 0/2 and 1/2 into a folder."""
    root = tmp_path_factory.mktemp("shards")
    prompts = write_prompts(root / "prompts.jsonl", 30)
    assert cai_main(generate_args(prompts, root / "all.jsonl", standin.base_url)) == 0
    for index in (0, 1):
        assert cai_main(generate_args(prompts, root / "parts", standin.base_url, "--shard", f"{index}/2")) == 0
    return root


# -- the split -----------------------------------------------------------------------------------------------
def test_shards_together_give_the_unsharded_rows(runs):
    whole = by_id(rows_of(runs / "all.jsonl"))
    parts = {index: rows_of(runs / "parts" / f"part-0000{index}-of-00002.jsonl") for index in (0, 1)}
    assert all(parts.values()), "both shards have rows (30 ids split by hash)"
    for index, rows in parts.items():
        assert {shard_of(row["id"], 2) for row in rows} == {index}  # each row is in its id's shard
    sharded = by_id(parts[0] + parts[1])
    assert sharded.keys() == whole.keys()
    for row_id, row in whole.items():
        other = sharded[row_id]
        assert (other["fingerprint"], other["draft_fingerprint"]) == (row["fingerprint"], row["draft_fingerprint"])
        assert (other["initial_response"], other["final_response"]) == (row["initial_response"], row["final_response"])
        assert other == row  # and everything else (rounds, calls, flags, seed) too
    for index in (0, 1):  # each part's manifest records its split and what the parts share
        manifest = json.loads((runs / "parts" / f"part-0000{index}-of-00002.jsonl.manifest.json").read_text())
        assert manifest["config"]["shard"]["index"] == index and manifest["config"]["shard"]["count"] == 2
        assert manifest["counts"]["prompts"] == len(parts[index])


def test_membership_is_the_stable_hash_of_the_id_alone():
    ids = [f"p{i}" for i in range(200)]
    for count in (1, 2, 3, 8):
        owners = [[Shard(index, count).owns(i) for index in range(count)] for i in ids]
        assert all(sum(row) == 1 for row in owners)  # every id in exactly one shard
    # Fixed values: the split is the same on every machine and Python (sha256 of the id's JSON).
    assert [shard_of(i, 4) for i in ("a", "b", "harmful-01", "42")] == [
        int(__import__("hashlib").sha256(json.dumps(i).encode()).hexdigest()[:16], 16) % 4
        for i in ("a", "b", "harmful-01", "42")]


@pytest.mark.parametrize("value, says", [
    ("2/2", "the index must be below the count (0 to 1)"),
    ("0/0", "the count must be >= 1"),
    ("a", "is not INDEX/COUNT"),
    ("-1/2", "is not INDEX/COUNT"),
    ("1/2/3", "is not INDEX/COUNT"),
    ("1", "is not INDEX/COUNT"),
])
def test_bad_shard_values_are_refused_with_the_fix(value, says, tmp_path, capsys):
    with pytest.raises(UserError, match="--shard") as caught:
        Shard.parse(value)
    assert says in str(caught.value) and "--shard 0/4" in str(caught.value)
    prompts = write_prompts(tmp_path / "prompts.jsonl", 2)
    assert cai_main(generate_args(prompts, tmp_path / "parts", "http://127.0.0.1:9/v1", f"--shard={value}")) == 1
    assert says in capsys.readouterr().err
    assert not (tmp_path / "parts").exists()  # nothing was written


# -- refusing parts that do not belong together ---------------------------------------------------------------
def test_a_part_of_another_split_or_configuration_is_refused(runs, standin, tmp_path, capsys):
    prompts = runs / "prompts.jsonl"
    folder = tmp_path / "parts"
    assert cai_main(generate_args(prompts, folder, standin.base_url, "--shard", "0/2")) == 0
    capsys.readouterr()
    cases = [
        (["--shard", "1/3"], "holds the parts of a 2-way split"),
        (["--shard", "1/2", "--seed", "1"], "seed: 0 there, 1 now"),
        (["--shard", "1/2", "--max-tokens", "32"], "sampling:"),
        (["--shard", "0/2", "--seed", "1"], "seed: 0 -> 1"),  # the part itself, by its rows' check
    ]
    for extra, says in cases:
        # a flag given twice: the last wins (the case's --seed or --max-tokens over generate_args')
        assert cai_main(generate_args(prompts, folder, standin.base_url, *extra)) == 1, extra
        err = capsys.readouterr().err
        assert says in err, (extra, err)
        assert "Traceback" not in err
    with StandinServer(model="other-model") as other:  # another model
        assert cai_main(generate_args(prompts, folder, other.base_url, "--shard", "1/2", model="other-model")) == 1
        assert "model: \"standin\" there, \"other-model\" now" in capsys.readouterr().err
    assert sorted(p.name for p in folder.glob("part-*.jsonl")) == ["part-00000-of-00002.jsonl"]  # nothing added
    # A part without a manifest yet (killed before writing one) is checked by its first row.
    (folder / "part-00000-of-00002.jsonl.manifest.json").unlink()
    assert cai_main(generate_args(prompts, folder, standin.base_url, "--shard", "1/2", "--seed", "1")) == 1
    assert "part-00000-of-00002.jsonl was written with another configuration (seed: 0 there, 1 now)" in \
        capsys.readouterr().err
    # --shard needs a folder; a folder of parts needs --shard.
    assert cai_main(generate_args(prompts, tmp_path / "x.jsonl", standin.base_url, "--shard", "0/2")) == 1
    assert "drop the .jsonl" in capsys.readouterr().err
    assert cai_main(generate_args(prompts, folder, standin.base_url)) == 1
    assert "is a folder of shard parts; pass --shard i/N" in capsys.readouterr().err


# -- cai status -------------------------------------------------------------------------------------------------
def test_status_sums_the_parts(standin, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(prompts, 12)
    # One prompt is longer than the stand-in's context: its row fails (a final 400) and is listed in the errors file.
    with open(prompts, "a") as handle:
        handle.write(json.dumps({"id": "long", "prompt": "x " * 20000}) + "\n")
    folder = tmp_path / "parts"
    long_shard = shard_of("long", 3)
    first = (long_shard + 1) % 3
    assert cai_main(generate_args(prompts, folder, standin.base_url, "--shard", f"{first}/3")) == 0

    result = status(folder)
    entries = {e["shard"]: e for e in result["parts"]}
    assert list(entries) == ["0/3", "1/3", "2/3"]
    done = entries[f"{first}/3"]
    expected = sum(1 for i in [f"p{n}" for n in range(12)] if shard_of(i, 3) == first)
    assert (done["rows"], done["total"], done["failed"], done["finished"]) == (expected, expected, 0, True)
    assert [e["state"] for e in entries.values()].count("not started") == 2
    assert result["rows"] == expected and result["total"] is None and result["finished"] == 1

    for index in range(3):
        cai_main(generate_args(prompts, folder, standin.base_url, "--shard", f"{index}/3"))
    result = status(folder)
    entries = {e["shard"]: e for e in result["parts"]}
    failing = entries[f"{long_shard}/3"]
    assert failing["failed"] == 1 and not failing["finished"] and "1 failed" in failing["state"]
    assert result["rows"] == 12 and result["total"] == 13 and result["failed"] == 1 and result["finished"] == 2
    assert result["rows"] == sum(len(rows_of(p)) for p in folder.glob("part-*.jsonl"))

    capsys.readouterr()
    assert cai_main(["status", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "3 part(s) of `cai generate`" in text and "2 of 3 finished" in text
    assert cai_main(["status", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 12
    # A plain output file is one part.
    assert cai_main(generate_args(prompts, tmp_path / "one.jsonl", standin.base_url)) == 1  # the long row fails
    plain = status(tmp_path / "one.jsonl")
    assert (plain["rows"], plain["total"], plain["failed"], len(plain["parts"])) == (12, 13, 1, 1)
    with pytest.raises(UserError, match="no such file or folder"):
        status(tmp_path / "missing")


# -- readers ------------------------------------------------------------------------------------------------------
def test_the_folder_is_read_by_judge_training_and_datasets(runs, standin, tmp_path):
    folder = runs / "parts"
    # An errors file in the folder (a failed row) must not be read as a part.
    (folder / "part-00000-of-00002.jsonl.errors.ndjson").write_text('{"id": "x", "error": "boom"}\n')
    assert sorted(glob.glob(str(folder / "*.jsonl"))) == sorted(str(p) for p in folder.glob("part-*-of-00002.jsonl"))

    # datasets reads the folder's parts as one data set.
    from datasets import load_dataset

    loaded = load_dataset("json", data_files=str(folder / "*.jsonl"), split="train")
    assert sorted(loaded["id"]) == sorted(row["id"] for row in rows_of(runs / "all.jsonl"))

    # cai judge --in FOLDER: the same pairs as from the unsharded file (only where each row was read differs).
    assert cai_main(judge_args(runs / "all.jsonl", tmp_path / "from_file.jsonl", standin.base_url)) == 0
    # A second judge run in the same folder names its own SFT file (the first run's sft.jsonl is not replaced).
    assert cai_main(judge_args(folder, tmp_path / "from_folder.jsonl", standin.base_url,
                               "--sft-out", str(tmp_path / "from_folder.sft.jsonl"))) == 0
    from_file, from_folder = rows_of(tmp_path / "from_file.jsonl"), rows_of(tmp_path / "from_folder.jsonl")
    assert from_file, "the stand-in judge makes some pairs"
    assert {p["source"]["file"] for p in from_folder} <= {str(p) for p in folder.glob("part-*.jsonl")}

    def without_file(pairs):
        return {p["id"]: {**p, "source": {**p["source"], "file": None, "line": None}} for p in pairs}

    assert without_file(from_folder) == without_file(from_file)

    # cai judge --shard i/2 over the folder: each shard reads its own part; together the same pairs.
    for index in (0, 1):
        assert cai_main(judge_args(folder, tmp_path / "prefs", standin.base_url, "--shard", f"{index}/2")) == 0
    assert by_id(folder_rows(tmp_path / "prefs")).keys() == by_id(from_file).keys()
    assert without_file(folder_rows(tmp_path / "prefs")) == without_file(from_file)
    assert (tmp_path / "sft" / "part-00001-of-00002.jsonl").is_file()  # SFT rows: the sibling folder of parts
    judged = status(tmp_path / "prefs")
    assert judged["all_finished"] and judged["rows"] == judged["total"] == len(from_file)
    assert not list((tmp_path / "prefs").glob("*.judgements.jsonl"))  # caches are .ndjson beside the parts

    # cai train's readers take the folders as they take the files.
    from training.data import load_preference_rows, load_sft_rows

    def key(row):
        return json.dumps(row, sort_keys=True)

    assert sorted(map(key, load_preference_rows(tmp_path / "prefs"))) == sorted(
        map(key, load_preference_rows(tmp_path / "from_file.jsonl")))
    assert sorted(map(key, load_sft_rows(tmp_path / "sft"))) == sorted(
        map(key, load_sft_rows(tmp_path / "sft.jsonl")))
    # A damaged line is named by its part file and line.
    with open(tmp_path / "prefs" / "part-00001-of-00002.jsonl", "a") as handle:
        handle.write('{"prompt": "hi"}\n')
    with pytest.raises(UserError, match=r"part-00001-of-00002\.jsonl:\d+: missing column\(s\) chosen, rejected"):
        load_preference_rows(tmp_path / "prefs")


def test_a_reader_refuses_a_folder_with_a_missing_part(runs, tmp_path):
    from training.data import load_preference_rows

    half = tmp_path / "half"
    half.mkdir()
    (half / "part-00001-of-00002.jsonl").write_text((runs / "parts" / "part-00001-of-00002.jsonl").read_text())
    with pytest.raises(UserError, match=r"1 of its 2 parts are missing \(part-00000-of-00002.jsonl\)"):
        load_preference_rows(half)
    assert part_of(half / "part-00001-of-00002.jsonl") == Shard(1, 2)


def test_cai_run_completes_and_reads_a_run_folder_of_parts(runs, standin, tmp_path):
    """Sharded jobs wrote RUN_DIR/revisions/: `cai run` runs each shard (finished parts load nothing), judges
    the folder, and its trainers read the folders (a sharded judge's preferences/ and sft/)."""
    import shutil

    import yaml

    from cai.pipeline import _file_hash, plan_run, shard_runs
    from generation.run import generate
    from judging.run import run_judge

    run_dir = tmp_path / "run"
    shutil.copytree(runs / "parts", run_dir / "revisions")
    served = {"backend": "openai", "base_url": standin.base_url, "model": "standin"}
    recipe = {"run_dir": str(run_dir), "constitution": str(REPO / "principles.yaml"), "seed": 0,
              "generate": {"prompts": str(runs / "prompts.jsonl"), "temperature": 0.7, "max_tokens": 64, **served},
              "judge": {"method": "pairwise", "keep_flagged": True, **served}, "train": {"method": "dpo"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    plan = plan_run(path)
    assert plan.generate.out == str(run_dir / "revisions") == plan.judge.input
    assert [config.shard for config in shard_runs(plan.generate)] == ["0/2", "1/2"]
    for config in shard_runs(plan.generate):
        assert generate(config)["counts"]["generated"] == 0  # finished parts: nothing to do, no model
    assert run_judge(plan.judge)["counts"]["pairs"] == len(rows_of(run_dir / "preferences.jsonl")) > 0

    # A sharded judge's folders: the recipe's trainers read them.
    for index in (0, 1):
        assert cai_main(judge_args(run_dir / "revisions", run_dir / "preferences", standin.base_url,
                                   "--shard", f"{index}/2")) == 0
    (run_dir / "preferences.jsonl").unlink()
    plan = plan_run(path)
    assert plan.judge.out == str(run_dir / "preferences") and plan.train[0].config.data == plan.judge.out
    sft_recipe = path.with_name("sft.yaml")
    sft_recipe.write_text(yaml.safe_dump({**recipe, "train": {"method": "sft"}}))
    assert plan_run(sft_recipe).train[0].config.data == str(run_dir / "sft")
    before = _file_hash(plan.judge.out)
    with open(run_dir / "preferences" / "part-00000-of-00002.jsonl", "a") as handle:
        handle.write("\n")
    assert _file_hash(plan.judge.out) not in (None, before)  # a changed part retrains


def test_status_of_a_shard_stopped_before_its_first_row(tmp_path):
    """An endpoint down from the start: the shard writes its manifest (stopped) and no part file."""
    from core.store import write_manifest

    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "part-00000-of-00002.jsonl").write_text('{"id": "p1"}\n')
    write_manifest(folder / "part-00000-of-00002.jsonl", "generate", {}, {"prompts": 1, "failed": 0})
    write_manifest(folder / "part-00001-of-00002.jsonl", "generate", {}, {"prompts": 3, "failed": 0,
                                                                          "stopped": "error"})
    zero, one = status(folder)["parts"]
    assert zero["finished"] and (zero["rows"], zero["total"]) == (1, 1)
    assert not one["finished"] and one["state"].startswith("stopped (error)") and (one["rows"], one["total"]) == (0, 3)


def test_the_report_reads_a_run_folder_of_parts(runs, tmp_path):
    import shutil

    from cai.report import load_run

    shutil.copytree(runs / "parts", tmp_path / "run" / "revisions")
    run = load_run(tmp_path / "run")
    assert sorted(row["id"] for row in run.revisions) == sorted(row["id"] for row in rows_of(runs / "all.jsonl"))
