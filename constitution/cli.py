"""``cai validate`` and ``cai constitution import``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.errors import UserError
from core.store import check_outputs
from .importer import import_anthropic, write_constitution
from .loader import ConstitutionError, load_constitution


def validate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cai validate", description="Check a constitution; list every problem.")
    parser.add_argument("path", nargs="?", default="principles.yaml", help="Constitution YAML (default: %(default)s).")
    args = parser.parse_args(argv)
    try:
        constitution = load_constitution(args.path)
    except ConstitutionError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"error: {len(exc.problems)} problem(s) in {args.path}; fix them and run `cai validate` again",
              file=sys.stderr)
        return 1
    print(
        f"{args.path}: OK: version {constitution.version}, {len(constitution.principles)} principles, "
        f"{len(constitution.few_shot)} few-shot exemplars, hash {constitution.content_hash()}"
    )
    return 0


def import_constitution(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="cai constitution import", description="Import a published constitution into principles.yaml format."
    )
    parser.add_argument("file", help="Critique/revision instructions (JSON).")
    parser.add_argument("--format", choices=["anthropic"], default="anthropic", help="Input format.")
    parser.add_argument("--few-shot", help="Few-shot transcripts (JSON list).")
    parser.add_argument("--out", required=True, help="Where to write the constitution YAML.")
    parser.add_argument("--overwrite", action="store_true", help="Replace --out if it exists.")
    parser.add_argument("--force", action="store_true", dest="overwrite", help=argparse.SUPPRESS)  # the old name
    args = parser.parse_args(argv)
    out = Path(args.out)
    check_outputs("constitution import", {"--out": out}, {"FILE": args.file, "--few-shot": args.few_shot})
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it or choose another --out")
    constitution = import_anthropic(args.file, args.few_shot)
    write_constitution(constitution, out)
    print(f"wrote {out}: {len(constitution.principles)} principles, {len(constitution.few_shot)} few-shot exemplars")
    return 0
