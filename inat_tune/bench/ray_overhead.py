"""Section 5: Ray's own cost: ray.init seconds, and a 1-trial Ray Tune run from trial start
to the first reported epoch; section 6 (``trials``): cold and warm trial start in a real sweep
of short trials (:func:`bench_trials`). Ray is imported only here (the other sections run
without it)."""

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


def trial_start_times(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Cold and warm start from per-trial rows ``{ready, first_result, worker_trial, epoch_s}``
    (driver clock; worker_trial 1 = the first trial of its worker process).

    A trial is *ready* when it exists and a slot is free for it: the later of its creation
    (the driver first sees it; a random search creates every trial at once) and the last time
    a trial ended before this one started (the slot it takes). ``cold_start_s`` /
    ``warm_start_s``: median seconds from ready to its first reported epoch at the driver, for
    first trials of a process and for later ones; ``*_overhead_s`` the same less the epoch's
    own compute time."""
    def med(xs: list[float]) -> float | None:
        return float(np.median(xs)) if xs else None

    cold = [r for r in rows if r["worker_trial"] == 1]
    warm = [r for r in rows if r["worker_trial"] > 1]
    start = lambda r: r["first_result"] - r["ready"]  # noqa: E731
    return {
        "n_trials": len(rows), "cold_trials": len(cold), "warm_trials": len(warm),
        "cold_start_s": med([start(r) for r in cold]), "warm_start_s": med([start(r) for r in warm]),
        "cold_overhead_s": med([start(r) - r["epoch_s"] for r in cold]),
        "warm_overhead_s": med([start(r) - r["epoch_s"] for r in warm]),
    }


def bench_trials(storage: Path, data: Path, *, n_trials: int = 12, image_size: int = 32,
                 fresh_process: bool = False) -> dict[str, Any]:
    """A real sweep (``run_sweep``, no W&B) of ``n_trials`` one-epoch trials of a small scratch
    CNN, 1 CPU each: :func:`trial_start_times` of its trials, its wall time and the per-trial
    rows. ``fresh_process``: a new worker process per trial, as before warm trials."""
    try:
        import ray
        from ray import tune
    except ImportError as e:
        return {"skipped": f"ray is not importable ({e})"}
    from ..tune.runner import SweepOptions, run_sweep
    from ..tune.space import load_space

    marks: dict[str, dict[str, Any]] = {}
    ended: list[float] = []

    class StartTimes(tune.Callback):
        def on_step_begin(self, iteration, trials, **info):
            now = time.time()
            for t in trials:
                marks.setdefault(t.trial_id, {"created": now})

        def on_trial_start(self, iteration, trials, trial, **info):
            m = marks.setdefault(trial.trial_id, {"created": time.time()})
            m["ready"] = max([m["created"], *ended])  # ended so far: the slot it now takes

        def on_trial_complete(self, iteration, trials, trial, **info):
            ended.append(time.time())

        def on_trial_error(self, iteration, trials, trial, **info):
            ended.append(time.time())

        def on_trial_result(self, iteration, trials, trial, result, **info):
            m = marks.setdefault(trial.trial_id, {"created": time.time()})
            if "first_result" not in m:
                m.setdefault("ready", m["created"])
                m.update(first_result=time.time(), worker_trial=int(result.get("worker_trial", 1)),
                         epoch_s=float(result.get("time_this_iter_s", 0.0)))

    space = load_space({
        "model": "scratch_cnn", "method": "random", "metric": {"name": "val_acc", "goal": "maximize"},
        "parameters": {"image_size": {"value": image_size}, "filters": {"value": 8},
                       "dense": {"value": 16}, "batch_size": {"value": 64}, "epochs": {"value": 1},
                       "augment": {"value": False},
                       "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1}}})
    name = f"trials-{'fresh' if fresh_process else 'warm'}-{int(time.time())}"
    opts = SweepOptions(space_path="<bench:trials>", data_dir=str(data), name=name,
                        storage=str(storage), num_samples=n_trials, cpus_per_trial=1.0,
                        use_wandb=False, fresh_process=fresh_process)
    t0 = time.perf_counter()
    try:
        run_sweep(opts, space, callbacks=[StartTimes()])
    finally:
        if ray.is_initialized():
            ray.shutdown()
    wall = time.perf_counter() - t0
    rows = [m for m in marks.values() if "first_result" in m]
    if not rows:
        return {"error": "no trial reported an epoch"}
    return {**trial_start_times(rows), "fresh_process": fresh_process, "sweep_wall_s": wall,
            "image_size": image_size, "rows": rows,
            "note": "ready: the later of the trial's creation and the end of the trial whose slot it "
                    "takes; cold: the first trial of a worker process; overhead: less the epoch's "
                    "own compute"}
