"""Fixtures for the training tests: a tiny model built from SmolLM2's configuration, and the data files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

FIXTURES = Path(__file__).parent


@pytest.fixture(scope="session")
def preference_file() -> str:
    """Eight judge-written pairs: TRL's conversational preference format plus the judge's extra columns."""
    return str(FIXTURES / "preferences.jsonl")


@pytest.fixture(scope="session")
def sft_file() -> str:
    return str(FIXTURES / "sft.jsonl")


@pytest.fixture(scope="session")
def tiny_reward_dir(tmp_path_factory, tiny_model_dir, preference_file) -> str:
    """A reward model trained through the Python API on the tiny model (shared by the reward and PPO tests), in
    float32: its test scores the held-out pairs again in float32 and compares the accuracy."""
    from training.api import train
    from training.reward import RewardStageConfig

    out = tmp_path_factory.mktemp("reward")
    config = RewardStageConfig(data=preference_file, output_dir=str(out), model=tiny_model_dir, max_steps=2,
                               learning_rate=1e-3, eval_fraction=0.25, disable_tqdm=True, bf16=False)
    summary = train(config)
    assert summary["method"] == "reward" and summary["global_step"] == 2
    return str(out)
