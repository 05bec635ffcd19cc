"""The one registry of training methods: ``cai train``, ``cai run`` and ``training.api`` read it.

A method is one module (its config class, in TRL's style, and its stage, a
:class:`training.stages.TrainingStage` that states what differs from the shared
skeleton) plus one line here.  This module imports nothing heavy: the config
classes and stages are imported only when a method runs, so ``cai train --help``
and the did-you-mean of a mistyped method stay fast.
"""

from __future__ import annotations

import importlib.util
import os
import pkgutil
from dataclasses import dataclass, field

from core.errors import UserError
from core.registry import Registry


@dataclass(frozen=True)
class TrainingMethod:
    """One training method: where its config class and stage live, and what it trains on."""

    name: str
    config: str  #: ``module:Class`` of its config dataclass
    stage: str  #: ``module:Class`` of its stage (how it loads rows, builds its trainer, ...)
    description: str  #: one line, shown by ``cai train --help``
    trains_on: str  #: the judge's output ``cai run`` feeds it: ``preferences`` (pairs) or ``sft`` (final revisions)
    #: config fields ``cai run`` fills with the output folder of an earlier method of a chain (``reward+rloo``)
    uses: dict[str, str] = field(default_factory=dict)
    #: ``(log key, label)`` of the training curves ``cai report`` draws (the first three the log holds)
    curves: tuple[tuple[str, str], ...] = (("loss", "loss"),)
    #: a module the method needs beyond the dependencies, and what to do when it is missing
    needs: tuple[str, str] | None = None

    @property
    def config_class(self) -> type:
        self.check_installed()
        return pkgutil.resolve_name(self.config)

    @property
    def stage_class(self) -> type:
        self.check_installed()
        return pkgutil.resolve_name(self.stage)

    @property
    def installed(self) -> bool:
        """Whether the module it needs beyond the dependencies (if any) is installed."""
        if self.needs is None:
            return True
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # looking for trl.experimental.ppo imports its parent
        try:
            return importlib.util.find_spec(self.needs[0]) is not None
        except ImportError:
            return False

    def check_installed(self) -> None:
        if not self.installed:
            module, hint = self.needs
            raise UserError(f"cai train {self.name}: {module} is not installed: {hint}")


#: what RLOO and GRPO log per step: the mean reward (all sources, weighted), the KL to the reference and beta
RL_CURVES = (("reward", "mean reward (weighted sources)"), ("kl", "KL to the reference"),
             ("beta", "KL coefficient (beta)"))

TRAINING_METHODS: Registry[TrainingMethod] = Registry("training method", {
    method.name: method
    for method in (
        TrainingMethod("sft", "training.sft:SFTStageConfig", "training.sft:SFTStage",
                       "supervised fine-tuning on sft.jsonl (the final revisions)", "sft",
                       curves=(("loss", "loss"), ("mean_token_accuracy", "token accuracy"))),
        TrainingMethod("reward", "training.reward:RewardStageConfig", "training.reward:RewardStage",
                       "reward model (Bradley-Terry, one-output head) on the judge's pairs", "preferences",
                       curves=(("loss", "loss"), ("accuracy", "accuracy"))),
        TrainingMethod("rloo", "training.rloo:RLOOStageConfig", "training.rloo:RLOOStage",
                       "RLOO with a reward model (`cai train reward`) or the judge as the live reward", "preferences",
                       {"reward_model": "reward"}, curves=RL_CURVES),
        TrainingMethod("grpo", "training.grpo:GRPOStageConfig", "training.grpo:GRPOStage",
                       "GRPO with a reward model (`cai train reward`) or the judge as the live reward", "preferences",
                       {"reward_model": "reward"}, curves=RL_CURVES),
        TrainingMethod("ppo", "training.ppo:PPOStageConfig", "training.ppo:PPOStage",
                       "PPO with a reward model (needs the `ppo` extra: TRL 1.12.0)", "preferences",
                       {"reward_model": "reward"},
                       curves=(("objective/kl", "KL to the reference"), ("objective/rlhf_reward", "RLHF reward"),
                               ("objective/scores", "reward model score")),
                       needs=("trl.experimental.ppo", "TRL removed PPO after 1.12; install the last TRL that has it "
                              "with `pip install 'cai-engine[ppo]'` (pins trl==1.12.0), or train with `cai train "
                              "rloo` (the same reward model, on TRL's stable trainer)")),
        TrainingMethod("dpo", "training.dpo:DPOStageConfig", "training.dpo:DPOStage",
                       "DPO on the judge's pairs, smoothed per pair by the judge's confidence (cDPO)", "preferences",
                       curves=(("loss", "loss"), ("rewards/margins", "reward margin (chosen - rejected)"),
                               ("rewards/accuracies", "reward accuracy"))),
    )
})


def get_method(name: str, what: str = "training method") -> TrainingMethod:
    """The registered method ``name``, or a UserError with the closest name and the choices."""
    return TRAINING_METHODS.get(name, what)


def method_of(config) -> TrainingMethod:
    """The method whose config class ``config`` is (or derives from)."""
    for cls in type(config).__mro__:
        target = f"{cls.__module__}:{cls.__qualname__}"
        for _, method in TRAINING_METHODS.items():
            if method.config == target:
                return method
    raise TypeError(
        f"{type(config).__name__} is not the config of a training method; pass one of "
        + ", ".join(method.config.split(":")[1] for _, method in TRAINING_METHODS.items())
    )
