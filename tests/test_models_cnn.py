"""ScratchCNN structure and its pure parameter / MAC counts, checked against the real module."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from inat_tune.config import ACTIVATIONS, FILTER_ORGS, RunConfig
from inat_tune.models.cnn import ScratchCNN, activation
from inat_tune.models.counting import cnn_macs, cnn_param_count, count_for_config

IMAGE_SIZES = (32, 48, 64, 100)  # 48 and 100 do not divide by 32: the pools floor

# (filters, filter_org, kernel_size) kept small so every model runs in milliseconds on CPU.
SPECS = {
    "same": dict(filters=8, filter_org="same", kernel_size=3),
    "double": dict(filters=4, filter_org="double", kernel_size=3),
    "half": dict(filters=32, filter_org="half", kernel_size=5),
    "list": dict(filters=[6, 10, 12, 16, 20], kernel_size=[3, 3, 3, 3, 3]),
    "mixed_k": dict(filters=[8, 8, 16, 16, 24], kernel_size=[7, 5, 5, 3, 3]),
    "k1": dict(filters=[4, 6, 8, 10, 12], kernel_size=[1, 3, 1, 5, 1]),
}


def make_cfg(image_size: int = 32, batch_norm: bool = False, **kw) -> RunConfig:
    # filter_org same: the Q1 formulas (m filters in every block) are stated for it
    raw = dict(image_size=image_size, batch_norm=batch_norm, dense=16, dropout=0.1, filter_org="same")
    raw.update(kw)
    return RunConfig.from_dict(raw)


def measured_flops(model: nn.Module, image_size: int) -> tuple[int, int]:
    """(total FLOPs, FLOPs of convolution + (add)mm) for one image, as FlopCounterMode counts."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, image_size, image_size))
    per_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    matmul = sum(n for op, n in per_op.items()
                 if op.split(".")[-1] in ("convolution", "addmm", "mm"))
    return counter.get_total_flops(), matmul


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("org", FILTER_ORGS)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_forward_shape_and_structure(act: str, org: str) -> None:
    first = 32 if org == "half" else 4
    cfg = make_cfg(filters=first, filter_org=org, conv_activation=act, dense_activation=act,
                   batch_norm=True)
    model = ScratchCNN(cfg)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()

    modules = list(model.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in modules) == 5
    assert sum(isinstance(m, nn.MaxPool2d) for m in modules) == 5
    assert sum(isinstance(m, nn.Linear) for m in modules) == 2
    assert len(model.blocks) == 5
    for block, c in zip(model.blocks, cfg.conv_filters()):
        assert list(dict(block.named_children())) == ["conv", "bn", "act", "pool"]
        assert block.conv.out_channels == c and block.bn.num_features == c
        assert type(block.act) is type(activation(act))
    assert list(dict(model.head.named_children())) == ["flatten", "fc1", "act", "drop", "out"]
    assert type(model.head.act) is type(activation(act))
    assert model.head.drop.p == pytest.approx(0.1)
    assert model.head.out.out_features == 10


def test_no_batch_norm_means_no_bn_submodule() -> None:
    model = ScratchCNN(make_cfg(batch_norm=False, filters=4))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(not hasattr(b, "bn") for b in model.blocks)
    assert all(b.conv.bias is not None for b in model.blocks)


def test_num_classes_and_feature_shape() -> None:
    model = ScratchCNN(make_cfg(image_size=100, filters=[4, 4, 4, 4, 6]), num_classes=7)
    x = torch.randn(3, 3, 100, 100)
    assert model.forward_features(x).shape == (3, 6, 3, 3)  # 100 -> 50 -> 25 -> 12 -> 6 -> 3
    assert model(x).shape == (3, 7)


@pytest.mark.parametrize("first,org,expected", [
    (32, "double", (32, 64, 128, 256, 512)),
    (32, "same", (32, 32, 32, 32, 32)),
    (64, "half", (64, 32, 16, 8, 4)),
    (16, "half", (16, 8, 4, 2, 1)),
])
def test_filter_organisation_per_block(first: int, org: str, expected: tuple) -> None:
    cfg = make_cfg(filters=first, filter_org=org)
    assert cfg.conv_filters() == expected
    model = ScratchCNN(cfg)
    assert tuple(b.conv.out_channels for b in model.blocks) == expected
    assert tuple(b.conv.in_channels for b in model.blocks) == (3, *expected[:4])


@pytest.mark.parametrize("ks", [(7, 5, 5, 3, 3), (3, 3, 3, 3, 3), (1, 3, 1, 5, 1)])
def test_kernel_sizes_and_same_padding(ks: tuple) -> None:
    model = ScratchCNN(make_cfg(image_size=48, filters=4, kernel_size=list(ks)))
    x = torch.randn(1, 3, 48, 48)
    side = 48
    for block, k in zip(model.blocks, ks):
        assert block.conv.kernel_size == (k, k) and block.conv.padding == (k // 2, k // 2)
        assert block.conv(x).shape[-1] == side  # same padding keeps the side
        x = block(x)
        side //= 2
        assert x.shape[-1] == side


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("image_size", IMAGE_SIZES)
@pytest.mark.parametrize("spec", SPECS, ids=list(SPECS))
def test_param_count_matches_module_exactly(spec: str, image_size: int, batch_norm: bool) -> None:
    cfg = make_cfg(image_size=image_size, batch_norm=batch_norm, **SPECS[spec])
    model = ScratchCNN(cfg)
    measured = sum(p.numel() for p in model.parameters())
    counted = cnn_param_count(cfg.conv_filters(), cfg.kernel_sizes(), cfg.dense, image_size,
                              batch_norm=batch_norm)
    assert counted == measured
    assert count_for_config(cfg)["params"] == measured
    if batch_norm:  # 2 trainable per channel; running stats are buffers, not parameters
        assert counted - cnn_param_count(cfg.conv_filters(), cfg.kernel_sizes(), cfg.dense,
                                         image_size) == 2 * sum(cfg.conv_filters())


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("image_size", IMAGE_SIZES)
@pytest.mark.parametrize("spec", SPECS, ids=list(SPECS))
def test_macs_match_flop_counter(spec: str, image_size: int, batch_norm: bool) -> None:
    cfg = make_cfg(image_size=image_size, batch_norm=batch_norm, **SPECS[spec])
    total, matmul = measured_flops(ScratchCNN(cfg), image_size)
    macs = cnn_macs(cfg.conv_filters(), cfg.kernel_sizes(), cfg.dense, image_size)
    assert 2 * macs == matmul
    assert total == matmul  # FlopCounterMode counts nothing else (BN, pool, activations: 0)
    counts = count_for_config(cfg)
    assert (counts["macs"], counts["flops"]) == (macs, 2 * macs)


def test_macs_with_other_num_classes() -> None:
    cfg = make_cfg(image_size=64, filters=4, filter_org="double")
    total, _ = measured_flops(ScratchCNN(cfg, num_classes=3), 64)
    assert total == count_for_config(cfg, num_classes=3)["flops"]


def q1_params(m: int, k: int, n: int, S: int) -> int:
    """The closed Q1 formula from the counting docstring, written out literally."""
    s5 = S // 32
    return 3 * m * k**2 + m + 4 * (m * m * k**2 + m) + m * s5**2 * n + n + 10 * n + 10


def q1_macs(m: int, k: int, n: int, S: int) -> int:
    s = [S // 2**i for i in range(6)]
    return (3 * m * k**2 * S**2 + m**2 * k**2 * sum(x**2 for x in s[1:5])
            + m * s[5] ** 2 * n + 10 * n)


@pytest.mark.parametrize("m,k,n,S", [(4, 3, 8, 32), (16, 5, 64, 64), (8, 7, 32, 100),
                                     (32, 3, 128, 224), (1, 1, 1, 33)])
def test_q1_closed_formulas(m: int, k: int, n: int, S: int) -> None:
    assert cnn_param_count([m] * 5, [k] * 5, n, S) == q1_params(m, k, n, S)
    assert cnn_macs([m] * 5, [k] * 5, n, S) == q1_macs(m, k, n, S)


def test_q1_closed_formulas_against_the_module() -> None:
    m, k, n, S = 6, 5, 12, 100
    model = ScratchCNN(make_cfg(image_size=S, filters=m, kernel_size=k, dense=n))
    assert sum(p.numel() for p in model.parameters()) == q1_params(m, k, n, S)
    assert measured_flops(model, S)[0] == 2 * q1_macs(m, k, n, S)


def test_hand_computed_small_config() -> None:
    # m=4 filters of 3x3 in every block, n=8 dense, S=32 -> sides 32,16,8,4,2,1 (s5 = 1).
    # params: block1 3*4*9 + 4 = 112; blocks 2-5 4*(4*4*9 + 4) = 4*148 = 592;
    #         dense 4*1*1*8 + 8 = 40; output 8*10 + 10 = 90          -> 112+592+40+90 = 834
    #         with batch norm + 2*4 per block * 5 blocks = 40          -> 874
    # MACs:   32^2*9*3*4 = 110592; 16^2*9*4*4 = 36864; 8^2*144 = 9216; 4^2*144 = 2304;
    #         2^2*144 = 576; dense 4*1*8 = 32; output 8*10 = 80        -> 159664
    assert cnn_param_count([4] * 5, [3] * 5, 8, 32) == 834
    assert cnn_param_count([4] * 5, [3] * 5, 8, 32, batch_norm=True) == 874
    assert cnn_macs([4] * 5, [3] * 5, 8, 32) == 159664
    cfg = make_cfg(image_size=32, filters=4, kernel_size=3, dense=8)
    assert count_for_config(cfg) == {"params": 834, "macs": 159664, "flops": 319328}


@pytest.mark.parametrize("bad", [
    dict(filters=[4] * 5, kernel_sizes=[3] * 4),   # one kernel size missing
    dict(filters=[4] * 5, kernel_sizes=[3, 3, 4, 3, 3]),  # even kernel: not same padding
    dict(filters=[4] * 5, kernel_sizes=[3] * 5, image_size=31),  # pools leave 0 pixels
])
def test_counting_refuses_impossible_shapes(bad: dict) -> None:
    kw = dict(dense=8, image_size=32) | bad
    with pytest.raises(ValueError):
        cnn_param_count(**kw)
    with pytest.raises(ValueError):
        cnn_macs(**kw)


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,cls", [
    ("relu", nn.ReLU), ("gelu", nn.GELU), ("silu", nn.SiLU), ("mish", nn.Mish),
    ("leaky_relu", nn.LeakyReLU), ("elu", nn.ELU), ("tanh", nn.Tanh), ("selu", nn.SELU),
])
def test_activation_names_map_to_modules(name: str, cls: type) -> None:
    act = activation(name)
    assert type(act) is cls
    assert activation(name) is not act  # a fresh module each call
    if name == "leaky_relu":
        assert act.negative_slope == pytest.approx(0.01)


def test_activation_table_covers_config_and_refuses_unknown() -> None:
    assert len({type(activation(a)) for a in ACTIVATIONS}) == len(ACTIVATIONS)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        activation("swish")


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("act", ["relu", "gelu", "tanh"])
def test_gradients_reach_every_parameter(act: str, batch_norm: bool) -> None:
    torch.manual_seed(0)
    cfg = make_cfg(image_size=48, batch_norm=batch_norm, filters=[4, 6, 8, 8, 8],
                   kernel_size=[5, 3, 3, 3, 3], conv_activation=act, dense_activation=act)
    model = ScratchCNN(cfg).train()
    x = torch.randn(4, 3, 48, 48)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.blocks[0].parameters())
