"""The Ray-free training loop: learning, schedules, checkpoints, resume, and the train CLI."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import yaml

from inat_tune.cli import main
from inat_tune.config import ConfigError, RunConfig, load_config
from inat_tune.data.loader import DeviceLoader, to_device
from inat_tune.data.pipeline import load_tuning_data
from inat_tune.train import build_optimizer, evaluate, fit, load_model, lr_factor

SMALL = dict(image_size=32, filters=16, dense=64, batch_size=32, lr=3e-3, augment=False)


@pytest.fixture(scope="module")
def data(synth_data, tmp_path_factory):
    return load_tuning_data(synth_data, 32, 0.2, 0, cache_dir=tmp_path_factory.mktemp("c"), progress=False)


@pytest.mark.slow
def test_learns_well_above_chance_on_synthetic_data(tmp_path):
    from inat_tune.data.synth import make_synthetic

    root = make_synthetic(tmp_path / "ds", per_class=80, val_per_class=2, image_size=48, seed=0)
    data = load_tuning_data(root, 32, 0.2, 0, progress=False)
    cfg = RunConfig.from_dict({**SMALL, "epochs": 8, "seed": 0})
    result = fit(cfg, data, log=None)
    assert len(result.history) == 8
    # chance is 0.10 with 10 balanced classes (seen here: ~0.49 after 8 epochs)
    assert result.best["val_acc"] >= 0.30, result.history
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_metrics_names_and_checkpoint_round_trip(data, tmp_path):
    cfg = RunConfig.from_dict({**SMALL, "epochs": 2, "augment": True, "color_jitter": 0.2})
    seen = []
    result = fit(cfg, data, out_dir=tmp_path, report=lambda m, s: seen.append(dict(m)), log=None)
    assert [m["epoch"] for m in seen] == [1, 2]
    assert set(seen[0]) >= {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds",
                            "images_per_s", "time_total_s", "trainable_params"}
    model, cfg2, ckpt = load_model(tmp_path / "checkpoint.pt")
    assert cfg2 == cfg and ckpt["epoch"] == 2 and ckpt["classes"] == list(data.classes)
    x, y = to_device(data.val.images, data.val.labels, "cpu")
    again = evaluate(model, DeviceLoader(x, y, 256))
    assert again["acc"] == pytest.approx(result.history[-1]["val_acc"], abs=1e-6)
    assert (tmp_path / "best.pt").is_file()


def test_resume_reproduces_uninterrupted_run(data, tmp_path):
    cfg = RunConfig.from_dict({**SMALL, "epochs": 3, "augment": True, "seed": 5})
    straight = fit(cfg, data, log=None)
    part = []  # the checkpoint a run leaves after its first epoch

    def stop_after_first(metrics, state):
        if metrics["epoch"] == 1:
            state.save(tmp_path / "e1")
            part.append(metrics)

    fit(cfg, data, log=None, report=stop_after_first)
    resumed = fit(cfg, data, log=None, resume=tmp_path / "e1" / "checkpoint.pt")
    assert len(part) == 1
    assert [round(m["val_acc"], 6) for m in resumed.history] == [round(m["val_acc"], 6) for m in straight.history]
    assert resumed.history[-1]["train_loss"] == pytest.approx(straight.history[-1]["train_loss"], rel=1e-5)


def test_schedules_and_warmup():
    cfg = RunConfig(epochs=10, warmup_epochs=1, schedule="cosine")
    f = [lr_factor(cfg, s, 100, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[-1] < 0.01
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    flat = RunConfig(epochs=10, schedule="none")
    assert {lr_factor(flat, s, 100, 10) for s in range(100)} == {1.0}
    one = RunConfig(epochs=10, schedule="onecycle")
    g = [lr_factor(one, s, 100, 10) for s in range(100)]
    assert g[0] == pytest.approx(0.04) and max(g) == pytest.approx(1.0, abs=0.05) and g[-1] < 0.01
    assert g.index(max(g)) in range(20, 30)


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                      ("sgd", torch.optim.SGD), ("nadam", torch.optim.NAdam)])
def test_optimizers_and_weight_decay_groups(name, cls):
    cfg = RunConfig(optimizer=name, weight_decay=0.01, image_size=32, filters=8, dense=16)
    from inat_tune.models.registry import create_model
    opt = build_optimizer(cfg, create_model(cfg, 10))
    assert isinstance(opt, cls)
    wds = {g["weight_decay"] for g in opt.param_groups}
    assert wds == {0.01, 0.0}
    for g in opt.param_groups:
        assert all((p.ndim >= 2) == (g["weight_decay"] > 0) for p in g["params"])
    if name == "sgd":
        assert opt.param_groups[0]["nesterov"] is True


@pytest.mark.parametrize("pairs,key", [
    (["lr=-0.1"], "lr"), (["filters=0"], "filters"), (["image_size=16"], "image_size"),
    (["learning_rate=0.1"], "learning_rate"), (["batch_size=abc"], "batch_size"),
    (["conv_activation=swish"], "conv_activation"), (["kernel_size=4"], "kernel_size"),
])
def test_bad_values_are_refused_naming_the_key(pairs, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, pairs)


def test_train_cli_writes_outputs_and_refuses_bad_keys(synth_data, tmp_path, capsys):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump({"image_size": 32, "filters": 8, "dense": 32, "epochs": 1}))
    out = tmp_path / "run"
    rc = main(["train", str(cfg_file), "--data", str(synth_data), "--out", str(out), "--set", "lr=1e-3"])
    assert rc == 0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["lr"] == 1e-3 and resolved["filters"] == 8
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 1 and 0.0 <= float(rows[0]["val_acc"]) <= 1.0
    assert (out / "split_manifest.json").is_file() and (out / "checkpoint.pt").is_file()
    bad = tmp_path / "bad"
    rc = main(["train", "--data", str(synth_data), "--out", str(bad), "--set", "dropout=1.5"])
    assert rc == 2 and "dropout" in capsys.readouterr().err
    assert not bad.exists()  # refused before any work
    assert math.isfinite(float(rows[0]["train_loss"]))


# ---------------------------------------------------------------------------------------------
# Precision, validation batches, compile + gradual, deterministic (CPU-testable parts; the CUDA
# paths are in tests/test_gpu.py)

from inat_tune import train as train_mod  # noqa: E402

CUDA0 = torch.device("cuda", 0)


def fake_gpu(monkeypatch, capability, native_bf16, old_torch=False):
    """Answer torch.cuda's capability questions as a GPU of ``capability`` would."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "device", lambda device: __import__("contextlib").nullcontext())
    if old_torch:  # before including_emulation existed
        def is_bf16_supported():
            return True  # old answers could include emulation: must not be trusted
    else:
        def is_bf16_supported(including_emulation=True):
            return native_bf16 or including_emulation
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)


@pytest.mark.parametrize("gpu,capability,native,old,expected", [
    ("H100", (9, 0), True, False, "bf16"),
    ("A100", (8, 0), True, False, "bf16"),
    ("T4", (7, 5), False, False, "fp16"),  # emulated bf16 is not chosen
    ("V100", (7, 0), False, False, "fp16"),
    ("P100", (6, 0), False, False, "fp32"),
    ("A100, old torch", (8, 0), True, True, "bf16"),
    ("T4, old torch", (7, 5), False, True, "fp16"),
])
def test_auto_precision_uses_native_bf16_only(monkeypatch, gpu, capability, native, old, expected):
    fake_gpu(monkeypatch, capability, native, old)
    assert train_mod.choose_precision("auto", CUDA0) == expected, gpu


def test_precision_on_cpu_and_explicit_values(monkeypatch):
    cpu = torch.device("cpu")
    assert train_mod.choose_precision("auto", cpu) == "fp32"
    assert train_mod.choose_precision("bf16", cpu) == "bf16"
    assert train_mod.choose_precision("fp32", cpu) == "fp32"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        train_mod.choose_precision("fp16", cpu)
    fake_gpu(monkeypatch, (7, 5), False)
    assert train_mod.choose_precision("fp16", CUDA0) == "fp16"
    assert train_mod.choose_precision("fp32", CUDA0) == "fp32"
    assert RunConfig.from_dict({"precision": "fp16"}).precision == "fp16"
    with pytest.raises(ConfigError, match="precision"):
        RunConfig.from_dict({"precision": "fp8"})


def test_grad_scaler_only_for_fp16():
    assert train_mod.grad_scaler("bf16", CUDA0) is None and train_mod.grad_scaler("fp32", CUDA0) is None


def test_chosen_precision_is_in_every_epochs_metrics(data):
    result = fit(RunConfig.from_dict({**SMALL, "epochs": 2}), data, log=None)
    assert [h["precision"] for h in result.history] == ["fp32", "fp32"]
    result = fit(RunConfig.from_dict({**SMALL, "epochs": 1, "precision": "bf16"}), data, log=None)
    assert result.history[0]["precision"] == "bf16"


def test_validation_batches_are_the_training_batch_size(data, monkeypatch):
    sizes = []

    class Recording(DeviceLoader):
        def __init__(self, x, y, batch_size, **kw):
            sizes.append((batch_size, kw.get("shuffle", False)))
            super().__init__(x, y, batch_size, **kw)

    monkeypatch.setattr(train_mod, "DeviceLoader", Recording)
    fit(RunConfig.from_dict({**SMALL, "epochs": 1, "batch_size": 8}), data, log=None)
    assert sizes == [(8, True), (8, False)]  # training, then validation: not max(8, 256)
    assert train_mod.validation_batch_size(RunConfig.from_dict({"batch_size": 512})) == 512


def test_padded_last_batch_changes_no_result(data):
    cfg = RunConfig.from_dict({**SMALL})
    model = train_mod.create_model(cfg, num_classes=10).eval()
    x, y = to_device(data.val.images, data.val.labels, "cpu")
    loader = DeviceLoader(x, y, 7)
    assert len(y) % 7  # a smaller last batch
    plain, padded = evaluate(model, loader), evaluate(model, loader, pad_to=7)
    assert plain["acc"] == padded["acc"] and math.isclose(plain["loss"], padded["loss"], rel_tol=1e-5)


def test_compile_with_gradual_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="compile.*gradual.*recompile"):
        RunConfig.from_dict({"model": "finetune", "strategy": "gradual", "compile": True})
    RunConfig.from_dict({"model": "finetune", "strategy": "gradual", "compile": False})
    RunConfig.from_dict({"model": "finetune", "strategy": "full", "compile": True})


def test_deterministic_key_sets_and_restores_torch_flags(data):
    try:
        fit(RunConfig.from_dict({**SMALL, "epochs": 1, "deterministic": True}), data, log=None)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        fit(RunConfig.from_dict({**SMALL, "epochs": 1}), data, log=None)
        assert not torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.deterministic
    finally:
        train_mod.set_deterministic(False)


class _RunsCode:
    """Unpickling this runs code (it writes ``marker``): what a checkpoint from a shared
    bucket could carry if checkpoints were read with weights_only=False."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_checkpoints_load_with_weights_only_and_pickled_code_is_refused(data, synth_data, tmp_path, capsys):
    from inat_tune.train import CheckpointError, load_checkpoint

    cfg = RunConfig.from_dict({**SMALL, "epochs": 1})
    run = tmp_path / "run"
    fit(cfg, data, out_dir=run, log=None)
    for name in ("checkpoint.pt", "best.pt"):  # plain data: the config a dict, the classes a list
        ckpt = torch.load(run / name, map_location="cpu", weights_only=True)
        assert ckpt["config"] == cfg.to_dict() and ckpt["classes"] == list(data.classes)
    assert load_model(run / "best.pt")[1] == cfg

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({**ckpt, "config": _RunsCode(marker)}, evil)
    for read in (load_checkpoint, load_model, lambda p: fit(cfg, data, log=None, resume=p)):
        with pytest.raises(CheckpointError, match="older inat-tune or is not an inat-tune checkpoint") as e:
            read(evil)
        assert "weights_only" not in str(e.value) and "\n" not in str(e.value)
        assert not marker.exists()
    # `train --resume` of a run whose checkpoint.pt is that file: refused in one line, exit 2
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    (run / "checkpoint.pt").write_bytes(evil.read_bytes())
    capsys.readouterr()
    assert main(["train", "--data", str(synth_data), "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the decode progress bar
    assert err.startswith("inat-tune train: error: checkpoint") and "older inat-tune" in err, err
    assert not marker.exists()
    # the file is what the test says: read without weights_only, it runs the code
    torch.load(evil, weights_only=False)
    assert marker.read_text() == "ran"
