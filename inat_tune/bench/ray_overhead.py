"""Section 5: Ray's own cost: ray.init seconds, and a 1-trial Ray Tune run from trial start
to the first reported epoch. Ray is imported only here (the other sections run without it)."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _ray_probe_trainable(config: dict[str, Any]) -> None:
    """A trial with a tiny "epoch" that reports once with a checkpoint, like ``run_trial``."""
    from ray import tune

    start = time.time()
    float(np.linalg.norm(np.ones((256, 256)) @ np.ones((256, 256))))  # the tiny epoch
    with tempfile.TemporaryDirectory() as d:
        Path(d, "state.json").write_text("{}")
        tune.report({"epoch": 1, "trial_start": start, "reported_at": time.time()},
                    checkpoint=tune.Checkpoint.from_directory(d))


def bench_ray(storage: Path) -> dict[str, Any]:
    """ray.init seconds; trial start -> first reported epoch (received by the driver).
    ``{"skipped": why}`` without Ray, ``{"error": why}`` when the probe trial failed."""
    try:
        import ray
        from ray import tune
    except ImportError as e:
        return {"skipped": f"ray is not importable ({e})"}

    received: list[float] = []

    class FirstResult(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            received.append(time.time())

    started_here = not ray.is_initialized()
    t0 = time.perf_counter()
    if started_here:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=True,
                 logging_level=logging.WARNING)
    init_s = time.perf_counter() - t0
    try:
        tuner = tune.Tuner(
            tune.with_resources(_ray_probe_trainable, {"cpu": 1}),
            tune_config=tune.TuneConfig(num_samples=1),
            run_config=tune.RunConfig(name="ray-probe", storage_path=str(storage), verbose=0,
                                      callbacks=[FirstResult()]),
        )
        t_fit = time.time()
        grid = tuner.fit()
        t_end = time.time()
    finally:
        if started_here:
            ray.shutdown()
    r = grid[0].metrics
    if grid[0].error is not None or not received:
        return {"error": f"probe trial failed: {grid[0].error}"}
    return {
        "ray_version": ray.__version__, "ray_init_s": init_s if started_here else None,
        "launch_s": r["trial_start"] - t_fit,
        "trial_start_to_first_report_s": received[0] - r["trial_start"],
        "in_trial_epoch_s": r["reported_at"] - r["trial_start"],
        "tuner_fit_total_s": t_end - t_fit,
        "note": "launch_s: Tuner.fit() until the trainable runs (scheduling, worker process); "
                "trial_start_to_first_report_s: until the driver receives its first epoch "
                "(a tiny epoch plus tune.report with a checkpoint)",
    }
