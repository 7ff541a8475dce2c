"""Shared fixtures: every test gets its own decode cache and offline W&B, and generated data;
one real finished sweep is run once per session for the tests that read an experiment."""

from __future__ import annotations

import os
import shutil
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
    from inat_tune.data.warm import WARM
    WARM.clear()  # warm data is per process: one test's must not serve the next
    yield


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small generated dataset (10 classes, 32 px nominal) shared by the whole session."""
    from inat_tune.data.synth import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synth") / "ds", per_class=40, val_per_class=8,
                          image_size=40, seed=0)


@pytest.fixture(scope="session")
def finished_experiment(tmp_path_factory) -> Path:
    """The folder of one real finished sweep (helpers_sweep: TPE + ASHA, N_TRIALS trials of
    the scratch CNN, 2 epochs, generated data; its sweep.json names the dataset), run once per
    session. Read it in place; a test that writes into it (evaluate, explain, report do) takes
    ``experiment_copy`` instead."""
    from helpers_sweep import FINISHED_SPACE, run_tiny_sweep

    return run_tiny_sweep(tmp_path_factory.mktemp("finished"), FINISHED_SPACE)[0]


@pytest.fixture
def experiment_copy(finished_experiment, tmp_path) -> Path:
    """A private copy of ``finished_experiment`` (same trials, checkpoints and dataset)."""
    return Path(shutil.copytree(finished_experiment, tmp_path / finished_experiment.name))


@pytest.fixture
def drawn(monkeypatch) -> list:
    """Every matplotlib Figure saved while the test runs (saved, so text extents are known):
    the figure tests check titles, texts and limits on these objects, not pixels."""
    from matplotlib.figure import Figure

    figures, save = [], Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures
