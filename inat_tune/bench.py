"""``inat-tune bench``: measure where the speed comes from, on one machine, in one run.

Default mode (the same files, the same cores, the same batch size for every line):

1. naive      ImageFolder + per-image torchvision transforms + DataLoader(num_workers=cores):
              images/s delivered to the device (first batch excluded: worker start-up) and the
              wall time of one epoch (start-up included: the notebooks pay it every epoch).
2. cached     the one-time decode-cache build (into a fresh temporary cache folder, so it is
              really built) against one naive epoch, and DeviceLoader's batched augmentation
              over the cache on the device: images/s and the speed-up over naive.
3. train      the default scratch CNN (RunConfig() at the bench image size) trained for a fixed
              number of steps after warm-up: images/s and, on CUDA, the fraction of the GPU's
              bf16 dense peak, for fp32 / bf16 / + channels_last / + torch.compile (CPU: fp32).
4. finetune   one epoch of fit() for a head-only ResNet50 with and without the frozen-feature
              cache (weights "none": the cost does not depend on the weights).
5. ray        ray.init seconds, and a 1-trial Ray Tune run: trial start -> first reported epoch.

``--search``: TPE + ASHA against random search with every trial run to full epochs, on a fixed
small synthetic dataset with equal numbers of trials, through the real sweep machinery.

Without ``--data`` the photos are generated (``inat_tune.data.synth`` at a nominal 600 px:
450-960 px sides, JPEG quality 90, about 170 kB each, like iNaturalist photos) and kept in the
temporary folder for the next run, so decoding costs what it costs in real use. Ray is imported
only by the sections that need it: everything else runs where Ray is not installed.

Timed measurements are repeated (3x; 1x with ``--quick``) and the best run is reported, every
run kept in the JSON; CPU-seconds per image (worker processes included) are reported next to
images/s because they hardly depend on what else the machine runs. On a CPU shared with other
jobs, OpenMP's spinning threads slow the torch sections several-fold: run with
``OMP_WAIT_POLICY=PASSIVE`` there (the command line printed with the results shows it).
Benchmarks are commands, not timed tests; results that matter go to results/BENCHMARKS.md with
the command that produced them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)

# bf16 dense tensor-core peak per GPU, FLOP/s (NVIDIA datasheets: the "with sparsity" figures
# halved). Matched against the tokens of torch.cuda.get_device_name(); fractions of fp32 runs
# are still given against this peak (the usual MFU convention).
PEAK_BF16_FLOPS: dict[str, float] = {
    "H100": 989e12,  # SXM; the PCIe card is lower, see _PEAK_VARIANTS
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10G": 125e12,
}
_PEAK_VARIANTS: dict[tuple[str, str], float] = {("H100", "PCIE"): 756e12}

# Environment that changes the numbers: shown with the command line when set.
_ENV_KEYS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")

TARGET_SPEEDUP = 20.0  # cached pipeline images/s over naive, at 64 and 224 px
TARGET_BUILD_RATIO = 1.2  # cache build seconds over one naive epoch
TARGET_EPOCH_SHARE = 1 / 3  # TPE+ASHA epochs to random's best, over random's epochs

PHOTO_SIZE = 600  # nominal side of the generated photos (synth draws 0.75-1.6 x this)


# ---------------------------------------------------------------------------------------------
# Settings

@dataclass(frozen=True)
class BenchSettings:
    """What one bench run measures; ``from_args`` maps the CLI flags, ``--quick`` shrinks it."""

    image_size: int = 64
    data: str | None = None  # None: generated photo-sized JPEGs
    json_path: str | None = None
    quick: bool = False
    batch_size: int = 64  # RunConfig's default: the same for every pipeline
    photos_per_class: int = 48  # train/ images per class of the generated set (+ 1/4 in val/)
    naive_max_batches: int | None = None  # None: one full epoch
    repeats: int = 3  # timed measurements are repeated; the best is reported, all are kept
    loader_seconds: float = 3.0  # least time the cached loader is iterated for
    train_seconds: float = 4.0  # target time of the timed training steps
    train_steps: tuple[int, int] = (5, 200)  # least and most timed steps
    finetune_images: int | None = None  # cap on train images for the ResNet50 epochs
    search_trials: int = 12
    search_epochs: int = 6
    search_image_size: int = 32
    search_per_class: int = 160  # 1280 training images: 20 steps per epoch at batch 64
    search_seed: int = 0  # searcher seed of both sweeps (not a CLI flag: change it in Python)

    @classmethod
    def from_args(cls, args) -> "BenchSettings":
        base = cls(image_size=args.image_size, data=args.data, json_path=args.json,
                   quick=bool(args.quick))
        return base.quickened() if base.quick else base

    def quickened(self) -> "BenchSettings":
        """A smoke-test sized run (< 60 s on a 2-core CPU)."""
        return replace(self, quick=True, batch_size=16, photos_per_class=6, naive_max_batches=4,
                       repeats=1, loader_seconds=0.3, train_seconds=0.5, train_steps=(3, 20),
                       finetune_images=32, search_trials=4, search_epochs=2, search_per_class=16)


# ---------------------------------------------------------------------------------------------
# Pure helpers

def peak_flops(device_name: str) -> float | None:
    """bf16 dense peak FLOP/s of a GPU named like ``torch.cuda.get_device_name()``, or None."""
    tokens = set(re.split(r"[\s\-_/]+", device_name.upper()))
    for (gpu, variant), peak in _PEAK_VARIANTS.items():
        if gpu in tokens and variant in tokens:
            return peak
    for gpu, peak in PEAK_BF16_FLOPS.items():
        if gpu in tokens:
            return peak
    return None


def flop_fraction(flops_per_image: float, images_per_s: float, peak: float | None) -> float | None:
    """Achieved share of ``peak``: forward FLOPs x 3 (forward + backward, the backward pass
    costing about twice the forward; Kaplan et al. 2020, nanoGPT's estimate_mfu) x images/s."""
    if not peak:
        return None
    return 3.0 * flops_per_image * images_per_s / peak


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def best_of(runs: list[dict[str, Any]], key: str, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """The run with the highest ``key`` (the least disturbed by other work on the machine),
    with every run's ``key`` (and ``keep`` values) listed under ``runs`` to show the spread."""
    best = max(runs, key=lambda r: r[key] or 0.0)
    return {**best, "repeats": len(runs),
            "runs": [{k: r[k] for k in (key, *keep)} for r in runs]}


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus that of its finished (joined) children:
    the work a measurement cost, whatever share of the cores other programs took meanwhile."""
    try:
        import resource
    except ImportError:  # Windows: this process only
        return time.process_time()
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_info() -> dict[str, Any]:
    """CPU model, cores, library versions and the accelerator, for every result."""
    import torchvision

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    return {
        "cpu": cpu, "cpu_count": os.cpu_count(), "usable_cores": usable,
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "platform": platform.platform(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "device": "cuda" if cuda else "cpu",
        "device_name": name, "cuda": torch.version.cuda if cuda else None,
        "peak_bf16_tflops": (peak_flops(name) or 0) / 1e12 if cuda else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "env": {k: os.environ[k] for k in _ENV_KEYS if k in os.environ},
    }


def busy_machine(machine: dict[str, Any]) -> bool:
    """Other programs kept more runnable threads than there are cores (1-minute load)."""
    load = machine.get("load_average")
    return bool(load) and load[0] > machine["usable_cores"] + 0.5


def command_line(s: BenchSettings, search: bool) -> str:
    """The ``inat-tune bench`` command that reproduces these settings."""
    parts = [f"{k}={os.environ[k]}" for k in _ENV_KEYS if k in os.environ]
    parts += ["inat-tune", "bench"]
    if search:  # its own fixed dataset and image size
        parts.append("--search")
    else:
        if s.data:
            parts += ["--data", s.data]
        parts += ["--image-size", str(s.image_size)]
    if s.quick:
        parts.append("--quick")
    if s.json_path:
        parts += ["--json", s.json_path]
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# Data

def bench_root() -> Path:
    return Path(tempfile.gettempdir()) / "inat_tune_bench"


def synthetic_set(per_class: int, image_size: int, seed: int = 0) -> Path:
    """A generated dataset kept under the temporary folder (built once, then reused)."""
    from .data.synth import make_synthetic

    out = bench_root() / f"synth-{per_class}pc-{image_size}px-seed{seed}"
    if (out / "train").is_dir() and (out / "val").is_dir():
        return out
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    t0 = time.perf_counter()
    print(f"[bench] generating {per_class * 10} + {max(per_class // 4, 2) * 10} synthetic JPEGs "
          f"at ~{image_size} px into {out} (once)", flush=True)
    make_synthetic(partial, per_class=per_class, image_size=image_size, seed=seed)
    try:
        os.replace(partial, out)  # complete sets appear atomically
    except OSError:  # another bench run finished it first
        shutil.rmtree(partial, ignore_errors=True)
    print(f"[bench] generated in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def dataset_info(root: Path, files: tuple[str, ...]) -> dict[str, Any]:
    """Image count, sizes and file sizes of the benchmark's training files."""
    from PIL import Image

    from .data.synth import SYNTHETIC_NOTE

    sample = files[:: max(1, len(files) // 50)]
    sizes = []
    for rel in sample:
        with Image.open(root / rel) as im:
            sizes.append(im.size)
    nbytes = [(root / rel).stat().st_size for rel in files]
    marker = root / "SYNTHETIC.txt"  # written by make_synthetic
    synthetic = marker.is_file() and marker.read_text().startswith(SYNTHETIC_NOTE[:40])
    return {"root": str(root), "synthetic": synthetic, "train_images": len(files),
            "mean_width": float(np.mean([w for w, _ in sizes])),
            "mean_height": float(np.mean([h for _, h in sizes])),
            "min_side": int(min(min(s) for s in sizes)), "max_side": int(max(max(s) for s in sizes)),
            "mean_kb": float(np.mean(nbytes) / 1024), "total_mb": float(sum(nbytes) / 2**20)}


def _warm_page_cache(root: Path, files: tuple[str, ...]) -> None:
    """Read every file once, so neither pipeline pays (or is spared) the first disk read."""
    for rel in files:
        (root / rel).read_bytes()


# ---------------------------------------------------------------------------------------------
# 1. naive pipeline

def bench_naive(root: Path, image_size: int, batch_size: int, device: torch.device,
                max_batches: int | None = None) -> dict[str, Any]:
    """Iterate one epoch (or ``max_batches``) of the naive loader, batches moved to ``device``."""
    from .data.naive import naive_loader

    loader = naive_loader(root, image_size, batch_size)
    total_batches = len(loader)
    n = total_batches if max_batches is None else min(max_batches, total_batches)
    c0, t0 = cpu_seconds(), time.perf_counter()
    it = iter(loader)  # starts the worker processes
    xb, yb = next(it)
    xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
    _sync(device)
    t_first, first_n, shape = time.perf_counter(), len(yb), list(xb.shape)
    images = 0
    for _ in range(n - 1):
        xb, yb = next(it)
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        images += len(yb)
    _sync(device)
    t_end = time.perf_counter()
    del it  # stops (joins) the workers, so their CPU time is counted
    cpu = cpu_seconds() - c0
    first = t_first - t0
    steady = images / (t_end - t_first) if images else None
    full = n == total_batches or steady is None
    # a capped run extrapolates the epoch: first batch + the rest at the steady rate
    epoch = (t_end - t0) if full else first + (len(loader.dataset) - batch_size) / steady
    return {"workers": loader.num_workers, "batch_size": batch_size, "batches": n,
            "images_per_s": steady, "first_batch_s": first, "epoch_s": epoch,
            "epoch_measured": full, "epoch_images_per_s": len(loader.dataset) / epoch,
            "cpu_ms_per_image": 1e3 * cpu / (images + first_n), "shape": shape}


# ---------------------------------------------------------------------------------------------
# 2. decode cache and the device loader

def bench_cache_build(root: Path, files: tuple[str, ...], image_size: int, cache_dir: Path):
    """Build the decode cache of ``files`` into the empty ``cache_dir``;
    (cache, seconds, CPU-seconds with the worker processes')."""
    from .data.cache import build_cache

    c0, t0 = cpu_seconds(), time.perf_counter()
    cache = build_cache(root, files, image_size, cache_dir=cache_dir, progress=False)
    return cache, time.perf_counter() - t0, cpu_seconds() - c0


def bench_device_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, min_seconds: float,
                        device: torch.device) -> dict[str, Any]:
    """Shuffled, augmented, normalised batches from device tensors: images/s (first excluded)."""
    from .data.loader import Augment, DeviceLoader

    loader = DeviceLoader(x, y, batch_size, shuffle=True, augment=Augment(), seed=0,
                          drop_last=len(y) > batch_size)
    it = iter(loader)
    next(it)  # warm-up batch
    _sync(device)
    c0, t0 = cpu_seconds(), time.perf_counter()
    images, epochs = 0, 0
    while True:
        for xb, yb in it:
            images += len(yb)
        _sync(device)
        epochs += 1
        if time.perf_counter() - t0 >= min_seconds:
            break
        loader.set_epoch(epochs)
        it = iter(loader)
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - c0
    return {"images_per_s": images / seconds, "images": images, "seconds": seconds,
            "cpu_ms_per_image": 1e3 * cpu / images,
            "shape": [batch_size, *x.shape[1:]]}


# ---------------------------------------------------------------------------------------------
# 3. training throughput of the scratch CNN

class _RepeatBatches:
    """``steps`` batches cycling through a few pre-augmented ones, shaped like a DeviceLoader
    for ``train_one_epoch``: the timing is the model's step, not the data path."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int) -> None:
        self.batches, self.steps = batches, steps
        self.y = batches[0][1]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(self.steps):
            yield self.batches[i % len(self.batches)]


def train_variants(device: torch.device) -> list[dict[str, Any]]:
    if device.type != "cuda":
        return [{"name": "fp32", "precision": "fp32", "channels_last": False, "compile": False}]
    return [
        {"name": "fp32", "precision": "fp32", "channels_last": False, "compile": False},
        {"name": "bf16", "precision": "bf16", "channels_last": False, "compile": False},
        {"name": "bf16+channels_last", "precision": "bf16", "channels_last": True, "compile": False},
        {"name": "bf16+channels_last+compile", "precision": "bf16", "channels_last": True,
         "compile": True},
    ]


def bench_train_step(x: torch.Tensor, y: torch.Tensor, num_classes: int, image_size: int,
                     batch_size: int, device: torch.device, variant: dict[str, Any],
                     target_seconds: float, steps_range: tuple[int, int],
                     repeats: int = 1) -> dict[str, Any]:
    """Images/s of the default scratch CNN's training step (AdamW, cross-entropy)."""
    from .config import RunConfig
    from .data.loader import Augment, DeviceLoader
    from .models.counting import count_for_config
    from .models.registry import create_model
    from .train import build_optimizer, train_one_epoch, uses_bf16

    cfg = RunConfig.from_dict({"image_size": image_size, "batch_size": batch_size,
                               "precision": variant["precision"],
                               "channels_last": variant["channels_last"],
                               "compile": variant["compile"]})
    cl = cfg.channels_last and device.type == "cuda"
    loader = DeviceLoader(x, y, batch_size, shuffle=True, augment=Augment(), seed=0,
                          drop_last=len(y) > batch_size, channels_last=cl)
    batches = []
    for xb, yb in loader:
        batches.append((xb, yb))
        if len(batches) == 4:
            break
    torch.manual_seed(0)
    model = create_model(cfg, num_classes=num_classes).to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    net = torch.compile(model) if cfg.compile and device.type == "cuda" else model
    loss_fn = torch.nn.CrossEntropyLoss()
    bf16 = uses_bf16(cfg, device)

    def run(steps: int) -> float:
        _sync(device)
        t0 = time.perf_counter()
        train_one_epoch(net, _RepeatBatches(batches, steps), optimizer, loss_fn, lambda: None, bf16)
        _sync(device)  # train_one_epoch ends with .item(): already synchronised
        return time.perf_counter() - t0

    t_compile = run(3 if cfg.compile else 2)  # warm-up (and compilation)
    probe = run(2) / 2
    lo, hi = steps_range
    steps = int(min(hi, max(lo, math.ceil(target_seconds / max(probe, 1e-6)))))
    all_seconds = [run(steps) for _ in range(repeats)]
    seconds = min(all_seconds)
    ips = steps * len(batches[0][1]) / seconds
    flops = count_for_config(cfg, num_classes)["flops"]
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    return {**variant, "steps": steps, "batch_size": len(batches[0][1]), "seconds": seconds,
            "runs_images_per_s": [steps * len(batches[0][1]) / t for t in all_seconds],
            "images_per_s": ips, "warmup_s": t_compile, "fwd_gflop_per_image": flops / 1e9,
            "achieved_tflops": 3 * flops * ips / 1e12,
            "peak_fraction": flop_fraction(flops, ips, peak)}


# ---------------------------------------------------------------------------------------------
# 4. head-only ResNet50 with and without the frozen-feature cache

def finetune_available() -> str | None:
    """None when the finetune model can be built, else why not."""
    try:
        import inat_tune.models.pretrained  # noqa: F401
    except ImportError as e:
        return f"inat_tune.models.pretrained does not import yet ({e})"
    return None


def bench_finetune(data, image_size: int, batch_size: int, device: torch.device,
                   cache_dir: Path) -> dict[str, Any]:
    """One epoch of ``fit()`` with feature_cache False and True (augment off: the cache needs
    it). The feature store is pointed at the empty ``cache_dir``, so the first cached run really
    computes the features; a second cached run then loads them, as later trials of a sweep do."""
    from .config import RunConfig
    from .train import fit

    runs = {}
    previous = os.environ.get("INAT_TUNE_CACHE")
    os.environ["INAT_TUNE_CACHE"] = str(cache_dir)
    try:
        for label, cached in (("without_cache", False), ("with_cache", True),
                              ("with_cache_later_trial", True)):
            cfg = RunConfig.from_dict({"model": "finetune", "backbone": "resnet50",
                                       "weights": "none", "strategy": "head_only",
                                       "image_size": image_size, "epochs": 1, "augment": False,
                                       "feature_cache": cached, "batch_size": batch_size})
            _sync(device)
            t0 = time.perf_counter()
            result = fit(cfg, data, device=device, log=None)
            _sync(device)
            wall = time.perf_counter() - t0
            h = result.history[0]
            info = getattr(result.state.model, "feature_cache", None) if cached else None
            runs[label] = {
                "fit_wall_s": wall, "epoch_s": h["epoch_seconds"], "images_per_s": h["images_per_s"],
                "trainable_params": h["trainable_params"], "used_features": info is not None,
                "features_s": getattr(info, "seconds", None),
                "features_loaded": getattr(info, "loaded", None)}
    finally:
        if previous is None:
            os.environ.pop("INAT_TUNE_CACHE", None)
        else:
            os.environ["INAT_TUNE_CACHE"] = previous
    off, on, later = runs["without_cache"], runs["with_cache"], runs["with_cache_later_trial"]
    return {**runs, "train_images": len(data.train.labels), "val_images": len(data.val.labels),
            "epoch_speedup": _ratio(off["epoch_s"], on["epoch_s"]),
            "first_trial_wall_speedup": _ratio(off["fit_wall_s"], on["fit_wall_s"]),
            "later_trial_wall_speedup": _ratio(off["fit_wall_s"], later["fit_wall_s"]),
            "note": "epoch_s is fit()'s training pass; fit_wall_s adds building the model, moving "
                    "the data, the features (computed once, then loaded by later trials) and "
                    "validation"}


def _subset(data, max_train: int | None):
    """``data`` with at most ``max_train`` training and ``max_train // 4`` validation images."""
    if max_train is None or len(data.train.labels) <= max_train:
        return data
    from .data.pipeline import ArraySplit

    def cut(part, n):
        return ArraySplit(images=part.images[:n], labels=part.labels[:n], files=part.files[:n])

    return replace(data, train=cut(data.train, max_train), val=cut(data.val, max(8, max_train // 4)))


# ---------------------------------------------------------------------------------------------
# 5. Ray overhead

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
    """ray.init seconds; trial start -> first reported epoch (received by the driver)."""
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


# ---------------------------------------------------------------------------------------------
# --search: TPE + ASHA against random search

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


def read_trial_results(experiment: Path) -> list[list[dict[str, Any]]]:
    """The per-epoch rows of every trial folder's result.json (one list per trial)."""
    trials = []
    for f in sorted(experiment.glob("*/result.json")):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if rows:
            trials.append(rows)
    return trials


def summarize_sweep(trials: list[list[dict[str, Any]]], wall_s: float,
                    metric: str = "val_acc") -> dict[str, Any]:
    """Epochs, trial-seconds and the best ``metric`` of one sweep, with the running best per
    epoch consumed (epochs of all trials in the order they were reported)."""
    rows = sorted((r for t in trials for r in t),
                  key=lambda r: (r.get("timestamp", 0), r.get("training_iteration", 0)))
    running, best = [], -math.inf
    for r in rows:
        best = max(best, r.get(metric, -math.inf))
        running.append(best)
    return {"trials": len(trials), "epochs": len(rows),
            "trial_seconds": float(sum(t[-1].get("time_total_s", 0.0) for t in trials)),
            "wall_s": wall_s, f"best_{metric}": best if rows else None,
            "epochs_per_trial": [len(t) for t in trials], "running_best": running}


def epochs_to_reach(running_best: list[float], target: float) -> int | None:
    """How many epochs were consumed when the running best first reached ``target``."""
    for i, v in enumerate(running_best):
        if v >= target - 1e-9:
            return i + 1
    return None


def bench_search(s: BenchSettings) -> dict[str, Any]:
    """Run both sweeps through ``run_sweep`` and compare epochs, seconds and best val_acc."""
    try:
        import ray
    except ImportError as e:
        return {"skipped": f"ray is not importable ({e})"}
    from .tune.runner import SweepOptions, run_sweep
    from .tune.space import load_space

    data = synthetic_set(s.search_per_class, 40)  # drawn at ~40 px, trained at 32
    spaces = search_spaces(s.search_trials, s.search_epochs, s.search_image_size)
    out: dict[str, Any] = {"data": str(data), "trials": s.search_trials,
                           "epochs_per_trial": s.search_epochs, "image_size": s.search_image_size,
                           "seed": s.search_seed, "spaces": spaces}
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
            out[key] = summarize_sweep(read_trial_results(Path(opts.experiment_path)),
                                       time.perf_counter() - t0)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)  # trial folders and checkpoints: read already
    tpe, rnd = out["tpe_asha"], out["random"]
    target = rnd["best_val_acc"]
    reach = epochs_to_reach(tpe["running_best"], target) if target is not None else None
    out["comparison"] = {
        "random_best_val_acc": target, "tpe_asha_best_val_acc": tpe["best_val_acc"],
        "tpe_asha_epochs": tpe["epochs"], "random_epochs": rnd["epochs"],
        "epoch_share": _ratio(tpe["epochs"], rnd["epochs"]),
        "trial_seconds_share": _ratio(tpe["trial_seconds"], rnd["trial_seconds"]),
        "wall_share": _ratio(tpe["wall_s"], rnd["wall_s"]),
        "tpe_asha_epochs_to_random_best": reach,
        "random_epochs_to_its_best": epochs_to_reach(rnd["running_best"], target) if target else None,
        "met": reach is not None and reach <= TARGET_EPOCH_SHARE * rnd["epochs"],
    }
    return out


# ---------------------------------------------------------------------------------------------
# The run

class _Sections:
    """Prints each section as it starts and records the seconds every section took."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._name, self._t0 = None, 0.0

    def start(self, name: str | None) -> None:
        now = time.perf_counter()
        if self._name is not None:
            self.seconds[self._name] = now - self._t0
        self._name, self._t0 = name, now
        if name is not None:
            print(f"[bench] {name} ...", flush=True)


def run_throughput(s: BenchSettings) -> dict[str, Any]:
    from .data.pipeline import load_tuning_data
    from .data.loader import to_device
    from .data.scan import scan_dataset
    from .train import select_device

    device = select_device()
    root = Path(s.data).expanduser() if s.data else synthetic_set(s.photos_per_class, PHOTO_SIZE)
    images = scan_dataset(root)
    out: dict[str, Any] = {"dataset": dataset_info(images.root, images.train)}
    _warm_page_cache(images.root, images.train)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=bench_root()))
    sections = _Sections()
    try:
        sections.start("naive")
        naive = best_of([bench_naive(images.root, s.image_size, s.batch_size, device,
                                     s.naive_max_batches) for _ in range(s.repeats)],
                        "images_per_s", keep=("epoch_s", "first_batch_s", "cpu_ms_per_image"))
        naive["epoch_s"] = min(r["epoch_s"] for r in naive["runs"])
        naive["cpu_ms_per_image"] = min(r["cpu_ms_per_image"] for r in naive["runs"])
        out["naive"] = naive

        sections.start("cached")
        builds, build_cpu = [], []
        for i in range(s.repeats):  # a fresh cache folder each time: really built
            cache_dir = work / f"cache{i}"
            cache, seconds, cpu = bench_cache_build(images.root, images.train, s.image_size,
                                                    cache_dir)
            builds.append(seconds)
            build_cpu.append(cpu)
        build_s = min(builds)
        ok = cache.ok
        t0 = time.perf_counter()
        x, y = to_device(cache.images[ok], np.asarray(images.train_labels)[ok], device)
        _sync(device)
        to_device_s = time.perf_counter() - t0
        dl = best_of([bench_device_loader(x, y, s.batch_size, s.loader_seconds, device)
                      for _ in range(s.repeats)], "images_per_s", keep=("cpu_ms_per_image",))
        dl["cpu_ms_per_image"] = min(r["cpu_ms_per_image"] for r in dl["runs"])
        out["cached"] = {
            "build_s": build_s, "build_runs_s": builds,
            "build_images_per_s": len(cache.files) / build_s,
            "build_cpu_ms_per_image": 1e3 * min(build_cpu) / len(cache.files),
            "build_over_naive_epoch": build_s / naive["epoch_s"], "to_device_s": to_device_s,
            "cache_mb": cache.images.nbytes / 2**20, "skipped": len(cache.skipped), **dl,
            "speedup_over_naive": _ratio(dl["images_per_s"], naive["images_per_s"]),
            "cpu_speedup_over_naive": _ratio(naive["cpu_ms_per_image"], dl["cpu_ms_per_image"]),
        }

        sections.start("train")
        train = [bench_train_step(x, y, len(images.classes), s.image_size, s.batch_size, device, v,
                                  s.train_seconds, s.train_steps, s.repeats)
                 for v in train_variants(device)]
        out["train"] = {"variants": train, "config": "RunConfig() defaults at the bench image size",
                        "note": "fp32 convolutions run as TF32 on CUDA (cuDNN's default); peak "
                        "fractions are against the bf16 dense peak" if device.type == "cuda" else
                        "CPU: fp32 only (bf16 autocast, channels_last and torch.compile are the "
                        "CUDA paths of fit()); no peak FLOP/s fraction on CPU"}
        del x, y

        sections.start("finetune")
        why = finetune_available()
        if why is not None:
            out["finetune"] = {"skipped": why}
        else:
            try:
                data = load_tuning_data(images.root, s.image_size, cache_dir=cache_dir,
                                        progress=False, images=images)
                out["finetune"] = bench_finetune(_subset(data, s.finetune_images), s.image_size,
                                                 s.batch_size, device, work / "features")
            except Exception as e:  # noqa: BLE001 - a model being written elsewhere: report it
                log.exception("finetune measurement failed")
                out["finetune"] = {"error": f"{type(e).__name__}: {e}"}

        sections.start("ray")
        out["ray"] = bench_ray(work / "ray")
        sections.start(None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["section_seconds"] = sections.seconds
    out["targets"] = targets(out, s.image_size)
    return out


def targets(out: dict[str, Any], image_size: int) -> dict[str, Any]:
    speed = out["cached"]["speedup_over_naive"]
    ratio = out["cached"]["build_over_naive_epoch"]
    return {
        f"cached >= {TARGET_SPEEDUP:g}x naive images/s ({image_size} px)":
            {"value": speed, "met": speed is not None and speed >= TARGET_SPEEDUP},
        f"cache build <= {TARGET_BUILD_RATIO:g}x one naive epoch":
            {"value": ratio, "met": ratio <= TARGET_BUILD_RATIO},
    }


# ---------------------------------------------------------------------------------------------
# Output

def _f(v: Any, unit: str = "", digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        text = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.{digits}g}"
        return f"{text}{unit}"
    return f"{v}{unit}"


def _peak_text(fraction: float | None, device: str) -> str:
    if device != "cuda":
        return "n/a on CPU"
    return "unknown GPU" if fraction is None else f"{fraction:.1%}"


def _spread(values: list[float], unit: str = "") -> str:
    if len(values) < 2:
        return ""
    return f"  [runs {_f(min(values), unit)} .. {_f(max(values), unit)}, n={len(values)}]"


def format_table(res: dict[str, Any]) -> str:
    m = res["machine"]
    mode = ("best of each measurement's repeats; "
            if res.get("settings", {}).get("repeats", 1) > 1 and "search" not in res else "")
    lines = [f"command : {res['command']}", f"date    : {res['date']}  ({mode}see JSON for all runs)",
             f"machine : {m['cpu']}, {m['usable_cores']} cores, torch {m['torch']}, "
             f"torchvision {m['torchvision']}, device {m['device_name']}, "
             f"load average {_f(m['load_average'][0] if m['load_average'] else None)}"]
    if busy_machine(m):
        lines.append(f"WARNING : the machine was busy (load average {m['load_average'][0]:.1f} on "
                     f"{m['usable_cores']} cores): every figure is a lower bound, and torch's "
                     "intra-op threads suffer most (OMP_WAIT_POLICY=PASSIVE limits that)")
    rows: list[tuple[str, str, str]] = []

    def add(section: str, what: str, value: str) -> None:
        rows.append((section, what, value))

    if "dataset" in res:
        d = res["dataset"]
        add("data", "train images", f"{d['train_images']} ({'synthetic, ' if d['synthetic'] else ''}"
            f"mean {d['mean_width']:.0f}x{d['mean_height']:.0f} px, {d['mean_kb']:.0f} kB)")
    if "naive" in res:
        n, c = res["naive"], res["cached"]
        add("naive", "images/s (first batch excluded)",
            _f(n["images_per_s"]) + _spread([r["images_per_s"] for r in n["runs"]]))
        add("naive", "one epoch" + ("" if n["epoch_measured"] else " (extrapolated)"),
            _f(n["epoch_s"], " s") + _spread([r["epoch_s"] for r in n["runs"]], " s"))
        add("naive", "CPU ms per image (workers included)", _f(n["cpu_ms_per_image"]))
        add("naive", "workers / batch", f"{n['workers']} / {n['batch_size']}")
        add("cached", "cache build (once)", _f(c["build_s"], " s") + _spread(c["build_runs_s"], " s"))
        add("cached", "build / naive epoch", _f(c["build_over_naive_epoch"], "x"))
        add("cached", "build CPU ms per image", _f(c["build_cpu_ms_per_image"]))
        add("cached", "device loader images/s (augmented)",
            _f(c["images_per_s"]) + _spread([r["images_per_s"] for r in c["runs"]]))
        add("cached", "device loader CPU ms per image", _f(c["cpu_ms_per_image"]))
        add("cached", "speed-up over naive (images/s)", _f(c["speedup_over_naive"], "x"))
        add("cached", "speed-up over naive (CPU time per image)", _f(c["cpu_speedup_over_naive"], "x"))
    for v in res.get("train", {}).get("variants", []):
        frac = v["peak_fraction"]
        add("train", f"scratch CNN {v['name']} images/s", f"{_f(v['images_per_s'])}  "
            f"({_f(v['achieved_tflops'], ' TFLOP/s')}, peak fraction "
            f"{_peak_text(frac, res['machine']['device'])})" + _spread(v["runs_images_per_s"]))
    if res.get("train", {}).get("note"):
        add("train", "note", res["train"]["note"])
    ft = res.get("finetune")
    if ft is not None:
        if "skipped" in ft or "error" in ft:
            add("finetune", "skipped", ft.get("skipped") or ft.get("error"))
        else:
            for k in ("without_cache", "with_cache", "with_cache_later_trial"):
                add("finetune", f"ResNet50 head-only, {k.replace('_', ' ')}",
                    f"epoch {_f(ft[k]['epoch_s'], ' s')}, fit wall {_f(ft[k]['fit_wall_s'], ' s')}")
            add("finetune", "epoch speed-up from the feature cache", _f(ft["epoch_speedup"], "x"))
            add("finetune", "1-epoch fit speed-up, first / later trial",
                f"{_f(ft['first_trial_wall_speedup'], 'x')} / {_f(ft['later_trial_wall_speedup'], 'x')}")
    ray = res.get("ray")
    if ray is not None:
        if "skipped" in ray or "error" in ray:
            add("ray", "skipped", ray.get("skipped") or ray.get("error"))
        else:
            add("ray", "ray.init", _f(ray["ray_init_s"], " s"))
            add("ray", "Tuner.fit -> trial running", _f(ray["launch_s"], " s"))
            add("ray", "trial start -> first epoch at driver", _f(ray["trial_start_to_first_report_s"], " s"))
    sr = res.get("search")
    if sr is not None:
        if "skipped" in sr:
            add("search", "skipped", sr["skipped"])
        else:
            for k in ("tpe_asha", "random"):
                r = sr[k]
                add("search", f"{k}: epochs / trial-seconds / sweep wall / best val_acc",
                    f"{r['epochs']} / {_f(r['trial_seconds'], ' s')} / {_f(r['wall_s'], ' s')} / "
                    f"{_f(r['best_val_acc'])}")
            c = sr["comparison"]
            add("search", "TPE+ASHA epochs to random's best",
                f"{_f(c['tpe_asha_epochs_to_random_best'])} of random's {c['random_epochs']}")
    for name, t in res.get("targets", {}).items():
        add("target", name, f"{_f(t['value'])} -> {'met' if t['met'] else 'MISSED'}")
    w = [max(len(r[i]) for r in rows) for i in range(2)] if rows else [0, 0]
    lines += [""] + [f"{a:<{w[0]}}  {b:<{w[1]}}  {c}" for a, b, c in rows]
    if res.get("section_seconds"):
        lines.append("\nseconds per section: " + ", ".join(
            f"{k} {v:.1f}" for k, v in res["section_seconds"].items()))
    return "\n".join(lines)


def run_bench(args) -> int:
    """``inat-tune bench``: run the measurements, print the table, write JSON if asked."""
    s = BenchSettings.from_args(args)
    search = bool(getattr(args, "search", False))
    bench_root().mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "date": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "command": command_line(s, search), "argv": list(sys.argv),
        "machine": machine_info(), "settings": asdict(s),
    }
    t0 = time.perf_counter()
    if search:
        sr = bench_search(s)
        res["search"] = sr
        if "comparison" in sr:
            c = sr["comparison"]
            res["targets"] = {
                f"TPE+ASHA reaches random's best with <= {TARGET_EPOCH_SHARE:.2g} of its epochs":
                    {"value": _ratio(c["tpe_asha_epochs_to_random_best"], c["random_epochs"]),
                     "met": c["met"]}}
    else:
        res.update(run_throughput(s))
    res["total_s"] = time.perf_counter() - t0
    res["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print()
    print(format_table(res))
    if s.json_path:
        path = Path(s.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=1, default=str))
        print(f"\nwrote {path}")
    return 0
