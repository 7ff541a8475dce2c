"""The one real, tiny ``inat-tune sweep`` the tests that need a trained experiment share
(conftest's session fixture ``finished_experiment`` runs it once)."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest
import yaml

N_TRIALS = 3
# TPE + ASHA, as a real sweep runs; every knob small. The scratch CNN's 8 first-layer filters
# give explain's 2 x 4 filter grid, filter_org double its 128 CONV5 channels to pick 10 from.
FINISHED_SPACE = {
    "model": "scratch_cnn",
    "method": "bayes",
    "metric": {"name": "val_acc", "goal": "maximize"},
    "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
    "parameters": {
        "image_size": {"value": 32},
        "filters": {"value": 8},
        "filter_org": {"value": "double"},
        "dense": {"value": 16},
        "batch_size": {"value": 32},
        "augment": {"value": False},
        "epochs": {"value": 2},
        "lr": {"distribution": "log_uniform_values", "min": 1e-3, "max": 1e-2},
    },
}


def run_tiny_sweep(base: Path, space: dict, num_samples: int = N_TRIALS) -> tuple[Path, Path]:
    """A real ``inat-tune sweep`` (through the CLI, no W&B) on a generated dataset of 10
    classes (20 train and 5 test images each, 32 px); returns (experiment, data)."""
    import ray

    from inat_tune.cli import main
    from inat_tune.data.synth import make_synthetic

    with pytest.MonkeyPatch.context() as mp:  # conftest's per-test env is not active in session fixtures
        mp.setenv("INAT_TUNE_CACHE", str(base / "cache"))
        mp.setenv("WANDB_MODE", "offline")
        mp.delenv("WANDB_API_KEY", raising=False)
        ds = make_synthetic(base / "ds", per_class=20, val_per_class=5, image_size=32)
        (base / "space.yaml").write_text(yaml.safe_dump(space))
        argv = ["sweep", str(base / "space.yaml"), "--data", str(ds), "--storage", str(base),
                "--name", "exp", "--num-samples", str(num_samples), "--no-wandb"]
        for attempt in (1, 2):
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    rc = main(argv)
                break
            except Exception as e:  # noqa: BLE001
                # Ray gives its raylet 30 s to register, hard-coded; on a 2-core machine shared
                # with other test runs that can pass. One more try, from an empty folder; any
                # other failure is the sweep's own and fails the fixture.
                if attempt == 2 or "timed out during startup" not in str(e):
                    raise
                shutil.rmtree(base / "exp", ignore_errors=True)
            finally:
                ray.shutdown()
    assert rc == 0
    return base / "exp", ds
