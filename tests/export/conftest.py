"""Fixtures for the export tests: the run folder of export_run.py, and the training tests' tiny model (the same
fixture, not a copy: TRL's DPOTrainer trains on an exported folder with it)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

_spec = importlib.util.spec_from_file_location("training_fixtures", Path(__file__).parents[1] / "training" / "conftest.py")
_training = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_training)
tiny_model_dir = _training.tiny_model_dir


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    from export_run import make_run_folder

    return make_run_folder(tmp_path_factory.mktemp("export-run"))
