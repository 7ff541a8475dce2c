"""The per-trial memory estimate, the pre-flight and the allocator cap (inat_tune.tune.memory).

Everything here runs on the CPU: the estimate runs models on the meta device. The GPU check
(the estimate against ``torch.cuda.max_memory_allocated`` of a real ``fit()``) is in
tests/test_gpu.py; its CPU stand-in is ``test_estimate_matches_a_real_fit_on_the_cpu`` below.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from inat_tune.config import RunConfig
from inat_tune.tune import memory
from inat_tune.tune.memory import (MemoryPreflightError, allocator_fraction, cuda_context_bytes,
                                   estimate_peak_bytes, largest_configs, largest_estimate, preflight)
from inat_tune.tune.space import load_space

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"
CARD_24GB = 24_000_000_000


def _space(model: str = "scratch_cnn", method: str = "random", **params) -> dict:
    return {"model": model, "method": method, "metric": {"name": "val_acc", "goal": "maximize"},
            "parameters": {k: (v if isinstance(v, dict) else {"value": v}) for k, v in params.items()}}


# ---------------------------------------------------------------------------------------------
# The parts of one estimate


def test_parts_add_up_and_data_is_exactly_the_uint8_images():
    cfg = RunConfig(image_size=48, filters=8, batch_size=16)
    est = estimate_peak_bytes(cfg, 300, 77, 10, precision="fp32")
    assert est.total == sum(est.parts().values())
    assert set(est.parts()) == {"weights", "grads", "optimizer", "activations", "fixed_saved", "data",
                                "features", "feature_pass", "workspace"}
    assert est.data == (300 + 77) * 48 * 48 * 3
    assert est.features == est.feature_pass == 0  # no frozen prefix in the scratch CNN
    # everything trains: fp32 gradients = parameters, AdamW keeps two fp32 tensors per parameter
    n_params = sum(p.numel() for p in _cpu_model(cfg).parameters())
    assert est.grads == 4 * n_params and est.optimizer == 2 * est.grads
    assert estimate_peak_bytes(cfg.replace(optimizer="sgd", momentum=0.0), 300, 77, 10).optimizer == 0
    assert estimate_peak_bytes(cfg.replace(optimizer="sgd"), 300, 77, 10).optimizer == est.grads


def _cpu_model(cfg: RunConfig):
    from inat_tune.models.registry import create_model
    return create_model(cfg.replace(weights="none") if cfg.model == "finetune" else cfg, 10)


def test_activations_scale_linearly_with_the_batch_size():
    cfg = RunConfig(image_size=64, filters=16, batch_size=8)
    a = estimate_peak_bytes(cfg, 100, 20, 10, precision="fp32")
    for b in (32, 96):
        e = estimate_peak_bytes(cfg.replace(batch_size=b), 100, 20, 10, precision="fp32")
        assert abs(e.activations - a.activations * b / 8) <= 1
        assert (e.weights, e.grads, e.optimizer, e.fixed_saved, e.data) == \
               (a.weights, a.grads, a.optimizer, a.fixed_saved, a.data)
        assert e.at_batch(8) == a  # at_batch moves along the same line
    # bf16: every saved float activation in 2 bytes (the max-pool indices stay int64)
    half = estimate_peak_bytes(cfg, 100, 20, 10, precision="bf16")
    assert 0.45 * a.activations < half.activations < 0.8 * a.activations
    assert half.fixed_saved > 0  # autocast's bf16 copies of the weights, saved for backward


def test_a_frozen_backbone_has_smaller_grad_and_optimizer_parts():
    base = RunConfig(model="finetune", backbone="resnet18", weights="none", image_size=64, batch_size=8)
    full = estimate_peak_bytes(base.replace(strategy="full"), 50, 10, 10, precision="fp32")
    head = estimate_peak_bytes(base.replace(strategy="head_only"), 50, 10, 10, precision="fp32")
    part = estimate_peak_bytes(base.replace(strategy="freeze_until:layer3"), 50, 10, 10, precision="fp32")
    assert full.weights == head.weights == part.weights  # the whole model is on the device
    assert head.grads == 4 * (512 * 10 + 10)  # the new head only
    assert head.grads < part.grads < full.grads
    assert head.optimizer < part.optimizer < full.optimizer
    assert head.activations < full.activations  # frozen stages save nothing for backward
    # gradual is estimated at its last epoch: after 4 epochs of unfreeze_every 1 it trains all 5
    gradual = estimate_peak_bytes(base.replace(strategy="gradual", epochs=6), 50, 10, 10, precision="fp32")
    assert gradual.grads == full.grads
    early = estimate_peak_bytes(base.replace(strategy="gradual", epochs=2, unfreeze_every=1), 50, 10, 10,
                                precision="fp32")
    assert early.grads == estimate_peak_bytes(base.replace(strategy="freeze_until:layer3"), 50, 10, 10,
                                              precision="fp32").grads  # layer4 unfrozen at epoch 1


def test_the_feature_cache_part_appears_only_with_feature_cache_and_no_augmentation():
    base = RunConfig(model="finetune", backbone="resnet18", weights="none", strategy="head_only",
                     image_size=64, batch_size=8)
    cached = estimate_peak_bytes(base.replace(feature_cache=True, augment=False), 50, 10, 10, precision="fp32")
    assert cached.features == 60 * 512 * 4  # head_only: resnet18's pooled 512 features, fp32
    assert cached.feature_pass > 0
    for kw in ({"feature_cache": True, "augment": True}, {"feature_cache": False, "augment": False}):
        e = estimate_peak_bytes(base.replace(**kw), 50, 10, 10, precision="fp32")
        assert e.features == e.feature_pass == 0
    full = estimate_peak_bytes(base.replace(strategy="full", feature_cache=True, augment=False), 50, 10, 10)
    assert full.features == 0  # nothing frozen, nothing cached
    bf16 = estimate_peak_bytes(base.replace(feature_cache=True, augment=False), 50, 10, 10, precision="bf16")
    fp16 = estimate_peak_bytes(base.replace(feature_cache=True, augment=False), 50, 10, 10, precision="fp16")
    assert bf16.features == cached.features // 2  # stored in bf16 by bf16 runs (data/features.py)
    assert fp16.features == cached.features  # fp16 runs store fp32 features


# ---------------------------------------------------------------------------------------------
# The issue's example: ResNet50 freeze_until:layer3 without augmentation at 224 px, 10k images

ISSUE_SPACE = _space("finetune", backbone="resnet50", strategy="freeze_until:layer3", augment=False,
                     feature_cache=True, image_size=224, batch_size={"values": [32, 64]}, epochs=2)


def test_issue_example_caches_about_0_4_mb_per_image_and_refuses_a_quarter_of_24gb():
    cfg = RunConfig.from_dict({k: p["value"] for k, p in ISSUE_SPACE["parameters"].items() if "value" in p}
                              | {"model": "finetune", "batch_size": 64})
    est = estimate_peak_bytes(cfg, 8000, 2000, 10, precision="bf16")
    per_image = est.features / 10_000
    assert per_image == 1024 * 14 * 14 * 2  # layer3's output at 224 px in bf16: 401,408 bytes
    assert 0.38e6 < per_image < 0.42e6 and 3.9e9 < est.features < 4.1e9  # "some 4 GB"
    assert est.data == 10_000 * 224 * 224 * 3
    assert est.grads == 4 * sum(p.numel() for n, p in _cpu_model(cfg).named_parameters()
                                if n.startswith(("net.layer4.", "net.fc.")))
    spec = load_space(ISSUE_SPACE)
    with pytest.raises(MemoryPreflightError) as e:
        preflight(spec, 0.25, CARD_24GB, 500_000_000, 8000, 2000, 10)
    msg = str(e.value)
    assert "\n" not in msg
    assert "more than the 5.50 GB it may use (0.25 x 24.0 GB - 0.50 GB CUDA context)" in msg
    assert f"needs ~{est.total / 1e9:.2f} GB" in msg and "features 4.01" in msg
    fraction = float(re.search(r"--gpus-per-trial ([0-9.]+)", msg.split("; it fits with ")[1]).group(1))
    assert fraction == 0.5 and est.total <= fraction * CARD_24GB - 500_000_000  # the named one fits
    assert "feature_cache: false" in msg  # and without the cache it fits at 0.25
    no_cache = estimate_peak_bytes(cfg.replace(feature_cache=False), 8000, 2000, 10, precision="bf16")
    assert no_cache.total <= 0.25 * CARD_24GB - 500_000_000
    preflight(spec, 0.5, CARD_24GB, 500_000_000, 8000, 2000, 10)  # passes


def test_a_small_space_passes_and_a_named_batch_size_fits():
    preflight(load_space(SPACES / "demo.yaml"), 0.25, CARD_24GB, 500_000_000, 320, 80, 10)
    spec = load_space(_space(image_size=128, filters=32, batch_size={"values": [16, 64, 256]}, epochs=2))
    cfg, est, _ = largest_estimate(spec, 1000, 250, 10)
    assert cfg.batch_size == 256
    card = int(est.total * 2)  # at 0.25 of this card batch 256 cannot fit, a smaller one can
    with pytest.raises(MemoryPreflightError) as e:
        preflight(spec, 0.25, card, 0, 1000, 250, 10)
    batch = int(re.search(r"batch_size <= (\d+)", str(e.value)).group(1))
    assert batch in (16, 64)  # a value the space offers
    assert est.at_batch(batch).total <= 0.25 * card < est.at_batch(batch * 4).total
    b = est.largest_batch(0.25 * card)  # the largest batch of all, by the line's arithmetic
    assert est.at_batch(b).total <= 0.25 * card < est.at_batch(b + 1).total


def test_allocator_fraction_takes_the_context_out_of_the_share():
    assert allocator_fraction(0.25, CARD_24GB, 500_000_000) == pytest.approx((6e9 - 0.5e9) / 24e9)
    assert allocator_fraction(1.0, CARD_24GB, 0) == 1.0
    assert allocator_fraction(2.0, CARD_24GB, 0) == 1.0  # clipped to (0, 1]
    tiny = allocator_fraction(0.01, CARD_24GB, 500_000_000)  # the context is more than the share
    assert 0 < tiny < 1e-3
    with pytest.raises(ValueError):
        allocator_fraction(0.25, 0, 0)


def test_context_is_zero_on_the_cpu_and_the_drivers_measurement_reaches_trials(monkeypatch):
    assert cuda_context_bytes("cpu") == 0
    if not torch.cuda.is_available():
        assert cuda_context_bytes() == 0
    monkeypatch.setenv(memory.CONTEXT_ENV, "123456789")
    assert memory.trial_context_bytes() == 123456789


def test_trials_cap_their_allocator_net_of_the_context(monkeypatch):
    """trainables._limit_gpu_memory: set_per_process_memory_fraction gets (f x total - context) / total."""
    from inat_tune.tune import trainables

    got = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: type("P", (), {"total_memory": CARD_24GB})())
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, *a, **k: got.append(f))
    monkeypatch.setenv(memory.CONTEXT_ENV, "600000000")
    trainables._limit_gpu_memory(0.25)
    trainables._limit_gpu_memory(1.0)  # a whole GPU is not capped
    assert got == [pytest.approx((0.25 * 24e9 - 0.6e9) / 24e9)]


# ---------------------------------------------------------------------------------------------
# The corners of a space


def test_largest_configs_of_the_shipped_spaces():
    scratch = largest_configs(load_space(SPACES / "scratch_cnn.yaml"))
    assert {c.batch_size for c in scratch} == {128} and {c.image_size for c in scratch} == {224}
    assert {c.filters for c in scratch} == {64} and {c.filter_org for c in scratch} == {"double"}
    assert {c.dense for c in scratch} == {512} and {c.batch_norm for c in scratch} == {True}
    assert {c.kernel_size for c in scratch} == {5, (7, 5, 5, 3, 3)}  # 3 is dominated by 5
    assert {c.conv_activation for c in scratch} == {"relu", "gelu", "silu", "mish"}
    assert len(scratch) == 8
    finetune = largest_configs(load_space(SPACES / "resnet50_finetune.yaml"))
    assert {c.strategy for c in finetune} == {"head_only", "freeze_until:layer3", "full", "gradual"}
    assert {c.augment for c in finetune} == {True, False}
    assert {(c.batch_size, c.image_size, c.unfreeze_every) for c in finetune} == {(128, 224, 1)}


def test_largest_configs_takes_ranges_at_their_memory_end_and_caps_the_enumeration(monkeypatch):
    spec = load_space(_space(
        batch_size={"distribution": "int_uniform", "min": 8, "max": 100},
        image_size={"distribution": "q_uniform", "min": 32, "max": 96, "q": 16},
        dense={"distribution": "q_log_uniform_values", "min": 16, "max": 300, "q": 8},
        lr={"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        conv_activation={"values": ["relu", "gelu", "tanh"]}, optimizer={"values": ["sgd", "adamw"]},
        epochs=3))
    cfgs = largest_configs(spec)
    # q rounding of 300 (q 8) reaches 304: the most a trial can draw (Param.extremes)
    assert {(c.batch_size, c.image_size, c.dense) for c in cfgs} == {(100, 96, 304)}
    assert len(cfgs) == 6 and all(c.lr == pytest.approx(1e-4) for c in cfgs)  # lr: any value
    monkeypatch.setattr(memory, "MAX_CORNERS", 2)  # optimizer first (it matters more), then capped
    cfgs = largest_configs(spec)
    assert {c.optimizer for c in cfgs} == {"sgd", "adamw"} and {c.conv_activation for c in cfgs} == {"relu"}


# ---------------------------------------------------------------------------------------------
# The sweep: --dry-run prints the estimate; a sweep that cannot fit is refused with numbers


def _dry_run(tmp_path, capsys, space: dict, *args: str) -> tuple[int, str]:
    import yaml

    from inat_tune.cli import main

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    rc = main(["sweep", str(path), "--storage", str(tmp_path / "exps"), "--dry-run", *args])
    return rc, capsys.readouterr().out


def test_dry_run_prints_the_estimate_of_the_largest_config(synth_data, tmp_path, capsys):
    space = _space(image_size=32, filters={"values": [8, 16]}, batch_size={"values": [8, 32]}, epochs=2)
    context_env = os.environ.get(memory.CONTEXT_ENV)
    rc, out = _dry_run(tmp_path, capsys, space, "--data", str(synth_data))
    assert rc == 0, out
    line = next(ln for ln in out.splitlines() if ln.startswith("peak memory per trial ~"))
    assert "largest config: scratch_cnn filters [16, 32, 64, 128, 256]" in line and "batch 32" in line
    assert "fp32" in line and "trials run on the CPU" in line
    assert not (tmp_path / "exps").exists() and os.environ.get(memory.CONTEXT_ENV) == context_env


def test_sweep_refuses_a_trial_that_cannot_fit_its_gpu_share(synth_data, tmp_path, capsys, monkeypatch):
    """The runner's wiring, with a GPU faked (as measure_device would report it from a fresh
    process): 0.25 of a 4 GB card cannot hold 224 px at batch 128; the CLI says so in one line
    and names what fits."""
    from inat_tune.tune import runner

    monkeypatch.setattr(runner, "_local_gpus", lambda: 1)
    monkeypatch.setattr(memory, "measure_device",
                        lambda *a, **k: {"total": 4_000_000_000, "context": 100_000_000, "auto": "bf16"})
    space = _space(image_size=224, filters=16, batch_size={"values": [4, 128]}, epochs=2)
    rc, out = _dry_run(tmp_path, capsys, space, "--data", str(synth_data), "--gpus-per-trial", "0.25")
    assert rc == 2
    err = next(ln for ln in out.splitlines() if ln.startswith("inat-tune sweep: error:"))
    assert "--gpus-per-trial 0.25: the largest trial needs ~" in err
    assert "more than the 0.90 GB it may use (0.25 x 4.0 GB - 0.10 GB CUDA context)" in err
    assert "it fits with --gpus-per-trial 0.5 or batch_size <= 4" in err
    rc, out = _dry_run(tmp_path, capsys, space, "--data", str(synth_data), "--gpus-per-trial", "1")
    assert rc == 0, out
    assert "3.90 GB allowed at --gpus-per-trial 1 (1 x 4.0 GB - 0.10 GB CUDA context)" in out


def test_memory_module_imports_without_ray_or_optuna():
    code = ("import sys\nfor m in ('ray', 'optuna'): sys.modules[m] = None\n"
            "import inat_tune.tune.memory\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# ---------------------------------------------------------------------------------------------
# CPU stand-in for the GPU check: the estimate against what a real fit() allocates


def _tuning_data(n_train: int, n_val: int, size: int):
    from inat_tune.data.pipeline import ArraySplit, TuningData

    rng = np.random.default_rng(0)

    def split(n: int) -> ArraySplit:
        return ArraySplit(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                          np.arange(n, dtype=np.int64) % 10, tuple(f"x/{i}.jpg" for i in range(n)))

    return TuningData(Path("/nonexistent"), tuple(str(i) for i in range(10)), split(n_train), split(n_val),
                      (), size, 0.2, 0)


def _profiled_peak(fn) -> int:
    """Peak bytes allocated on the CPU while ``fn()`` runs (torch.profiler's memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
@pytest.mark.parametrize("cfg", [
    RunConfig(image_size=32, filters=16, batch_size=32, epochs=1, augment=True),
    RunConfig(image_size=64, filters=8, batch_size=16, epochs=1, conv_activation="mish", augment=False),
    RunConfig(model="finetune", backbone="resnet18", weights="none", strategy="freeze_until:layer3",
              augment=False, feature_cache=True, image_size=64, batch_size=16, epochs=1),
], ids=["scratch32", "scratch64-mish", "resnet18-cached"])
def test_estimate_matches_a_real_fit_on_the_cpu(cfg):
    """One epoch of fit() on the CPU under torch.profiler: its peak of allocated bytes (model,
    optimizer, gradients, activations of a real forward + backward, features) against the
    estimate for the CPU (no uint8 copy, no CUDA workspace), within 20 % (measured: 0-6 %).
    oneDNN is off: its CPU-only weight reorders have no CUDA counterpart."""
    from inat_tune.train import fit

    data = _tuning_data(64, 16, cfg.image_size)
    est = estimate_peak_bytes(cfg, 64, 16, 10, precision="fp32", device="cpu")
    torch.manual_seed(0)
    with torch.backends.mkldnn.flags(enabled=False):
        measured = _profiled_peak(lambda: fit(cfg, data, device="cpu", log=None))
    assert measured > 0
    assert abs(est.total - measured) <= 0.2 * measured, (est.describe(), measured)
