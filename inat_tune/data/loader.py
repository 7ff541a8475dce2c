"""Batches from tensors already on the device, augmented and normalised as whole batches.

The airbench recipe: the dataset lives on the device as uint8 (N x 3 x S x S); each batch is
indexed, converted to float, randomly resized-cropped and flipped with one ``grid_sample``
call, optionally colour-jittered, and normalised. No worker processes, no per-image Python.
"""

from __future__ import annotations

import math
import warnings
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

    On the CPU a memory-mapped array is not copied: every process reading the same cache
    shares its pages (one copy per node). The uint8 tensor is viewed as NCHW via permute, i.e. stored channels-last, which is the
    layout convolutions prefer on CUDA; ``.contiguous`` is not needed.
    """
    with warnings.catch_warnings():
        # A read-only memory map (the shared decode cache) stays shared: on the CPU the tensor
        # is a view of its pages, not a copy. Nothing writes into these uint8 images.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        x = torch.from_numpy(np.ascontiguousarray(images))
    x = x.to(device, non_blocking=True)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long).to(device)
    return x.permute(0, 3, 1, 2), y


def param_columns(aug: Augment) -> int:
    """Random numbers per image that ``aug`` uses: 4 for the crop, 1 for the flip, 3 for the
    colour jitter (brightness, contrast, saturation)."""
    return 4 + (1 if aug.flip else 0) + (3 if aug.color_jitter > 0 else 0)


def draw_params(aug: Augment, b: int, gen: torch.Generator) -> torch.Tensor:
    """The random numbers of one batch of ``b`` images (``b x param_columns(aug)``, float32, on
    ``gen``'s device), drawn in the order the per-batch code always drew them: crop (b x 4), flip
    (b), jitter (b x 3). Drawing a whole epoch batch by batch with this gives the same values
    as before, so seeded epochs are unchanged."""
    parts = [torch.rand(b, 4, generator=gen, device=gen.device)]
    if aug.flip:
        parts.append(torch.rand(b, generator=gen, device=gen.device).view(b, 1))
    if aug.color_jitter > 0:
        parts.append(torch.rand(b, 3, 1, 1, 1, generator=gen, device=gen.device).view(b, 3))
    return torch.cat(parts, dim=1)


def _as_params(x: torch.Tensor, aug: Augment, params: torch.Tensor | torch.Generator) -> torch.Tensor:
    """``params`` as given, or drawn now from a generator (then copied: one sync, kept for
    callers that pass a generator)."""
    if isinstance(params, torch.Generator):
        return draw_params(aug, x.shape[0], params).to(x.device)
    return params


def random_resized_crop_flip(x: torch.Tensor, aug: Augment,
                             params: torch.Tensor | torch.Generator) -> torch.Tensor:
    """Per-image random resized crop and horizontal flip of a float batch, in one grid_sample.

    ``params``: the batch's rows of :func:`draw_params` already on ``x``'s device (no host
    sync), or a generator to draw them from now."""
    b = x.shape[0]
    dev = x.device
    rand = _as_params(x, aug, params)
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
        flip = rand[:, 4] < 0.5
        sign = torch.where(flip, -sign, sign)
    grid = separable_grid(sw * sign, tx, sh, ty, x.shape[2], x.shape[3], x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def separable_grid(ax: torch.Tensor, bx: torch.Tensor, ay: torch.Tensor, by: torch.Tensor,
                   h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    """``F.affine_grid`` (align_corners=False) of the per-image maps x' = ax x + bx,
    y' = ay y + by (scale, flip and shift: no rotation), as b x h x w x 2.

    Built from two 1-D coordinate vectors broadcast to the grid instead of affine_grid's
    batched matmul over a b x h x w x 3 base grid: the same values, a fraction of the memory
    traffic (at 224 px the matmul was the loader's largest op on the CPU)."""
    dev = ax.device
    xs = (torch.arange(w, device=dev, dtype=dtype) * 2 + 1) / w - 1  # pixel centres in [-1, 1]
    ys = (torch.arange(h, device=dev, dtype=dtype) * 2 + 1) / h - 1
    gx = ax.to(dtype)[:, None] * xs + bx.to(dtype)[:, None]  # b x w
    gy = ay.to(dtype)[:, None] * ys + by.to(dtype)[:, None]  # b x h
    b = gx.shape[0]
    return torch.stack((gx[:, None, :].expand(b, h, w), gy[:, :, None].expand(b, h, w)), dim=-1)


def color_jitter(x: torch.Tensor, strength: float, params: torch.Tensor | torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation jitter per image, factors in [1-s, 1+s]; x in [0, 1].

    ``params``: b x 3 uniform numbers on ``x``'s device (the last 3 columns of
    :func:`draw_params`), or a generator to draw them from now."""
    b = x.shape[0]
    if isinstance(params, torch.Generator):
        params = torch.rand(b, 3, 1, 1, 1, generator=params, device=params.device).to(x.device)
    f = 1 + strength * (2 * params.reshape(b, 3, 1, 1, 1) - 1)
    x = x * f[:, 0]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * f[:, 1] + mean
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - gray) * f[:, 2] + gray
    return x.clamp_(0, 1)


def to_device_once(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to ``device`` without blocking the host: pinned, non_blocking on CUDA
    (the pinned buffer is kept alive by the caching host allocator until the copy is done)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


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
        self.scale_1 = 1 / self.std  # for values in [0, 1]
        self.scale_255 = self.scale_1 / 255  # for uint8 values 0..255
        self.shift = -self.mean / self.std

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _generator(self) -> torch.Generator:
        # CPU generator for all devices: identical draws on CPU and CUDA for a seed.
        return torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)

    def _augments(self) -> bool:
        return self.augment is not None and self.x.dtype == torch.uint8

    def epoch_params(self, gen: torch.Generator) -> torch.Tensor | None:
        """The whole epoch's augmentation numbers (one row per image, batch after batch),
        drawn on the CPU generator exactly as the per-batch code drew them, copied to the
        device once: no host sync per batch."""
        if not self._augments():
            return None
        n = len(self.y)
        rows = [draw_params(self.augment, min((i + 1) * self.batch_size, n) - i * self.batch_size, gen)
                for i in range(len(self))]
        if not rows:
            return None
        return to_device_once(torch.cat(rows), self.x.device)

    def transform(self, xb: torch.Tensor, params: torch.Tensor | torch.Generator | None) -> torch.Tensor:
        """Scale, augment (with ``params``: this batch's rows of :meth:`epoch_params` on the
        device, or a generator to draw them from) and normalise a batch."""
        if xb.dtype != torch.uint8:
            return xb
        xb = xb.float()
        scale = self.scale_255  # /255 and /std in one pass, after the crop (sampling is linear)
        if self.augment is not None and params is not None:
            if isinstance(params, torch.Generator):
                params = draw_params(self.augment, xb.shape[0], params).to(xb.device)
            if self.augment.color_jitter > 0:  # the jitter works on [0, 1] values
                xb.div_(255)
                scale = self.scale_1
            xb = random_resized_crop_flip(xb, self.augment, params)
            if self.augment.color_jitter > 0:
                xb = color_jitter(xb, self.augment.color_jitter, params[:, -3:])
        xb = xb.mul_(scale).add_(self.shift)  # (x - mean) / std, in place
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb.to(self.dtype)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        gen = self._generator()
        # the permutation first, then the augmentation numbers: the generator's order of old
        order = to_device_once(torch.randperm(n, generator=gen), self.y.device) if self.shuffle else None
        params = self.epoch_params(gen)
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min((i + 1) * self.batch_size, n))
            idx = order[sl] if order is not None else None
            xb = self.x[idx] if idx is not None else self.x[sl]
            yb = self.y[idx] if idx is not None else self.y[sl]
            yield self.transform(xb, params[sl] if params is not None else None), yb
