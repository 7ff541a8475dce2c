"""One registry from ``RunConfig.model`` to a builder; builders never see Ray or Optuna."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..config import RunConfig

Builder = Callable[[RunConfig, int], nn.Module]

_BUILDERS: dict[str, Builder] = {}


def register(name: str):
    """Decorator: ``create_model`` builds ``cfg.model == name`` with the decorated builder
    (it replaces a built-in of the same name)."""
    def deco(fn: Builder) -> Builder:
        _BUILDERS[name] = fn
        return fn
    return deco


def create_model(cfg: RunConfig, num_classes: int) -> nn.Module:
    """Build the network ``cfg.model`` names, with a ``num_classes``-way output."""
    builders = {**_builtin(), **_BUILDERS}
    if cfg.model not in builders:
        raise KeyError(f"unknown model {cfg.model!r}; registered: {sorted(builders)}")
    return builders[cfg.model](cfg, num_classes)


def _scratch(cfg: RunConfig, num_classes: int) -> nn.Module:
    from .cnn import ScratchCNN
    return ScratchCNN(cfg, num_classes=num_classes)


def _finetune(cfg: RunConfig, num_classes: int) -> nn.Module:
    from .pretrained import build_finetune_model  # on use: scratch_cnn runs never import torchvision
    return build_finetune_model(cfg, num_classes)


def _builtin() -> dict[str, Builder]:
    # Merged under _BUILDERS at each call rather than registered into it once, so no order of
    # register() calls can hide them; a custom builder of the same name still wins.
    return {"scratch_cnn": _scratch, "finetune": _finetune}
