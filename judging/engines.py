"""Building the policy and judge backends from a judge config: one engine when they are the same model."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from core.backends.base import Backend, BackendOptions
from core.backends.gpu_memory import shared_gpu_shares
from core.backends.registry import EngineOptions, backend_identity, build_backend
from core.model import resolve_model

from .config import JudgeModelConfig
from .judge import JudgeSettings


def make_judge_backend(config: JudgeModelConfig, memory_share: float | None = None) -> Backend:
    return build_backend(config.resolved_judge_backend, config.resolved_judge_model,
                         config.judge_options().with_memory_share(memory_share))


def make_policy_backend(config: JudgeModelConfig, memory_share: float | None = None) -> Backend:
    return build_backend(config.backend, config.model, config.policy_options().with_memory_share(memory_share))


def side_by_side_shares(config: EngineOptions, engines: list[tuple[str, str, BackendOptions]]) -> list[float] | None:
    """GPU memory shares for ``engines`` (``(flag, model, options)``: two different models) loading side by side in
    this process on one GPU (``core/backends/gpu_memory.py``), in order; None when one of them is served
    elsewhere, there is no GPU, or the engines span several GPUs.  Too little memory is a UserError, before any
    model loads.  ``config`` gives the memory budget and context length they share."""
    if not all(options.in_process for _, _, options in engines):
        return None
    if any(options.devices() > 1 for _, _, options in engines):
        return None  # spread over several GPUs: vLLM's own default per GPU
    needs = [(f"{flag} {model}", resolve_model(model, flag), config.max_model_len) for flag, model, _ in engines]
    return shared_gpu_shares(needs, config.gpu_memory_utilization)


def engine_memory_shares(config: JudgeModelConfig) -> tuple[float, float] | None:
    """``(policy, judge)`` GPU memory shares when the policy and another judge model load side by side in this
    process on one GPU (``side_by_side_shares``); None when they are one engine, or need no split."""
    if config.judge_is_policy():
        return None
    shares = side_by_side_shares(config, [("--model", config.model, config.policy_options()),
                                          ("--judge-model", config.resolved_judge_model, config.judge_options())])
    return None if shares is None else (shares[0], shares[1])


def judge_identity(config: JudgeModelConfig) -> str:
    """The judge model as recorded in rows and keys (an endpoint's by its served name: no URL in the data)."""
    return backend_identity(config.resolved_judge_backend, config.resolved_judge_model)


def judge_settings(config: JudgeModelConfig) -> JudgeSettings:
    """The judge's settings: its model as recorded, and every other setting from the config field of its name."""
    return JudgeSettings(model=judge_identity(config), **{
        setting.name: getattr(config, setting.name) for setting in dataclasses.fields(JudgeSettings)
        if setting.name != "model"})


class Engines:
    """The judge's and the policy's backends for a judge config, built unloaded (each loads when a stage first
    has work for it); the judge is the policy's backend when they are the same model."""

    def __init__(self, config: JudgeModelConfig, judge: Backend | None = None, policy: Backend | None = None,
                 policy_loads: bool = False):
        """``judge``, ``policy``: the caller's backends (loaded or not, closed by the caller: ``cai run``'s policy
        engine, whose memory share it has set); the others are built here and closed by ``close``.
        ``policy_loads``: the policy may load here too (samples mode), so a judge of another model shares the
        GPU with it (``engine_memory_shares``, checked now, before either loads)."""
        self.config = config
        shared = config.judge_is_policy()
        self._judge = judge if judge is not None else policy if shared else None
        self._policy = policy if policy is not None else judge if shared else None
        self._owned: list[Backend] = []
        both_built_here = policy_loads and self._judge is None and self._policy is None
        self._shares = engine_memory_shares(config) if both_built_here else None

    def judge(self) -> Backend:
        if self._judge is None:
            self._judge = self._build(make_judge_backend, None if self._shares is None else self._shares[1])
        return self._judge

    def policy(self) -> Backend:
        if self._policy is None:
            self._policy = self._build(make_policy_backend, None if self._shares is None else self._shares[0])
        return self._policy

    def _build(self, make: Callable[[JudgeModelConfig, float | None], Backend], share: float | None) -> Backend:
        backend = make(self.config, share)
        self._owned.append(backend)
        if self.config.judge_is_policy():  # one engine serves both
            self._judge = self._policy = backend
        return backend

    def close(self) -> None:
        for backend in self._owned:
            backend.close()
        self._owned.clear()
