"""Part B: a pretrained torchvision backbone, its head replaced, fine-tuned under a freezing
strategy. No I/O happens here beyond loading the weights the config names.

The pieces live in their own modules: :mod:`~inat_tune.models.backbones` (the registry, stage
names, preprocessing), :mod:`~inat_tune.models.weights` (``imagenet`` / local file / ``none``,
:class:`WeightsError`) and :mod:`~inat_tune.models.freezing` (strategies as data). This module
joins them into :class:`FinetuneModel`, built from a :class:`RunConfig` by
:func:`build_finetune_model`.

With a frozen prefix (head_only, freeze_until) the model says which leading pieces stay frozen
(:meth:`FinetuneModel.frozen_prefix`) and which exact tensors they hold
(:meth:`FinetuneModel.prefix_digest`); computing their output once as features and storing it
is the data path's job (:mod:`inat_tune.data.features`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import RunConfig
from . import freezing
from .backbones import HEAD, Backbone, Piece, build_net, get_backbone, preprocessing, replace_head
from .freezing import trainable_stages
from .weights import load_backbone_state, resolve_weights

__all__ = ["FinetuneModel", "FrozenPrefix", "build_finetune_model"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrozenPrefix:
    """The leading pieces of a :class:`FinetuneModel` that stay frozen for a whole run, split
    off so that ``suffix(prefix(x)) == model(x)``; ``prefix`` is deterministic in eval mode."""

    prefix: nn.Module
    suffix: nn.Module  # what trains; shares its modules with the model
    pieces: int  # how many leading pieces ``prefix`` holds
    stage: str  # the last frozen stage: ``prefix`` gives its output


class FinetuneModel(nn.Module):
    """A torchvision backbone (``self.net``, torchvision's own key names under ``net.``) with a
    new head, a freezing strategy and the hooks ``fit()`` uses: ``mean``/``std``,
    ``param_groups(lr)``, ``on_epoch_start(epoch)`` and ``frozen_prefix()``."""

    def __init__(self, spec: Backbone, net: nn.Module, *, strategy: str = "head_only",
                 backbone_lr_factor: float = 0.1, unfreeze_every: int = 1,
                 weights: str = "none") -> None:
        super().__init__()
        self.net = net
        self.backbone = spec.name
        self.weights = weights
        self.strategy = strategy
        self.backbone_lr_factor = backbone_lr_factor
        self.unfreeze_every = unfreeze_every
        self.stage_names: tuple[str, ...] = spec.stages
        pre = preprocessing(spec.name)
        self.mean, self.std = pre["mean"], pre["std"]
        self.preprocessing = pre
        # A plain list, not registered: the modules (and their parameters) are net's.
        self.pieces: list[Piece] = spec.pieces(net)
        got = [p.stage for p in self.pieces if p.stage not in (None, HEAD)]
        if list(dict.fromkeys(got)) != list(spec.stages) or self.pieces[-1].stage != HEAD:
            raise AssertionError(f"{spec.name}: pieces give stages {got}, registry says {spec.stages}")
        self._stage_params: dict[str, list[str]] = freezing.stage_parameters(net, self.pieces)
        self._frozen_modules: list[nn.Module] = []
        self.trainable: set[str] = set()
        # How the last features were got (an inat_tune.data.features.FeatureCacheInfo), set by
        # the data path when it trains this model on its frozen prefix's features; else None.
        self.feature_cache: Any = None
        trainable_stages(strategy, self.stage_names)  # refuse a bad strategy now
        self.on_epoch_start(0)

    # --- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for piece in self.pieces:
            x = piece.module(x)
        return x

    # --- freezing --------------------------------------------------------------------------------
    def freeze(self, trainable: set[str]) -> None:
        """Train exactly the stages in ``trainable`` (and :data:`HEAD`): requires_grad off
        elsewhere, and frozen pieces stay in eval mode (fixed BatchNorm statistics)."""
        self._frozen_modules = freezing.freeze(self.net, self.pieces, trainable)
        self.trainable = {*trainable, HEAD}
        self.train(self.training)

    def train(self, mode: bool = True) -> "FinetuneModel":
        super().train(mode)
        for m in self._frozen_modules:
            m.eval()  # BatchNorm running statistics of frozen stages stay fixed
        return self

    def on_epoch_start(self, epoch: int) -> None:
        """Apply the strategy for ``epoch`` (0-based); ``gradual`` unfreezes stages here."""
        stages = trainable_stages(self.strategy, self.stage_names, epoch=epoch,
                                  unfreeze_every=self.unfreeze_every)
        if stages != self.trainable:
            if self.trainable:
                log.info("%s epoch %d: unfreezing %s", self.strategy, epoch,
                         ", ".join(s for s in self.stage_names if s in stages - self.trainable))
            self.freeze(stages)

    def head_parameters(self) -> list[nn.Parameter]:
        return [self.net.get_parameter(n) for n in self._stage_params[HEAD]]

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Head at ``lr``, backbone at ``lr * backbone_lr_factor``; frozen parameters included
        (they get no gradient, so the optimiser skips them until they are unfrozen)."""
        head = self.head_parameters()
        ids = {id(p) for p in head}
        backbone = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": head, "lr": lr}, {"params": backbone, "lr": lr * self.backbone_lr_factor}]

    # --- the frozen prefix (what the data path may compute once as features) ---------------------
    def feature_split(self) -> int | None:
        """How many leading pieces are frozen and deterministic (computable once as features),
        or None when the strategy trains from the first stage or changes over time."""
        return freezing.frozen_prefix_length(self.strategy, self.pieces, self.stage_names)

    def frozen_prefix(self) -> FrozenPrefix | None:
        """The frozen prefix and trainable suffix of this model, or None (see :meth:`feature_split`)."""
        k = self.feature_split()
        if k is None:
            return None
        return FrozenPrefix(prefix=nn.Sequential(*[p.module for p in self.pieces[:k]]),
                            suffix=nn.Sequential(*[p.module for p in self.pieces[k:]]), pieces=k,
                            stage=next(p.stage for p in reversed(self.pieces[:k]) if p.stage))

    def prefix_digest(self, pieces: int) -> str:
        """Hash of every parameter and buffer of the first ``pieces`` pieces: the exact weights
        their output comes from (ImageNet, a local file, or a seeded random init alike)."""
        paths = [p for piece in self.pieces[:pieces] for p in piece.paths]
        h = hashlib.blake2b(digest_size=16)
        for name, t in self.net.state_dict().items():
            if not any(name == p or name.startswith(p + ".") for p in paths):
                continue
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


def build_finetune_model(cfg: RunConfig, num_classes: int) -> FinetuneModel:
    """``cfg.backbone`` with ``cfg.weights``, a ``num_classes``-way head and ``cfg.strategy``."""
    spec = get_backbone(cfg.backbone)
    trainable_stages(cfg.strategy, spec.stages)  # a bad strategy fails before any loading
    net = build_net(spec, cfg.image_size)
    state, source = resolve_weights(spec, cfg.weights)
    if state is not None:
        load_backbone_state(net, spec, state, source)
    replace_head(net, spec.head, num_classes)
    return FinetuneModel(spec, net, strategy=cfg.strategy, backbone_lr_factor=cfg.backbone_lr_factor,
                         unfreeze_every=cfg.unfreeze_every, weights=cfg.weights)
