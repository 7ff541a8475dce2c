"""Frozen-backbone features: a model's frozen prefix run once over the tuning images, stored
beside the decode cache and shared by every trial with the same prefix.

With a frozen prefix (strategies head_only, freeze_until) and no augmentation, ``fit()`` calls
:func:`cached_features`: the prefix runs once over the uint8 images, normalised as the
DeviceLoader does, and the loop then trains only the suffix on the features. They are stored
under ``$INAT_TUNE_CACHE/features/<key>/`` (``train.pt``, ``val.pt``, ``meta.json``), keyed by
the data files, image size, backbone, the frozen prefix's exact tensors (which identify the
weights), the split point, the normalisation and the dtype, so every trial of a sweep with the
same frozen prefix computes them once. A store that cannot be written costs only the reuse.

The model only says what its frozen prefix is (``frozen_prefix()``, ``prefix_digest()``,
``mean``/``std``, see :class:`~inat_tune.models.pretrained.FinetuneModel`); the computing and
the I/O happen here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torchvision
from torch import nn

from .atomic import build_folder_once
from .cache import cache_root, fingerprint
from .loader import DeviceLoader
from .warm import WARM

if TYPE_CHECKING:
    from ..models.pretrained import FinetuneModel

log = logging.getLogger(__name__)

# Bump when the meaning of cached features changes (normalisation, piece definitions).
FEATURE_VERSION = "features-v1"
FEATURE_BATCH = 256  # images per forward pass when computing features (eval, no grad)


@dataclass(frozen=True)
class FeatureCacheInfo:
    """How the last :func:`cached_features` call got its features (kept as ``model.feature_cache``)."""

    split: str  # the last frozen piece's stage: the features are its output
    path: Path | None  # on-disk folder (None: not stored on disk)
    loaded: bool  # True: read from disk, not computed
    seconds: float
    shapes: tuple[tuple[int, ...], tuple[int, ...]]


def features_root() -> Path:
    return cache_root() / "features"


def cached_features(model: nn.Module, x_tr: torch.Tensor, x_va: torch.Tensor, *, data: Any = None,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    """Frozen-prefix features of the uint8 image tensors, and the module to train on them.

    Returns ``(f_tr, f_va, suffix)`` and records how they were got in ``model.feature_cache``;
    or ``(x_tr, x_va, model)`` when the model has no frozen prefix (no ``frozen_prefix()``, or
    a strategy that trains every stage or changes over time). With ``data`` (a TuningData) the
    features are stored on disk and reused by every run with the same data, image size,
    frozen tensors and split. ``mean``/``std`` default to the model's.
    """
    frozen = model.frozen_prefix() if hasattr(model, "frozen_prefix") else None
    if frozen is None:
        return x_tr, x_va, model
    mean = tuple(mean) if mean is not None else model.mean
    std = tuple(std) if std is not None else model.std
    dtype = torch.bfloat16 if bf16 else torch.float32
    t0 = time.perf_counter()
    key = feature_key(model, frozen.pieces, data, mean, std, dtype) if data is not None else None

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        return (compute_features(frozen.prefix, x_tr, mean, std, bf16, dtype=dtype),
                compute_features(frozen.prefix, x_va, mean, std, bf16, dtype=dtype))

    def stored() -> tuple[torch.Tensor, torch.Tensor, Path | None, bool]:
        (f_tr, f_va), path, loaded = _disk_cached(key, compute, {
            "backbone": model.backbone, "weights": model.weights, "split": frozen.stage,
            "pieces": frozen.pieces, "dtype": str(dtype), "image_size": getattr(data, "image_size", None),
            "root": str(getattr(data, "root", "")), "n_train": len(x_tr), "n_val": len(x_va)})
        return f_tr.to(x_tr.device), f_va.to(x_va.device), path, loaded

    try:
        if key is None:
            (f_tr, f_va), path, loaded = compute(), None, False
        else:
            # kept in this process for its next trial (warm data): then nothing is read again
            hits = WARM.hits
            f_tr, f_va, path, loaded = WARM.get(
                ("features", str(features_root()), key, str(x_tr.device)), stored, device=x_tr.device.type,
                nbytes=lambda v: v[0].numel() * v[0].element_size() + v[1].numel() * v[1].element_size())
            loaded = loaded or WARM.hits > hits
    finally:
        model.train(model.training)  # compute_features put the prefix in eval mode
    f_tr, f_va = f_tr.to(x_tr.device), f_va.to(x_va.device)
    model.feature_cache = FeatureCacheInfo(split=frozen.stage, path=path, loaded=loaded,
                                           seconds=time.perf_counter() - t0,
                                           shapes=(tuple(f_tr.shape), tuple(f_va.shape)))
    log.info("features after %s (%s): %s in %.1f s%s", frozen.stage, model.strategy,
             "loaded" if loaded else "computed", model.feature_cache.seconds,
             f" [{path}]" if path else "")
    return f_tr, f_va, frozen.suffix


@torch.no_grad()
def compute_features(prefix: nn.Module, x: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                     bf16: bool = False, *, dtype: torch.dtype = torch.float32,
                     batch_size: int = FEATURE_BATCH) -> torch.Tensor:
    """``prefix`` over uint8 images (N x 3 x S x S) in eval mode, normalised like the
    DeviceLoader does; returns N x ... features of ``dtype`` on ``x``'s device."""
    prefix.eval()
    dev = x.device
    loader = DeviceLoader(x, torch.zeros(len(x), dtype=torch.long, device=dev), batch_size,
                          mean=mean, std=std, channels_last=dev.type == "cuda")
    out: torch.Tensor | None = None
    start = 0
    for xb, _ in loader:
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16):
            fb = prefix(xb)
        if out is None:  # preallocated: no second copy from a final torch.cat
            out = torch.empty((len(x), *fb.shape[1:]), dtype=dtype, device=dev)
        out[start:start + len(fb)] = fb.to(dtype)
        start += len(fb)
    assert out is not None, "no images"
    return out


def feature_key(model: "FinetuneModel", pieces: int, data: Any, mean: Sequence[float],
                std: Sequence[float], dtype: torch.dtype) -> str | None:
    """The store key of the features of ``model``'s first ``pieces`` pieces over ``data``, or
    None when the data cannot be fingerprinted (then the features stay in memory)."""
    try:
        size = int(data.image_size)
        files = (fingerprint(Path(data.root), list(data.train.files), size),
                 fingerprint(Path(data.root), list(data.val.files), size))
    except (OSError, AttributeError) as e:  # files gone or not a TuningData: memory only
        log.warning("feature cache: cannot fingerprint the data (%s); not storing features", e)
        return None
    h = hashlib.blake2b(digest_size=12)
    h.update(json.dumps([FEATURE_VERSION, torchvision.__version__, model.backbone, pieces, size,
                         files, list(mean), list(std), str(dtype)]).encode())
    h.update(model.prefix_digest(pieces).encode())
    return f"{model.backbone}-{h.hexdigest()}"


def _disk_cached(key: str, compute: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                 meta: dict[str, Any]) -> tuple[tuple[torch.Tensor, torch.Tensor], Path | None, bool]:
    """Load the features of ``key`` or compute and store them (once per node, see
    :mod:`inat_tune.data.atomic`); returns (features, folder or None, loaded from disk)."""
    final = features_root() / key
    computed: list[tuple[torch.Tensor, torch.Tensor]] = []
    started = False

    def build(tmp: Path) -> None:
        nonlocal started
        started = True
        t0 = time.perf_counter()
        f_tr, f_va = compute()
        computed.append((f_tr, f_va))
        info = {**meta, "compute_seconds": time.perf_counter() - t0, "train_shape": list(f_tr.shape),
                "val_shape": list(f_va.shape), "built_by": os.getpid()}
        torch.save(f_tr.cpu(), tmp / "train.pt")
        torch.save(f_va.cpu(), tmp / "val.pt")
        (tmp / "meta.json").write_text(json.dumps(info, indent=1))  # last: marks it complete

    try:
        built = build_folder_once(final, build)
    except OSError as e:  # a failed write only costs the reuse
        if computed:
            log.warning("feature cache: could not store %s (%s); continuing without", final, e)
            return computed[0], None, False
        if started:  # compute() itself failed: not a storage problem
            raise
        log.warning("feature cache %s not writable (%s): computing in memory only", final.parent, e)
        return compute(), None, False
    if built:
        return computed[0], final, False
    return _load_features(final), final, True


def _load_features(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    # mmap: trials on one node share the pages; .to(device) copies what the device needs
    return tuple(torch.load(path / f"{s}.pt", map_location="cpu", weights_only=True, mmap=True)
                 for s in ("train", "val"))  # type: ignore[return-value]
