"""Sections 1 and 2: the naive pipeline against the decode cache and the device loader.

naive   ImageFolder + per-image torchvision transforms + DataLoader(num_workers=cores):
        images/s delivered to the device (first batch excluded: worker start-up) and the wall
        time of one epoch (start-up included: the notebooks pay it every epoch).
cached  the one-time decode-cache build (into a fresh, empty cache folder, so it is really
        built) against one naive epoch, and DeviceLoader's batched augmentation over the
        cache on the device: images/s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .measure import cpu_seconds, sync


def bench_naive(root: Path, image_size: int, batch_size: int, device: torch.device,
                max_batches: int | None = None) -> dict[str, Any]:
    """Iterate one epoch (or ``max_batches``) of the naive loader, batches moved to ``device``."""
    from ..data.naive import naive_loader

    loader = naive_loader(root, image_size, batch_size)
    total_batches = len(loader)
    n = total_batches if max_batches is None else min(max_batches, total_batches)
    c0, t0 = cpu_seconds(), time.perf_counter()
    it = iter(loader)  # starts the worker processes
    xb, yb = next(it)
    xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
    sync(device)
    t_first, first_n, shape = time.perf_counter(), len(yb), list(xb.shape)
    images = 0
    for _ in range(n - 1):
        xb, yb = next(it)
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        images += len(yb)
    sync(device)
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


def bench_cache_build(root: Path, files: tuple[str, ...], image_size: int, cache_dir: Path):
    """Build the decode cache of ``files`` into the empty ``cache_dir``;
    (cache, seconds, CPU-seconds with the worker processes')."""
    from ..data.cache import build_cache

    c0, t0 = cpu_seconds(), time.perf_counter()
    cache = build_cache(root, files, image_size, cache_dir=cache_dir, progress=False)
    return cache, time.perf_counter() - t0, cpu_seconds() - c0


def bench_device_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, min_seconds: float,
                        device: torch.device) -> dict[str, Any]:
    """Shuffled, augmented, normalised batches from device tensors: images/s (first excluded)."""
    from ..data.loader import Augment, DeviceLoader

    loader = DeviceLoader(x, y, batch_size, shuffle=True, augment=Augment(), seed=0,
                          drop_last=len(y) > batch_size)
    it = iter(loader)
    next(it)  # warm-up batch
    sync(device)
    c0, t0 = cpu_seconds(), time.perf_counter()
    images, epochs = 0, 0
    while True:
        for xb, yb in it:
            images += len(yb)
        sync(device)
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
