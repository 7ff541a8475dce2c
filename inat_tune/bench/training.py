"""Section 3: training throughput of the default scratch CNN (RunConfig() at the bench image
size) for a fixed number of steps after warm-up: images/s and, on CUDA, the fraction of the
GPU's bf16 dense peak, for fp32 / bf16 / + channels_last / + torch.compile (CPU: fp32 only)."""

from __future__ import annotations

import math
import time
from typing import Any, Iterator

import torch

from .environment import flop_fraction, peak_flops
from .measure import sync

CPU_NOTE = ("CPU: fp32 only (bf16 autocast, channels_last and torch.compile are the CUDA paths "
            "of fit()); no peak FLOP/s fraction on CPU")
CUDA_NOTE = ("fp32 convolutions run as TF32 on CUDA (cuDNN's default); peak fractions are "
             "against the bf16 dense peak")


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
    """The training set-ups measured on ``device``: fp32 on CPU; on CUDA also bf16,
    + channels_last and + torch.compile (the CUDA paths of fit())."""
    if device.type != "cuda":
        return [{"name": "fp32", "precision": "fp32", "channels_last": False, "compile": False}]
    return [
        {"name": "fp32", "precision": "fp32", "channels_last": False, "compile": False},
        {"name": "bf16", "precision": "bf16", "channels_last": False, "compile": False},
        {"name": "bf16+channels_last", "precision": "bf16", "channels_last": True, "compile": False},
        {"name": "bf16+channels_last+compile", "precision": "bf16", "channels_last": True,
         "compile": True},
    ]


def train_note(device: torch.device) -> str:
    """What the train section's figures mean on ``device``."""
    return CUDA_NOTE if device.type == "cuda" else CPU_NOTE


def step_timer(x: torch.Tensor, y: torch.Tensor, num_classes: int, image_size: int,
               batch_size: int, device: torch.device, variant: dict[str, Any]):
    """The timed training step of the train section (and of ``bench --concurrent``): the
    default scratch CNN for ``variant``, AdamW, cross-entropy, 4 pre-augmented batches cycled.
    Returns ``(cfg, run, images_per_step)``; ``run(steps)`` trains ``steps`` steps and returns
    their (start, end) on ``time.perf_counter``, the device synchronised at both ends."""
    from ..config import RunConfig
    from ..data.loader import Augment, DeviceLoader
    from ..models.registry import create_model
    from ..train import build_optimizer, train_one_epoch, uses_bf16

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

    def run(steps: int) -> tuple[float, float]:
        sync(device)
        t0 = time.perf_counter()
        train_one_epoch(net, _RepeatBatches(batches, steps), optimizer, loss_fn, lambda: None, bf16)
        sync(device)  # train_one_epoch ends with .item(): already synchronised
        return t0, time.perf_counter()

    return cfg, run, len(batches[0][1])


def bench_train_step(x: torch.Tensor, y: torch.Tensor, num_classes: int, image_size: int,
                     batch_size: int, device: torch.device, variant: dict[str, Any],
                     target_seconds: float, steps_range: tuple[int, int],
                     repeats: int = 1) -> dict[str, Any]:
    """Images/s of the default scratch CNN's training step (AdamW, cross-entropy) on the uint8
    images ``x`` (labels ``y``) already on ``device``; timed steps are chosen to last about
    ``target_seconds`` within ``steps_range``, the best of ``repeats`` is reported."""
    from ..models.counting import count_for_config

    cfg, timed, per_step = step_timer(x, y, num_classes, image_size, batch_size, device, variant)

    def run(steps: int) -> float:
        t0, t1 = timed(steps)
        return t1 - t0

    t_compile = run(3 if cfg.compile else 2)  # warm-up (and compilation)
    probe = run(2) / 2
    lo, hi = steps_range
    steps = int(min(hi, max(lo, math.ceil(target_seconds / max(probe, 1e-6)))))
    all_seconds = [run(steps) for _ in range(repeats)]
    seconds = min(all_seconds)
    ips = steps * per_step / seconds
    flops = count_for_config(cfg, num_classes)["flops"]
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    return {**variant, "steps": steps, "batch_size": per_step, "seconds": seconds,
            "runs_images_per_s": [steps * per_step / t for t in all_seconds],
            "images_per_s": ips, "warmup_s": t_compile, "fwd_gflop_per_image": flops / 1e9,
            "achieved_tflops": 3 * flops * ips / 1e12,
            "peak_fraction": flop_fraction(flops, ips, peak)}
