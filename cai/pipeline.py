"""``cai run``: generate, judge, train and eval from one recipe, in one run folder.

Every stage's config object is built from its recipe section (``core.config.build_config``:
values keep their YAML types, unknown keys and bad values name the recipe's file and line)
before any work starts, and each stage is then run through its package's Python API.

Every stage resumes: generation and judging skip finished rows; a training stage whose
output folder was written from the same data and settings is skipped; eval is skipped when
the trained model's stamp, its own settings and the files it reads are unchanged.  One vLLM
engine on the policy model serves generation, the judge (when the judge is the policy) and
the base side of eval, so the model is loaded once, and not at all when nothing is left to do.

Engines that are loaded at once share one GPU (``core/backends/gpu_memory.py``): a judge of
another model gets a share beside the policy, and eval's judge of another model a share beside
the base, both decided before any model loads (a UserError when they cannot fit); the trained
model's engine loads beside the policy only in the memory left free, else the policy is closed
first.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.backends.base import Backend
from core.log import get_logger
from core.errors import UserError
from core.hashing import stable_hash
from core.ledger import run_ledger
from core.shards import Shard, content_hash, data_files, folder_count, part_files, stage_output
from core.store import atomic_write_text, check_outputs, errors_path, manifest_path, read_json_object, write_manifest
from evaluation.run import EvalConfig, eval_memory_shares, evaluate, format_eval
from generation.config import GenerateConfig
from generation.run import generate, make_backend, prompts_generated
from judging.config import JudgeConfig
from judging.engines import engine_memory_shares
from judging.judge_check import check_judge, judge_check_config
from judging.methods import method_options
from judging.run import run_judge, sft_path
from judging.judge_report import format_yield, merged_report, yield_funnel
from training.methods import TrainingMethod, get_method

from .recipe import Recipe

logger = get_logger(__name__)


#: the eval judge is the recipe's judge unless the eval section says otherwise (and so are its method's options)
EVAL_FROM_JUDGE = ("constitution", "judge_model", "judge_backend", "judge_base_url", "method", "principles_per_pair",
                   "seed")
DEFAULT_TRAIN = {"method": "dpo"}


@dataclass
class TrainStep:
    """One training method of the recipe's ``train.method`` chain, with its config object."""

    method: TrainingMethod
    config: Any
    uses: dict[str, str]  # config field -> name of the earlier step whose folder it is

    @property
    def folder(self) -> Path:
        return Path(self.config.output_dir)


@dataclass
class RunPlan:
    """Every stage's config object, built from a recipe before anything runs."""

    recipe: Recipe
    run_dir: Path
    base: str
    generate: GenerateConfig
    judge: JudgeConfig
    train: list[TrainStep]
    eval: EvalConfig


def shard_runs(config):
    """A stage's config as ``cai run`` runs it: itself, or one per shard when its ``out`` is a folder of parts
    (each shard resumes: finished parts load no model, a part a failed job left is completed)."""
    out = Path(config.out)
    if not out.is_dir():
        return [config]
    count = folder_count(out, part_files(out))
    return [dataclasses.replace(config, shard=str(Shard(index, count))) for index in range(count)]


def plan_run(recipe_path: str | Path) -> RunPlan:
    """Build the config object of every stage of a recipe; a bad recipe fails here, before any work."""
    recipe = Recipe(recipe_path)
    run_dir = Path(recipe.data.get("run_dir") or f"runs/{recipe.path.stem}")
    base = recipe.data.get("model") or "default"

    generate_config = recipe.build(GenerateConfig, ("generate",), recipe.section("generate"),
                                   out=str(stage_output(run_dir, "revisions")))
    judge_config = recipe.build(JudgeConfig, ("judge",), recipe.section("judge"), input=generate_config.out,
                                out=str(stage_output(run_dir, "preferences")))
    # a sharded judge's SFT rows are the folder `sft` beside its folder of pairs
    sft = Path(judge_config.out).with_name("sft") if Path(judge_config.out).is_dir() else sft_path(judge_config)
    files = {"preferences": judge_config.out, "sft": str(sft)}
    steps = _train_steps(recipe, run_dir, files, judge_config)

    inherited = {key: (getattr(judge_config, key), ("judge", key) if key in recipe.section("judge") else
                       (key,) if key in recipe.data else ("judge",))
                 for key in (*EVAL_FROM_JUDGE, *method_options(judge_config.method, judge_config).__dataclass_fields__)}
    fixed = {"trained_model": str(steps[-1].folder), "base_model": base, "out": str(run_dir / "eval.json")}
    if "reward" in (step.method.name for step in steps):
        fixed.update(reward_model=str(run_dir / "reward"), pairs=judge_config.out)
    eval_config = recipe.build(EvalConfig, ("eval",), recipe.section("eval"), inherited, **fixed)
    _check_files(recipe.path, run_dir, generate_config, judge_config, eval_config)
    return RunPlan(recipe, run_dir, base, generate_config, judge_config, steps, eval_config)


def _check_files(recipe_path: Path, run_dir: Path, generate_config, judge_config, eval_config) -> None:
    """Before any work: no stage writes another stage's file or one of the recipe's inputs."""
    from judging.run import judgements_path, report_path, samples_path

    revisions, preferences = Path(generate_config.out), Path(judge_config.out)
    if revisions.is_dir() or preferences.is_dir():
        return  # folders of shard parts: each shard's run checks its own part's files
    outputs = {
        "generate's output": revisions, "generate's manifest": manifest_path(revisions),
        "generate's errors file": errors_path(revisions),
        "judge's output": preferences, "judge's manifest": manifest_path(preferences),
        "judge's errors file": errors_path(preferences), "judge's cache": judgements_path(preferences),
        "judge's samples": samples_path(preferences), "judge's report": report_path(preferences),
        "judge.sft_out": sft_path(judge_config), "eval's output": Path(eval_config.out),
    }
    inputs = {"the recipe": recipe_path, "generate.prompts": generate_config.prompts,
              "generate.constitution": generate_config.constitution, "judge.constitution": judge_config.constitution,
              "eval.prompts": eval_config.prompts, "eval.constitution": eval_config.constitution}
    try:
        check_outputs(None, outputs, inputs)
    except UserError as exc:
        raise UserError(f"{recipe_path}: {exc}") from None


def _train_steps(recipe: Recipe, run_dir: Path, files: dict[str, str], judge: JudgeConfig) -> list[TrainStep]:
    """The ``train`` section: ``method`` is a training method or a chain joined by '+' (``reward+rloo``).

    An RL method's live judge (``rewards: judge``) is the judge section's unless its own options say otherwise."""
    section = recipe.section("train", default=DEFAULT_TRAIN)
    chain = section.pop("method", "dpo")
    try:
        methods = [get_method(name, "train.method") for name in str(chain).split("+")]
    except UserError as exc:
        raise UserError(f"{recipe.where('train', 'method')}: {exc} Or chain them with '+', e.g. reward+rloo.") from None
    names = [method.name for method in methods]
    if len(set(names)) != len(names):
        raise UserError(f"{recipe.where('train', 'method')}: train.method {chain!r} names a method twice")
    if len(methods) > 1:
        stray = [key for key in section if key not in names]
        if stray:
            raise UserError(
                f"{recipe.where('train', stray[0])}: train.{stray[0]}: with the chain {chain!r}, put each method's "
                f"options under its name ({', '.join(names)})"
            )
    steps: list[TrainStep] = []
    for method in methods:
        keys = ("train", method.name) if len(methods) > 1 else ("train",)
        values = recipe.section(*keys) if len(methods) > 1 else section
        earlier = {step.method.name: step for step in steps}
        uses = {name: source for name, source in method.uses.items() if source in earlier}
        fixed = {"data": files[method.trains_on], "output_dir": str(run_dir / method.name),
                 **{name: str(earlier[source].folder) for name, source in uses.items()}}
        config_class = method.config_class
        known = {f.name for f in dataclasses.fields(config_class)}
        from_judge = {"judge_model": judge.resolved_judge_model, "judge_backend": judge.resolved_judge_backend,
                      "judge_base_url": judge.resolved_judge_base_url, "judge_method": judge.method,
                      "principles_per_pair": judge.principles_per_pair, "constitution": judge.constitution}
        inherited = {key: (value, ("judge",)) for key, value in from_judge.items() if key in known}
        steps.append(TrainStep(method, recipe.build(config_class, keys, values, inherited, **fixed), uses))
    return steps


def judges_live(step: TrainStep) -> bool:
    """Whether a training step scores its completions with the judge while it trains (an RL method's
    ``rewards: judge``): it starts the judge's engine itself."""
    return "judge" in (getattr(step.config, "reward_source_names", None) or [])


# ---------------------------------------------------------------------------------------------- stamps


def _file_hash(path: str | Path | None) -> str | None:
    return content_hash(path)  # a file's text, or a folder's parts


def _current(stamp_path: Path, key: str) -> bool:
    return (read_json_object(stamp_path) or {}).get("key") == key


def _write_stamp(stamp_path: Path, key: str, stamp: dict) -> None:
    record = {"key": key, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stamp": stamp}
    atomic_write_text(stamp_path, json.dumps(record, indent=2, default=str) + "\n")


def _train(step: TrainStep, keys: dict[str, str]) -> str:
    """Run one training step unless its folder was written from the same inputs; returns its stamp key.

    A later step that uses this folder (ppo's reward model) has this key in its own stamp, so it reruns
    when this step does."""
    from training.api import train

    config = step.config
    stamp = {"method": step.method.name, "settings": config.to_dict(), "data": _file_hash(config.data),
             "after": {source: keys[source] for source in step.uses.values()}}
    key = stable_hash(stamp)
    stamp_path = step.folder / "cai_stage.json"
    if _current(stamp_path, key):
        logger.info(f"[run] train {step.method.name}: {step.folder} is up to date, skipped")
        return key
    summary = train(config)
    logger.info(f"[run] train {step.method.name}: wrote {step.folder} ({summary['global_step']} steps)")
    _write_stamp(stamp_path, key, stamp)
    return key


# ---------------------------------------------------------------------------------------------- the run


def _check_user_files(plan: RunPlan, overwrite: bool) -> None:
    """Before any work: the run folder's report, eval file and model folders are absent or an earlier ``cai run``'s;
    a user's file or another model there is replaced only with ``--overwrite``."""
    if overwrite:
        return
    from cai.report import check_report_out
    from training.models import check_model_folder

    fix = "move it, choose another run_dir, or pass --overwrite to replace it"
    try:
        check_report_out(plan.run_dir / "report.html", "the run's report", fix)
        eval_out = Path(plan.eval.out)
        if eval_out.exists() and not _eval_stamp(eval_out).exists():
            raise UserError(f"the run's eval file {eval_out} exists and was not written by `cai run` (it has no "
                            f"{_eval_stamp(eval_out).name}); it was left as it is: {fix}")
        for step in plan.train:
            check_model_folder(step.folder, f"the run's {step.method.name} folder")
    except UserError as exc:
        raise UserError(f"{plan.recipe.path}: {exc}") from None


def _eval_stamp(out: Path) -> Path:
    return out.with_name(out.name + ".stage.json")


def run_pipeline_from_recipe(recipe_path: str | Path, overwrite: bool = False) -> dict:
    log = logger.info
    plan = plan_run(recipe_path)
    _check_user_files(plan, overwrite)
    judge_check = judge_check_config(plan.recipe.data.get("judge_check"), str(plan.recipe.path))
    run_dir = plan.run_dir
    # A judge of another model loads beside the policy (kept for the judge and eval): on one GPU each gets a
    # share of its memory that fits both, or the run stops here, before any model loads; likewise eval's judge
    # beside its base model, when they differ.
    shares = engine_memory_shares(plan.judge)
    if shares is not None:
        plan.generate = dataclasses.replace(plan.generate, gpu_memory_utilization=shares[0])
        plan.judge = dataclasses.replace(plan.judge, gpu_memory_utilization=shares[1])
    eval_memory_shares(plan.eval)
    run_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    # The run's policy engine: loaded by the first stage with work for it (a finished stage loads no model), then
    # shared by generation, the judge (when it is the policy, and samples mode's policy) and eval (as its base
    # model and judge).
    policy = make_backend(plan.generate)
    try:
        started = time.monotonic()
        judge_figure = None
        if judge_check is not None:  # before any work the judge's labels would decide
            log("[run] judge check")
            judge_figure = check_judge(judge_check, plan.judge, run_dir / "judge_check.json",
                                       backend=policy if plan.judge.judge_is_policy() else None)
        log("[run] 1/4 generate")
        for generate_config in shard_runs(plan.generate):
            generate(generate_config, backend=policy)
        timings["generate_s"] = time.monotonic() - started

        started = time.monotonic()
        log("[run] 2/4 judge")
        for judge_config in shard_runs(plan.judge):
            run_judge(judge_config, policy_backend=policy)
        timings["judge_s"] = time.monotonic() - started
        pairs_path = Path(plan.judge.out)
        if not any(path.is_file() and path.stat().st_size for path in data_files(pairs_path, "judge.out")):
            raise UserError(f"the judge made no preference pairs in {pairs_path}; see its report")

        started = time.monotonic()
        keys: dict[str, str] = {}
        for step in plan.train:
            log(f"[run] 3/4 train {step.method.name}")
            if judges_live(step):
                policy.close()  # its memory goes to the policy in training and the judge's own engine
            keys[step.method.name] = _train(step, keys)
        timings["train_s"] = time.monotonic() - started

        started = time.monotonic()
        log("[run] 4/4 eval")
        evaluation = _eval(plan, policy)
        timings["eval_s"] = time.monotonic() - started
    finally:
        policy.close()

    trained = plan.train[-1].folder
    summary = {"run_dir": str(run_dir), "trained_model": str(trained), "timings": timings,
               "judge_report": merged_report(plan.judge.out), "win_rate": evaluation["win_rate"]}
    write_manifest(run_dir / "run.json", "run", {"recipe": str(plan.recipe.path), **plan.recipe.data},
                   {"timings": timings}, ledger=run_ledger(run_dir, timings=timings))
    funnel = yield_funnel(summary["judge_report"] or {}, prompts_generated(plan.generate.out))
    summary["yield"] = funnel
    print(format_eval(evaluation))
    print(format_yield(funnel))
    if judge_figure is not None and not judge_figure["passed"]:
        print(f"\nnote: the judge failed its check ({judge_figure['reason']}); the recipe allows it, so these "
              "preference pairs and the trained model are unvalidated (see judge_check.json)")
    print(f"\nrun folder: {run_dir} (revisions.jsonl, preferences.jsonl, sft.jsonl, {trained.name}/, eval.json)")
    from cai.report import write_report

    summary["report"] = str(write_report(run_dir, overwrite=overwrite))
    print(f"report: {summary['report']} (open it in a browser; `cai label {run_dir}` to label pairs by hand)")
    return summary


def _fits_in_free_ram(share: float | None) -> bool:
    """Whether an engine on CPU can start beside what runs now: vLLM refuses unless the RAM share it reserves
    (``share`` of the RAM, or without one at least what ``vllm_backend`` sizes a small model to) is free."""
    import psutil

    from core.backends.vllm_backend import CPU_ENGINE_MIN_RAM

    memory = psutil.virtual_memory()
    wanted = share * memory.total if share is not None else CPU_ENGINE_MIN_RAM
    return memory.available >= wanted


def trained_share_beside(config: EvalConfig, trained: Path) -> tuple[bool, float | None]:
    """Whether the trained model's engine can load beside an engine already loaded in this process (the policy,
    kept as eval's judge), and its ``gpu_memory_utilization`` there: on a GPU, what is left free, if its need
    fits; on CPU, where each engine sizes its own RAM, whether that RAM is free now; for an endpoint, yes."""
    from core.backends.gpu_memory import cuda_memory, estimate_need, share_beside
    policy = config.policy_options()
    if not policy.in_process:
        return True, None
    memory = cuda_memory()
    if memory is None:
        return _fits_in_free_ram(config.gpu_memory_utilization), None
    if policy.devices() > 1:
        return False, None  # the policy holds its share of every GPU
    free, total = memory
    share = share_beside(estimate_need(f"--trained-model {trained}", trained, config.max_model_len), total, free,
                         config.gpu_memory_utilization)
    return share is not None, share


def _eval(plan: RunPlan, policy: Backend) -> dict:
    """Eval, skipped when the trained folders' stamps (written anew by every training), its settings and the
    files it reads are unchanged.

    The policy engine, when it is loaded and is eval's base model and judge, serves eval where the trained
    model's engine fits beside it; otherwise it is closed first, and eval loads its engines itself."""
    config = plan.eval
    out = Path(config.out)
    stamp = {"trained": {step.method.name: _file_hash(step.folder / "cai_stage.json") for step in plan.train},
             "settings": dataclasses.asdict(config),
             "files": {name: _file_hash(getattr(config, name)) for name in ("prompts", "constitution", "pairs")}}
    key = stable_hash(stamp)
    stamp_path = _eval_stamp(out)
    if _current(stamp_path, key):
        evaluation = read_json_object(out)
        if evaluation is not None:  # else the result is gone or torn: evaluate again
            logger.info(f"[run] eval: {out} is up to date, skipped")
            return evaluation
    serves = policy.loaded and config.judge_model in (None, plan.base) and policy.serves(plan.base)
    share = None
    if serves:
        serves, share = trained_share_beside(config, plan.train[-1].folder)
    if serves:
        beside = config if share is None else dataclasses.replace(config, gpu_memory_utilization=share)
        evaluation = evaluate(beside, judge_backend=policy)
    else:
        policy.close()  # one model at a time: eval loads its own engines
        evaluation = evaluate(config)
    _write_stamp(stamp_path, key, stamp)
    return evaluation


def run_command(argv: list[str]) -> int:
    """Entry point of ``cai run [--recipe recipes/demo.yaml]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="cai run", description="Generate, judge, train and eval from a recipe.")
    parser.add_argument("--recipe", default="recipes/demo.yaml", help="Recipe YAML (default: %(default)s).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace files in run_dir that `cai run` did not write (a report.html, an eval.json, a "
                             "model folder of the train stage's name); without it they stop the run before any work.")
    args = parser.parse_args(argv)
    run_pipeline_from_recipe(args.recipe, overwrite=args.overwrite)
    return 0
