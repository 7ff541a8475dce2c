"""``explain``: filters, feature maps and guided backprop, checked against hand-written rules."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from inat_tune.config import RunConfig
from inat_tune.evaluate import load_best
from inat_tune.explain import (ChannelMax, explain_experiment, explain_model, first_activation, first_conv,
                               grid_shape, guided_attribution, last_conv_block, plot_filters)
from inat_tune.models.registry import create_model

pytestmark = pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")

def _size(path: Path) -> tuple[int, int]:
    return Image.open(path).size


@pytest.mark.slow
def test_explain_experiment_writes_the_three_figures(experiment_copy, tmp_path):
    """On conftest's real sweep: the scratch CNN with 8 first-layer filters and 128 CONV5
    channels (filter_org double)."""
    experiment = experiment_copy  # explain writes its figures into the experiment folder
    with contextlib.redirect_stdout(io.StringIO()):
        paths = explain_experiment(experiment)
    assert set(paths) == {"filters", "feature_maps", "guided_backprop"}
    for name, p in paths.items():
        assert p.parent == experiment and p.name == f"{name}.png" and p.is_file()

    figures = explain_model(load_best(experiment), tmp_path)
    assert figures["filters"].grid == (2, 4)  # 8 filters
    assert figures["feature_maps"].grid == (2, 4)  # 8 first-layer maps
    assert figures["guided_backprop"].grid == (10, 1)  # 10 neurons, (image, pattern) each
    w, h = _size(figures["filters"].path)
    assert 300 <= w <= 800 and 200 <= h < w  # two rows of four
    w, h = _size(figures["feature_maps"].path)
    assert w > h >= 300
    w, h = _size(figures["guided_backprop"].path)
    assert w >= 350 and h > 4 * w  # ten rows of two pictures
    # the same seed draws the same figure
    again = explain_model(load_best(experiment), tmp_path / "again")
    assert (again["guided_backprop"].path.read_bytes() == figures["guided_backprop"].path.read_bytes())


@pytest.mark.parametrize("n, shape", [(64, (8, 8)), (32, (4, 8)), (16, (4, 4)), (8, (2, 4)),
                                      (3, (1, 3)), (7, (3, 3)), (96, (8, 12))])
def test_grid_shape_fits(n, shape):
    assert grid_shape(n) == shape
    rows, cols = shape
    assert rows * cols >= n > (rows - 1) * cols


def test_plot_filters_of_a_64_filter_layer(tmp_path):
    conv = nn.Conv2d(3, 64, 7)
    assert plot_filters(conv.weight, tmp_path / "f.png") == (8, 8)
    w, h = _size(tmp_path / "f.png")
    assert 700 <= w <= 1100 and 0.8 < h / w < 1.2


# ---------------------------------------------------------------------------------------------
# Guided backprop against hand-written rules

class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward is the guided rule: grad_in = max(grad_out, 0) * [x > 0]."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return grad_out.clamp(min=0) * (x > 0)


class _GuidedAny(torch.autograd.Function):
    """Any elementwise activation f with the generalised rule: grad_in = max(f'(x) grad_out, 0)."""

    @staticmethod
    def forward(ctx, x, module):
        ctx.save_for_backward(x)
        ctx.module = module
        return module(x)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(ctx.module(xx), xx, grad_out)
        return g.clamp(min=0), None


def _net(act: type[nn.Module]) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), act(), nn.Conv2d(6, 8, 3, padding=1), act(),
                         nn.MaxPool2d(2), nn.Conv2d(8, 5, 3), act())


def _hand_guided(net: nn.Sequential, x: torch.Tensor, channel: int, relu_only: bool) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    h = x
    for m in net:
        if isinstance(m, nn.ReLU):
            h = _GuidedReLU.apply(h)
        elif isinstance(m, (nn.GELU, nn.SiLU)) and not relu_only:
            h = _GuidedAny.apply(h, m)
        else:
            h = m(h)
    (g,) = torch.autograd.grad(h[:, channel].amax(dim=(1, 2)).sum(), x)
    return g


def _plain(net: nn.Module, x: torch.Tensor, channel: int) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(x)[:, channel].amax(dim=(1, 2)).sum(), x)
    return g


def _channel_net(net: nn.Sequential) -> ChannelMax:
    # identity normalisation: attributions w.r.t. the same input the hand-written pass sees
    return ChannelMax(net, net[-1], mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def test_guided_backprop_is_the_hand_written_relu_rule_and_not_the_gradient():
    from captum.attr import GuidedBackprop

    net = _net(nn.ReLU).eval()
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    wrapped = _channel_net(net)
    for channel in range(3):
        ours = guided_attribution(wrapped, x, channel)
        captum = GuidedBackprop(_channel_net(net)).attribute(x.clone().requires_grad_(True), target=channel)
        hand = _hand_guided(net, x, channel, relu_only=True)
        plain = _plain(net, x, channel)
        assert hand.abs().sum() > 0
        torch.testing.assert_close(captum, hand)
        torch.testing.assert_close(ours, hand)  # for ReLU nets ours is exactly Captum's
        assert not torch.allclose(plain, hand)  # negative signals through the ReLUs are gone


def test_guided_backprop_zeroes_negative_gradients_through_a_relu():
    # ReLU right on the input: the guided gradient is max(w, 0) where x > 0, the plain one w
    torch.manual_seed(0)
    lin = nn.Linear(20, 1)
    net = nn.Sequential(nn.ReLU(), lin)
    x = torch.randn(4, 20, generator=torch.Generator().manual_seed(2))
    from captum.attr import GuidedBackprop

    guided = GuidedBackprop(net).attribute(x.clone().requires_grad_(True), target=0)
    xx = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(net(xx)[:, 0].sum(), xx)
    w = lin.weight.detach()[0].expand_as(x)
    torch.testing.assert_close(plain, w * (x > 0))
    torch.testing.assert_close(guided, w.clamp(min=0) * (x > 0))
    assert (plain < 0).any() and (guided >= 0).all()
    assert ((plain < 0) & (guided == 0)).any()  # entries the plain gradient has, guided not


def test_non_relu_activation_gets_the_generalised_rule_where_captum_gives_the_gradient():
    from captum.attr import GuidedBackprop

    net = _net(nn.GELU).eval()
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    channel = 1
    plain = _plain(net, x, channel)
    captum = GuidedBackprop(_channel_net(net)).attribute(x.clone().requires_grad_(True), target=channel)
    torch.testing.assert_close(captum, plain)  # Captum hooks nn.ReLU only: nothing is guided
    ours = guided_attribution(_channel_net(net), x, channel)
    torch.testing.assert_close(ours, _hand_guided(net, x, channel, relu_only=False))
    assert not torch.allclose(ours, plain)


# ---------------------------------------------------------------------------------------------
# Finding the layers, for the scratch CNN and for fine-tuned backbones

def _finetune(backbone: str) -> nn.Module:
    return create_model(RunConfig.from_dict({"model": "finetune", "backbone": backbone, "weights": "none",
                                             "image_size": 32}), num_classes=10)


def test_layers_of_the_scratch_cnn():
    model = create_model(RunConfig.from_dict({"image_size": 32, "filters": 8}), num_classes=10)
    assert last_conv_block(model) == ("blocks.4", model.blocks[4])
    assert first_conv(model) is model.blocks[0].conv
    assert first_activation(model) == ("blocks.0.act", model.blocks[0].act)


def test_layers_of_a_finetuned_resnet_and_other_backbones():
    import torchvision

    model = _finetune("resnet18")
    name, block = last_conv_block(model)
    assert name == "layer4" and block is model.net.layer4
    assert first_conv(model) is model.net.conv1 and first_activation(model)[1] is model.net.relu

    class Wrapped(nn.Module):  # a torchvision network at .backbone, no stage names
        def __init__(self, net):
            super().__init__()
            self.backbone = net

    r = Wrapped(torchvision.models.resnet18())
    assert last_conv_block(r) == ("backbone.layer4", r.backbone.layer4)
    m = Wrapped(torchvision.models.mobilenet_v2())
    assert last_conv_block(m) == ("backbone.features.18", m.backbone.features[18])
    r.stages = ["layer1", "layer2", "layer3"]  # stage names, when given, decide
    assert last_conv_block(r) == ("backbone.layer3", r.backbone.layer3)


@pytest.mark.slow
def test_explain_model_on_a_finetuned_resnet(tmp_path):
    """Model-agnostic: a fine-tuned ResNet (in-place ReLUs, 64 first-layer filters) works."""
    model = _finetune("resnet18").eval()
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 2)
    test = SimpleNamespace(images=rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8), labels=labels,
                           files=tuple(f"val/c{c}/{i}.jpg" for i, c in enumerate(labels)))
    bm = SimpleNamespace(  # what explain_model reads of a BestModel
        model=model, device=torch.device("cpu"), test=test, classes=tuple(f"c{i}" for i in range(10)),
        mean=model.mean, std=model.std, config=SimpleNamespace(model="finetune"),
        experiment=SimpleNamespace(name="ft"), best=SimpleNamespace(trial=SimpleNamespace(trial_id="t1")))
    figs = explain_model(bm, tmp_path)
    assert figs["filters"].grid == (8, 8) and figs["feature_maps"].grid == (8, 8)
    assert figs["guided_backprop"].grid == (10, 1)
    assert all(f.path.is_file() for f in figs.values())


class _ReLU6Hand(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0, 6)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return grad_out.clamp(min=0) * (x > 0)


def test_relu6_saturated_neurons_are_still_explained():
    """A ReLU6 neuron at its cap has zero gradient; guided backprop uses the ReLU rule there."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU6(),
                        nn.Conv2d(6, 4, 3, padding=1), nn.ReLU6()).eval()
    with torch.no_grad():
        net[2].bias[0] = 8.0  # channel 0 of the second layer sits at its cap
    x = torch.rand(1, 3, 10, 10, generator=torch.Generator().manual_seed(4))
    channel = int(net(x).amax(dim=(2, 3))[0].argmax())
    assert net(x)[0, channel].max() == 6.0
    assert _plain(net, x, channel).abs().sum() == 0  # the plain gradient of a capped neuron
    xx = x.clone().requires_grad_(True)
    h = xx
    for m in net:
        h = _ReLU6Hand.apply(h) if isinstance(m, nn.ReLU6) else m(h)
    (hand,) = torch.autograd.grad(h[:, channel].amax(dim=(1, 2)).sum(), xx)
    ours = guided_attribution(_channel_net(net), x, channel)
    assert hand.abs().sum() > 0
    torch.testing.assert_close(ours, hand)


# ---------------------------------------------------------------------------------------------
# Figure layout (issue 14): checked on matplotlib's objects, not pixels

def _text(fig, content: str):
    from matplotlib.text import Text

    found = [t for t in fig.findobj(Text) if t.get_text() == content]
    assert len(found) == 1, [t.get_text() for t in fig.findobj(Text) if t.get_text()]
    return found[0]


@pytest.mark.parametrize("n_maps", [8, 16])
def test_feature_maps_title_is_not_clipped_and_the_image_label_overlaps_nothing(tmp_path, drawn, n_maps):
    from inat_tune.explain import plot_feature_maps

    title = ("demo-sweep: trial 3365b4f9 (scratch_cnn)\nfirst-layer feature maps of one test image: output of "
             "blocks.0.act (ReLU after the first conv); each map on its own colour scale")
    label = "Plantae/Plantae_18.jpg\ntrue: Plantae"
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    plot_feature_maps(image, torch.rand(n_maps, 32, 32), tmp_path / "m.png", title=title, image_title=label)
    fig = drawn[-1]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()  # the figure as saved, on a canvas that measures text
    r = fig.canvas.get_renderer()
    page = fig.bbox
    sup = fig._suptitle.get_window_extent(r)
    assert page.x0 <= sup.x0 and sup.x1 <= page.x1 and sup.y1 <= page.y1, (sup, page)  # not clipped
    lab = _text(fig, label).get_window_extent(r)
    assert page.x0 <= lab.x0 and lab.x1 <= page.x1
    assert not lab.overlaps(sup), (lab, sup)
    for ax in fig.axes:  # neither the title nor the label covers a picture
        if ax.images:
            box = ax.get_window_extent(r)
            assert not box.overlaps(sup) and not box.overlaps(lab), (ax, box)


def test_guided_backprop_panel_of_a_dead_channel_says_so(tmp_path, drawn):
    from inat_tune.explain import plot_guided_backprop, pattern_image

    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    patterns = [pattern_image(torch.randn(3, 32, 32)), pattern_image(torch.zeros(3, 32, 32))]
    plot_guided_backprop(images, patterns, ["channel 4", "channel 9"], tmp_path / "g.png", title="t")
    fig = drawn[-1]
    pattern_axes = [ax for ax in fig.axes if ax.get_title(loc="left") == "guided backprop pattern"]
    words = [" ".join(t.get_text() for t in ax.texts) for ax in pattern_axes]
    assert "dead channel" in words[1] and "no gradient" in words[1]
    assert "dead" not in words[0]
    # said by the caller (all-zero attribution), whatever the picture looks like
    plot_guided_backprop(images, patterns[:1] * 2, ["a", "b"], tmp_path / "h.png", dead=[False, True])
    fig = drawn[-1]
    words = [" ".join(t.get_text() for t in ax.texts) for ax in fig.axes
             if ax.get_title(loc="left") == "guided backprop pattern"]
    assert "dead" not in words[0] and "dead channel" in words[1]
