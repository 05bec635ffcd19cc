"""Online RL on this machine: RLOO with the judge as the live reward, and what three ways of training do to the
judge's verdicts on held-out prompts.

``speed``: ``cai train rloo --rewards judge`` on the default model (the policy in torch, the judge the same
model in an in-process vLLM engine, as the defaults are), a few steps of one prompt's 4 completions.  Each
step's wall time is split by timers around TRL's generation (``_generate``: transformers ``generate`` on CPU)
and the judge reward (``JudgeReward.__call__``); the rest is the update (log-probabilities of the policy and
the reference, backward, optimizer).  The first step also starts the judge's engine and is reported apart.

``quality``: from the judge's pairs on the demo prompts, the same budget of training prompts for DPO (pairs),
reward model + RLOO and direct RLAIF (RLOO with the judge reward); then ``cai eval`` of each on
prompts/heldout.jsonl: the trained model's win rate against the base as the judge decides it (a prompt counts 1
when its principles' mean probability that the trained greedy answer is better is above 0.5, 0.5 at 0.5; 0.5
before training, by construction), with a 95% interval.

    python -m bench.rl speed --steps 5 --out bench/results/rl_speed.json
    python -m bench.rl quality --pairs runs/bench-rl/preferences.jsonl --budget 8 --reward-steps 10 --out bench/results/rl_quality.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import REPO, log, write_json


def speed(steps: int, out: str) -> None:
    from training.api import train
    from training.rloo import RLOOStage, RLOOStageConfig
    from judging.reward import JudgeReward

    spent = {"generation": [], "judging": []}

    def timed(owner, name: str, bucket: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[bucket].append(time.perf_counter() - started)

        setattr(owner, name, wrapper)

    timed(RLOOStage.trainer_base, "_generate", "generation")
    timed(JudgeReward, "__call__", "judging")
    with tempfile.TemporaryDirectory(prefix="cai-bench-rl-") as tmp:
        config = RLOOStageConfig(data=str(REPO / "prompts" / "demo.jsonl"), output_dir=tmp, rewards="judge",
                                 max_steps=steps, learning_rate=1e-6, disable_tqdm=True, report_to=[])
        started = time.perf_counter()
        summary = train(config)
        total = time.perf_counter() - started
    logs = [entry for entry in summary["log_history"] if "loss" in entry]
    step_seconds = [entry["step_time"] for entry in logs]
    completions = config.per_device_train_batch_size
    rows = []
    for index, (step_s, gen_s, judge_s) in enumerate(zip(step_seconds, spent["generation"], spent["judging"])):
        rows.append({"step": index + 1, "seconds": round(step_s, 2), "generation_s": round(gen_s, 2),
                     "judging_s": round(judge_s, 2), "update_s": round(step_s - gen_s - judge_s, 2),
                     "completions_per_s": round(completions / step_s, 3)})
    later = rows[1:] or rows

    def median(key: str) -> float:
        return round(statistics.median(row[key] for row in later), 2)

    result = {
        "rl_speed_cpu": {
            "what": "cai train rloo --rewards judge on the default model: policy in torch "
                    f"({summary['device_settings']['precision']}), judge = the same model in an in-process vLLM "
                    "engine, 4 completions of <= 48 tokens per step",
            "steps": rows, "median_step_s": median("seconds"), "median_generation_s": median("generation_s"),
            "median_judging_s": median("judging_s"), "median_update_s": median("update_s"),
            "median_completions_per_s": round(statistics.median(r["completions_per_s"] for r in later), 3),
            "first_step_note": "step 1 includes starting the judge's vLLM engine",
            "train_seconds_total": round(total, 1), "torch_threads": __import__("torch").get_num_threads(),
            "load_average": round(os.getloadavg()[0], 1),
            "mean_completion_tokens": round(statistics.mean(e["completions/mean_length"] for e in logs), 1),
        }
    }
    log(json.dumps(result, indent=1))
    write_json(out, result)


def quality(pairs: str, budget: int, out: str, work: str, reward_steps: int = 20) -> None:
    from training.api import train
    from training.dpo import DPOStageConfig
    from evaluation.run import EvalConfig, evaluate
    from training.reward import RewardStageConfig
    from training.rloo import RLOOStageConfig

    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    quiet = {"disable_tqdm": True, "report_to": []}
    rl = {"max_steps": budget, "learning_rate": 1e-6, "beta": 0.05, "beta_final": 0.2, **quiet}  # 1 prompt a step
    plans = {
        "dpo": [DPOStageConfig(data=pairs, output_dir=str(work_dir / "dpo"), max_steps=budget // 2,
                               learning_rate=5e-5, beta=0.1, **quiet)],  # 2 pairs a step
        "direct_rlaif": [RLOOStageConfig(data=pairs, output_dir=str(work_dir / "rloo_judge"), rewards="judge",
                                         principles_per_pair=2, **rl)],
        "reward+rloo": [RewardStageConfig(data=pairs, output_dir=str(work_dir / "reward"), max_steps=reward_steps,
                                          learning_rate=2e-5, **quiet),
                        RLOOStageConfig(data=pairs, output_dir=str(work_dir / "rloo"), rewards="model",
                                        reward_model=str(work_dir / "reward"), **rl)],
    }
    results = {}
    for name, configs in plans.items():
        for config in configs:
            if not (Path(config.output_dir) / "cai_training.json").exists():  # a rerun resumes after the last model
                train(config)
        trained = sum(json.loads((Path(c.output_dir) / "cai_training.json").read_text())["train_seconds"]
                      for c in configs)
        eval_out = work_dir / f"eval_{name}.json"
        model_written = (Path(configs[-1].output_dir) / "cai_training.json").stat().st_mtime
        if eval_out.exists() and eval_out.stat().st_mtime > model_written:
            evaluation = json.loads(eval_out.read_text())  # this model's eval, from an earlier run
        else:
            evaluation = evaluate(EvalConfig(trained_model=configs[-1].output_dir, out=str(eval_out),
                                             principles_per_pair=2, max_tokens=128))
        overall = evaluation["win_rate"]["all"]
        results[name] = {"training_prompts": budget, "train_seconds": round(trained, 1),
                         "mean_judge_reward_after": overall["win_rate"], "ci95": overall["ci95"],
                         "heldout_prompts": overall.get("n"), "per_tag": evaluation["win_rate"],
                         "load_average": round(os.getloadavg()[0], 1)}
        log(f"{name}: {json.dumps(results[name])}")
        # written after each method: a run stopped later keeps the figures it has
        write_json(out, {"rl_quality_cpu": {
            "what": "cai eval on prompts/heldout.jsonl, the default model as judge: win rate of the trained model's "
                    "greedy answers against the base's (a prompt counts 1 when its principles' mean P(trained better) "
                    "> 0.5, 0.5 at 0.5); 0.5 before training by construction",
            "pairs": pairs, "budget_prompts": budget, "reward_model_steps": reward_steps, "results": results}})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rl", description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("speed", "quality"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--pairs", default="runs/bench-rl/preferences.jsonl")
    parser.add_argument("--budget", type=int, default=16, help="training prompts per method")
    parser.add_argument("--reward-steps", type=int, default=20, help="reward model steps (reward+rloo)")
    parser.add_argument("--work", default="runs/bench-rl/train")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.part == "speed":
        speed(args.steps, args.out)
    else:
        quality(args.pairs, args.budget, args.out, args.work, args.reward_steps)


if __name__ == "__main__":
    main()
