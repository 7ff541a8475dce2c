"""``--search``: TPE + ASHA against random search with every trial run to full epochs, on a
fixed small synthetic dataset with equal numbers of trials, through the real sweep machinery
(``run_sweep``); the finished experiments are read back with :func:`load_experiment`."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from ..experiment import Trial, load_experiment
from .datasets import bench_root, synthetic_set
from .measure import ratio
from .options import BenchSettings

TARGET_EPOCH_SHARE = 1 / 3  # TPE+ASHA epochs to random's best, over random's epochs


def search_spaces(trials: int, epochs: int, image_size: int) -> dict[str, dict[str, Any]]:
    """Two W&B-syntax spaces that differ only in method and early termination."""
    base = {
        "model": "scratch_cnn", "metric": {"name": "val_acc", "goal": "maximize"},
        "run_cap": trials,
        "parameters": {
            "image_size": {"value": image_size},
            "filters": {"values": [8, 16, 32]},
            "dense": {"values": [32, 64, 128]},
            "batch_norm": {"values": [True, False]},
            "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
            "augment": {"value": False},
            "batch_size": {"value": 64},
            "epochs": {"value": epochs},
        },
    }
    # ASHA: first cut after 1 epoch, keep the best third at each rung (1, 3, 9, ...)
    tpe = {**base, "name": "bench-tpe-asha", "method": "bayes",
           "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 3}}
    rnd = {**base, "name": "bench-random", "method": "random"}
    return {"tpe_asha": tpe, "random": rnd}


def summarize_sweep(trials: Sequence[Trial], wall_s: float,
                    metric: str = "val_acc") -> dict[str, Any]:
    """Epochs, trial-seconds and the best ``metric`` of one sweep's trials (those that reported
    nothing are not counted), with the running best per epoch consumed (the epochs of all
    trials in the order they were reported: by timestamp, then training_iteration)."""
    reported = [t for t in trials if t.results]
    rows = sorted((r for t in reported for r in t.results),
                  key=lambda r: (r.get("timestamp", 0), r.get("training_iteration", 0)))
    running, best = [], -math.inf
    for r in rows:
        best = max(best, r.get(metric, -math.inf))
        running.append(best)
    # time_total_s of a trial's last row: the seconds it trained (Ray's running total)
    return {"trials": len(reported), "epochs": len(rows),
            "trial_seconds": float(sum(t.results[-1].get("time_total_s", 0.0) for t in reported)),
            "wall_s": wall_s, f"best_{metric}": best if rows else None,
            "epochs_per_trial": [len(t.results) for t in reported], "running_best": running}


def epochs_to_reach(running_best: list[float], target: float) -> int | None:
    """How many epochs were consumed when the running best first reached ``target``."""
    for i, v in enumerate(running_best):
        if v >= target - 1e-9:
            return i + 1
    return None


def compare(tpe: dict[str, Any], rnd: dict[str, Any]) -> dict[str, Any]:
    """The ``comparison`` of two :func:`summarize_sweep` results (TPE+ASHA, random): shares of
    epochs, trial-seconds and wall time, and whether TPE+ASHA reached random's best val_acc
    within TARGET_EPOCH_SHARE of random's epochs."""
    target = rnd["best_val_acc"]
    reach = epochs_to_reach(tpe["running_best"], target) if target is not None else None
    return {
        "random_best_val_acc": target, "tpe_asha_best_val_acc": tpe["best_val_acc"],
        "tpe_asha_epochs": tpe["epochs"], "random_epochs": rnd["epochs"],
        "epoch_share": ratio(tpe["epochs"], rnd["epochs"]),
        "trial_seconds_share": ratio(tpe["trial_seconds"], rnd["trial_seconds"]),
        "wall_share": ratio(tpe["wall_s"], rnd["wall_s"]),
        "tpe_asha_epochs_to_random_best": reach,
        "random_epochs_to_its_best": epochs_to_reach(rnd["running_best"], target) if target else None,
        "met": reach is not None and reach <= TARGET_EPOCH_SHARE * rnd["epochs"],
    }


def search_targets(search: dict[str, Any]) -> dict[str, Any]:
    """The run's ``targets`` for a ``bench_search`` result ({} when it was skipped)."""
    if "comparison" not in search:
        return {}
    c = search["comparison"]
    return {f"TPE+ASHA reaches random's best with <= {TARGET_EPOCH_SHARE:.2g} of its epochs":
            {"value": ratio(c["tpe_asha_epochs_to_random_best"], c["random_epochs"]),
             "met": c["met"]}}


def bench_search(s: BenchSettings) -> dict[str, Any]:
    """Run both sweeps through ``run_sweep`` and compare epochs, seconds and best val_acc;
    ``{"skipped": why}`` without Ray."""
    try:
        import ray
    except ImportError as e:
        return {"skipped": f"ray is not importable ({e})"}
    from ..tune.runner import SweepOptions, run_sweep
    from ..tune.space import load_space

    data = synthetic_set(s.search_per_class, 40)  # drawn at ~40 px, trained at 32
    spaces = search_spaces(s.search_trials, s.search_epochs, s.search_image_size)
    out: dict[str, Any] = {"data": str(data), "trials": s.search_trials,
                           "epochs_per_trial": s.search_epochs, "image_size": s.search_image_size,
                           "seed": s.search_seed, "spaces": spaces}
    bench_root().mkdir(parents=True, exist_ok=True)
    storage = Path(tempfile.mkdtemp(prefix="search-", dir=bench_root()))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        for key, raw in spaces.items():
            opts = SweepOptions(space_path=f"<bench:{key}>", data_dir=str(data),
                                name=f"{key}-{stamp}", storage=str(storage),
                                num_samples=s.search_trials, cpus_per_trial=1.0, use_wandb=False,
                                seed=s.search_seed)
            print(f"[bench] sweep {key}: {s.search_trials} trials x {s.search_epochs} epochs",
                  flush=True)
            t0 = time.perf_counter()
            run_sweep(opts, load_space(raw))
            wall = time.perf_counter() - t0
            out[key] = summarize_sweep(load_experiment(opts.experiment_path).trials, wall)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)  # trial folders and checkpoints: read already
    out["comparison"] = compare(out["tpe_asha"], out["random"])
    return out
