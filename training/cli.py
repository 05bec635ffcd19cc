"""``cai train METHOD``: the command line of ``training.api``.

Options come from the method's config dataclass (its defaults), then ``--config FILE``, then flags
(``core.config.parse_config``); every TRL and ``TrainingArguments`` field is a flag. Heavy imports
(torch, TRL) happen only once a method runs, so ``cai train --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

from core.config import parse_config
from core.errors import UserError
from training.methods import TRAINING_METHODS, get_method


def usage() -> str:
    """``cai train --help``: the registered methods, each with its one line."""
    return (
        "usage: cai train {" + ",".join(TRAINING_METHODS) + "} --data FILE --output-dir DIR [--config FILE] [--model M] "
        "[--max-steps N] [--use-peft] [any TRL option]\n\nmethods:\n"
        + "\n".join(f"  {name:<7} {method.description}" for name, method in TRAINING_METHODS.items())
        + "\n\n`cai train METHOD --help` lists every option of that method and its default."
    )


def _check_output_dir(prog: str, config) -> None:
    """The model folder to write is a folder, not one of the command's inputs (the base model, the data), and not
    a folder of files ``cai train`` did not write (unless --overwrite)."""
    from core.store import same_file

    output_dir = Path(config.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"{prog}: --output-dir {output_dir} is a file; pass the model folder to write")
    for flag in ("model", "reward_model", "data", "prompts"):
        source = getattr(config, flag, None)
        if source and Path(source).exists() and same_file(output_dir, source):
            raise UserError(f"{prog}: --output-dir {output_dir} is --{flag.replace('_', '-')}, an input; "
                            "writing it would replace the input: choose another --output-dir")
    from training.models import check_model_folder

    try:
        check_model_folder(output_dir, overwrite=config.overwrite)
    except UserError as exc:
        raise UserError(f"{prog}: {exc}") from None


def train(argv: list[str]) -> int:
    """Entry point of ``cai train METHOD ...``; returns the exit status."""
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    method = get_method(argv[0])
    prog = f"cai train {method.name}"
    # The TRL/transformers import chain is long; say something before it.
    if "-h" not in argv and "--help" not in argv:
        print(f"{prog}: loading TRL ...", file=sys.stderr, flush=True)
    config = parse_config(method.config_class, argv[1:], prog)
    _check_output_dir(prog, config)
    from training.api import train as run_training

    summary = run_training(config)
    print(f"{prog}: wrote the model folder {config.output_dir} ({summary['global_step']} steps)")
    if summary.get("held_out_accuracy") is not None:
        print(f"{prog}: held-out accuracy {summary['held_out_accuracy']:.3f} on {summary['held_out_rows']} held-out pairs")
    return 0
