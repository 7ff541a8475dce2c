"""Section 4: one epoch of ``fit()`` for a head-only ResNet50 with and without the
frozen-feature cache (weights "none": the cost does not depend on the weights)."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .measure import ratio, sync


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
    from ..config import RunConfig
    from ..train import fit

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
            sync(device)
            t0 = time.perf_counter()
            result = fit(cfg, data, device=device, log=None)
            sync(device)
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
            "epoch_speedup": ratio(off["epoch_s"], on["epoch_s"]),
            "first_trial_wall_speedup": ratio(off["fit_wall_s"], on["fit_wall_s"]),
            "later_trial_wall_speedup": ratio(off["fit_wall_s"], later["fit_wall_s"]),
            "note": "epoch_s is fit()'s training pass; fit_wall_s adds building the model, moving "
                    "the data, the features (computed once, then loaded by later trials) and "
                    "validation"}


def subset(data, max_train: int | None):
    """``data`` with at most ``max_train`` training and ``max_train // 4`` (at least 8)
    validation images."""
    if max_train is None or len(data.train.labels) <= max_train:
        return data
    from ..data.pipeline import ArraySplit

    def cut(part, n):
        return ArraySplit(images=part.images[:n], labels=part.labels[:n], files=part.files[:n])

    return replace(data, train=cut(data.train, max_train), val=cut(data.val, max(8, max_train // 4)))
