"""CUDA-only checks (``gpu`` marker; skipped without a CUDA device). ``make gpu-check`` runs
them on a GPU machine; none of them has run on a GPU from this repository's CI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inat_tune.data.loader import Augment, DeviceLoader, to_device

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
pytestmark = [pytest.mark.gpu, needs_cuda]


def _images(n: int = 70, size: int = 32):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % 10


@pytest.mark.parametrize("aug", [Augment(), Augment(color_jitter=0.3)], ids=["cropflip", "jitter"])
def test_device_loader_epoch_has_no_host_sync(aug):
    """A whole augmented, shuffled epoch under sync debug mode "error": any blocking
    host-device synchronisation (a .item(), a pageable copy, a .to() that waits) raises."""
    images, labels = _images()
    x, y = to_device(images, labels, "cuda")
    dl = DeviceLoader(x, y, 16, shuffle=True, augment=aug, seed=1, channels_last=True)
    dl.set_epoch(1)
    torch.cuda.synchronize(x.device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        batches = [xb for xb, _ in dl]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(batches) == 5 and all(b.is_cuda for b in batches)


def test_device_loader_epoch_is_the_same_on_cpu_and_cuda():
    images, labels = _images()
    out = {}
    for dev in ("cpu", "cuda"):
        x, y = to_device(images, labels, dev)
        dl = DeviceLoader(x, y, 16, shuffle=True, augment=Augment(color_jitter=0.3), seed=2)
        out[dev] = [(xb.cpu(), yb.cpu()) for xb, yb in dl]
    for (xc, yc), (xg, yg) in zip(out["cpu"], out["cuda"]):
        assert torch.equal(yc, yg)  # the same permutation
        torch.testing.assert_close(xg, xc, atol=1e-4, rtol=1e-4)  # grid_sample differs in rounding
