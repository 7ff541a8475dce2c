"""Part B: a pretrained torchvision backbone, its head replaced, fine-tuned under a freezing
strategy, with the frozen part computed once and cached as features.

**Backbones** (``BACKBONES``): each names its torchvision builder, its weights enum, its head
(the Linear that becomes a ``num_classes``-way layer) and its forward pass as an ordered chain
of *pieces*, each belonging to a named stage (bottom to top), to no stage (parameter-free
pooling / reshapes), or to the head. Stage names per backbone:

===================  ==========================================================================
resnet18/34/50/101   stem (conv1, bn1, relu, maxpool), layer1, layer2, layer3, layer4 | fc
mobilenet_v2         stem (features.0-1), layer1 (2-3), layer2 (4-6), layer3 (7-13),
                     layer4 (14-18), grouped by output stride 2, 4, 8, 16, 32 | classifier.1
efficientnet_v2_s    features.0 ... features.7 | classifier.1
convnext_tiny        features.0 ... features.7, norm (classifier.0) | classifier.2
vit_b_16             embed (conv_proj, class_token, pos_embedding), encoder_layer_0 ... 11,
                     norm (encoder.ln) | heads.head
googlenet            stem, inception3, inception4, inception5 | fc   (aux classifiers off)
inception_v3         stem, mixed5, mixed6, mixed7 | fc               (aux classifier off)
vgg16                block1 ... block5 (features, split at the max-pools), fc6, fc7 |
                     classifier.6
===================  ==========================================================================

**Weights** (``RunConfig.weights``): ``imagenet`` loads torchvision's file from the torch hub
cache (``torch.hub.get_dir()/checkpoints/<file>``), downloading it there once if it is missing;
offline, one :class:`WeightsError` says which file to put where. ``/path/file.pth`` loads a
local state dict with torchvision's key names: every backbone key must be there with its shape
(the old head's keys are ignored). ``none`` is random initialisation. Nothing ever falls back
to random weights silently.

**Strategies** (``RunConfig.strategy``, see :func:`trainable_stages`): ``head_only``,
``freeze_until:<stage>``, ``full``, ``gradual`` (one more stage from the top every
``unfreeze_every`` epochs). Frozen stages get ``requires_grad=False`` *and* stay in eval mode,
so their BatchNorm statistics do not move either.

**Feature cache**: with a frozen prefix (head_only, freeze_until) and no augmentation,
``FinetuneModel.cached_features`` runs the prefix once over the tuning images and the training
loop then trains only the suffix on the features. Features are also stored under
``$INAT_TUNE_CACHE/features/<key>/``, keyed by the data files, image size, backbone, the frozen
prefix's exact tensors (which identify the weights) and the split point, so every trial of a
sweep with the same frozen prefix computes them once.

Normalisation and the native input size come from each weights enum's metadata
(:func:`preprocessing`); the model carries ``mean``/``std`` for the data loader.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from ..config import RunConfig

log = logging.getLogger(__name__)

HEAD = "head"  # the stage name of the new classification layer (always trainable)
STRATEGIES = ("head_only", "freeze_until:<stage>", "full", "gradual")
# Bump when the meaning of cached features changes (normalisation, piece definitions).
FEATURE_VERSION = "features-v1"
FEATURE_BATCH = 256  # images per forward pass when computing features (eval, no grad)


class WeightsError(RuntimeError):
    """Pretrained weights that cannot be had or do not fit; the message names the file."""


# ---------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class Piece:
    """One link of a backbone's forward chain.

    ``stage`` is a stage name, :data:`HEAD`, or None for parameter-free, deterministic glue
    (pooling, flatten). ``paths`` are the dotted names in the torchvision model of the
    submodules / parameters this piece owns (freezing acts on them).
    """

    stage: str | None
    module: nn.Module
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class Backbone:
    name: str
    builder: str  # function in torchvision.models
    weights: str  # torchvision weights enum, "ResNet50_Weights.IMAGENET1K_V2"
    stages: tuple[str, ...]  # bottom to top
    head: str  # dotted path of the Linear replaced by the num_classes-way head
    pieces: Callable[[nn.Module], list[Piece]]  # the forward chain of a built model
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # builder arguments
    ignore: tuple[str, ...] = ()  # weight-file key prefixes not used here (aux classifiers)
    patch_size: int = 0  # ViT: the input side must be a multiple of it

    def weights_enum(self):
        return torchvision.models.get_weight(self.weights)


def _get(net: nn.Module, path: str) -> nn.Module:
    return net.get_submodule(path)


def _seq(*modules: nn.Module) -> nn.Module:
    return modules[0] if len(modules) == 1 else nn.Sequential(*modules)


def _piece(net: nn.Module, stage: str | None, *paths: str) -> Piece:
    """A piece made of submodules of ``net``, run in the order given."""
    return Piece(stage, _seq(*[_get(net, p) for p in paths]), paths)


class _Call(nn.Module):
    """A parameter-free step given as a function (reshapes, input transforms)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str) -> None:
        super().__init__()
        self.fn, self.name = fn, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


def _pool_flatten(pool: nn.Module | None = None) -> Piece:
    pool = pool if pool is not None else nn.AdaptiveAvgPool2d(1)
    return Piece(None, nn.Sequential(pool, nn.Flatten(1)))


def _resnet_pieces(net: nn.Module) -> list[Piece]:
    return [_piece(net, "stem", "conv1", "bn1", "relu", "maxpool"),
            *[_piece(net, f"layer{i}", f"layer{i}") for i in range(1, 5)],
            _pool_flatten(net.avgpool), _piece(net, HEAD, "fc")]


_MOBILENET_V2_GROUPS = {"stem": (0, 2), "layer1": (2, 4), "layer2": (4, 7), "layer3": (7, 14),
                        "layer4": (14, 19)}  # features[a:b], by output stride 2, 4, 8, 16, 32


def _mobilenet_v2_pieces(net: nn.Module) -> list[Piece]:
    out = [_piece(net, stage, *[f"features.{i}" for i in range(a, b)])
           for stage, (a, b) in _MOBILENET_V2_GROUPS.items()]
    # dropout + linear form the head piece: dropout must act in the trained suffix
    return [*out, _pool_flatten(), Piece(HEAD, net.classifier, ("classifier",))]


def _features_pieces(n: int) -> Callable[[nn.Module], list[Piece]]:
    def pieces(net: nn.Module) -> list[Piece]:
        return [_piece(net, f"features.{i}", f"features.{i}") for i in range(n)]
    return pieces


def _efficientnet_pieces(net: nn.Module) -> list[Piece]:
    return [*_features_pieces(8)(net), _pool_flatten(net.avgpool),
            Piece(HEAD, net.classifier, ("classifier",))]


def _convnext_pieces(net: nn.Module) -> list[Piece]:
    return [*_features_pieces(8)(net), Piece(None, net.avgpool),
            _piece(net, "norm", "classifier.0", "classifier.1"), _piece(net, HEAD, "classifier.2")]


class _VitEmbed(nn.Module):
    """ViT input: patches -> tokens, class token prepended, position embedding added."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self._vit = (vit,)  # a tuple: not registered, the parameters stay the model's
        self.conv_proj, self.dropout = vit.conv_proj, vit.encoder.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vit = self._vit[0]
        x = vit._process_input(x)
        x = torch.cat([vit.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.dropout(x + vit.encoder.pos_embedding)


def _vit_pieces(net: nn.Module) -> list[Piece]:
    layers = [_piece(net, name, f"encoder.layers.{name}") for name, _ in net.encoder.layers.named_children()]
    return [Piece("embed", _VitEmbed(net), ("conv_proj", "class_token", "encoder.pos_embedding",
                                             "encoder.dropout")),
            *layers,
            Piece("norm", nn.Sequential(net.encoder.ln, _Call(lambda x: x[:, 0], "class token")),
                  ("encoder.ln",)),
            _piece(net, HEAD, "heads.head")]


def _googlenet_pieces(net: nn.Module) -> list[Piece]:
    stem = ("conv1", "maxpool1", "conv2", "conv3", "maxpool2")
    return [Piece("stem", nn.Sequential(_Call(net._transform_input, "transform_input"),
                                        *[_get(net, p) for p in stem]), stem),
            _piece(net, "inception3", "inception3a", "inception3b", "maxpool3"),
            _piece(net, "inception4", *[f"inception4{c}" for c in "abcde"], "maxpool4"),
            _piece(net, "inception5", "inception5a", "inception5b"),
            _pool_flatten(net.avgpool), _piece(net, HEAD, "dropout", "fc")]


def _inception_v3_pieces(net: nn.Module) -> list[Piece]:
    stem = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
            "Conv2d_4a_3x3", "maxpool2")
    return [Piece("stem", nn.Sequential(_Call(net._transform_input, "transform_input"),
                                        *[_get(net, p) for p in stem]), stem),
            _piece(net, "mixed5", "Mixed_5b", "Mixed_5c", "Mixed_5d"),
            _piece(net, "mixed6", *[f"Mixed_6{c}" for c in "abcde"]),
            _piece(net, "mixed7", "Mixed_7a", "Mixed_7b", "Mixed_7c"),
            _pool_flatten(net.avgpool), _piece(net, HEAD, "dropout", "fc")]


_VGG16_BLOCKS = ((0, 5), (5, 10), (10, 17), (17, 24), (24, 31))  # features[a:b], each ends in a max-pool


def _vgg16_pieces(net: nn.Module) -> list[Piece]:
    blocks = [_piece(net, f"block{i + 1}", *[f"features.{j}" for j in range(a, b)])
              for i, (a, b) in enumerate(_VGG16_BLOCKS)]
    return [*blocks, _pool_flatten(net.avgpool),
            _piece(net, "fc6", "classifier.0", "classifier.1", "classifier.2"),
            _piece(net, "fc7", "classifier.3", "classifier.4", "classifier.5"),
            _piece(net, HEAD, "classifier.6")]


_RESNET_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
_FEATURES_8 = tuple(f"features.{i}" for i in range(8))
_AUX_OFF = {"aux_logits": False, "transform_input": True, "init_weights": True}

BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    Backbone("resnet18", "resnet18", "ResNet18_Weights.IMAGENET1K_V1", _RESNET_STAGES, "fc", _resnet_pieces),
    Backbone("resnet34", "resnet34", "ResNet34_Weights.IMAGENET1K_V1", _RESNET_STAGES, "fc", _resnet_pieces),
    Backbone("resnet50", "resnet50", "ResNet50_Weights.IMAGENET1K_V2", _RESNET_STAGES, "fc", _resnet_pieces),
    Backbone("resnet101", "resnet101", "ResNet101_Weights.IMAGENET1K_V2", _RESNET_STAGES, "fc", _resnet_pieces),
    Backbone("mobilenet_v2", "mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V2",
             tuple(_MOBILENET_V2_GROUPS), "classifier.1", _mobilenet_v2_pieces),
    Backbone("efficientnet_v2_s", "efficientnet_v2_s", "EfficientNet_V2_S_Weights.IMAGENET1K_V1",
             _FEATURES_8, "classifier.1", _efficientnet_pieces),
    Backbone("convnext_tiny", "convnext_tiny", "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
             (*_FEATURES_8, "norm"), "classifier.2", _convnext_pieces),
    Backbone("vit_b_16", "vit_b_16", "ViT_B_16_Weights.IMAGENET1K_V1",
             ("embed", *[f"encoder_layer_{i}" for i in range(12)], "norm"), "heads.head",
             _vit_pieces, patch_size=16),
    Backbone("googlenet", "googlenet", "GoogLeNet_Weights.IMAGENET1K_V1",
             ("stem", "inception3", "inception4", "inception5"), "fc", _googlenet_pieces,
             kwargs=_AUX_OFF, ignore=("aux1.", "aux2.")),
    Backbone("inception_v3", "inception_v3", "Inception_V3_Weights.IMAGENET1K_V1",
             ("stem", "mixed5", "mixed6", "mixed7"), "fc", _inception_v3_pieces,
             kwargs=_AUX_OFF, ignore=("AuxLogits.",)),
    Backbone("vgg16", "vgg16", "VGG16_Weights.IMAGENET1K_V1",
             (*[f"block{i}" for i in range(1, 6)], "fc6", "fc7"), "classifier.6", _vgg16_pieces),
)}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"backbone={name!r}: unknown; registered: {', '.join(BACKBONES)}") from None


def preprocessing(backbone: str) -> dict[str, Any]:
    """What the backbone's ImageNet weights expect, from torchvision's weights metadata.

    ``crop_size`` is the native input side, ``resize_size`` the shorter side torchvision
    resizes to before its centre crop, ``mean``/``std`` the normalisation after scaling to [0, 1].
    """
    spec = get_backbone(backbone)
    w = spec.weights_enum()
    t = w.transforms()  # torchvision's ImageClassification preset for these weights
    return {"weights": spec.weights, "file": _weights_file_name(w), "url": w.url,
            "crop_size": int(t.crop_size[0]), "resize_size": int(t.resize_size[0]),
            "mean": tuple(float(v) for v in t.mean), "std": tuple(float(v) for v in t.std),
            "interpolation": t.interpolation.value, "min_size": tuple(w.meta.get("min_size", (1, 1)))}


# ---------------------------------------------------------------------------------------------
# Strategies as data


def trainable_stages(strategy: str, stages: Sequence[str], *, epoch: int = 0,
                     unfreeze_every: int = 1) -> set[str]:
    """The stages (plus :data:`HEAD`) that train under ``strategy`` at ``epoch`` (0-based).

    ``stages`` are ordered bottom (input) to top. ``head_only``: the head; ``freeze_until:S``:
    every stage above S and the head; ``full``: everything; ``gradual``: the head, plus one
    more stage from the top every ``unfreeze_every`` epochs.
    """
    stages = list(stages)
    if strategy == "head_only":
        return {HEAD}
    if strategy == "full":
        return {*stages, HEAD}
    if strategy == "gradual":
        if unfreeze_every < 1:
            raise ValueError(f"unfreeze_every={unfreeze_every}: must be >= 1")
        n = min(epoch // unfreeze_every, len(stages))
        return {*stages[len(stages) - n:], HEAD}
    if strategy.startswith("freeze_until:"):
        stage = strategy.split(":", 1)[1]
        if stage not in stages:
            raise ValueError(f"strategy={strategy!r}: unknown stage {stage!r}; valid stages "
                             f"(bottom to top): {', '.join(stages)}")
        return {*stages[stages.index(stage) + 1:], HEAD}
    raise ValueError(f"strategy={strategy!r}: must be one of {', '.join(STRATEGIES)}")


# ---------------------------------------------------------------------------------------------
# Weights


def _weights_file_name(w) -> str:
    return os.path.basename(urlparse(w.url).path)


def hub_checkpoint_path(backbone: str) -> Path:
    """Where torchvision keeps (and looks for) the ImageNet file of ``backbone``."""
    w = get_backbone(backbone).weights_enum()
    return Path(torch.hub.get_dir()) / "checkpoints" / _weights_file_name(w)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - junk bytes, truncated file, foreign pickle
        raise WeightsError(f"weights file {path} is not a file torch.load can read "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        kind = type(state).__name__
        hint = ""
        if isinstance(state, Mapping) and any(k in state for k in ("state_dict", "model")):
            hint = " (it looks like a training checkpoint: save its model's state_dict alone)"
        raise WeightsError(f"weights file {path} is not a state dict (a mapping of parameter name "
                           f"-> tensor, as torch.save(model.state_dict(), path) writes); got {kind}{hint}")
    return dict(state)


def _imagenet_state_dict(spec: Backbone) -> tuple[dict[str, torch.Tensor], Path]:
    """torchvision's ImageNet file: from the hub cache, else downloaded there once."""
    w = spec.weights_enum()
    path = hub_checkpoint_path(spec.name)
    if path.is_file():  # no network at all when the file is already there
        return _read_state_dict(path), path
    path.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(str(path) + ".lock"):  # trials of a sweep download it once
        if not path.is_file():
            try:
                torch.hub.load_state_dict_from_url(w.url, model_dir=str(path.parent), map_location="cpu",
                                                   progress=False, check_hash=True, file_name=path.name)
            except Exception as e:  # noqa: BLE001 - offline, proxy, HTTP error, bad hash
                raise WeightsError(
                    f"cannot get the ImageNet weights of {spec.name} ({spec.weights}): download of "
                    f"{w.url} failed ({type(e).__name__}: {e}). torchvision expects the file "
                    f"{path.name} at {path}: download it on a machine with internet access and "
                    f"copy it there, or set weights=/path/to/state_dict.pth (a torch.save'd state "
                    f"dict of torchvision's {spec.builder}). Random weights are never used instead."
                ) from None
    return _read_state_dict(path), path


def _adapt_vit(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """ViT at another input size: resample the position embedding (torchvision's helper)."""
    key = "encoder.pos_embedding"
    if key in state and state[key].shape != net.encoder.pos_embedding.shape and state[key].ndim == 3:
        from torchvision.models.vision_transformer import interpolate_embeddings
        state = dict(interpolate_embeddings(net.image_size, net.patch_size, state))
    return state


def load_backbone_state(net: nn.Module, spec: Backbone, state: Mapping[str, torch.Tensor],
                        source: str | Path) -> None:
    """Load ``state`` into ``net``'s backbone: every backbone key present with its shape.

    Keys of the old head are ignored whatever their shape, as are ``spec.ignore`` prefixes
    (aux classifiers); BatchNorm's ``num_batches_tracked`` may be absent (older files).
    Anything else missing, misshapen or unknown raises WeightsError naming ``source``.
    """
    if spec.name == "vit_b_16":
        state = _adapt_vit(dict(state), net)
    head = spec.head + "."
    own = net.state_dict()

    def skipped(k: str) -> bool:
        return k.startswith(head) or k.startswith(spec.ignore)

    problems = []
    for k, v in own.items():
        if skipped(k):
            continue
        if k not in state:
            if not k.endswith("num_batches_tracked"):
                problems.append(f"missing {k} {tuple(v.shape)}")
        elif tuple(state[k].shape) != tuple(v.shape):
            problems.append(f"{k} has shape {tuple(state[k].shape)}, {spec.name} needs {tuple(v.shape)}")
    problems += [f"unexpected key {k}" for k in state if k not in own and not skipped(k)]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise WeightsError(f"weights file {source} does not fit torchvision's {spec.builder} "
                           f"({len(problems)} problem(s)): {shown}")
    wanted = {k: v for k, v in state.items() if not skipped(k)}
    net.load_state_dict(wanted, strict=False)


def _resolve_state(spec: Backbone, weights: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    if weights == "none":
        return None, "none"
    if weights == "imagenet":
        state, path = _imagenet_state_dict(spec)
        return state, str(path)
    path = Path(weights).expanduser()
    return _read_state_dict(path), str(path)


# ---------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class FeatureCacheInfo:
    """How the last ``cached_features`` call got its features."""

    split: str  # the last frozen piece's stage: the features are its output
    path: Path | None  # on-disk folder (None: not stored on disk)
    loaded: bool  # True: read from disk, not computed
    seconds: float
    shapes: tuple[tuple[int, ...], tuple[int, ...]]


class FinetuneModel(nn.Module):
    """A torchvision backbone (``self.net``, torchvision's own key names under ``net.``) with a
    new head, a freezing strategy and the hooks ``fit()`` uses: ``mean``/``std``,
    ``param_groups(lr)``, ``on_epoch_start(epoch)`` and ``cached_features(...)``."""

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
        self._stage_params: dict[str, list[str]] = {}
        for piece in self.pieces:
            if piece.stage is not None:
                self._stage_params.setdefault(piece.stage, []).extend(self._param_names(piece.paths))
        self._frozen_modules: list[nn.Module] = []
        self.trainable: set[str] = set()
        self.feature_cache: FeatureCacheInfo | None = None
        trainable_stages(strategy, self.stage_names)  # refuse a bad strategy now
        self.on_epoch_start(0)

    def _param_names(self, paths: Sequence[str]) -> list[str]:
        names = [n for n, _ in self.net.named_parameters()]
        return [n for n in names if any(n == p or n.startswith(p + ".") for p in paths)]

    # --- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for piece in self.pieces:
            x = piece.module(x)
        return x

    # --- freezing --------------------------------------------------------------------------------
    def freeze(self, trainable: set[str]) -> None:
        """Train exactly the stages in ``trainable`` (and :data:`HEAD`): requires_grad off
        elsewhere, and frozen pieces stay in eval mode (fixed BatchNorm statistics)."""
        unknown = set(trainable) - {*self.stage_names, HEAD}
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; valid: {', '.join(self.stage_names)}")
        trainable = {*trainable, HEAD}
        for stage, names in self._stage_params.items():
            for n in names:
                self.net.get_parameter(n).requires_grad_(stage in trainable)
        self._frozen_modules = [self.net.get_submodule(path) for piece in self.pieces
                                if piece.stage is not None and piece.stage not in trainable
                                for path in piece.paths if self._is_module(path)]
        self.trainable = trainable
        self.train(self.training)

    def _is_module(self, path: str) -> bool:
        try:
            self.net.get_submodule(path)
            return True
        except AttributeError:
            return False

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

    # --- frozen-feature caching ------------------------------------------------------------------
    def feature_split(self) -> int | None:
        """How many leading pieces are frozen and deterministic (computed once as features),
        or None when the strategy trains from the first stage or changes over time."""
        if self.strategy in ("full", "gradual"):
            return None
        trainable = trainable_stages(self.strategy, self.stage_names)
        k = next(i for i, p in enumerate(self.pieces) if p.stage in trainable)
        return k or None

    def prefix_suffix(self) -> tuple[nn.Module, nn.Module] | None:
        """(frozen prefix, trainable suffix) with ``suffix(prefix(x)) == self(x)``, or None."""
        k = self.feature_split()
        if k is None:
            return None
        return (nn.Sequential(*[p.module for p in self.pieces[:k]]),
                nn.Sequential(*[p.module for p in self.pieces[k:]]))

    def cached_features(self, x_tr: torch.Tensor, x_va: torch.Tensor, *, data: Any = None,
                        mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                        bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
        """Frozen-prefix features of the uint8 image tensors, and the module to train on them.

        Returns ``(f_tr, f_va, suffix)``, or ``(x_tr, x_va, self)`` when the strategy has no
        frozen prefix. With ``data`` (a TuningData) the features are stored on disk and reused
        by every run with the same data, image size, frozen tensors and split.
        """
        split = self.prefix_suffix()
        if split is None:
            return x_tr, x_va, self
        prefix, suffix = split
        mean = tuple(mean) if mean is not None else self.mean
        std = tuple(std) if std is not None else self.std
        dtype = torch.bfloat16 if bf16 else torch.float32
        k = self.feature_split()
        name = next(p.stage for p in reversed(self.pieces[:k]) if p.stage)
        t0 = time.perf_counter()
        key = _feature_key(self, data, mean, std, dtype, k) if data is not None else None

        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            return (compute_features(prefix, x_tr, mean, std, bf16, dtype=dtype),
                    compute_features(prefix, x_va, mean, std, bf16, dtype=dtype))

        try:
            if key is None:
                (f_tr, f_va), path, loaded = compute(), None, False
            else:
                (f_tr, f_va), path, loaded = _disk_cached(key, compute, {
                    "backbone": self.backbone, "weights": self.weights, "split": name,
                    "pieces": k, "dtype": str(dtype), "image_size": getattr(data, "image_size", None),
                    "root": str(getattr(data, "root", "")), "n_train": len(x_tr), "n_val": len(x_va)})
        finally:
            self.train(self.training)  # compute_features put the prefix in eval mode
        f_tr, f_va = f_tr.to(x_tr.device), f_va.to(x_va.device)
        self.feature_cache = FeatureCacheInfo(split=name, path=path, loaded=loaded,
                                              seconds=time.perf_counter() - t0,
                                              shapes=(tuple(f_tr.shape), tuple(f_va.shape)))
        log.info("features after %s (%s): %s in %.1f s%s", name, self.strategy,
                 "loaded" if loaded else "computed", self.feature_cache.seconds,
                 f" [{path}]" if path else "")
        return f_tr, f_va, suffix


@torch.no_grad()
def compute_features(prefix: nn.Module, x: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                     bf16: bool = False, *, dtype: torch.dtype = torch.float32,
                     batch_size: int = FEATURE_BATCH) -> torch.Tensor:
    """``prefix`` over uint8 images (N x 3 x S x S) in eval mode, normalised like the
    DeviceLoader does; returns N x ... features of ``dtype`` on ``x``'s device."""
    from ..data.loader import DeviceLoader

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


def features_root() -> Path:
    from ..data.cache import cache_root
    return cache_root() / "features"


def prefix_digest(model: FinetuneModel, k: int) -> str:
    """Hash of every parameter and buffer of the first ``k`` pieces: the exact weights the
    features come from (ImageNet, a local file, or a seeded random init alike)."""
    paths = [p for piece in model.pieces[:k] for p in piece.paths]
    h = hashlib.blake2b(digest_size=16)
    for name, t in model.net.state_dict().items():
        if not any(name == p or name.startswith(p + ".") for p in paths):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _feature_key(model: FinetuneModel, data: Any, mean, std, dtype: torch.dtype,
                 k: int) -> str | None:
    from ..data.cache import fingerprint

    try:
        size = int(data.image_size)
        files = (fingerprint(Path(data.root), list(data.train.files), size),
                 fingerprint(Path(data.root), list(data.val.files), size))
    except (OSError, AttributeError) as e:  # files gone or not a TuningData: memory only
        log.warning("feature cache: cannot fingerprint the data (%s); not storing features", e)
        return None
    h = hashlib.blake2b(digest_size=12)
    h.update(json.dumps([FEATURE_VERSION, torchvision.__version__, model.backbone, k, size,
                         files, list(mean), list(std), str(dtype)]).encode())
    h.update(prefix_digest(model, k).encode())
    return f"{model.backbone}-{h.hexdigest()}"


def _disk_cached(key: str, compute: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                 meta: dict[str, Any]) -> tuple[tuple[torch.Tensor, torch.Tensor], Path | None, bool]:
    """Load features of ``key`` or compute and store them (under a lock, renamed into place
    when complete, like the decode cache); a failed write only costs the reuse."""
    from filelock import FileLock

    base = features_root()
    final = base / key
    if (final / "meta.json").is_file():
        return _load_features(final), final, True
    try:
        base.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(base / f"{key}.lock"))
        lock.acquire()
    except OSError as e:
        log.warning("feature cache %s not writable (%s): computing in memory only", base, e)
        return compute(), None, False
    try:
        if (final / "meta.json").is_file():  # another trial computed them while we waited
            return _load_features(final), final, True
        t0 = time.perf_counter()
        f_tr, f_va = compute()
        meta = {**meta, "compute_seconds": time.perf_counter() - t0, "train_shape": list(f_tr.shape),
                "val_shape": list(f_va.shape), "built_by": os.getpid()}
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.build-", dir=base))
        try:
            torch.save(f_tr.cpu(), tmp / "train.pt")
            torch.save(f_va.cpu(), tmp / "val.pt")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            os.replace(tmp, final)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            log.warning("feature cache: could not store %s (%s); continuing without", final, e)
            return (f_tr, f_va), None, False
        return (f_tr, f_va), final, False
    finally:
        lock.release()


def _load_features(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    # mmap: trials on one node share the pages; .to(device) copies what the device needs
    return tuple(torch.load(path / f"{s}.pt", map_location="cpu", weights_only=True, mmap=True)
                 for s in ("train", "val"))  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Building


def build_net(spec: Backbone, image_size: int) -> nn.Module:
    """torchvision's model with random weights and its original 1000-way head."""
    kwargs = dict(spec.kwargs)
    if spec.patch_size:
        if image_size % spec.patch_size:
            raise ValueError(f"image_size={image_size}: {spec.name} needs a multiple of "
                             f"{spec.patch_size} (its patch size)")
        kwargs["image_size"] = image_size  # position embeddings resampled on loading
    else:
        lo = preprocessing(spec.name)["min_size"]
        if image_size < max(lo):
            raise ValueError(f"image_size={image_size}: {spec.name} needs at least {max(lo)} px")
    return getattr(torchvision.models, spec.builder)(weights=None, **kwargs)


def replace_head(net: nn.Module, path: str, num_classes: int) -> nn.Linear:
    """Put a new ``num_classes``-way Linear where ``path`` names the old one."""
    parent_path, _, last = path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    old = getattr(parent, last) if not last.isdigit() else parent[int(last)]
    if not isinstance(old, nn.Linear):
        raise AssertionError(f"{path} is a {type(old).__name__}, expected nn.Linear")
    new = nn.Linear(old.in_features, num_classes)
    setattr(parent, last, new)
    return new


def build_finetune_model(cfg: RunConfig, num_classes: int) -> FinetuneModel:
    """``cfg.backbone`` with ``cfg.weights``, a ``num_classes``-way head and ``cfg.strategy``."""
    spec = get_backbone(cfg.backbone)
    trainable_stages(cfg.strategy, spec.stages)  # a bad strategy fails before any loading
    net = build_net(spec, cfg.image_size)
    state, source = _resolve_state(spec, cfg.weights)
    if state is not None:
        load_backbone_state(net, spec, state, source)
    replace_head(net, spec.head, num_classes)
    return FinetuneModel(spec, net, strategy=cfg.strategy, backbone_lr_factor=cfg.backbone_lr_factor,
                         unfreeze_every=cfg.unfreeze_every, weights=cfg.weights)
