"""Part B: torchvision backbones, weights (ImageNet offline, local files), freezing strategies,
frozen BatchNorm, gradual unfreezing, and the frozen-feature cache. Never downloads anything:
weights are ``none`` or state dicts generated here."""

from __future__ import annotations

import contextlib
import io
import json
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from torch import nn

from inat_tune.config import RunConfig
from inat_tune.data import features
from inat_tune.data.loader import DeviceLoader, to_device
from inat_tune.data.pipeline import load_tuning_data
from inat_tune.models import pretrained, weights
from inat_tune.models.backbones import BACKBONES, HEAD, preprocessing
from inat_tune.models.freezing import trainable_stages
from inat_tune.models.pretrained import build_finetune_model
from inat_tune.models.weights import WeightsError
from inat_tune.train import build_optimizer, evaluate, fit, load_model

RESNET = ("stem", "layer1", "layer2", "layer3", "layer4")
STEM = ("net.conv1.", "net.bn1.")
STRATEGIES = ("head_only", "freeze_until:layer2", "full", "gradual")


def cfg_for(**kw) -> RunConfig:
    raw = dict(model="finetune", backbone="resnet18", weights="none", image_size=32,
               strategy="head_only", augment=False, batch_size=32, epochs=2, lr=1e-3)
    return RunConfig.from_dict({**raw, **kw})


def build(num_classes: int = 10, **kw) -> pretrained.FinetuneModel:
    torch.manual_seed(0)
    return build_finetune_model(cfg_for(**kw), num_classes)


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def stage_prefixes(stages) -> tuple[str, ...]:
    out: list[str] = []
    for s in stages:
        out += list(STEM) if s == "stem" else [f"net.{s}."]
    return tuple(out)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """120 generated images (96 train / 24 val) at 32 px: fit() runs take seconds on 2 cores."""
    from inat_tune.data.synth import make_synthetic

    root = make_synthetic(tmp_path_factory.mktemp("ft") / "ds", per_class=12, val_per_class=2,
                          image_size=36, seed=4)
    return load_tuning_data(root, 32, 0.2, 0, cache_dir=tmp_path_factory.mktemp("c"), progress=False)


# --- registry, heads, preprocessing ----------------------------------------------------------

SLOW_BACKBONES = {"vit_b_16", "vgg16", "convnext_tiny", "inception_v3", "resnet101", "googlenet"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_BACKBONES else n
                                  for n in BACKBONES])
def test_head_replaced_and_stages_cover_every_backbone(name):
    size = max(32, *preprocessing(name)["min_size"])  # inception_v3: 75, efficientnet: 33
    model = build(num_classes=7, backbone=name, image_size=size).eval()
    spec = BACKBONES[name]
    head = model.net.get_submodule(spec.head)
    assert isinstance(head, nn.Linear) and head.out_features == 7
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = model(x)
        # the piece chain the freezing and the feature cache rely on is torchvision's forward
        torch.testing.assert_close(out, model.net(x))
    assert out.shape == (2, 7)
    # every parameter belongs to exactly one stage or the head
    owned = [n for names in model._stage_params.values() for n in names]
    assert sorted(owned) == sorted(n for n, _ in model.net.named_parameters())
    assert [s for s in dict.fromkeys(p.stage for p in model.pieces) if s not in (None, HEAD)] == list(spec.stages)
    # head_only trains exactly the new head
    assert trainable_names(model) == {f"net.{spec.head}.weight", f"net.{spec.head}.bias"}


def test_preprocessing_comes_from_the_weights_metadata():
    r50 = preprocessing("resnet50")
    assert (r50["crop_size"], r50["resize_size"]) == (224, 232)  # IMAGENET1K_V2 recipe
    assert r50["file"] == "resnet50-11ad3fa6.pth"
    inc = preprocessing("inception_v3")
    assert (inc["crop_size"], inc["resize_size"]) == (299, 342)
    for name in BACKBONES:
        t = BACKBONES[name].weights_enum().transforms()
        p = preprocessing(name)
        assert p["mean"] == tuple(t.mean) and p["std"] == tuple(t.std) and p["crop_size"] == t.crop_size[0]
    model = build(backbone="resnet18")
    assert (model.mean, model.std) == (preprocessing("resnet18")["mean"], preprocessing("resnet18")["std"])


def test_unknown_backbone_stage_and_size_are_refused():
    with pytest.raises(ValueError, match="registered: .*resnet50"):
        build(backbone="resnet5000")
    with pytest.raises(ValueError, match="valid stages.*stem, layer1, layer2, layer3, layer4"):
        build(strategy="freeze_until:layer9")
    with pytest.raises(ValueError, match="at least 75"):
        build(backbone="inception_v3", image_size=64)
    with pytest.raises(ValueError, match="multiple of 16"):
        build(backbone="vit_b_16", image_size=40)


# --- strategies ------------------------------------------------------------------------------

def test_trainable_stages_is_data():
    assert trainable_stages("head_only", RESNET) == {HEAD}
    assert trainable_stages("full", RESNET) == {*RESNET, HEAD}
    assert trainable_stages("freeze_until:layer3", RESNET) == {"layer4", HEAD}
    assert trainable_stages("freeze_until:stem", RESNET) == {"layer1", "layer2", "layer3", "layer4", HEAD}
    assert trainable_stages("freeze_until:layer4", RESNET) == {HEAD}
    got = [trainable_stages("gradual", RESNET, epoch=e, unfreeze_every=2) for e in range(13)]
    top = list(reversed(RESNET))
    for e, stages in enumerate(got):
        assert stages == {HEAD, *top[:min(e // 2, 5)]}, e
    with pytest.raises(ValueError, match="valid stages"):
        trainable_stages("freeze_until:layer5", RESNET)
    with pytest.raises(ValueError, match="head_only"):
        trainable_stages("partial", RESNET)


@pytest.mark.parametrize("strategy", ["head_only", "freeze_until:layer3", "full", "gradual"])
def test_resnet50_trainable_parameters_by_strategy(strategy):
    model = build(backbone="resnet50", strategy=strategy)
    assert [p.stage for p in model.pieces if p.stage] == [*RESNET, HEAD]
    assert model.net.fc.out_features == 10
    live = ("net.fc.", *stage_prefixes(trainable_stages(strategy, RESNET) - {HEAD}))
    assert trainable_names(model) == {n for n, _ in model.named_parameters() if n.startswith(live)}
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layer4 = sum(p.numel() for n, p in model.named_parameters() if n.startswith("net.layer4."))
    head = 2048 * 10 + 10
    expected = {"head_only": head, "gradual": head, "freeze_until:layer3": head + layer4,
                "full": 25_557_032 - 2_049_000 + head}[strategy]  # torchvision's count - old fc
    assert count == expected


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_frozen_weights_and_bn_statistics_do_not_move(strategy):
    model = build(strategy=strategy)
    cfg = cfg_for(strategy=strategy, lr=1e-2)
    opt = build_optimizer(cfg, model)
    before = _snapshot(model)
    trainable = trainable_stages(strategy, RESNET)
    model.train()
    frozen_bn = [m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
                 and not (n + ".").startswith(stage_prefixes(trainable - {HEAD}))]
    assert all(not m.training for m in frozen_bn)
    assert len(frozen_bn) == {"full": 0, "freeze_until:layer2": 1 + 4 + 5}.get(strategy, 20)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(8, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (8,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    after = model.state_dict()
    live = ("net.fc.", *stage_prefixes(trainable - {HEAD}))
    for k, v in before.items():
        if k.endswith("num_batches_tracked"):
            continue
        if k.startswith(live):
            assert not torch.equal(v, after[k]), f"{k} should have trained"
        else:
            assert torch.equal(v, after[k]), f"{k} is frozen but changed"
    assert sum(int(k.endswith("running_mean")) for k in before if k.startswith(live)) == (
        {"full": 20, "freeze_until:layer2": 10}.get(strategy, 0))


def test_gradual_unfreezes_one_stage_per_period_from_the_top():
    model = build(strategy="gradual", unfreeze_every=2)
    opt = build_optimizer(cfg_for(strategy="gradual", unfreeze_every=2), model)
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters())  # frozen ones registered too
    top = list(reversed(RESNET))
    for epoch in range(12):
        model.on_epoch_start(epoch)
        on = top[:min(epoch // 2, 5)]
        assert trainable_names(model) == {n for n, _ in model.named_parameters()
                                          if n.startswith(("net.fc.", *stage_prefixes(on)))}, epoch
        model.train()
        bns = {n: m.training for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
        assert all(t == (n + ".").startswith(stage_prefixes(on)) for n, t in bns.items()), epoch


def test_gradual_in_fit_trains_unfrozen_stages_with_the_same_optimizer(data):
    cfg = cfg_for(strategy="gradual", epochs=2, lr=1e-2)
    torch.manual_seed(cfg.seed)
    init = _snapshot(build_finetune_model(cfg, len(data.classes)))
    result = fit(cfg, data, log=None)
    layer4 = sum(p.numel() for n, p in result.state.model.named_parameters() if n.startswith("net.layer4."))
    assert [h["trainable_params"] for h in result.history] == [5130, 5130 + layer4]
    after = result.state.model.state_dict()
    assert not torch.equal(init["net.layer4.1.conv2.weight"], after["net.layer4.1.conv2.weight"])
    assert torch.equal(init["net.layer3.1.conv2.weight"], after["net.layer3.1.conv2.weight"])
    assert torch.equal(init["net.layer3.1.bn2.running_mean"], after["net.layer3.1.bn2.running_mean"])


def test_param_groups_give_the_backbone_a_lower_rate():
    model = build(strategy="full", backbone_lr_factor=0.1)
    head, backbone = model.param_groups(1e-3)
    assert head["lr"] == 1e-3 and backbone["lr"] == pytest.approx(1e-4)
    assert {id(p) for p in head["params"]} == {id(model.net.fc.weight), id(model.net.fc.bias)}
    assert len(head["params"]) + len(backbone["params"]) == len(list(model.parameters()))
    opt = build_optimizer(cfg_for(strategy="full", backbone_lr_factor=0.1), model)
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([1e-4, 1e-3])


# --- the feature cache -----------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["head_only", "freeze_until:layer3"])
def test_feature_cache_gives_the_same_run_as_the_full_forward(data, strategy):
    runs = {}
    for cached in (True, False):
        cfg = cfg_for(strategy=strategy, feature_cache=cached, epochs=2, lr=3e-3, seed=1)
        runs[cached] = fit(cfg, data, log=None)
    model = runs[True].state.model
    assert model.feature_cache is not None and runs[False].state.model.feature_cache is None
    want = {"head_only": (len(data.train.labels), 512),
            "freeze_until:layer3": (len(data.train.labels), 256, 2, 2)}[strategy]
    assert model.feature_cache.shapes[0] == want
    for a, b in zip(runs[True].history, runs[False].history, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4, abs=1e-5)
        # features come from other batch sizes than the full forward's: float noise may flip
        # at most one borderline prediction
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=1.01 / len(data.val.labels))
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)
        assert a["trainable_params"] == b["trainable_params"]
    if strategy == "head_only":
        assert runs[True].history[0]["trainable_params"] == 512 * 10 + 10


def test_features_are_stored_once_and_reused(data, monkeypatch, tmp_path):
    first = fit(cfg_for(epochs=1), data, log=None).state.model.feature_cache
    assert first.loaded is False and first.path is not None
    assert first.path.parent == features.features_root() and (first.path / "meta.json").is_file()

    def no_compute(*a, **k):
        raise AssertionError("features were recomputed instead of read from disk")

    with monkeypatch.context() as mp:
        mp.setattr(features, "compute_features", no_compute)
        again = fit(cfg_for(epochs=1, lr=1e-2, batch_size=16), data, log=None)  # other head hparams
    assert again.state.model.feature_cache.loaded is True
    assert again.state.model.feature_cache.path == first.path
    # another frozen prefix (stage or random init) is another entry
    other = fit(cfg_for(epochs=1, seed=3), data, log=None).state.model.feature_cache
    deeper = fit(cfg_for(epochs=1, strategy="freeze_until:layer3"), data, log=None).state.model.feature_cache
    assert len({first.path, other.path, deeper.path}) == 3 and not other.loaded and not deeper.loaded
    # augmentation or a non-cacheable strategy: no features
    assert fit(cfg_for(epochs=1, augment=True), data, log=None).state.model.feature_cache is None
    model = build(strategy="full")
    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    assert model.feature_split() is None and features.cached_features(model, x, x)[2] is model



def test_feature_store_that_cannot_be_written_costs_only_the_reuse(data, monkeypatch, tmp_path):
    model = build(strategy="head_only")
    x_tr, _ = to_device(data.train.images, data.train.labels, "cpu")
    x_va, _ = to_device(data.val.images, data.val.labels, "cpu")
    f_mem, _, _ = features.cached_features(model, x_tr, x_va)  # no data: memory only
    assert model.feature_cache.path is None and f_mem.shape == (len(x_tr), 512)
    # below a regular file no store can be created: computed in memory, the same features
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(features, "features_root", lambda: blocker / "features")
    f_tr, _, _ = features.cached_features(model, x_tr, x_va, data=data)
    assert model.feature_cache.path is None and not model.feature_cache.loaded
    torch.testing.assert_close(f_tr, f_mem)

    # a write that fails after computing: the computed features serve, no entry is left
    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    root = tmp_path / "features"
    monkeypatch.setattr(features, "features_root", lambda: root)
    monkeypatch.setattr(torch, "save", full_disk)
    f_tr2, _, _ = features.cached_features(model, x_tr, x_va, data=data)
    assert model.feature_cache.path is None and not model.feature_cache.loaded
    torch.testing.assert_close(f_tr2, f_mem)
    assert root.is_dir() and not [p for p in root.iterdir() if p.suffix != ".lock"]


def test_cached_run_checkpoint_holds_the_whole_model(data, tmp_path):
    cfg = cfg_for(epochs=1)
    result = fit(cfg, data, out_dir=tmp_path, log=None)
    model, cfg2, _ = load_model(tmp_path / "checkpoint.pt")  # rebuilt with weights=none
    assert cfg2 == cfg and isinstance(model, pretrained.FinetuneModel)
    x, y = to_device(data.val.images, data.val.labels, "cpu")
    again = evaluate(model, DeviceLoader(x, y, 256, mean=model.mean, std=model.std),
                     label_smoothing=cfg.label_smoothing)  # val_loss is the training criterion's
    assert again["acc"] == pytest.approx(result.history[-1]["val_acc"], abs=1.01 / len(y))
    assert again["loss"] == pytest.approx(result.history[-1]["val_loss"], rel=1e-4)


# --- weights ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(123)
    return torchvision.models.resnet18(weights=None).state_dict()  # with its 1000-way fc


def _backbone_equal(model: pretrained.FinetuneModel, state: dict) -> None:
    own = model.net.state_dict()
    for k, v in state.items():
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k


def test_local_weights_file_loads_strictly(tmp_path, resnet18_state):
    path = tmp_path / "r18.pth"
    torch.save(resnet18_state, path)
    model = build(weights=str(path))
    _backbone_equal(model, resnet18_state)
    assert model.net.fc.out_features == 10  # the 1000-way fc of the file is ignored
    # older files have no num_batches_tracked: still a complete backbone
    old = {k: v for k, v in resnet18_state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")
    _backbone_equal(build(weights=str(tmp_path / "old.pth")), old)


def _bad_files(tmp_path: Path, state: dict) -> dict[str, tuple[Path, str]]:
    cases = {}

    def save(name, obj, match):
        p = tmp_path / f"{name}.pth"
        torch.save(obj, p)
        cases[name] = (p, match)

    save("missing", {k: v for k, v in state.items() if k != "layer2.0.conv1.weight"},
         "missing layer2.0.conv1.weight")
    save("shape", {**state, "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)},
         r"layer1.0.conv1.weight has shape \(64, 64, 1, 1\)")
    save("extra", {**state, "layer5.weight": torch.zeros(3)}, "unexpected key layer5.weight")
    save("not_a_dict", [torch.zeros(3)], "not a state dict")
    save("checkpoint", {"model": state, "epoch": 3}, "not a state dict")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(bytes(range(256)) * 64)
    cases["junk"] = (junk, "is not a state dict")
    cases["absent"] = (tmp_path / "nowhere.pth", "does not exist")
    return cases


@pytest.mark.parametrize("case", ["missing", "shape", "extra", "not_a_dict", "checkpoint", "junk", "absent"])
def test_wrong_weights_file_is_refused_naming_it(tmp_path, resnet18_state, case):
    path, match = _bad_files(tmp_path, resnet18_state)[case]
    with pytest.raises(WeightsError, match=match) as err:
        build(weights=str(path))
    assert str(path) in str(err.value)


def test_resnet50_file_does_not_load_into_resnet18(tmp_path):
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(WeightsError, match=r"r50.pth does not fit .*resnet18 \(\d+ problem"):
        build(weights=str(tmp_path / "r50.pth"))


def test_imagenet_offline_names_the_file_and_where_to_put_it(tmp_path, monkeypatch, resnet18_state):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    calls = []

    def offline(url, dst, *a, **k):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = hub / "checkpoints" / "resnet18-f37072fd.pth"
    assert weights.hub_checkpoint_path("resnet18") == expected
    with pytest.raises(WeightsError) as err:
        build(weights="imagenet")
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg and str(expected) in msg and "weights=/path/to/" in msg
    assert calls == [BACKBONES["resnet18"].weights_enum().url]
    assert not expected.exists()

    torch.save(resnet18_state, expected)  # the file placed by hand: no network needed
    calls.clear()
    model = build(weights="imagenet")
    assert calls == []
    _backbone_equal(model, resnet18_state)


# --- the sweep -------------------------------------------------------------------------------

@pytest.mark.slow
def test_sweep_over_strategies_reports_trainable_params(tmp_path):
    import ray

    from inat_tune.cli import main
    from inat_tune.data.synth import make_synthetic

    ds = make_synthetic(tmp_path / "ds", per_class=10, val_per_class=2, image_size=36, seed=2)
    space = {
        "model": "finetune", "method": "grid",
        "metric": {"name": "val_acc", "goal": "maximize"},
        "parameters": {
            "backbone": {"value": "resnet18"}, "weights": {"value": "none"},
            "image_size": {"value": 32}, "augment": {"value": False},
            "strategy": {"values": ["head_only", "freeze_until:layer3", "full", "gradual"]},
            "epochs": {"value": 2}, "batch_size": {"value": 16},
        },
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            rc = main(["sweep", str(path), "--data", str(ds), "--storage", str(tmp_path / "exps"),
                       "--name", "ft", "--no-wandb", "--seed", "0"])
    finally:
        ray.shutdown()
    assert rc == 0
    exp = tmp_path / "exps" / "ft"
    seen = {}
    for trial in sorted(p for p in exp.iterdir() if (p / "params.json").is_file()):
        strategy = json.loads((trial / "params.json").read_text())["strategy"]
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]
        seen[strategy] = [r["trainable_params"] for r in rows]
    head = 512 * 10 + 10
    layer4 = 8_393_728  # torchvision resnet18 layer4
    assert seen == {"head_only": [head, head], "freeze_until:layer3": [head + layer4] * 2,
                    "full": [11_689_512 - 513_000 + head] * 2, "gradual": [head, head + layer4]}
