"""The naive pipeline of the course notebooks, kept as the benchmark's baseline and a fallback.

    ImageFolder(root/train)
    -> Compose([RandomResizedCrop(S), RandomHorizontalFlip(), ToTensor(), Normalize(mean, std)])
       (augment=False: Compose([Resize((S, S)), ToTensor(), Normalize(mean, std)]))
    -> DataLoader(batch_size, shuffle=True, num_workers=<cores>, pin_memory on CUDA)

Every epoch of every trial re-reads and re-decodes every JPEG at full resolution (PIL, no
draft mode), then resizes it, in worker processes; that is the cost ``inat_tune.data.cache``
pays once. Unlike ``inat_tune.data.scan``, ImageFolder does not guard against what real
folders hold: a zero-byte or truncated JPEG raises (``PIL.UnidentifiedImageError`` /
``OSError``) inside a worker and ends the epoch, and a hidden folder such as
``.ipynb_checkpoints`` is taken as a class (an empty one makes ImageFolder refuse the whole
folder with FileNotFoundError). That is the behaviour the notebooks have; use this loader
only on clean folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .loader import IMAGENET_MEAN, IMAGENET_STD


def default_workers() -> int:
    """The cores this process may use (the notebooks' ``num_workers=os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def naive_transform(image_size: int, augment: bool = True, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """torchvision's per-image transform: random resized crop (or a plain resize) + flip."""
    from torchvision import transforms

    resize = (transforms.RandomResizedCrop(image_size) if augment
              else transforms.Resize((image_size, image_size)))
    steps = [resize, transforms.RandomHorizontalFlip()] if augment else [resize]
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])


def naive_loader(root: str | Path, image_size: int, batch_size: int, workers: int | None = None,
                 augment: bool = True) -> DataLoader:
    """A shuffling DataLoader over ``root/train`` with per-image PIL decoding and transforms.

    ``workers`` defaults to the number of usable cores; pinned memory is used when CUDA is
    available (batches then reach the GPU with ``.to(device, non_blocking=True)``).
    Raises on unreadable images (see the module docstring).
    """
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(Path(root).expanduser() / "train"),
                          transform=naive_transform(image_size, augment))
    workers = default_workers() if workers is None else workers
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                      pin_memory=torch.cuda.is_available())
