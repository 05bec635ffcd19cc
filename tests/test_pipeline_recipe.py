"""`cai run` recipes: bad recipes fail at once, naming the file and the fix, before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cai.cli import main as cai_main
from core.errors import UserError
from cai.pipeline import load_recipe, run_pipeline_from_recipe

REPO = Path(__file__).parent.parent


def test_shipped_recipes_load():
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        recipe = load_recipe(path)
        assert {"generate", "judge", "train", "eval"} <= set(recipe), path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "unknown key(s) 'colour'"),
        ({"eval": {"promts": "x.jsonl"}}, "unknown option(s) in 'eval': 'promts' (did you mean 'prompts'?)"),
        ({"generate": {"prompts": "prompts/demo.jsonl", "max_tokenz": 5}}, "'max_tokenz' (did you mean 'max_tokens'?)"),
        ({"train": {"method": "dpoo"}}, "train.method 'dpoo' is unknown"),
    ],
)
def test_bad_recipes_fail_before_any_work(tmp_path, change, message):
    recipe = yaml.safe_load((REPO / "recipes" / "demo.yaml").read_text())
    recipe["run_dir"] = str(tmp_path / "run")
    recipe.update(change)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(UserError) as info:
        run_pipeline_from_recipe(path, log=lambda m: None)
    assert str(path) in str(info.value) and message in str(info.value)
    assert not (tmp_path / "run" / "revisions.jsonl").exists()


def test_malformed_recipe_names_the_line(tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text("run_dir: x\ngenerate: [\n")
    assert cai_main(["run", "--recipe", str(path)]) == 1
    assert f"{path}:3: malformed YAML" in capsys.readouterr().err
