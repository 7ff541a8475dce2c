"""A real, tiny ``inat-tune sweep`` shared by the tests that need a trained experiment."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml


def run_tiny_sweep(base: Path, space: dict) -> tuple[Path, Path]:
    """A real ``inat-tune sweep`` (2 trials) on a generated dataset; returns (experiment, data)."""
    import ray

    from inat_tune.cli import main
    from inat_tune.data.synth import make_synthetic

    with pytest.MonkeyPatch.context() as mp:  # conftest's per-test env is not active in module fixtures
        mp.setenv("INAT_TUNE_CACHE", str(base / "cache"))
        mp.setenv("WANDB_MODE", "offline")
        mp.delenv("WANDB_API_KEY", raising=False)
        ds = make_synthetic(base / "ds", per_class=20, val_per_class=5, image_size=32)
        (base / "space.yaml").write_text(yaml.safe_dump(space))
        with contextlib.redirect_stdout(io.StringIO()):
            rc = main(["sweep", str(base / "space.yaml"), "--data", str(ds), "--storage", str(base),
                       "--name", "exp", "--num-samples", "2", "--no-wandb"])
        ray.shutdown()
    assert rc == 0
    return base / "exp", ds
