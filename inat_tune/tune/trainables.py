"""Ray Tune function trainables: thin adapters from a trial's config to ``fit()``.

One trainable per model family (``TRAINABLES``); both share ``run_trial``. A trial:
validates its config with ``RunConfig.from_dict``, caps its CUDA memory to its GPU fraction,
reads the shared decode cache, resumes from ``tune.get_checkpoint()`` if Ray restarted it,
and reports every epoch with a checkpoint. GPU memory is released when it ends or is stopped.
"""

from __future__ import annotations

import gc
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import RunConfig
from ..data.pipeline import load_tuning_data
from ..train import CHECKPOINT_NAME, TrainState, fit


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a sweep shares (passed with ``tune.with_parameters``)."""

    data_dir: str
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    cache_dir: str | None = None  # default: $INAT_TUNE_CACHE on the trial's node


def _limit_gpu_memory(fraction: float) -> None:
    """A trial with a fraction of a GPU may allocate only that share of its memory, so one
    trial cannot run its neighbours out of memory (they then fail alone, with an OOM)."""
    if torch.cuda.is_available() and 0 < fraction < 1:
        torch.cuda.set_per_process_memory_fraction(fraction)


def run_trial(config: dict[str, Any], settings: TrialSettings) -> None:
    from ray import tune

    cfg = RunConfig.from_dict(config)
    torch.set_num_threads(max(1, int(settings.cpus_per_trial)))
    _limit_gpu_memory(settings.gpus_per_trial)
    # Ray sets CUDA_VISIBLE_DEVICES for the trial; "cuda" is then the trial's own GPU.
    device = "cuda" if settings.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu"
    data = load_tuning_data(settings.data_dir, cfg.image_size, cfg.val_fraction, cfg.split_seed,
                            cache_dir=settings.cache_dir, progress=False)
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # Ray restarted this trial (failure, node loss, --resume)
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / CHECKPOINT_NAME, map_location=device, weights_only=False)
    node = {"node_ip": _node_ip(), "node_id": _node_id(), "hostname": socket.gethostname()}

    def report(metrics: dict[str, Any], state: TrainState) -> None:
        seconds = metrics["time_total_s"]
        extra = {
            # what the trial cost: its share of the accelerator (or of the CPUs) x wall time
            "gpu_seconds": seconds * settings.gpus_per_trial,
            "cpu_seconds": seconds * settings.cpus_per_trial,
            "device": device, **node,
        }
        with tempfile.TemporaryDirectory() as d:
            state.save(d)
            tune.report({**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(d))

    try:
        fit(cfg, data, device=device, report=report, resume=resume, log=None)
    finally:
        # ASHA stopping a trial ends this function with an exception: free the GPU either way.
        del data
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _node_ip() -> str:
    try:
        import ray
        return ray.util.get_node_ip_address()
    except Exception:  # outside Ray (tests calling run_trial directly)
        return "127.0.0.1"


def _node_id() -> str:
    """Ray's id of the node running this trial: unlike node_ip, distinct for every node, even
    several nodes on one machine (a local test cluster)."""
    try:
        import ray
        # not initialized = outside Ray (tests calling run_trial directly); the runtime context
        # would otherwise start a local Ray instance just to answer
        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:  # noqa: BLE001
        return ""


def scratch_cnn_trainable(config: dict[str, Any], settings: TrialSettings) -> None:
    """Part A: the 5-block CNN trained from scratch."""
    run_trial({**config, "model": "scratch_cnn"}, settings)


def finetune_trainable(config: dict[str, Any], settings: TrialSettings) -> None:
    """Part B: a pretrained torchvision backbone under a freezing strategy."""
    run_trial({**config, "model": "finetune"}, settings)


TRAINABLES: dict[str, Callable[[dict[str, Any], TrialSettings], None]] = {
    "scratch_cnn": scratch_cnn_trainable,
    "finetune": finetune_trainable,
}


def make_trainable(model: str, settings: TrialSettings):
    """The trainable for ``model`` with its settings and resources attached."""
    from ray import tune

    fn = tune.with_parameters(TRAINABLES[model], settings=settings)
    return tune.with_resources(fn, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})

