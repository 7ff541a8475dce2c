"""The Python API: ``import inat_tune`` is light, and each public name is the library function."""

from __future__ import annotations

import csv
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import inat_tune
from inat_tune.config import ConfigError

REPO = Path(__file__).resolve().parents[1]

API = {
    "sweep": "inat_tune.tune.runner",
    "train_run": "inat_tune.run",
    "evaluate_experiment": "inat_tune.evaluate",
    "explain_experiment": "inat_tune.explain",
    "write_report": "inat_tune.report",
    "load_results": "inat_tune.analysis",
    "load_history": "inat_tune.analysis",
    "load_experiment": "inat_tune.experiment",
    "RunConfig": "inat_tune.config",
}


def test_import_inat_tune_imports_no_torch_ray_or_pandas():
    code = ("import sys, inat_tune; heavy = [m for m in ('torch', 'ray', 'optuna', 'pandas', "
            "'wandb', 'captum') if m in sys.modules]; assert not heavy, heavy; "
            "assert set(inat_tune.__all__) >= {'sweep', 'train_run', 'evaluate_experiment'}")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("name", sorted(API))
def test_each_api_name_is_the_library_function(name):
    module = importlib.import_module(API[name])
    assert getattr(inat_tune, name) is getattr(module, name)
    assert callable(getattr(inat_tune, name)) and name in dir(inat_tune)


def test_api_names_survive_importing_the_submodules():
    """The functions are not named like the submodules (inat_tune.evaluate, .train, ...):
    importing a submodule sets the package attribute of its name to the module."""
    for sub in ("evaluate", "explain", "report", "train", "analysis", "run"):
        importlib.import_module(f"inat_tune.{sub}")
    assert inat_tune.evaluate_experiment.__module__ == "inat_tune.evaluate"
    assert inat_tune.train_run.__module__ == "inat_tune.run"
    assert inat_tune.write_report.__module__ == "inat_tune.report"


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        inat_tune.no_such_thing  # noqa: B018


def test_train_run_takes_a_mapping_and_writes_the_run_folder(synth_data, tmp_path, capsys):
    out = tmp_path / "run"
    result = inat_tune.train_run({"image_size": 32, "filters": 8, "dense": 32, "epochs": 1}, synth_data,
                                 out, device="cpu")
    assert len(result.history) == 1 and 0.0 <= result.best["val_acc"] <= 1.0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert float(rows[0]["val_acc"]) == pytest.approx(result.history[0]["val_acc"])
    for name in ("config.yaml", "split_manifest.json", "checkpoint.pt", "best.pt"):
        assert (out / name).is_file(), name
    assert "training scratch_cnn" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="dropout"):
        inat_tune.train_run({"dropout": 1.5}, synth_data, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused before any work
