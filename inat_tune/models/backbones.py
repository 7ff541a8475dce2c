"""The backbone registry: which torchvision models can be fine-tuned, how each one's forward
pass splits into named stages, which Linear is its head, and what its ImageNet weights expect.

Each :class:`Backbone` names its torchvision builder, its weights enum, its head (the Linear
that becomes a ``num_classes``-way layer) and its forward pass as an ordered chain of
*pieces*, each belonging to a named stage (bottom to top), to no stage (parameter-free
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

Normalisation and the native input size come from each weights enum's metadata
(:func:`preprocessing`). Nothing here reads or writes files: :func:`build_net` gives random
weights, :mod:`inat_tune.models.weights` loads real ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

HEAD = "head"  # the stage name of the new classification layer (always trainable)


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
    """One fine-tunable torchvision model: how to build it, split it and name its head."""

    name: str
    builder: str  # function in torchvision.models
    weights: str  # torchvision weights enum, "ResNet50_Weights.IMAGENET1K_V2"
    stages: tuple[str, ...]  # bottom to top
    head: str  # dotted path of the Linear replaced by the num_classes-way head
    pieces: Callable[[nn.Module], list[Piece]]  # the forward chain of a built model
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # builder arguments
    ignore: tuple[str, ...] = ()  # weight-file key prefixes not used here (aux classifiers)
    patch_size: int = 0  # ViT: the input side must be a multiple of it

    def weights_enum(self) -> Any:
        """torchvision's weights enum member (its ``url``, ``meta`` and ``transforms()``)."""
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
    """The registered backbone ``name``; ValueError listing the registered ones otherwise."""
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
    return {"weights": spec.weights, "file": weights_file_name(w), "url": w.url,
            "crop_size": int(t.crop_size[0]), "resize_size": int(t.resize_size[0]),
            "mean": tuple(float(v) for v in t.mean), "std": tuple(float(v) for v in t.std),
            "interpolation": t.interpolation.value, "min_size": tuple(w.meta.get("min_size", (1, 1)))}


def weights_file_name(w: Any) -> str:
    """The file name torchvision stores the weights enum member ``w`` under."""
    return os.path.basename(urlparse(w.url).path)


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
