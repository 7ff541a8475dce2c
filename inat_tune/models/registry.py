"""One registry from ``RunConfig.model`` to a builder; builders never see Ray or Optuna."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..config import RunConfig

_BUILDERS: dict[str, Callable[[RunConfig, int], nn.Module]] = {}


def register(name: str):
    def deco(fn: Callable[[RunConfig, int], nn.Module]):
        _BUILDERS[name] = fn
        return fn
    return deco


def create_model(cfg: RunConfig, num_classes: int) -> nn.Module:
    """Build the network ``cfg.model`` names, with a ``num_classes``-way output."""
    _register_builtin()
    if cfg.model not in _BUILDERS:
        raise KeyError(f"unknown model {cfg.model!r}; registered: {sorted(_BUILDERS)}")
    return _BUILDERS[cfg.model](cfg, num_classes)


def _register_builtin() -> None:
    if _BUILDERS:
        return

    @register("scratch_cnn")
    def _scratch(cfg: RunConfig, num_classes: int) -> nn.Module:
        from .cnn import ScratchCNN
        return ScratchCNN(cfg, num_classes=num_classes)

    @register("finetune")
    def _finetune(cfg: RunConfig, num_classes: int) -> nn.Module:
        from .pretrained import build_finetune_model
        return build_finetune_model(cfg, num_classes)
