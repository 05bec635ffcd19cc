"""Building the policy and judge backends from a judge config: one engine when they are the same model."""

from __future__ import annotations

from collections.abc import Callable

from core.backends.base import Backend
from core.backends.registry import backend_identity, build_backend

from .config import JudgeModelConfig
from .judge import JudgeSettings


def make_judge_backend(config: JudgeModelConfig) -> Backend:
    return build_backend(config.resolved_judge_backend, config.resolved_judge_model, config.judge_options())


def make_policy_backend(config: JudgeModelConfig) -> Backend:
    return build_backend(config.backend, config.model, config.policy_options())


def judge_identity(config: JudgeModelConfig) -> str:
    """The judge model as recorded in rows and keys (an endpoint's by its served name: no URL in the data)."""
    return backend_identity(config.resolved_judge_backend, config.resolved_judge_model)


def judge_settings(config: JudgeModelConfig) -> JudgeSettings:
    return JudgeSettings(
        model=judge_identity(config),
        method=config.method,
        cot=config.cot,
        cot_clamp=config.cot_clamp,
        cot_max_tokens=config.cot_max_tokens,
        likelihood_scale=config.likelihood_scale,
        constrained_verdict=config.constrained_verdict,
    )


class Engines:
    """Lazily built backends; the judge reuses the policy's engine when they are the same model."""

    def __init__(self, config: JudgeModelConfig, judge: Backend | None = None, policy: Backend | None = None):
        self.config = config
        shared = config.judge_is_policy()
        self._judge = judge if judge is not None else policy if shared else None
        self._policy = policy if policy is not None else judge if shared else None
        self._owned: list[Backend] = []

    def judge(self) -> Backend:
        if self._judge is None:
            self._judge = self._build(make_judge_backend)
        return self._judge

    def policy(self) -> Backend:
        if self._policy is None:
            self._policy = self._build(make_policy_backend)
        return self._policy

    def _build(self, make: Callable[[JudgeModelConfig], Backend]) -> Backend:
        backend = make(self.config)
        self._owned.append(backend)
        if self.config.judge_is_policy():  # one engine serves both
            self._judge = self._policy = backend
        return backend

    def close(self) -> None:
        for backend in self._owned:
            backend.close()
        self._owned.clear()
