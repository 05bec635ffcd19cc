"""``cai train sft|reward|ppo|dpo``: TRL's command-line style on our stage configs.

Defaults come from ``training/configs/<method>.yaml``; ``--config FILE`` lays a
YAML file of the user's over them, and flags override both (every TRL and
TrainingArguments field is a flag, e.g. ``--learning-rate 1e-5``).
Heavy imports (torch, TRL) happen only once a method runs, so ``--help`` of the
top-level ``cai`` stays fast.
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path

from core.errors import UserError

METHODS = {
    "sft": "supervised fine-tuning on sft.jsonl (the final revisions)",
    "reward": "reward model (Bradley-Terry, one-output head) on the judge's pairs",
    "ppo": "PPO with a reward model from `cai train reward`",
    "dpo": "DPO on the judge's pairs (optionally smoothed by the judge's confidence)",
}
CONFIG_DIR = Path(__file__).parent / "configs"
USAGE = (
    "usage: cai train {sft,reward,ppo,dpo} --data FILE --output-dir DIR [--config FILE] [--model M] "
    "[--max-steps N] [--use-peft] [any TRL option]\n\nmethods:\n"
    + "\n".join(f"  {name:<7} {text}" for name, text in METHODS.items())
    + "\n\n`cai train METHOD --help` lists every option of that method."
)


def default_config_path(method: str) -> Path:
    return CONFIG_DIR / f"{method}.yaml"


def parse_stage_config(method: str, argv: list[str]):
    """The stage config for ``method``: shipped YAML, then ``--config FILE``, then flags."""
    import yaml
    from trl import TrlParser

    from training.config import STAGE_CONFIGS

    config_class = STAGE_CONFIGS[method]
    parser = TrlParser(dataclass_types=[config_class], prog=f"cai train {method}")
    shipped = yaml.safe_load(default_config_path(method).read_text()) or {}
    parser.set_defaults_with_config(**shipped)
    argv = list(argv)
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise UserError("--config needs a YAML file, e.g. --config training/configs/dpo.yaml")
        path = Path(argv[index + 1])
        if not path.is_file():
            raise UserError(f"--config {str(path)!r}: no such file; pass a YAML file of option: value lines")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: must be a YAML mapping of option: value lines")
        known = {f.name for f in config_class.__dataclass_fields__.values()} | {"env"}
        unknown = sorted(set(loaded) - known)
        if unknown:
            hints = [
                f"{key!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(key, known, n=1)) else repr(key)
                for key in unknown
            ]
            raise UserError(f"{path}: unknown option(s) for `cai train {method}`: {', '.join(hints)}")
    try:
        (config,) = parser.parse_args_and_config(argv)
    except UserError:
        raise
    except ValueError as exc:
        raise UserError(f"cai train {method}: {exc}") from None
    return config


def _method(argv: list[str]) -> str:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0)
    method = argv[0]
    if method not in METHODS:
        close = difflib.get_close_matches(method, METHODS, n=1)
        hint = f" Did you mean 'cai train {close[0]}'?" if close else ""
        raise UserError(f"unknown training method {method!r}; choose one of {', '.join(METHODS)}.{hint}")
    return method


def train(argv: list[str]) -> int:
    """Entry point of ``cai train METHOD ...``; returns the exit status."""
    method = _method(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The TRL/transformers import chain is long; say something before it.
    if "-h" not in argv and "--help" not in argv:
        print(f"cai train {method}: loading TRL ...", file=sys.stderr, flush=True)
    config = parse_stage_config(method, argv[1:])
    if not any(arg.split("=")[0] in ("--output-dir", "--output_dir") for arg in argv) and config.output_dir == "trainer_output":
        raise UserError(f"cai train {method}: --output-dir DIR is required: the model folder to write")
    if not config.data and not (method == "ppo" and getattr(config, "prompts", None)):
        raise UserError(f"cai train {method}: --data FILE is required")
    from training.stages import RUNNERS

    summary = RUNNERS[method](config)
    print(f"cai train {method}: wrote the model folder {config.output_dir} ({summary['global_step']} steps)")
    if method == "reward" and summary.get("held_out_accuracy") is not None:
        print(
            f"cai train reward: held-out accuracy {summary['held_out_accuracy']:.3f} "
            f"on {summary['held_out_rows']} held-out pairs"
        )
    return 0


def evaluate(argv: list[str]) -> int:
    """Entry point of ``cai eval``."""
    from trl import TrlParser

    from .evaluate import EvalConfig, evaluate as run_evaluate, format_eval

    (config,) = TrlParser([EvalConfig], prog="cai eval").parse_args_and_config(argv)
    print(format_eval(run_evaluate(config)))
    return 0
