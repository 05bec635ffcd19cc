"""Numbers that enter training are finite and in range; a loss that stops being finite stops training unsaved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import UserError


def _pairs_with(tmp_path: Path, preference_file: str, column: str, text: str) -> Path:
    """The fixture's pairs with row 3's ``column`` replaced by the raw JSON ``text`` (NaN, Infinity, 5.0 ...)."""
    lines = Path(preference_file).read_text().splitlines()
    row = json.loads(lines[2])
    row[column] = "__VALUE__"
    lines[2] = json.dumps(row).replace('"__VALUE__"', text)
    bad = tmp_path / "pairs.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    return bad


@pytest.mark.parametrize("column, text", [
    ("chosen_probability", "NaN"), ("chosen_probability", "Infinity"), ("chosen_probability", "-Infinity"),
    ("chosen_probability", "5.0"), ("chosen_probability", "-0.1"), ("margin", "NaN"), ("margin", "3.17"),
])
def test_a_probability_that_is_not_finite_or_in_range_is_refused_with_file_and_line(tmp_path, preference_file,
                                                                                   column, text):
    from training.data import load_preference_rows

    bad = _pairs_with(tmp_path, preference_file, column, text)
    with pytest.raises(UserError, match=rf"pairs\.jsonl:3: column '{column}' is .*; it must be a number in \[0, 1\]"):
        load_preference_rows(bad, extra_columns=(column,))


def test_cai_train_dpo_refuses_a_nan_row_before_loading_a_model(tmp_path, preference_file, capsys):
    from cai.cli import main

    bad = _pairs_with(tmp_path, preference_file, "chosen_probability", "NaN")
    out = tmp_path / "dpo"
    assert main(["train", "dpo", "--data", str(bad), "--output-dir", str(out), "--max-steps", "1"]) == 1
    err = capsys.readouterr().err
    assert "pairs.jsonl:3: column 'chosen_probability' is nan" in err and "Traceback" not in err
    assert not out.exists()


def test_a_loss_that_becomes_nan_stops_training_and_saves_no_model(tmp_path, tiny_model_dir, sft_file, monkeypatch,
                                                                  capsys):
    """A forced NaN loss (the trainer's loss times NaN) ends in one error line; no model folder is written."""
    import trl

    from cai.cli import main

    real = trl.SFTTrainer.compute_loss

    def nan_loss(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        if isinstance(result, tuple):
            return (result[0] * float("nan"), *result[1:])
        return result * float("nan")

    monkeypatch.setattr(trl.SFTTrainer, "compute_loss", nan_loss)
    out = tmp_path / "sft"
    code = main(["train", "sft", "--data", sft_file, "--output-dir", str(out),
                 "--model", tiny_model_dir, "--max-steps", "3", "--disable-tqdm", "true"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "cai train sft: loss became nan at step 1; training stopped and no model was saved" in err
    assert "Traceback" not in err
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()


def test_weights_that_are_not_finite_are_never_saved(tmp_path, tiny_model_dir):
    import torch

    from training.models import load_causal_lm, load_tokenizer, save_model_folder

    model = load_causal_lm(tiny_model_dir, "float32")
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(UserError, match=r"the trained weights are not finite .* no model was saved"):
        save_model_folder(model, load_tokenizer(tiny_model_dir), tmp_path / "m", torch.float32)
    assert not (tmp_path / "m" / "model.safetensors").exists()
