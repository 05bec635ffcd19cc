"""`cai train sft|reward|ppo|dpo` (rloo and grpo: test_rl.py): each trains two optimizer steps on CPU, changes weights, saves a loadable folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai.cli import main as cai_main
from core.config import parse_config
from core.errors import UserError
from training.cli import train
from training.methods import TRAINING_METHODS, get_method

QUIET = ["--disable-tqdm", "true"]
README = Path(__file__).parent.parent.parent / "training" / "README.md"


def parse(method: str, argv: list[str]):
    """What `cai train METHOD ARGV` parses into."""
    return parse_config(get_method(method).config_class, argv, f"cai train {method}")


def _weights(folder: str | Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def _changed(before: dict, after: dict, prefix: str = "") -> list[str]:
    """Names of tensors (matched by suffix, so causal-LM and classifier folders compare) that differ."""
    import torch

    changed = []
    for name, tensor in after.items():
        key = prefix + name if prefix + name in before else name
        if key in before and before[key].shape == tensor.shape:
            if not torch.equal(before[key].float(), tensor.float()):
                changed.append(name)
    return changed


def _assert_model_folder(folder: str | Path) -> None:
    folder = Path(folder)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).is_file(), f"{name} missing from {folder}"
    assert not (folder / "adapter_config.json").exists(), "LoRA must be merged, not saved as an adapter"
    summary = json.loads((folder / "cai_training.json").read_text())
    assert summary["global_step"] == 2


# ---------------------------------------------------------------- command line and bad input


def test_unknown_method_suggests_the_closest():
    with pytest.raises(UserError, match=r"training method 'dop' is unknown; did you mean 'dpo'\?"):
        train(["dop", "--data", "x.jsonl"])


def test_usage_lists_every_registered_method(capsys):
    assert train(["--help"]) == 0
    usage = capsys.readouterr().out
    for name, method in TRAINING_METHODS.items():
        assert f"  {name:<7} {method.description}" in usage


def test_missing_data_file_names_the_file(tmp_path, tiny_model_dir):
    missing = tmp_path / "nowhere.jsonl"
    with pytest.raises(UserError, match="nowhere.jsonl: no such preference file"):
        train(["dpo", "--data", str(missing), "--output-dir", str(tmp_path / "out"), "--model", tiny_model_dir])


def test_missing_model_folder_is_a_user_error(tmp_path, preference_file):
    with pytest.raises(UserError, match="--model '.*nope': no such model folder"):
        train(["dpo", "--data", preference_file, "--output-dir", str(tmp_path / "out"), "--model", str(tmp_path / "nope")])


def test_output_dir_and_data_are_required():
    with pytest.raises(UserError, match="--output-dir DIR is required"):
        parse("sft", ["--data", "x.jsonl"])
    with pytest.raises(UserError, match="--data FILE is required"):
        parse("dpo", ["--output-dir", "o"])


def test_bad_row_names_file_and_line(tmp_path, preference_file):
    from training.data import load_preference_rows

    bad = tmp_path / "pairs.jsonl"
    lines = Path(preference_file).read_text().splitlines()
    row = json.loads(lines[1])
    del row["rejected"]
    bad.write_text("\n".join([lines[0], json.dumps(row)]) + "\n")
    with pytest.raises(UserError, match=r"pairs.jsonl:2: missing column\(s\) rejected"):
        load_preference_rows(bad)
    bad.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(UserError, match=r"pairs.jsonl:2: invalid JSON at column"):
        load_preference_rows(bad)


def test_confidence_column_must_be_a_number(tmp_path, preference_file):
    from training.data import load_preference_rows

    row = json.loads(Path(preference_file).read_text().splitlines()[0])
    row["chosen_probability"] = "high"
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match=r"pairs.jsonl:1: column 'chosen_probability' must be a number, got \"high\""):
        load_preference_rows(bad, extra_columns=("chosen_probability",))


def test_config_layers_dataclass_defaults_user_yaml_then_flags(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("beta: 0.3\nlearning_rate: 1.0e-4\nloss_type: [sigmoid]\nmax_rows: null\n")
    config = parse("dpo", ["--config", str(user), "--learning-rate", "2e-4", "--output-dir", "o", "--data", "d"])
    assert config.beta == 0.3  # user YAML over the dataclass default
    assert config.learning_rate == 2e-4  # flag over user YAML
    assert config.loss_type == ["sigmoid"] and config.max_rows is None
    # dataclass defaults kept where nobody overrode them
    assert config.confidence == "smooth" and config.save_strategy == "no"
    assert config.max_length == 512 and config.per_device_train_batch_size == 2


def test_defaults_live_only_in_the_dataclasses_and_the_readme_agrees():
    from training.dpo import DPOStageConfig

    assert not (README.parent / "configs").exists()
    assert DPOStageConfig(data="d", output_dir="o").confidence == "smooth"
    assert "`smooth` (default)" in README.read_text()


def test_config_errors_quote_the_bad_value(tmp_path):
    with pytest.raises(UserError, match="--confidence 'always' is unknown"):
        parse("dpo", ["--confidence", "always", "--output-dir", "o", "--data", "d"])
    with pytest.raises(UserError, match=r"--eval-fraction 1\.5 must be in"):
        parse("reward", ["--eval-fraction", "1.5", "--output-dir", "o", "--data", "d"])
    with pytest.raises(UserError, match=r"--confidence 'smooth' cannot be combined with --loss-type \['ipo'\]"):
        parse("dpo", ["--loss-type", "ipo", "--output-dir", "o", "--data", "d"])


def test_config_file_typo_is_one_error_line_with_did_you_mean(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("beta: 0.2\nbetta: 0.2\n")
    assert cai_main(["train", "dpo", "--config", str(bad), "--output-dir", str(tmp_path / "o")]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert errors == [f"error: {bad}:2: unknown option 'betta'; did you mean 'beta'?"]
    assert not (tmp_path / "o").exists()


def test_every_field_of_ours_has_help_text():
    from training.config import StageFields

    for _, method in TRAINING_METHODS.items():
        try:
            config_class = method.config_class
        except UserError:
            continue  # a method this TRL lacks (ppo after 1.12; rloo, grpo with 1.12 beside vLLM 0.28+)
        ours = [name for cls in config_class.__mro__ if cls.__module__.startswith("training.")
                for name in cls.__dict__.get("__annotations__", {})]
        assert set(StageFields.__annotations__) <= set(ours)
        for name in ours:
            assert config_class.__dataclass_fields__[name].metadata.get("help"), f"{config_class.__name__}.{name}"


def test_the_config_class_says_the_method():
    from training.methods import method_of
    from training.sft import SFTStageConfig

    assert method_of(SFTStageConfig(data="d", output_dir="o")).name == "sft"
    with pytest.raises(TypeError, match="not the config of a training method"):
        method_of(object())


# ---------------------------------------------------------------- the confidence-aware DPO loss


def test_smoothed_dpo_loss_is_per_pair_cdpo(tmp_path, tiny_model_dir, preference_file):
    """The trainer's loss equals mean_i[(1-eps_i) l(d_i) + eps_i l(-d_i)] with eps_i = 1 - p_i, per pair."""
    import torch
    import torch.nn.functional as F

    from training.dpo import CONFIDENCE_KEY, ConfidenceDPOTrainer, ConfidencePreferenceCollator
    from training.models import load_causal_lm, load_tokenizer

    from datasets import Dataset

    from training.dpo import DPOStageConfig

    config = DPOStageConfig(data=preference_file, output_dir=str(tmp_path), beta=0.5, disable_tqdm=True)

    from training.data import load_preference_rows

    rows = load_preference_rows(preference_file, 4, ("chosen_probability",))
    for row in rows:
        row[CONFIDENCE_KEY] = row.pop("chosen_probability")
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, "float32")
    ref = load_causal_lm(tiny_model_dir, "float32")
    with torch.no_grad():  # make policy and reference differ, so that d != 0
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    collator = ConfidencePreferenceCollator(pad_token_id=tokenizer.pad_token_id)
    trainer = ConfidenceDPOTrainer(
        model=model, ref_model=ref, args=config, data_collator=collator,
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer, confidence_mode="smooth",
    )
    batch = trainer._prepare_inputs(collator([trainer.train_dataset[i] for i in range(4)]))
    probability = batch[CONFIDENCE_KEY].clone()
    model.eval()
    loss, outputs = trainer._compute_loss(model, dict(batch), return_outputs=True)

    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.ref_model, batch)
    d = ConfidenceDPOTrainer._logratio_delta(
        outputs, {**batch, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    )
    eps = 1 - probability
    expected = ((1 - eps) * -F.logsigmoid(0.5 * d) + eps * -F.logsigmoid(-0.5 * d)).mean()
    assert d.abs().max() > 1e-3
    assert torch.allclose(loss, expected, atol=1e-5), (loss.item(), expected.item())
    # and it differs from plain DPO, so the confidence really enters the loss
    assert not torch.allclose(loss, (-F.logsigmoid(0.5 * d)).mean(), atol=1e-5)


def test_weighted_dpo_loss_carries_the_confidence_into_the_gradient(tmp_path, tiny_model_dir, preference_file):
    """A pair the judge called a coin flip (p = 0.5) has weight 0: with every pair so, the loss has no gradient,
    while plain DPO on the same batch has one (the correction is taken from the forward pass that has gradients)."""
    import torch

    from datasets import Dataset

    from training.data import load_preference_rows
    from training.dpo import CONFIDENCE_KEY, ConfidenceDPOTrainer, ConfidencePreferenceCollator, DPOStageConfig
    from training.models import load_causal_lm, load_tokenizer

    config = DPOStageConfig(data=preference_file, output_dir=str(tmp_path), beta=0.5, disable_tqdm=True)
    rows = load_preference_rows(preference_file, 4, ("chosen_probability",))
    for row in rows:
        row.pop("chosen_probability")
        row[CONFIDENCE_KEY] = 0.5
    tokenizer = load_tokenizer(tiny_model_dir)
    model, ref = load_causal_lm(tiny_model_dir, "float32"), load_causal_lm(tiny_model_dir, "float32")
    with torch.no_grad():  # policy and reference differ, so that the plain loss has a gradient
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    collator = ConfidencePreferenceCollator(pad_token_id=tokenizer.pad_token_id)
    norms = {}
    for mode in ("weight", "none"):
        trainer = ConfidenceDPOTrainer(model=model, ref_model=ref, args=config, data_collator=collator,
                                       train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                                       confidence_mode=mode)
        batch = trainer._prepare_inputs(collator([trainer.train_dataset[i] for i in range(4)]))
        model.train()
        model.zero_grad()
        trainer._compute_loss(model, dict(batch), return_outputs=False).backward()
        norms[mode] = sum(p.grad.abs().sum().item() for p in model.parameters() if p.grad is not None)
    assert norms["none"] > 1e-3, norms
    assert norms["weight"] < 1e-6 * norms["none"], norms


# ---------------------------------------------------------------- the four trainers on the tiny model


def test_sft_trains_and_saves(tmp_path, tiny_model_dir, sft_file):
    out = tmp_path / "sft"
    rc = train(["sft", "--data", sft_file, "--output-dir", str(out), "--model", tiny_model_dir,
                "--max-steps", "2", "--learning-rate", "1e-3", *QUIET])
    assert rc == 0
    _assert_model_folder(out)
    assert _changed(_weights(tiny_model_dir), _weights(out))
    summary = json.loads((out / "cai_training.json").read_text())
    assert summary["device_settings"]["chosen"]["per_device_train_batch_size"] == 2  # what the device chose, recorded
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)


def test_reward_trains_reports_accuracy_and_loads(tiny_reward_dir, tiny_model_dir, preference_file):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from training.data import load_preference_rows, split_rows

    _assert_model_folder(tiny_reward_dir)
    summary = json.loads((Path(tiny_reward_dir) / "cai_training.json").read_text())
    assert summary["held_out_rows"] == 2 and summary["pairs"] == 8
    assert json.loads((Path(tiny_reward_dir) / "eval_results.json").read_text())["eval_accuracy"] == summary[
        "held_out_accuracy"]
    # The reported accuracy is the saved model's: chosen scored above rejected on the held-out pairs.
    _, held_out = split_rows(load_preference_rows(preference_file), 0.25, 42)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward_dir)

    def score(messages) -> float:
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
        with torch.no_grad():
            return float(model(input_ids=ids["input_ids"]).logits[0, 0])

    wins = [score(row["prompt"] + row["chosen"]) > score(row["prompt"] + row["rejected"]) for row in held_out]
    assert summary["held_out_accuracy"] == pytest.approx(sum(wins) / len(wins))
    after = _weights(tiny_reward_dir)
    assert "score.weight" in after
    assert _changed(_weights(tiny_model_dir), after)
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    batch = tokenizer(["a short answer", "a somewhat longer answer here"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 1)


# TRL logs the variance of a single PPO ratio statistic on batches this small; the NaN is expected.
@pytest.mark.filterwarnings("ignore:var\\(\\)")
@pytest.mark.ppo
def test_ppo_trains_with_rising_kl_and_logs(tmp_path, tiny_model_dir, tiny_reward_dir, preference_file):
    out = tmp_path / "ppo"
    rc = train(["ppo", "--data", preference_file, "--output-dir", str(out), "--model", tiny_model_dir,
                "--reward-model", tiny_reward_dir, "--max-steps", "2", "--learning-rate", "1e-3",
                "--response-length", "8", "--kl-coef", "0.05", "--kl-coef-final", "0.25", *QUIET])
    assert rc == 0
    _assert_model_folder(out)
    assert _changed(_weights(tiny_model_dir), _weights(out))
    summary = json.loads((out / "cai_training.json").read_text())
    assert summary["global_step"] == 2
    assert summary["kl_coef_start"] == 0.05 and summary["kl_coef_end"] == pytest.approx(0.25)
    for key in ("objective/scores", "objective/kl", "objective/entropy", "objective/kl_coef"):
        assert key in summary["last_log"], key
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)


def test_dpo_with_lora_saves_merged_weights(tmp_path, tiny_model_dir, preference_file):
    out = tmp_path / "dpo-lora"
    rc = train(["dpo", "--data", preference_file, "--output-dir", str(out), "--model", tiny_model_dir,
                "--max-steps", "2", "--use-peft", "--lora-r", "4", "--learning-rate", "1e-2",
                "--confidence", "weight", *QUIET])
    assert rc == 0
    _assert_model_folder(out)
    after = _weights(out)
    assert not any("lora" in name for name in after)
    assert _changed(_weights(tiny_model_dir), after)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)


def test_dpo_with_dora_on_named_modules_changes_only_those(tmp_path, tiny_model_dir, preference_file):
    """DoRA (a TRL LoRA option) trains the modules named in one comma-separated value, as earlier releases took it."""
    out = tmp_path / "dpo-dora"
    rc = train(["dpo", "--data", preference_file, "--output-dir", str(out), "--model", tiny_model_dir,
                "--max-steps", "2", "--use-peft", "--use-dora", "--lora-r", "4",
                "--lora-target-modules", "q_proj,v_proj",
                "--learning-rate", "1e-2", "--confidence", "weight", *QUIET])
    assert rc == 0
    _assert_model_folder(out)
    after = _weights(out)
    assert not any("lora" in name for name in after)
    changed = _changed(_weights(tiny_model_dir), after)
    assert changed and all(name.endswith(("q_proj.weight", "v_proj.weight")) for name in changed), changed


def test_lora_options_are_trls_and_reach_the_peft_config(tmp_path):
    """The LoRA fields are TRL's ModelConfig's (types and defaults, but all-linear), built by trl.get_peft_config."""
    import typing

    from trl import ModelConfig

    from training.config import PEFT_FIELDS, StageFields
    from training.models import lora_config

    ours, trls = typing.get_type_hints(StageFields), typing.get_type_hints(ModelConfig)
    assert {name: ours[name] for name in PEFT_FIELDS} == {name: trls[name] for name in PEFT_FIELDS}
    user = tmp_path / "lora.yaml"
    user.write_text("use_peft: true\nuse_dora: true\nlora_target_modules: q_proj,v_proj\n"
                    "lora_modules_to_save: lm_head\n")
    peft = lora_config(parse("dpo", ["--config", str(user), "--lora-r", "4", "--output-dir", "o", "--data", "d"]),
                       "CAUSAL_LM")
    assert peft.use_dora is True and peft.r == 4 and peft.lora_alpha == 32 and peft.task_type == "CAUSAL_LM"
    assert set(peft.target_modules) == {"q_proj", "v_proj"} and list(peft.modules_to_save) == ["lm_head"]
    peft = lora_config(parse("reward", ["--use-peft", "--use-rslora", "--lora-target-modules", "q_proj",
                                        "--output-dir", "o", "--data", "d"]), "SEQ_CLS")
    assert peft.use_rslora is True and peft.use_dora is False and peft.task_type == "SEQ_CLS"
    assert set(peft.target_modules) == {"q_proj"}  # one name stays a name, not a pattern for the whole path
    assert lora_config(parse("dpo", ["--use-peft", "--output-dir", "o", "--data", "d"]), "CAUSAL_LM").target_modules \
        == "all-linear"
    assert lora_config(parse("dpo", ["--output-dir", "o", "--data", "d"]), "CAUSAL_LM") is None


def test_a_bad_lora_option_names_its_line_or_flag(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("use_peft: true\nuse_dora: maybe\n")
    assert cai_main(["train", "dpo", "--config", str(bad), "--output-dir", str(tmp_path / "o"), "--data", "d"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert errors == [f"error: {bad}:2: use_dora: expected true or false, got 'maybe'; fix the value"]
    with pytest.raises(UserError, match=r"--lora-alpha 0 must be positive"):
        parse("dpo", ["--use-peft", "--lora-alpha", "0", "--output-dir", "o", "--data", "d"])
    with pytest.raises(UserError, match=r"--lora-r 0 must be at least 1"):
        parse("sft", ["--use-peft", "--lora-r", "0", "--output-dir", "o", "--data", "d"])


# ---------------------------------------------------------------- bf16 autocast on the CPU


@pytest.mark.parametrize("method", ["dpo", "reward"])
def test_bf16_autocast_on_the_cpu_trains_and_saves_float32_weights(tmp_path, tiny_model_dir, preference_file, method):
    """The default on a CPU with native bf16, asked for here so that any CPU runs it: the first step's figures are the
    float32 run's up to bf16 rounding (autocast really ran), and the folder holds float32 weights that load."""
    folders = {}
    for bf16 in ("true", "false"):
        out = folders[bf16] = tmp_path / f"{method}-bf16-{bf16}"
        assert train([method, "--data", preference_file, "--output-dir", str(out), "--model", tiny_model_dir,
                      "--max-steps", "2", "--learning-rate", "1e-3", "--bf16", bf16, *QUIET]) == 0
    out = folders["true"]
    _assert_model_folder(out)
    summary = json.loads((out / "cai_training.json").read_text())
    assert summary["device_settings"]["precision"] == "bf16 autocast, float32 weights (bf16 set)"
    # DPO's first loss is log 2 in any precision (the policy is its reference): its log-probabilities differ
    figure = "logps/chosen" if method == "dpo" else "loss"
    first_bf16, first_float32 = (json.loads((folder / "cai_training.json").read_text())["log_history"][0][figure]
                                 for folder in (out, folders["false"]))
    assert first_bf16 != first_float32 and first_bf16 == pytest.approx(first_float32, rel=0.02)
    after = _weights(out)
    assert {str(tensor.dtype) for tensor in after.values()} == {"torch.float32"}  # master weights, as saved before
    assert _changed(_weights(tiny_model_dir), after)
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    loader = AutoModelForSequenceClassification if method == "reward" else AutoModelForCausalLM
    assert loader.from_pretrained(out).dtype == torch.float32


# ---------------------------------------------------------------- the real default model


def test_dpo_on_the_default_model(tmp_path, default_model_dir, preference_file):
    out = tmp_path / "dpo-default"
    rc = train(["dpo", "--data", preference_file, "--output-dir", str(out), "--max-steps", "2",
                "--learning-rate", "1e-5", "--max-length", "256", *QUIET])
    assert rc == 0
    _assert_model_folder(out)
    assert _changed(_weights(default_model_dir), _weights(out))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                           tokenize=True, return_dict=True)
    import torch

    generated = model.generate(torch.tensor([prompt["input_ids"]]), max_new_tokens=3, do_sample=False)
    assert generated.shape[1] > len(prompt["input_ids"])


def test_dpo_with_precomputed_reference_log_probs_matches_the_reference_copy(tmp_path, tiny_model_dir,
                                                                              preference_file):
    """The GPU default for DPO (reference log-probs computed once, before training, with no reference copy) gives
    the loss of the frozen-copy path, with the judge's confidence smoothing on."""
    losses = {}
    for precompute in ("true", "false"):
        out = tmp_path / f"dpo-precompute-{precompute}"
        rc = train(["dpo", "--data", preference_file, "--output-dir", str(out), "--model", tiny_model_dir,
                    "--max-steps", "2", "--learning-rate", "1e-2", "--precompute-ref-log-probs", precompute,
                    "--bf16", "false", *QUIET])  # float32: bf16 autocast rounds each path differently
        assert rc == 0
        summary = json.loads((out / "cai_training.json").read_text())
        assert "precompute_ref_log_probs" not in summary["device_settings"]["chosen"]  # the flag set it
        losses[precompute] = [entry["loss"] for entry in summary["log_history"] if "loss" in entry]
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)
