"""Shared fixtures: every test gets its own decode cache and offline W&B, and generated data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """No test touches ~/.cache or the network: cache and W&B live in a temporary folder."""
    base = tmp_path_factory.mktemp("env")
    monkeypatch.setenv("INAT_TUNE_CACHE", str(base / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(base / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    yield


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small generated dataset (10 classes, 32 px nominal) shared by the whole session."""
    from inat_tune.data.synth import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synth") / "ds", per_class=40, val_per_class=8,
                          image_size=40, seed=0)
