"""Part A: the from-scratch CNN of exactly five conv blocks, built from a :class:`RunConfig`.

    block i (i = 1..5):  conv k_i x k_i, same padding (k_i // 2), bias
                         -> [BatchNorm2d]          (cfg.batch_norm)
                         -> conv activation
                         -> MaxPool2d(2)           (floor: s_i = s_{i-1} // 2)
    head:                flatten -> Linear(c5 * s5 * s5, dense) -> dense activation
                         -> Dropout(cfg.dropout) -> Linear(dense, num_classes)

with s5 = image_size // 32. Parameter and MAC counts of this exact module are pure
arithmetic in :mod:`inat_tune.models.counting` and are tested against it.

Named submodules are part of the contract (explain, freezing and the counts rely on them):
``blocks[i].conv / .bn (only with batch norm) / .act / .pool`` and
``head.flatten / .fc1 / .act / .drop / .out``. No I/O happens here.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from inat_tune.config import ACTIVATIONS, RunConfig

NUM_BLOCKS = 5

# Fresh module per call; no inplace=True so that forward/backward hooks (guided backprop in
# `explain`) see every activation's input and output unmodified.
_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "leaky_relu": lambda: nn.LeakyReLU(negative_slope=0.01),
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "selu": nn.SELU,
}


def activation(name: str) -> nn.Module:
    """A new activation module for one of ``inat_tune.config.ACTIVATIONS``."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}") from None


def conv_block(in_ch: int, out_ch: int, kernel_size: int, act: str,
               batch_norm: bool) -> nn.Sequential:
    """conv (same padding) -> [BN] -> activation -> 2x2 max-pool."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    # bias=True even with batch norm: BN's shift makes it redundant (it learns nothing useful)
    # but keeping it makes every block, and the parameter formula, the same with or without
    # BN: params = c_in*c_out*k^2 + c_out (+ 2*c_out for BN weight and bias).
    layers["conv"] = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=True)
    if batch_norm:
        layers["bn"] = nn.BatchNorm2d(out_ch)
    layers["act"] = activation(act)
    layers["pool"] = nn.MaxPool2d(2)
    return nn.Sequential(layers)


class ScratchCNN(nn.Module):
    """Five conv blocks, one hidden dense layer with dropout, and a ``num_classes`` output."""

    def __init__(self, cfg: RunConfig, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        filters = cfg.conv_filters()
        kernels = cfg.kernel_sizes()
        if len(filters) != NUM_BLOCKS or len(kernels) != NUM_BLOCKS:
            raise ValueError(f"need {NUM_BLOCKS} filter counts and kernel sizes, "
                             f"got {filters} and {kernels}")
        if cfg.image_size < 2**NUM_BLOCKS:
            raise ValueError(f"image_size={cfg.image_size} < {2**NUM_BLOCKS}: "
                             "five max-pools would leave no pixels")
        self.num_classes = num_classes
        self.image_size = cfg.image_size

        channels = (in_channels, *filters)
        self.blocks = nn.ModuleList(
            conv_block(channels[i], channels[i + 1], kernels[i], cfg.conv_activation,
                       cfg.batch_norm)
            for i in range(NUM_BLOCKS)
        )
        s5 = cfg.image_size // 2**NUM_BLOCKS  # each MaxPool2d(2) floors: s_i = s_{i-1} // 2
        self.head = nn.Sequential(OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(filters[-1] * s5 * s5, cfg.dense),
            act=activation(cfg.dense_activation),
            drop=nn.Dropout(cfg.dropout),
            out=nn.Linear(cfg.dense, num_classes),
        ))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The CONV5 block output, (N, c5, s5, s5)."""
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) float images -> (N, num_classes) logits."""
        return self.head(self.forward_features(x))
