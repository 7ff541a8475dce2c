"""``inat-tune bench`` and the naive pipeline: smoke tests only, no timed assertions."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch

from inat_tune.bench import (BenchSettings, epochs_to_reach, flop_fraction, peak_flops,
                             read_trial_results, run_bench, summarize_sweep)
from inat_tune.data.loader import IMAGENET_MEAN, IMAGENET_STD
from inat_tune.data.naive import default_workers, naive_loader
from inat_tune.data.synth import CLASSES, make_synthetic


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """40 train JPEGs of varied sizes (32-77 px sides) in the ImageFolder layout."""
    return make_synthetic(tmp_path_factory.mktemp("bench") / "ds", per_class=4, val_per_class=2,
                          image_size=48, seed=1)


def test_naive_loader_yields_shaped_normalised_batches(tiny):
    loader = naive_loader(tiny, 32, batch_size=8, workers=0, augment=False)
    assert loader.dataset.classes == list(CLASSES) and len(loader.dataset) == 40
    xb, yb = next(iter(loader))
    assert xb.shape == (8, 3, 32, 32) and xb.dtype == torch.float32
    assert yb.dtype == torch.int64 and 0 <= int(yb.min()) and int(yb.max()) < 10
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = xb * std + mean  # undoing Normalize gives ToTensor's [0, 1] range back
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert xb.min() < 0  # normalised, not raw [0, 1]


def test_naive_loader_augments_and_uses_all_cores_by_default(tiny):
    loader = naive_loader(tiny, 32, batch_size=16)
    assert loader.num_workers == default_workers() >= 1
    batches = list(loader)
    assert sum(len(y) for _, y in batches) == 40
    assert all(x.shape[1:] == (3, 32, 32) for x, _ in batches)


def test_naive_loader_crashes_on_a_bad_file_as_documented(tmp_path):
    root = make_synthetic(tmp_path / "ds", per_class=1, val_per_class=1, image_size=40)
    (root / "train" / CLASSES[0] / "broken.jpg").write_bytes(b"")
    loader = naive_loader(root, 32, batch_size=4, workers=0, augment=False)
    with pytest.raises(Exception, match="cannot identify image file"):
        list(loader)


def test_flop_fraction_is_three_forward_flops_times_rate_over_peak():
    # 1 GFLOP forward per image, 1000 images/s -> 3 TFLOP/s achieved; against a 6 TFLOP/s peak
    assert flop_fraction(1e9, 1000.0, 6e12) == pytest.approx(0.5)
    assert flop_fraction(2e9, 10.0, 1e12) == pytest.approx(3 * 2e9 * 10 / 1e12)
    assert flop_fraction(1e9, 1000.0, None) is None


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L4", 121e12), ("NVIDIA A10G", 125e12),
    ("NVIDIA L40S", None), ("Tesla T4", None),
])
def test_peak_flops_by_device_name(name, peak):
    assert peak_flops(name) == peak


def test_search_summary_counts_epochs_and_when_a_target_was_reached(tmp_path):
    rows = {  # two trials, reported in this order
        "a": [{"training_iteration": 1, "val_acc": 0.3, "timestamp": 10, "time_total_s": 1.0}],
        "b": [{"training_iteration": 1, "val_acc": 0.4, "timestamp": 11, "time_total_s": 1.0},
              {"training_iteration": 2, "val_acc": 0.6, "timestamp": 12, "time_total_s": 2.5}],
    }
    for trial, lines in rows.items():
        (tmp_path / trial).mkdir()
        (tmp_path / trial / "result.json").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    summary = summarize_sweep(read_trial_results(tmp_path), wall_s=9.0)
    assert summary["trials"] == 2 and summary["epochs"] == 3
    assert summary["trial_seconds"] == pytest.approx(3.5)
    assert summary["best_val_acc"] == 0.6 and summary["running_best"] == [0.3, 0.4, 0.6]
    assert epochs_to_reach(summary["running_best"], 0.4) == 2
    assert epochs_to_reach(summary["running_best"], 0.7) is None


def test_quick_settings_are_smaller():
    args = argparse.Namespace(image_size=32, data=None, json=None, quick=True, search=False)
    quick, full = BenchSettings.from_args(args), BenchSettings(image_size=32)
    assert quick.quick and quick.naive_max_batches is not None
    assert quick.search_trials < full.search_trials and quick.photos_per_class < full.photos_per_class


def test_cli_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "inat_tune.cli", "bench", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--image-size" in out.stdout


@pytest.mark.slow
def test_quick_bench_writes_every_section(tiny, tmp_path):
    path = tmp_path / "bench.json"
    args = argparse.Namespace(data=str(tiny), image_size=32, json=str(path), search=False,
                              quick=True)
    assert run_bench(args) == 0
    res = json.loads(path.read_text())
    for key in ("date", "command", "machine", "settings", "dataset", "naive", "cached", "train",
                "finetune", "ray", "targets"):
        assert key in res, key
    assert "inat-tune bench --data " in res["command"]  # may be prefixed by OMP_NUM_THREADS=...
    assert res["machine"]["torch"] == torch.__version__ and res["machine"]["usable_cores"] >= 1
    assert res["dataset"]["train_images"] == 40
    assert res["naive"]["images_per_s"] > 0 and res["naive"]["epoch_s"] > 0
    assert res["cached"]["images_per_s"] > 0 and res["cached"]["build_s"] > 0
    assert res["cached"]["speedup_over_naive"] > 0
    variants = res["train"]["variants"]
    assert variants and all(v["images_per_s"] > 0 for v in variants)
    if not torch.cuda.is_available():
        assert [v["name"] for v in variants] == ["fp32"] and res["train"]["note"]
    ft = res["finetune"]  # measured, or skipped/errored with a reason
    assert ft.get("epoch_speedup", 0) > 0 or ft.get("skipped") or ft.get("error")
    ray = res["ray"]
    assert ray.get("trial_start_to_first_report_s", -1) >= 0 or ray.get("skipped")
    assert all("met" in t for t in res["targets"].values())
