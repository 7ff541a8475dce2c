"""``inat-tune explain``: what the best model of an experiment has learned, as three figures.

Written into the experiment folder:

    filters.png          every first-layer conv filter (8 x 8 for 64 filters), each min-max
                         normalised on its own and shown as RGB
    feature_maps.png     the first layer's feature maps (after its activation) for one seeded
                         test image, next to the image
    guided_backprop.png  guided backpropagation (Springenberg et al. 2015, arXiv:1412.6806;
                         Captum's GuidedBackprop) for 10 channels of the last conv block
                         (CONV5 of the scratch CNN; the last stage, e.g. ``layer4``, of a
                         ResNet-like backbone): for each channel the test image (of a seeded
                         sample) that excites it most, and the input pattern that excites it

**The guided rule and non-ReLU activations.** Guided backprop zeroes negative gradients where
they pass a ReLU (grad_in = max(grad_out, 0) * [x > 0]). Captum implements it by hooking
``nn.ReLU`` modules only: a network whose conv activation is GELU, SiLU, Mish, ELU, ... would
get the *plain* input gradient from Captum, silently. Here Captum's public ``GuidedBackprop``
handles the ``nn.ReLU`` modules, and :func:`guided_rule` applies the same rule (an
activation's input gradient replaced by its positive part) to every other elementwise
activation module (:data:`GUIDED_ACTIVATIONS`) with PyTorch's public module hooks. For ReLU
networks this is exactly Captum's GuidedBackprop; for monotone activations (LeakyReLU, ELU,
SELU, Tanh) it is f'(x) * max(grad_out, 0), the guided rule with the activation's own slope;
for the non-monotone GELU / SiLU / Mish it is max(f'(x) * grad_out, 0), so only signals that
would increase the neuron pass, as the method intends. ReLU6 (MobileNetV2) gets the ReLU rule,
as the ReLU it caps (see :func:`guided_rule`). The figure title says which activations the
rule was applied to.

A little over 500 lines on purpose: one command and its three figures, each a short section
(filters, feature maps, guided backprop) sharing the model-loading and layout helpers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn

from .evaluate import BestModel, _figure, _short, load_best, wrap_title

log = logging.getLogger(__name__)

FIGURES = {"filters": "filters.png", "feature_maps": "feature_maps.png",
           "guided_backprop": "guided_backprop.png"}
# Elementwise activation modules the guided rule is applied at (ReLU6 and Hardtanh are the
# same class family; Hardswish/Hardsigmoid appear in MobileNetV3, ReLU6 in MobileNetV2).
GUIDED_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Sigmoid, nn.Hardsigmoid, nn.Softplus,
)


# ---------------------------------------------------------------------------------------------
# Finding the layers (model-agnostic)

def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first ``nn.Conv2d`` in module order (``blocks[0].conv``, ResNet's ``conv1``)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer")


def first_activation(model: nn.Module) -> tuple[str, nn.Module]:
    """(name, module) of the first layer's activation: the first activation module after the
    first conv and before the second (``blocks.0.act``, ResNet's ``relu``); the first conv
    itself when none lies between them (ConvNeXt's stem has a norm and no activation)."""
    conv = first_conv(model)
    conv_name, seen_conv = "", False
    for name, m in model.named_modules():
        if m is conv:
            seen_conv, conv_name = True, name
        elif seen_conv and isinstance(m, nn.Conv2d):
            break
        elif seen_conv and isinstance(m, GUIDED_ACTIVATIONS):
            return name, m
    return conv_name, conv


def _has_conv(m: nn.Module) -> bool:
    return any(isinstance(x, nn.Conv2d) for x in m.modules())


def last_conv_block(model: nn.Module) -> tuple[str, nn.Module]:
    """(name, module) of the last conv block, whose output channels guided backprop explains.

    In this order: the scratch CNN's ``blocks[-1]`` (CONV5); the last stage named in
    ``model.stages`` / ``model.stage_names`` that contains a conv (looked up in
    ``model.pieces`` by stage, else as a submodule of the model, ``.net`` or ``.backbone``):
    ResNet -> ``layer4``; else, from the torchvision network (``.net``/``.backbone`` when it is a
    module) the last child that contains a conv, descending while that child also holds the
    first conv (a whole trunk such as MobileNet's ``features``).
    """
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.ModuleList, nn.Sequential)) and len(blocks) and _has_conv(blocks[-1]):
        return f"blocks.{len(blocks) - 1}", blocks[-1]
    stages = getattr(model, "stages", None) or getattr(model, "stage_names", None)
    if stages:
        found = [(n, m) for n, m in map(lambda st: _stage_module(model, st), stages)
                 if m is not None and _has_conv(m)]
        if found:
            return found[-1]
    prefix, node = "", model
    for attr in ("net", "backbone"):
        if isinstance(getattr(model, attr, None), nn.Module):
            prefix, node = attr, getattr(model, attr)
            break
    first = first_conv(node)
    while True:
        children = [(n, c) for n, c in node.named_children() if _has_conv(c)]
        if not children:
            break
        name, child = children[-1]
        prefix, node = (f"{prefix}.{name}" if prefix else name), child
        if not any(m is first for m in child.modules()):
            break
    if node is model:
        raise ValueError(f"{type(model).__name__}: no conv block found")
    return prefix, node


def _stage_module(model: nn.Module, stage: Any) -> tuple[str, nn.Module | None]:
    if isinstance(stage, nn.Module):
        return type(stage).__name__, stage
    name = str(stage)
    pieces = [p for p in getattr(model, "pieces", None) or () if getattr(p, "stage", None) == name]
    if pieces and isinstance(getattr(pieces[-1], "module", None), nn.Module):
        return name, pieces[-1].module  # the module forward() runs for that stage
    for attr in ("", "net", "backbone"):
        root = getattr(model, attr, None) if attr else model
        if isinstance(root, nn.Module):
            try:
                return (f"{attr}.{name}" if attr else name), root.get_submodule(name)
            except AttributeError:
                continue
    return name, None


def _without_inplace(model: nn.Module) -> None:
    """Hooks (Captum's and ours) need every activation's input intact: no in-place ops."""
    for m in model.modules():
        if getattr(m, "inplace", False):
            m.inplace = False


# ---------------------------------------------------------------------------------------------
# Guided backprop

class FigureInfo(NamedTuple):
    path: Path
    grid: tuple[int, int]  # (rows, cols) of the figure's panels, as its plot function returned


class ChannelMax(nn.Module):
    """[0, 1] images -> (N, C): each channel's spatial max at ``layer``'s output.

    The normalisation is inside, so attributions are w.r.t. image pixels; Captum's ``target``
    then picks a channel, and the gradient flows to that channel's most excited neuron.
    """

    def __init__(self, model: nn.Module, layer: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self._layer = (layer,)  # not registered: Captum must hook its activations only once
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = self._layer[0].register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            self.model((x - self.mean) / self.std)
        finally:
            handle.remove()
        out = captured[-1]
        if out.ndim != 4:
            raise ValueError(f"the explained layer gives shape {tuple(out.shape)}, not N x C x H x W")
        return out.float().amax(dim=(2, 3))


class _ReLU6AsReLU(torch.autograd.Function):
    """ReLU6's forward values with the guided ReLU rule backward: max(grad, 0) * [x > 0]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(0.0, 6.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0)


@contextlib.contextmanager
def guided_rule(model: nn.Module) -> Iterator[None]:
    """While open, the guided rule at every activation module of ``model`` that Captum's
    GuidedBackprop does not hook itself (all of :data:`GUIDED_ACTIVATIONS` but ``nn.ReLU``):
    a full backward hook replaces the module's input gradient by its positive part, which is
    what Captum's ReLU hook does.

    ReLU6 (MobileNetV2) is explained as the ReLU it caps: its gradient is 0 above 6, so the
    most excited neurons, saturated at 6, would get an empty pattern; its backward pass here
    is the ReLU rule (forward values unchanged). Only public PyTorch hooks are used.
    """
    def positive(module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple:
        return tuple(None if g is None else g.clamp(min=0) for g in grad_input)

    handles = []
    try:
        for m in model.modules():
            if isinstance(m, nn.ReLU6):
                handles.append(m.register_forward_hook(lambda mod, inp, out: _ReLU6AsReLU.apply(inp[0])))
            if isinstance(m, GUIDED_ACTIVATIONS) and not isinstance(m, nn.ReLU):
                handles.append(m.register_full_backward_hook(positive))
        yield
    finally:
        for h in handles:
            h.remove()


def guided_attribution(net: nn.Module, images: torch.Tensor, channel: int) -> torch.Tensor:
    """Guided-backprop attribution of ``net(images)[:, channel]`` w.r.t. ``images``: Captum's
    GuidedBackprop (its public API) under :func:`guided_rule`, so every activation module is
    guided, not only ``nn.ReLU``."""
    from captum.attr import GuidedBackprop

    with warnings.catch_warnings(), guided_rule(net):
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        return GuidedBackprop(net).attribute(images.clone().requires_grad_(True), target=channel).detach()


def activation_names(model: nn.Module, upto: nn.Module | None = None) -> list[str]:
    """The activation module types in ``model`` (up to the end of ``upto``, in module order):
    where the guided rule is applied on the way back from ``upto``."""
    modules = list(model.modules())
    end = len(modules)
    if upto is not None:
        inside = {id(m) for m in upto.modules()}
        end = max((i for i, m in enumerate(modules) if id(m) in inside), default=end - 1) + 1
    return sorted({type(m).__name__ for m in modules[:end] if isinstance(m, GUIDED_ACTIVATIONS)})


# ---------------------------------------------------------------------------------------------
# Figures

def grid_shape(n: int) -> tuple[int, int]:
    """A fitting (rows, cols) for n panels: 8 x 8 for 64, 4 x 8 for 32, 2 x 4 for 8, one row
    up to 5; near square (3 x 3 for 7) when the exact factorisation is too elongated."""
    rows = max(r for r in range(1, int(math.isqrt(n)) + 1) if n % r == 0) if n else 1
    if n // rows > 2 * rows and n > 5:  # e.g. a prime count: near-square, a few cells empty
        cols = math.ceil(math.sqrt(n))
        return math.ceil(n / cols), cols
    return rows, n // rows


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def plot_filters(weight: torch.Tensor, path: str | Path, title: str = "") -> tuple[int, int]:
    """Every filter of a conv weight (out x in x k x k) as a tile, each min-max normalised on
    its own; RGB when in = 3, the mean over inputs in grey otherwise. Returns (rows, cols)."""
    w = weight.detach().float().cpu().numpy()
    n = w.shape[0]
    rows, cols = grid_shape(n)
    fig = _figure(1.0 * cols + 0.3, 1.0 * rows + 0.7)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.6 / (1.0 * rows + 0.7),
                        wspace=0.08, hspace=0.08)
    for i in range(rows * cols):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        f = w[i]
        tile = _minmax(f.transpose(1, 2, 0)) if f.shape[0] == 3 else _minmax(f.mean(0))
        ax.imshow(tile, cmap=None if tile.ndim == 3 else "gray", interpolation="nearest")
    fig.suptitle(title, fontsize=10, y=1 - 0.1 / (1.0 * rows + 0.7), va="top")
    fig.savefig(path, dpi=100)
    return rows, cols


def plot_feature_maps(image: np.ndarray, maps: torch.Tensor, path: str | Path, title: str = "",
                      image_title: str = "") -> tuple[int, int]:
    """The input image (uint8 S x S x 3) and its feature maps (C x H x W), each map on its own
    colour scale. Returns the (rows, cols) of the map grid."""
    m = maps.detach().float().cpu().numpy()
    n = m.shape[0]
    rows, cols = grid_shape(n)
    tile = 1.05
    width = 3.2 + tile * cols
    # the title wrapped to the figure's width, and a band above the panels tall enough for it
    title = wrap_title(title, width - 0.3, 10)
    title_in = 0.2 + 0.19 * (title.count("\n") + 1) if title else 0.15
    label_in = 0.2 + 0.16 * (image_title.count("\n") + 1) if image_title else 0.0
    height = max(3.4, tile * rows + 0.2, 2.6 + label_in + 0.2) + title_in
    fig = _figure(width, height)
    top = 1 - title_in / height
    gs = fig.add_gridspec(rows, cols + 3, left=0.015, right=0.985, bottom=0.02, top=top,
                          wspace=0.06, hspace=0.08,
                          width_ratios=[2.6 / 2, 2.6 / 2, 0.25] + [tile] * cols)
    # the image's label in a row of its own above the image: it cannot reach the title
    left = gs[:, :2].subgridspec(2, 1, height_ratios=[label_in or 0.01, height * (top - 0.02) - label_in],
                                 hspace=0.0)
    if image_title:
        lab = fig.add_subplot(left[0])
        lab.axis("off")
        lab.text(0.5, 0.5, image_title, fontsize=9, ha="center", va="center", transform=lab.transAxes)
    ax = fig.add_subplot(left[1])
    ax.imshow(image)
    ax.set_anchor("N")
    ax.axis("off")
    for i in range(rows * cols):
        a = fig.add_subplot(gs[i // cols, 3 + i % cols])
        a.set_xticks([])
        a.set_yticks([])
        if i >= n:
            a.axis("off")
            continue
        a.imshow(m[i], cmap="viridis", interpolation="nearest")
        if m[i].max() == m[i].min():  # a dead (or constant) map: say so, it is not a glitch
            a.text(0.5, 0.5, f"all {m[i].max():.3g}", transform=a.transAxes, fontsize=7,
                   color="white", ha="center", va="center")
        a.text(0.03, 0.97, str(i), transform=a.transAxes, fontsize=6.5, color="white", va="top",
               ha="left")
    fig.suptitle(title, fontsize=10, y=1 - 0.1 / height, va="top")
    fig.savefig(path, dpi=100)
    return rows, cols


def pattern_image(attr: torch.Tensor) -> np.ndarray:
    """An attribution (3 x H x W) as an RGB picture: grey = 0, brighter / darker = positive /
    negative, scaled by the 99.5th percentile of |attr| so a few pixels do not wash it out."""
    a = attr.detach().float().cpu().numpy().transpose(1, 2, 0)
    scale = float(np.percentile(np.abs(a), 99.5)) or 1.0
    return np.clip(0.5 + 0.5 * a / scale, 0.0, 1.0)


DEAD = "dead channel\n(no gradient)"  # written on the pattern of an all-zero attribution


def plot_guided_backprop(images: np.ndarray, patterns: Sequence[np.ndarray], labels: Sequence[str],
                         path: str | Path, title: str = "", dead: Sequence[bool] | None = None
                         ) -> tuple[int, int]:
    """One row per neuron: the image that excites it most and its guided-backprop pattern,
    side by side. A pattern of a channel with no gradient (``dead``; by default a pattern of
    one flat colour, which is what :func:`pattern_image` makes of an all-zero attribution)
    says so in words instead of being a blank grey panel. Returns (rows, 1): rows of
    (image, pattern) pairs."""
    rows = len(patterns)
    side, label_h = 1.9, 0.42  # inches: one picture, its caption band
    title = wrap_title(title, 2 * side + 0.3, 8)
    top_in = 0.25 + 0.16 * (title.count("\n") + 1)  # the title band grows with its lines
    height = (side + label_h) * rows + top_in
    fig = _figure(2 * side + 0.5, height)
    gs = fig.add_gridspec(rows, 2, left=0.04, right=0.96, bottom=0.05 / height, top=1 - top_in / height,
                          wspace=0.06, hspace=label_h / side)
    for r in range(rows):
        a0, a1 = fig.add_subplot(gs[r, 0]), fig.add_subplot(gs[r, 1])
        a0.imshow(images[r])
        a1.imshow(patterns[r])
        for a in (a0, a1):
            a.set_xticks([])
            a.set_yticks([])
        a0.set_title(labels[r], fontsize=7.5, loc="left", pad=2)
        a1.set_title("guided backprop pattern", fontsize=7.5, loc="left", pad=2)
        is_dead = bool(dead[r]) if dead is not None else float(np.ptp(np.asarray(patterns[r]))) == 0.0
        if is_dead:
            a1.text(0.5, 0.5, DEAD, transform=a1.transAxes, ha="center", va="center", fontsize=9,
                    color="black", bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="0.5", alpha=0.9))
    fig.suptitle(title, fontsize=8, y=1 - 0.06 / height, va="top")
    fig.savefig(path, dpi=100)
    return rows, 1


# ---------------------------------------------------------------------------------------------

def _as_float(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 N x S x S x 3 -> float N x 3 x S x S in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div(255)


def _normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    return (x - m) / torch.tensor(std, device=x.device).view(1, -1, 1, 1)


@torch.no_grad()
def channel_maxima(net: ChannelMax, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(N, C) spatial-max activation of every channel for every image."""
    return torch.cat([net(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def choose_channels(maxima: torch.Tensor, k: int, seed: int) -> list[int]:
    """``k`` channels, a seeded draw among those that fire on some image (dead ones explain
    nothing), topped up with the rest if fewer than ``k`` fire."""
    rng = np.random.default_rng(seed)
    peak = maxima.max(0).values.cpu().numpy()
    live = np.flatnonzero(peak > 0)
    dead = np.flatnonzero(peak <= 0)
    pick = list(rng.choice(live, size=min(k, len(live)), replace=False)) if len(live) else []
    pick += list(dead[: k - len(pick)])
    return sorted(int(c) for c in pick)


def _file_label(name: str) -> str:
    return _short("/".join(Path(name).parts[-2:]), 34)  # class folder / file name


def _figure_filters(model: nn.Module, path: Path, head: str) -> tuple[int, int]:
    conv = first_conv(model)
    k = conv.kernel_size
    return plot_filters(conv.weight, path, title=f"{head}\nfirst-layer filters: "
                                                 f"{conv.out_channels} x {k[0]}x{k[1]}x{conv.in_channels}")


def _figure_feature_maps(bm: BestModel, model: nn.Module, i: int, path: Path, head: str) -> tuple[int, int]:
    """Feature maps of test image ``i`` at the first layer's activation (a forward hook)."""
    conv = first_conv(model)
    act_name, act = first_activation(model)
    captured: list[torch.Tensor] = []
    handle = act.register_forward_hook(lambda m, inp, o: captured.append(o.detach()))
    try:
        with torch.no_grad():
            model(_normalise(_as_float(bm.test.images[i:i + 1], bm.device), bm.mean, bm.std))
    finally:
        handle.remove()
    what = f"{type(act).__name__} after the first conv" if act is not conv \
        else "the first conv; no activation follows it"
    return plot_feature_maps(
        bm.test.images[i], captured[0][0], path,
        title=f"{head}\nfirst-layer feature maps of one test image: output of {act_name} ({what}); "
              "each map on its own colour scale",
        image_title=f"{_file_label(bm.test.files[i])}\ntrue: {bm.classes[int(bm.test.labels[i])]}")


def _figure_guided(bm: BestModel, model: nn.Module, sample: np.ndarray, num_channels: int, seed: int,
                   path: Path, head: str) -> tuple[int, int]:
    """For ``num_channels`` channels of the last conv block: the sampled test image that
    excites the channel most, and the guided-backprop pattern of that maximum."""
    block_name, block = last_conv_block(model)
    net = ChannelMax(model, block, bm.mean, bm.std).to(bm.device).eval()
    xs = _as_float(bm.test.images[sample], bm.device)
    maxima = channel_maxima(net, xs)
    images, patterns, labels, dead = [], [], [], []
    for c in choose_channels(maxima, num_channels, seed):
        j = int(maxima[:, c].argmax())
        attr = guided_attribution(net, xs[j:j + 1], c)[0]
        dead.append(not bool(attr.any()))
        patterns.append(pattern_image(attr))
        images.append(bm.test.images[sample[j]])
        labels.append(f"channel {c} (max activation {float(maxima[j, c]):.2f})\n"
                      f"{_file_label(bm.test.files[sample[j]])}")
    acts = activation_names(model, upto=block)
    rule = f"guided rule at: {', '.join(acts) or 'no activation module'}"
    if acts != ["ReLU"]:
        rule += "\n(the ReLU rule, generalised: see inat_tune/explain.py)"
    return plot_guided_backprop(
        np.stack(images), patterns, labels, path, dead=dead,
        title=f"{head}\nguided backprop, {len(patterns)} of {maxima.shape[1]} channels of {block_name};\n"
              f"each with the most exciting of {len(sample)} test images\n{rule}")


def explain_model(bm: BestModel, out_dir: str | Path, *, seed: int = 0, num_channels: int = 10,
                  sample_size: int = 200) -> dict[str, FigureInfo]:
    """Write the three figures for ``bm``'s model into ``out_dir``; returns each one's path and
    grid shape. The model is put in eval mode, without in-place activations or parameter
    gradients. The feature-map image and the guided-backprop sample are seeded draws."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = bm.model.eval()
    _without_inplace(model)
    for p in model.parameters():
        p.requires_grad_(False)  # gradients are needed w.r.t. the input only
    n = len(bm.test.labels)
    rng = np.random.default_rng(seed)
    image = int(rng.integers(n))
    sample = np.sort(rng.choice(n, size=min(sample_size, n), replace=False))
    head = f"{bm.experiment.name}: trial {bm.best.trial.trial_id} ({bm.config.model})"
    paths = {k: out / v for k, v in FIGURES.items()}
    grids = {
        "filters": _figure_filters(model, paths["filters"], head),
        "feature_maps": _figure_feature_maps(bm, model, image, paths["feature_maps"], head),
        "guided_backprop": _figure_guided(bm, model, sample, num_channels, seed,
                                          paths["guided_backprop"], head),
    }
    return {k: FigureInfo(paths[k], grids[k]) for k in FIGURES}


def explain_experiment(path: str | Path, data: str | Path | None = None, *, device: str | None = None,
                       seed: int = 0, num_channels: int = 10, sample_size: int = 200,
                       cache_dir: str | Path | None = None) -> dict[str, Path]:
    """Filters, feature maps and guided backprop of the best trial of experiment ``path``
    (chosen on validation data), drawn from its test set; returns the figure paths."""
    bm = load_best(path, data, device=device, cache_dir=cache_dir, progress=True)
    figures = explain_model(bm, bm.experiment.path, seed=seed, num_channels=num_channels,
                            sample_size=sample_size)
    paths = {k: f.path for k, f in figures.items()}
    print(f"explain {bm.experiment.name}: trial {bm.best.trial.trial_id} "
          f"({bm.experiment.metric} {bm.best.value:.4f}); wrote "
          + ", ".join(str(p) for p in paths.values()))
    return paths
