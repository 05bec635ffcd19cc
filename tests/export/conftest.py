"""Fixtures for the export tests: the run folder of export_run.py (the tiny model for TRL is tests/conftest.py's)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    from export_run import make_run_folder

    return make_run_folder(tmp_path_factory.mktemp("export-run"))
