"""``cai run``: generate, judge, train and eval from one recipe, in one run folder.

Every stage resumes: generation and judging skip finished rows, a training stage
whose output folder was written from the same data and settings is skipped, and
eval reruns only when its inputs changed.  One vLLM engine on the policy model
serves generation, the judge (when the judge is the policy) and the base side of
eval, so the model is loaded once.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import fields
from pathlib import Path

import yaml

from core.errors import UserError
from core.hashing import stable_hash
from generation.config import GenerateConfig
from core.model import resolve_model
from generation.run import generate
from core.store import atomic_write_text, write_manifest
from judging.config import JudgeConfig
from judging.pairs import run_judge, sft_path

from training.evaluate import EvalConfig, evaluate, format_eval

SECTIONS = ("generate", "judge", "train", "eval")
TOP_LEVEL = ("run_dir", "constitution", "model", "seed", *SECTIONS)
TRAIN_METHODS = ("dpo", "reward+ppo", "sft")


def load_recipe(path: str | Path) -> dict:
    path = Path(path)
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"{path}: cannot read the recipe: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: malformed YAML: {getattr(exc, 'problem', exc)}; fix the syntax") from None
    if not isinstance(recipe, dict):
        raise UserError(f"{path}: a recipe is a mapping with run_dir, model and the sections {', '.join(SECTIONS)}")
    unknown = sorted(set(recipe) - set(TOP_LEVEL))
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; a recipe has {', '.join(TOP_LEVEL)}")
    return recipe


def _check_keys(recipe: dict, name: str, config_class, path: Path) -> dict:
    """The section's options, or an error naming each unknown one (with a suggestion)."""
    values = dict(recipe.get(name) or {})
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        import difflib

        hints = [repr(k) + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, n=1)) else "")
                 for k in unknown]
        raise UserError(f"{path}: unknown option(s) in '{name}': {', '.join(hints)}")
    return values


def _section(recipe: dict, name: str, config_class, path: Path, **fixed):
    values = _check_keys(recipe, name, config_class, path)
    known = {f.name for f in fields(config_class)}
    for key in ("constitution", "model", "seed"):
        if key in known and key in recipe and key not in values:
            values[key] = recipe[key]
    values.update(fixed)
    return config_class(**values)


def _flags(options: dict) -> list[str]:
    argv = []
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def _train(method: str, data: str, output_dir: Path, options: dict, stamp: dict, log) -> Path:
    """One ``cai train`` stage, skipped when its folder was written from the same inputs."""
    from training.cli import train

    stamp_path = output_dir / "cai_stage.json"
    key = stable_hash(stamp)
    if stamp_path.exists() and json.loads(stamp_path.read_text()).get("key") == key:
        log(f"[run] train {method}: {output_dir} is up to date, skipped")
        return output_dir
    argv = [method, "--data", data, "--output-dir", str(output_dir), *_flags(options)]
    if train(argv) != 0:
        raise UserError(f"cai train {method} failed")
    atomic_write_text(stamp_path, json.dumps({"key": key, "stamp": stamp}, indent=2) + "\n")
    return output_dir


def _data_hash(path: str | Path) -> str:
    return stable_hash(Path(path).read_text(encoding="utf-8"))


def run_pipeline_from_recipe(recipe_path: str | Path, log=None) -> dict:
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    recipe_path = Path(recipe_path)
    recipe = load_recipe(recipe_path)
    run_dir = Path(recipe.get("run_dir") or f"runs/{recipe_path.stem}")
    run_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    generate_config = _section(recipe, "generate", GenerateConfig, recipe_path, out=str(run_dir / "revisions.jsonl"))
    judge_config = _section(recipe, "judge", JudgeConfig, recipe_path, input=generate_config.out,
                            out=str(run_dir / "preferences.jsonl"))
    train_options = dict(recipe.get("train") or {"method": "dpo"})
    method = train_options.pop("method", "dpo")
    if method not in TRAIN_METHODS:
        raise UserError(f"{recipe_path}: train.method {method!r} is unknown; choose one of {', '.join(TRAIN_METHODS)}")
    eval_options = _check_keys(recipe, "eval", EvalConfig, recipe_path)  # before hours of work, not after

    policy = None
    try:
        started = time.monotonic()
        from generation.run import make_backend

        # Built lazily (a finished stage loads no model), then shared by the judge and eval.
        def policy_factory(_config=generate_config):
            nonlocal policy
            if policy is None:
                policy = make_backend(_config)
            return policy
        log("[run] 1/4 generate")
        generate(generate_config, backend_factory=policy_factory, log=log)
        timings["generate_s"] = time.monotonic() - started

        started = time.monotonic()
        log("[run] 2/4 judge")
        judge_backend = policy if judge_config.judge_is_policy() else None
        result = run_judge(judge_config, backend=judge_backend, policy_backend=policy, log=log)
        timings["judge_s"] = time.monotonic() - started
        pairs_path = judge_config.out
        if not Path(pairs_path).exists() or not Path(pairs_path).read_text().strip():
            raise UserError(f"the judge made no preference pairs in {pairs_path}; see its report")

        started = time.monotonic()
        log(f"[run] 3/4 train {method}")
        base = recipe.get("model", "default")
        base_options = {"model": base} if base != "default" else {}
        stamp = {"data": _data_hash(pairs_path), "options": train_options, "base": base}
        if method == "dpo":
            trained = _train("dpo", pairs_path, run_dir / "dpo", {**base_options, **train_options}, stamp, log)
            reward_folder = None
        elif method == "sft":
            sft = str(sft_path(judge_config))
            trained = _train("sft", sft, run_dir / "sft", {**base_options, **train_options},
                             {**stamp, "data": _data_hash(sft)}, log)
            reward_folder = None
        else:
            reward_options = dict(train_options.pop("reward", {}) or {})
            ppo_options = dict(train_options.pop("ppo", {}) or {})
            reward_folder = _train("reward", pairs_path, run_dir / "reward", {**base_options, **reward_options},
                                   {**stamp, "options": reward_options}, log)
            trained = _train("ppo", pairs_path, run_dir / "ppo",
                             {**base_options, "reward_model": str(reward_folder), **ppo_options},
                             {**stamp, "options": ppo_options, "reward": str(reward_folder)}, log)
        timings["train_s"] = time.monotonic() - started

        started = time.monotonic()
        log("[run] 4/4 eval")
        # The eval judge defaults to the recipe's judge; the eval section may override any option.
        judge_defaults = {key: getattr(judge_config, key) for key in (
            "constitution", "judge_model", "judge_backend", "judge_base_url", "method", "principles_per_pair", "seed")}
        eval_recipe = {**recipe, "eval": {**judge_defaults, **eval_options}}
        fixed = {"trained_model": str(trained), "base_model": base, "out": str(run_dir / "eval.json")}
        if reward_folder:
            fixed.update(reward_model=str(reward_folder), pairs=pairs_path)
        eval_config = _section(eval_recipe, "eval", EvalConfig, recipe_path, **fixed)
        judge_for_eval = policy if (policy is not None and eval_config.judge_model in (None, base)
                                    and policy.model == resolve_model(base)) else None
        evaluation = evaluate(eval_config, judge_backend=judge_for_eval, log=log)
        timings["eval_s"] = time.monotonic() - started
    finally:
        if policy is not None:
            policy.close()

    summary = {"run_dir": str(run_dir), "trained_model": str(trained), "timings": timings,
               "judge_report": result.get("report"), "win_rate": evaluation["win_rate"]}
    write_manifest(run_dir / "run.json", "run", {"recipe": str(recipe_path), **recipe}, {"timings": timings})
    print(format_eval(evaluation))
    print(f"\nrun folder: {run_dir} (revisions.jsonl, preferences.jsonl, sft.jsonl, {Path(trained).name}/, eval.json)")
    from cai.report import write_report

    summary["report"] = str(write_report(run_dir))
    print(f"report: {summary['report']} (open it in a browser; `cai label {run_dir}` to label pairs by hand)")
    return summary


def run_command(argv: list[str]) -> int:
    """Entry point of ``cai run [--recipe recipes/demo.yaml]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="cai run", description="Generate, judge, train and eval from a recipe.")
    parser.add_argument("--recipe", default="recipes/demo.yaml", help="Recipe YAML (default: %(default)s).")
    args = parser.parse_args(argv)
    run_pipeline_from_recipe(args.recipe)
    return 0
