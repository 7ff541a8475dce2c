"""Ray Tune function trainables: thin adapters from a trial's config to ``fit()``.

One trainable per model family (``TRAINABLES``); both share ``run_trial``. A trial:
validates its config with ``RunConfig.from_dict``, resets the process for it (a sweep reuses
trial processes: see ``_start_trial_in_process``), caps its CUDA memory to its GPU fraction,
reads the shared decode cache (or this process's warm copy, :mod:`inat_tune.data.warm`),
resumes from ``tune.get_checkpoint()`` if Ray restarted it, and reports every epoch with a
checkpoint. What it held is released when it ends or is stopped.
"""

from __future__ import annotations

import gc
import os
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
    """A trial with a fraction of a GPU may allocate only that share of its memory less its
    CUDA context (the cap covers PyTorch's allocator only; see
    ``inat_tune.tune.memory.allocator_fraction``), so one trial cannot run its neighbours out
    of memory (they then fail alone, with an OOM)."""
    if torch.cuda.is_available() and 0 < fraction < 1:
        from .memory import allocator_fraction, trial_context_bytes
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        torch.cuda.set_per_process_memory_fraction(allocator_fraction(fraction, total, trial_context_bytes()))


def run_trial(config: dict[str, Any], settings: TrialSettings) -> None:
    from ray import tune

    cfg = RunConfig.from_dict(config)
    worker = _start_trial_in_process(cfg, settings)
    # Ray sets CUDA_VISIBLE_DEVICES for the trial; "cuda" is then the trial's own GPU.
    device = "cuda" if settings.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu"
    data = warm_tuning_data(settings, cfg)
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # Ray restarted this trial (failure, node loss, --resume)
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / CHECKPOINT_NAME, map_location=device, weights_only=True)
    node = {"node_ip": _node_ip(), "node_id": _node_id(), "hostname": socket.gethostname()}

    def report(metrics: dict[str, Any], state: TrainState) -> None:
        seconds = metrics["time_total_s"]
        extra = {
            # what the trial cost: its share of the accelerator (or of the CPUs) x wall time
            "gpu_seconds": seconds * settings.gpus_per_trial,
            "cpu_seconds": seconds * settings.cpus_per_trial,
            "device": device, **node, **worker,
        }
        with tempfile.TemporaryDirectory() as d:
            state.save(d)
            tune.report({**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(d))

    try:
        fit(cfg, data, device=device, report=report, resume=resume, log=None)
    finally:
        # ASHA stopping a trial ends this function with an exception (SystemExit from
        # tune.report). Ray waits for this thread before it reuses the process, so the full
        # clean-up happens when the next trial starts (_start_trial_in_process); only a GPU's
        # memory is handed back now, for the neighbours sharing it. Warm data stays.
        del data, resume
        if torch.cuda.is_available():
            _release_memory()


# Trials this process has run (Ray Tune reuses a trial's process for the next trial).
_TRIALS_IN_PROCESS = 0


def _start_trial_in_process(cfg: RunConfig, settings: TrialSettings) -> dict[str, Any]:
    """Make this process what a fresh one would be for ``cfg``, and say what it was.

    A reused process must give exactly what a fresh one gives: whatever the previous trial left
    is freed (``_release_memory``), the process-wide settings it may have changed are set
    again from this trial (threads, deterministic algorithms, GPU memory cap), and the RNGs
    are seeded from this trial's config (``fit`` seeds torch; Python's and NumPy's are seeded
    here). Returns ``worker_pid``, ``worker_trial`` (1 = a fresh process) and
    ``worker_rss_mb`` and ``worker_tensor_mb`` (this process's resident memory, and the bytes
    of the torch tensors still alive in it, when the trial began: after the previous one was
    freed, so they show what reuse leaves behind) for the trial's results.
    """
    global _TRIALS_IN_PROCESS
    import random

    import numpy as np

    from ..train import set_deterministic

    _release_memory()
    _TRIALS_IN_PROCESS += 1
    torch.set_num_threads(max(1, int(settings.cpus_per_trial)))
    set_deterministic(cfg.deterministic)
    _limit_gpu_memory(settings.gpus_per_trial)
    os.environ["INAT_TUNE_GPU_FRACTION"] = str(settings.gpus_per_trial or 1)  # the warm data budget
    # Before reusing this process Ray waits for the previous trial's thread to end, 2 s by
    # default (read from here at that moment); a loaded machine can take longer, and a reuse
    # that times out fails the *next* trial ("Could not re-use actor").
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)
    return {"worker_pid": os.getpid(), "worker_trial": _TRIALS_IN_PROCESS, "worker_rss_mb": rss_mb(),
            "worker_tensor_mb": live_tensor_bytes() / 2**20}


def _release_memory() -> None:
    """Free what a finished or stopped trial held: its model, optimizer, activations and
    checkpoint buffers become garbage when its frames go; collect them, and hand the CUDA
    allocator's cached blocks back so the next trial (or a neighbour) gets them."""
    gc.collect()
    _malloc_trim()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _malloc_trim() -> None:
    """Return the C heap's free pages to the OS (glibc). Each trial runs in a new thread (Ray's
    function trainables do), whose freed buffers otherwise stay in glibc's per-thread arenas:
    a reused process then grows by several MB per trial with no object left alive."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


def live_tensor_bytes() -> int:
    """Bytes of the distinct storages of every torch tensor alive in this process (warm data
    included): constant from trial to trial when a finished trial leaves nothing behind."""
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        try:
            if issubclass(type(obj), torch.Tensor) and not obj.is_meta:  # type(): no __class__ lookups
                st = obj.untyped_storage()
                seen[st.data_ptr()] = st.nbytes()
        except Exception:  # noqa: BLE001 - tensors without storage (sparse, fake, ...)
            continue
    return sum(seen.values())


def rss_mb() -> float:
    """This process's resident set size in MiB (Linux /proc; 0.0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def warm_tuning_data(settings: TrialSettings, cfg: RunConfig):
    """The trial's tuning split, from this process's warm data when an earlier trial here
    loaded the same (same files, sizes and mtimes; image size; split): then nothing is read."""
    from ..data.cache import fingerprint
    from ..data.scan import scan_dataset
    from ..data.warm import WARM

    images = scan_dataset(settings.data_dir)
    key = ("tuning", str(images.root), settings.cache_dir, cfg.image_size, cfg.val_fraction,
           cfg.split_seed, fingerprint(images.root, images.train, cfg.image_size))
    return WARM.get(key, lambda: load_tuning_data(
        settings.data_dir, cfg.image_size, cfg.val_fraction, cfg.split_seed,
        cache_dir=settings.cache_dir, progress=False, images=images), nbytes=_private_bytes)


def _private_bytes(data) -> int:
    """Bytes of ``data`` that are this process's own: views of the memory-mapped cache are
    the node's (shared), a copy (the cache folder was not writable) is not."""
    import numpy as np
    return sum(a.nbytes for a in (data.train.images, data.val.images) if not isinstance(a, np.memmap))


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

