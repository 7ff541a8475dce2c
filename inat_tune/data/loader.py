"""Batches from tensors already on the device, augmented and normalised as whole batches.

The airbench recipe: the dataset lives on the device as uint8 (N x 3 x S x S); each batch is
indexed, converted to float, randomly resized-cropped and flipped with one ``grid_sample``
call, optionally colour-jittered, and normalised. No worker processes, no per-image Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

# ImageNet statistics (torchvision's weights use these too); inputs are scaled to [0, 1] first.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Augment:
    """Batched augmentation settings (torchvision RandomResizedCrop defaults for scale/ratio)."""

    crop_scale: tuple[float, float] = (0.35, 1.0)  # share of the image area kept
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    color_jitter: float = 0.0  # brightness/contrast/saturation factor range 1 +- this


def to_device(images: np.ndarray, labels: np.ndarray, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """N x S x S x 3 uint8 (memmap ok) -> (N x 3 x S x S uint8, N int64) on ``device``.

    The uint8 tensor is viewed as NCHW via permute, i.e. stored channels-last, which is the
    layout convolutions prefer on CUDA; ``.contiguous`` is not needed.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long).to(device)
    return x.permute(0, 3, 1, 2), y


def random_resized_crop_flip(x: torch.Tensor, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    """Per-image random resized crop and horizontal flip of a float batch, in one grid_sample."""
    b = x.shape[0]
    dev = x.device
    rand = torch.rand(b, 4, generator=gen, device=gen.device).to(dev)
    lo, hi = aug.crop_scale
    area = lo + (hi - lo) * rand[:, 0]
    log_r = math.log(aug.crop_ratio[0]) + (math.log(aug.crop_ratio[1]) - math.log(aug.crop_ratio[0])) * rand[:, 1]
    ratio = torch.exp(log_r)
    # crop width/height as fractions of the image side (clamped to the image)
    sw = torch.sqrt(area * ratio).clamp(max=1.0)
    sh = torch.sqrt(area / ratio).clamp(max=1.0)
    # centre offsets in normalised coordinates [-1, 1] keep the crop inside the image
    tx = (1 - sw) * (2 * rand[:, 2] - 1)
    ty = (1 - sh) * (2 * rand[:, 3] - 1)
    sign = torch.ones(b, device=dev)
    if aug.flip:
        flip = torch.rand(b, generator=gen, device=gen.device).to(dev) < 0.5
        sign = torch.where(flip, -sign, sign)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = sw * sign
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sh
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def color_jitter(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation jitter per image, factors in [1-s, 1+s]; x in [0, 1]."""
    b = x.shape[0]
    f = 1 + strength * (2 * torch.rand(b, 3, 1, 1, 1, generator=gen, device=gen.device).to(x.device) - 1)
    x = x * f[:, 0]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * f[:, 1] + mean
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - gray) * f[:, 2] + gray
    return x.clamp_(0, 1)


class DeviceLoader:
    """Iterate (inputs, labels) batches over device tensors.

    ``x`` is either uint8 images (N x 3 x S x S: scaled, augmented if ``augment``, normalised)
    or float features (passed through unchanged, e.g. cached frozen-backbone outputs).
    Shuffling and augmentation draw from a generator seeded by (seed, epoch), so an epoch is
    reproducible and a resumed run sees the same batches it would have seen.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False,
                 augment: Augment | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 seed: int = 0, drop_last: bool = False, dtype: torch.dtype = torch.float32,
                 channels_last: bool = False) -> None:
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle, self.augment = shuffle, augment
        self.seed, self.epoch = seed, 0
        self.drop_last = drop_last
        self.dtype = dtype
        self.channels_last = channels_last
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(mean, device=x.device, dtype=torch.float32).view(shape)
        self.std = torch.tensor(std, device=x.device, dtype=torch.float32).view(shape)

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _generator(self) -> torch.Generator:
        # CPU generator for all devices: identical draws on CPU and CUDA for a seed.
        return torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)

    def transform(self, xb: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if xb.dtype != torch.uint8:
            return xb
        xb = xb.float().div_(255)
        if self.augment is not None and gen is not None:
            xb = random_resized_crop_flip(xb, self.augment, gen)
            if self.augment.color_jitter > 0:
                xb = color_jitter(xb, self.augment.color_jitter, gen)
        xb = (xb - self.mean) / self.std
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb.to(self.dtype)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        gen = self._generator()
        order = torch.randperm(n, generator=gen).to(self.y.device) if self.shuffle else None
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min((i + 1) * self.batch_size, n))
            idx = order[sl] if order is not None else None
            xb = self.x[idx] if idx is not None else self.x[sl]
            yb = self.y[idx] if idx is not None else self.y[sl]
            yield self.transform(xb, gen), yb
