"""``inat-tune bench`` and the naive pipeline: each section's result is asserted, never timed.

Sections run at tiny sizes on generated data; the ones that start Ray are ``slow``; the CUDA
paths of the train and data sections are ``gpu`` tests (skipped without CUDA).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from inat_tune import cli
from inat_tune.bench import (BenchOptions, BenchSettings, bench, epochs_to_reach, flop_fraction,
                             format_table, peak_flops, run_bench, summarize_sweep)
from inat_tune.bench.data_path import bench_cache_build, bench_device_loader, bench_naive
from inat_tune.bench.environment import command_line, machine_info
from inat_tune.bench.training import bench_train_step, train_variants
from inat_tune.config import ConfigError
from inat_tune.data.loader import IMAGENET_MEAN, IMAGENET_STD, to_device
from inat_tune.data.naive import default_workers, naive_loader
from inat_tune.data.scan import scan_dataset
from inat_tune.data.synth import CLASSES, make_synthetic
from inat_tune.experiment import load_experiment

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def finite_positive(v) -> bool:
    return isinstance(v, float) and math.isfinite(v) and v > 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """40 train JPEGs of varied sizes (32-77 px sides) in the ImageFolder layout."""
    return make_synthetic(tmp_path_factory.mktemp("bench") / "ds", per_class=4, val_per_class=2,
                          image_size=48, seed=1)


@pytest.fixture
def bench_tmp(tmp_path, monkeypatch):
    """The bench's temporary folder (generated sets, scratch folders) inside ``tmp_path``."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path / "inat_tune_bench"


def uint8_images(n: int, size: int, device: torch.device, seed: int = 0):
    """Random uint8 images and labels of 10 classes on ``device``, as the cache gives them."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)  # the cache's layout
    return to_device(images, np.arange(n) % 10, device)


# ---------------------------------------------------------------------------------------------
# The naive pipeline (inat_tune.data.naive): the bench's baseline

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


# ---------------------------------------------------------------------------------------------
# Pure helpers

def test_flop_fraction_is_three_forward_flops_times_rate_over_peak():
    # 1 GFLOP forward per image, 1000 images/s -> 3 TFLOP/s achieved; against a 6 TFLOP/s peak
    assert flop_fraction(1e9, 1000.0, 6e12) == pytest.approx(0.5)
    assert flop_fraction(2e9, 10.0, 1e12) == pytest.approx(3 * 2e9 * 10 / 1e12)
    assert flop_fraction(1e9, 1000.0, None) is None


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989.4e12), ("NVIDIA H100 SXM5 80GB", 989.4e12),
    ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA H200 NVL", 835e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100-PCIE-40GB", 312e12), ("NVIDIA L4", 121e12),
    ("NVIDIA A10", 125e12), ("Tesla T4", 65e12),
    # no cited figure: unknown, never a neighbour's peak
    ("NVIDIA A10G", None), ("NVIDIA GH200 480GB", None), ("NVIDIA L40S", None),
    ("NVIDIA H800", None), ("NVIDIA L40", None),
])
def test_peak_flops_by_device_name(name, peak):
    assert peak_flops(name) == peak


def test_peak_info_carries_its_source_and_dtype():
    from inat_tune.bench.environment import PEAK_TABLE, peak_info

    assert all(source.startswith("NVIDIA ") and "datasheet" in source for *_, source in PEAK_TABLE)
    assert peak_info("Tesla T4")["dtype"] == "fp16"
    h = peak_info("NVIDIA H100 NVL")
    assert h["tflops"] == 835 and "H100 NVL" in h["source"]
    assert peak_info("NVIDIA GH200 480GB") is None


def test_table_prints_the_peak_source_with_the_fraction():
    from inat_tune.bench.environment import peak_info

    src = peak_info("NVIDIA H200")["source"]
    machine = {**machine_info(), "load_average": None, "device": "cuda", "device_name": "NVIDIA H200",
               "peak_source": src}
    res = {"command": "c", "date": "d", "machine": machine, "settings": {"repeats": 1},
           "train": {"variants": [
               {"name": "bf16", "peak_fraction": 0.25, "images_per_s": 1e4, "achieved_tflops": 247.0,
                "runs_images_per_s": [1e4]},
               {"name": "bf16+channels_last+compile", "precision": "bf16",
                "error": "BackendCompilerFailed: no Triton"}]}}
    table = format_table(res)
    assert f"peak fraction 25.0% of {src}" in table
    assert "scratch CNN bf16+channels_last+compile  FAILED: BackendCompilerFailed: no Triton" in table


def test_a_failing_train_variant_is_recorded_and_the_others_run(monkeypatch):
    from inat_tune.bench import throughput

    variants = [{"name": "a", "compile": False}, {"name": "b", "compile": True},
                {"name": "c", "compile": False}]
    monkeypatch.setattr(throughput, "train_variants", lambda device: variants)

    def step(x, y, n, size, bs, device, v, *rest):
        if v["compile"]:
            raise RuntimeError("Triton is missing")
        return {**v, "images_per_s": 1.0}

    monkeypatch.setattr(throughput, "bench_train_step", step)
    out = throughput.run_train_variants(None, None, 10, BenchSettings(), CPU)
    assert out == [{"name": "a", "compile": False, "images_per_s": 1.0},
                   {"name": "b", "compile": True, "error": "RuntimeError: Triton is missing"},
                   {"name": "c", "compile": False, "images_per_s": 1.0}]


def test_bench_json_is_written_after_each_section(monkeypatch, tmp_path):
    """A run that dies in a later section leaves the JSON of the sections before it."""
    import inat_tune.bench as bench_mod

    def sections(s, emit=None):
        out = {"naive": {"images_per_s": 1.0}}
        emit(out)
        out["cached"] = {"images_per_s": 2.0}
        emit(out)
        raise RuntimeError("the machine went away")

    monkeypatch.setattr(bench_mod, "run_throughput", sections)
    path = tmp_path / "b.json"
    with pytest.raises(RuntimeError):
        bench_mod.collect(BenchOptions(quick=True, json_path=str(path)))
    res = json.loads(path.read_text())
    assert res["partial"] is True and res["naive"] == {"images_per_s": 1.0}
    assert res["cached"] == {"images_per_s": 2.0} and "machine" in res and "command" in res


def write_trials(root: Path, trials: dict[str, list[dict]]) -> Path:
    """Trial folders with result.json lines, as Ray Tune leaves them."""
    for trial, rows in trials.items():
        (root / trial).mkdir(parents=True)
        (root / trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_search_summary_reads_the_experiment_and_counts_epochs_in_report_order(tmp_path):
    exp = write_trials(tmp_path / "exp", {  # folder names out of report order on purpose
        "run_b": [{"trial_id": "b", "training_iteration": 1, "val_acc": 0.4, "timestamp": 11,
                   "time_total_s": 1.0},
                  {"trial_id": "b", "training_iteration": 2, "val_acc": 0.6, "timestamp": 12,
                   "time_total_s": 2.5}],
        "run_a": [{"trial_id": "a", "training_iteration": 1, "val_acc": 0.3, "timestamp": 10,
                   "time_total_s": 1.0}],
    })
    (exp / "run_c").mkdir()
    (exp / "run_c" / "params.json").write_text("{}")  # started, reported nothing: not counted
    trials = load_experiment(exp, strict=False).trials
    assert len(trials) == 3
    summary = summarize_sweep(trials, wall_s=9.0)
    assert summary["trials"] == 2 and summary["epochs"] == 3
    assert summary["epochs_per_trial"] == [1, 2]  # creation order: a started first
    assert summary["trial_seconds"] == pytest.approx(3.5) and summary["wall_s"] == 9.0
    assert summary["best_val_acc"] == 0.6 and summary["running_best"] == [0.3, 0.4, 0.6]
    assert epochs_to_reach(summary["running_best"], 0.4) == 2
    assert epochs_to_reach(summary["running_best"], 0.7) is None
    empty = summarize_sweep([], wall_s=1.0)
    assert empty["epochs"] == 0 and empty["best_val_acc"] is None


# ---------------------------------------------------------------------------------------------
# Options: validated once, then the settings they imply

def test_options_are_validated_when_built():
    o = BenchOptions(data=Path("/d"), image_size=48, json_path=Path("out/b.json"))
    assert (o.data, o.json_path, o.search, o.quick) == ("/d", "out/b.json", False, False)
    assert BenchOptions() == BenchOptions(data=None, image_size=64, json_path=None)
    for bad, key in (({"image_size": 16}, "image_size=16: must be >= 32"),
                     ({"image_size": "64"}, "image_size='64'"), ({"image_size": True}, "image_size"),
                     ({"quick": "yes"}, "quick='yes'"), ({"search": 1}, "search=1"),
                     ({"data": 3}, "data=3"), ({"json_path": ""}, "json_path")):
        with pytest.raises(ConfigError, match=key):
            BenchOptions(**bad)
    with pytest.raises(ConfigError, match="unknown bench option 'image_sise'.*'image_size'"):
        BenchOptions.from_dict({"image_sise": 32})
    with pytest.raises(ConfigError, match="unknown bench option"):
        bench(imagesize=32)  # refused before any measurement


def test_quick_settings_are_smaller_and_keep_the_options():
    quick = BenchSettings.from_options(BenchOptions(image_size=32, data="d", json_path="j",
                                                    quick=True))
    full = BenchSettings.from_options(BenchOptions(image_size=32, data="d", json_path="j"))
    assert full == BenchSettings(image_size=32, data="d", json_path="j")
    assert (quick.image_size, quick.data, quick.json_path, quick.quick) == (32, "d", "j", True)
    assert quick.naive_max_batches is not None and full.naive_max_batches is None
    assert quick.repeats == 1 < full.repeats
    assert quick.search_trials < full.search_trials and quick.photos_per_class < full.photos_per_class


def test_command_line_reproduces_the_options(monkeypatch):
    for key in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(key, raising=False)
    assert command_line(BenchOptions(data="d", image_size=32, quick=True, json_path="b.json")) \
        == "inat-tune bench --data d --image-size 32 --quick --json b.json"
    assert command_line(BenchOptions()) == "inat-tune bench --image-size 64"
    # --search uses its own dataset and image size: they are not part of its command
    assert command_line(BenchOptions(data="d", image_size=32, search=True)) == "inat-tune bench --search"
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert command_line(BenchOptions()) == "OMP_WAIT_POLICY=PASSIVE inat-tune bench --image-size 64"


def test_cli_builds_the_options(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr("inat_tune.bench.run_bench", lambda options: seen.append(options) or 0)
    assert cli.main(["bench", "--data", "d", "--image-size", "48", "--json", "b.json",
                     "--quick"]) == 0
    assert cli.main(["bench", "--search"]) == 0
    assert seen == [BenchOptions(data="d", image_size=48, json_path="b.json", quick=True),
                    BenchOptions(search=True)]
    assert cli.main(["bench", "--image-size", "16"]) == 2  # one line, no traceback
    assert "bench: error: image_size=16: must be >= 32" in capsys.readouterr().err
    assert len(seen) == 2


def test_cli_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "inat_tune.cli", "bench", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--image-size" in out.stdout


# ---------------------------------------------------------------------------------------------
# The sections, each on its own at tiny sizes (CPU)

def test_naive_section_measures_batches_on_the_device(tiny):
    r = bench_naive(tiny, 32, batch_size=8, device=CPU, max_batches=3)
    assert r["workers"] == default_workers() and r["batches"] == 3 and r["shape"] == [8, 3, 32, 32]
    assert finite_positive(r["images_per_s"]) and finite_positive(r["first_batch_s"])
    assert finite_positive(r["cpu_ms_per_image"])
    # 3 of 5 batches: the epoch is extrapolated from the first batch and the steady rate
    assert r["epoch_measured"] is False
    assert r["epoch_s"] == pytest.approx(r["first_batch_s"] + 32 / r["images_per_s"])
    assert r["epoch_images_per_s"] == pytest.approx(40 / r["epoch_s"])


def test_cached_section_builds_the_cache_and_iterates_augmented_batches(tiny, tmp_path):
    images = scan_dataset(tiny)
    cache, seconds, cpu = bench_cache_build(images.root, images.train, 32, tmp_path / "cache")
    assert len(cache.files) == 40 and bool(cache.ok.all()) and not cache.skipped
    assert cache.images.shape == (40, 32, 32, 3) and finite_positive(seconds) and cpu >= 0
    assert any((tmp_path / "cache").iterdir())  # really built there, not found elsewhere
    x, y = to_device(cache.images, np.asarray(images.train_labels), CPU)
    r = bench_device_loader(x, y, batch_size=16, min_seconds=0.05, device=CPU)
    assert r["shape"] == [16, 3, 32, 32]
    # whole batches (drop_last); at least the rest of the first epoch after the warm-up batch
    assert r["images"] >= 16 and r["images"] % 16 == 0
    assert r["images_per_s"] == pytest.approx(r["images"] / r["seconds"])
    assert finite_positive(r["cpu_ms_per_image"])


def test_train_section_on_cpu_measures_fp32_only():
    assert [v["name"] for v in train_variants(CPU)] == ["fp32"]
    assert [v["name"] for v in train_variants(torch.device("cuda"))] == [
        "fp32", "bf16", "bf16+channels_last", "bf16+channels_last+compile"]
    x, y = uint8_images(32, 32, CPU)
    r = bench_train_step(x, y, 10, 32, 16, CPU, train_variants(CPU)[0], target_seconds=0.01,
                         steps_range=(2, 3), repeats=2)
    assert r["name"] == "fp32" and r["batch_size"] == 16 and 2 <= r["steps"] <= 3
    assert finite_positive(r["images_per_s"]) and len(r["runs_images_per_s"]) == 2
    assert r["images_per_s"] == pytest.approx(max(r["runs_images_per_s"]))
    assert finite_positive(r["fwd_gflop_per_image"]) and finite_positive(r["achieved_tflops"])
    assert r["peak_fraction"] is None  # no peak FLOP/s on a CPU


# ---------------------------------------------------------------------------------------------
# The printed table

def test_table_shows_each_section_and_an_errored_one_as_skipped():
    machine = {**machine_info(), "load_average": [0.0, 0.0, 0.0], "device": "cpu"}
    res = {"command": "inat-tune bench --quick", "date": "today", "machine": machine,
           "settings": {"repeats": 1},
           "train": {"variants": [{"name": "fp32", "peak_fraction": None, "images_per_s": 300.0,
                                   "achieved_tflops": 0.0123, "runs_images_per_s": [300.0, 250.0]}]},
           "finetune": {"error": "RuntimeError: boom"}, "ray": {"skipped": "no ray"},
           "targets": {"cache build <= 1.2x one naive epoch": {"value": 1.5, "met": False}},
           "section_seconds": {"train": 1.5}}
    lines = format_table(res).splitlines()
    assert lines[0] == "command : inat-tune bench --quick"
    assert lines[1] == "date    : today  (see JSON for all runs)"
    assert not any(line.startswith("WARNING") for line in lines)  # load 0: not busy
    assert lines[4:] == [
        "train     scratch CNN fp32 images/s            300  (0.0123 TFLOP/s, peak fraction "
        "n/a on CPU)  [runs 250 .. 300, n=2]",
        "finetune  skipped                              RuntimeError: boom",
        "ray       skipped                              no ray",
        "target    cache build <= 1.2x one naive epoch  1.5 -> MISSED",
        "", "seconds per section: train 1.5"]


# ---------------------------------------------------------------------------------------------
# Whole runs

def test_bench_without_ray_measures_every_other_section(tiny, bench_tmp, tmp_path, monkeypatch,
                                                         capsys):
    """run_bench --quick end to end, Ray's section stubbed (the slow test below runs it)."""
    monkeypatch.setattr("inat_tune.bench.throughput.bench_ray", lambda storage: {"skipped": "stubbed"})
    monkeypatch.setattr("inat_tune.bench.throughput.bench_trials", lambda *a, **k: {"skipped": "stubbed"})
    path = tmp_path / "out" / "bench.json"
    assert run_bench(BenchOptions(data=str(tiny), image_size=32, json_path=str(path),
                                  quick=True)) == 0
    printed = capsys.readouterr().out
    res = json.loads(path.read_text())
    assert res["settings"] == {**json.loads(json.dumps(asdict(BenchSettings().quickened()))),
                               "image_size": 32, "data": str(tiny), "json_path": str(path)}
    assert res["command"].endswith(f"inat-tune bench --data {tiny} --image-size 32 --quick "
                                   f"--json {path}")
    assert res["machine"]["torch"] == torch.__version__ and res["machine"]["usable_cores"] >= 1
    assert res["dataset"]["train_images"] == 40 and res["dataset"]["synthetic"] is True
    assert finite_positive(res["naive"]["images_per_s"]) and finite_positive(res["naive"]["epoch_s"])
    cached = res["cached"]
    assert finite_positive(cached["images_per_s"]) and finite_positive(cached["build_s"])
    assert cached["speedup_over_naive"] == pytest.approx(
        cached["images_per_s"] / res["naive"]["images_per_s"])
    variants = res["train"]["variants"]
    names = [v["name"] for v in variants]
    assert names == [v["name"] for v in train_variants(torch.device(res["machine"]["device"]))]
    assert all(finite_positive(v["images_per_s"]) for v in variants)
    ft = res["finetune"]
    assert "error" not in ft and "skipped" not in ft, ft
    assert ft["train_images"] + ft["val_images"] == 40 and ft["train_images"] <= 32
    assert not ft["without_cache"]["used_features"]
    assert ft["with_cache"]["used_features"] and ft["with_cache"]["features_loaded"] is False
    assert ft["with_cache_later_trial"]["features_loaded"] is True  # as a later trial loads them
    assert finite_positive(ft["epoch_speedup"])
    assert res["ray"] == {"skipped": "stubbed"}
    assert res["trials"] == {"skipped": "stubbed"}
    assert list(res["section_seconds"]) == ["naive", "cached", "train", "finetune", "ray", "trials"]
    assert {t["met"] for t in res["targets"].values()} <= {True, False} and len(res["targets"]) == 2
    assert not list(bench_tmp.glob("run-*"))  # the scratch folder is removed
    # what was printed is the table of what was written
    assert format_table(res) in printed and f"wrote {path}" in printed
    assert "finetune  epoch speed-up from the feature cache" in printed


@pytest.mark.slow
def test_ray_section_measures_start_up_and_the_first_report(tmp_path):
    pytest.importorskip("ray")
    from inat_tune.bench.ray_overhead import bench_ray

    r = bench_ray(tmp_path / "ray")
    assert "error" not in r and "skipped" not in r, r
    assert finite_positive(r["ray_init_s"])  # started here: no Ray was running
    assert r["launch_s"] >= 0 and r["trial_start_to_first_report_s"] >= 0
    assert 0 <= r["in_trial_epoch_s"] <= r["tuner_fit_total_s"]


def test_trial_start_times_split_first_trials_of_a_process_from_later_ones():
    from inat_tune.bench.ray_overhead import trial_start_times

    rows = [{"ready": 0.0, "first_result": 9.0, "worker_trial": 1, "epoch_s": 0.5},
            {"ready": 1.0, "first_result": 12.0, "worker_trial": 1, "epoch_s": 0.5},
            {"ready": 10.0, "first_result": 10.8, "worker_trial": 2, "epoch_s": 0.5},
            {"ready": 11.0, "first_result": 11.6, "worker_trial": 3, "epoch_s": 0.4},
            {"ready": 20.0, "first_result": 21.0, "worker_trial": 2, "epoch_s": 0.5}]
    t = trial_start_times(rows)
    assert (t["n_trials"], t["cold_trials"], t["warm_trials"]) == (5, 2, 3)
    assert t["cold_start_s"] == pytest.approx(10.0) and t["warm_start_s"] == pytest.approx(0.8)
    assert t["cold_overhead_s"] == pytest.approx(9.5) and t["warm_overhead_s"] == pytest.approx(0.3)
    assert trial_start_times(rows[:2])["warm_start_s"] is None


@pytest.mark.slow
def test_trials_section_times_cold_and_warm_starts_in_a_real_sweep(tmp_path, synth_data):
    """A real sweep of 4 one-epoch trials on 1 CPU each: the first trial of each worker
    process is cold, the others ran in a reused process; the table prints both."""
    pytest.importorskip("ray")
    from inat_tune.bench.ray_overhead import bench_trials

    r = bench_trials(tmp_path / "trials", synth_data, n_trials=4)
    assert "error" not in r and "skipped" not in r, r
    assert r["n_trials"] == 4 and r["cold_trials"] >= 1 and r["warm_trials"] >= 1
    assert r["cold_trials"] + r["warm_trials"] == 4
    assert all(row["first_result"] > row["ready"] >= row["created"] for row in r["rows"])
    assert finite_positive(r["warm_start_s"]) and finite_positive(r["cold_start_s"])
    from inat_tune.bench.environment import machine_info
    table = format_table({"command": "c", "date": "d", "machine": machine_info(), "settings": {},
                          "trials": r})
    assert "slot free -> first epoch, cold / warm (median)" in table


def fake_run_sweep(opts, space) -> None:
    """Leaves the experiment folder a finished sweep leaves (sweep.json, space.yaml, trial
    folders), without Ray: random search runs 4 trials x 2 epochs; "TPE+ASHA" stops two
    trials after one epoch and reaches random's best (0.5) on its 3rd epoch."""
    import yaml

    exp = Path(opts.experiment_path)
    exp.mkdir(parents=True)
    (exp / "sweep.json").write_text(json.dumps({"name": opts.name, "data_dir": opts.data_dir}))
    (exp / "space.yaml").write_text(yaml.safe_dump({"metric": {"name": "val_acc",
                                                               "goal": "maximize"}}))
    curves = ([[0.2, 0.5], [0.3], [0.1], [0.4, 0.45]] if space.method == "bayes"
              else [[0.1, 0.2], [0.2, 0.3], [0.3, 0.5], [0.1, 0.4]])
    clock = 1000.0
    for i, curve in enumerate(curves):
        rows = []
        for epoch, acc in enumerate(curve, 1):
            clock += 1
            rows.append({"trial_id": f"t{i}", "training_iteration": epoch, "epoch": epoch,
                         "val_acc": acc, "timestamp": clock, "time_total_s": 2.0 * epoch,
                         "done": epoch == len(curve)})
        write_trials(exp, {f"trainable_t{i}": rows})


def test_search_section_reads_both_sweeps_and_compares_them(bench_tmp, monkeypatch):
    """``--search`` on its own dataset, with run_sweep replaced by a Ray-free fake (a real
    sweep pair takes minutes on a 2-core CPU: ``inat-tune bench --search`` measures that)."""
    pytest.importorskip("ray")  # the section skips itself without Ray
    monkeypatch.setattr("inat_tune.tune.runner.run_sweep", fake_run_sweep)
    res = bench(search=True, quick=True)
    assert res["command"].endswith("inat-tune bench --search --quick")
    sr = res["search"]
    assert "skipped" not in sr, sr
    assert (sr["trials"], sr["epochs_per_trial"], sr["image_size"]) == (4, 2, 32)
    assert Path(sr["data"]).parent == bench_tmp and (Path(sr["data"]) / "train").is_dir()
    assert sr["spaces"]["tpe_asha"]["method"] == "bayes" and sr["spaces"]["random"]["method"] == "random"
    tpe, rnd = sr["tpe_asha"], sr["random"]
    assert (tpe["trials"], tpe["epochs"], tpe["epochs_per_trial"]) == (4, 6, [2, 1, 1, 2])
    assert (rnd["trials"], rnd["epochs"], rnd["epochs_per_trial"]) == (4, 8, [2, 2, 2, 2])
    assert tpe["trial_seconds"] == 12.0 and rnd["trial_seconds"] == 16.0
    assert tpe["best_val_acc"] == 0.5 and rnd["best_val_acc"] == 0.5
    assert tpe["running_best"] == [0.2, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert tpe["wall_s"] > 0 and rnd["wall_s"] > 0
    c = sr["comparison"]
    assert c["tpe_asha_epochs_to_random_best"] == 2 and c["random_epochs_to_its_best"] == 6
    assert c["epoch_share"] == 6 / 8 and c["trial_seconds_share"] == 12 / 16
    assert c["met"] is True  # 2 epochs <= 8 / 3
    (target,) = res["targets"].values()
    assert target == {"value": 2 / 8, "met": True}
    assert not list(bench_tmp.glob("search-*"))  # the sweeps' folders are removed once read


# ---------------------------------------------------------------------------------------------
# CUDA paths (run on a GPU machine; skipped elsewhere)

@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", ["fp32", "bf16", "bf16+channels_last"])
def test_train_section_on_cuda_is_finite(name):
    device = torch.device("cuda")
    variant = next(v for v in train_variants(device) if v["name"] == name)
    x, y = uint8_images(128, 64, device)
    r = bench_train_step(x, y, 10, 64, 32, device, variant, target_seconds=0.2,
                         steps_range=(3, 50), repeats=2)
    assert r["name"] == name and r["steps"] >= 3 and r["batch_size"] == 32
    assert finite_positive(r["images_per_s"]) and all(map(finite_positive, r["runs_images_per_s"]))
    assert finite_positive(r["achieved_tflops"])
    if peak_flops(torch.cuda.get_device_name(device)) is None:
        assert r["peak_fraction"] is None
    else:  # a known GPU: a share of its bf16 peak, far below 1 for this small CNN
        assert finite_positive(r["peak_fraction"]) and r["peak_fraction"] < 1


@pytest.mark.gpu
@needs_cuda
def test_data_path_sections_on_cuda_are_finite(tiny, tmp_path):
    device = torch.device("cuda")
    naive = bench_naive(tiny, 32, batch_size=8, device=device, max_batches=3)
    assert finite_positive(naive["images_per_s"]) and finite_positive(naive["epoch_s"])
    images = scan_dataset(tiny)
    cache, _, _ = bench_cache_build(images.root, images.train, 32, tmp_path / "cache")
    x, y = to_device(cache.images, np.asarray(images.train_labels), device)
    assert x.device.type == "cuda"
    r = bench_device_loader(x, y, batch_size=16, min_seconds=0.05, device=device)
    assert finite_positive(r["images_per_s"]) and r["images"] >= 16


# ---------------------------------------------------------------------------------------------
# --concurrent: N trainings at once in spawned processes (inat_tune.bench.concurrent)

def test_concurrent_module_imports_no_ray():
    code = ("import sys, inat_tune.bench.concurrent, inat_tune.bench; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1],
                   timeout=120)


def test_concurrent_window_summary_by_construction():
    from inat_tune.bench.concurrent import window_summary

    # two windows [10, 12] and [11, 13] of 100 images: span 3 s, together 1 s of it
    s = window_summary([{"images": 100, "seconds": 2.0, "start": 10.0, "end": 12.0},
                        {"images": 100, "seconds": 2.0, "start": 11.0, "end": 13.0}])
    assert s["total_images"] == 200 and s["span_s"] == 3.0
    assert s["aggregate_images_per_s"] == pytest.approx(200 / 3)
    assert s["overlap_s"] == 1.0 and s["overlap_fraction"] == pytest.approx(1 / 3)
    assert [p["images_per_s"] for p in s["per_process"]] == [50.0, 50.0]
    assert [(p["start_s"], p["end_s"]) for p in s["per_process"]] == [(0.0, 2.0), (1.0, 3.0)]
    assert s["sum_per_process_images_per_s"] == 100.0
    # windows that do not meet: no overlap, and the gap counts in the span
    apart = window_summary([{"images": 10, "seconds": 1.0, "start": 0.0, "end": 1.0},
                            {"images": 10, "seconds": 1.0, "start": 3.0, "end": 4.0}])
    assert apart["overlap_s"] == 0.0 and apart["aggregate_images_per_s"] == 5.0


def test_concurrent_options_are_validated(monkeypatch, capsys):
    assert BenchOptions(concurrent=2).concurrent == 2
    assert BenchSettings.from_options(BenchOptions(concurrent=3, quick=True)).concurrent == 3
    for bad, key in (({"concurrent": 0}, "concurrent=0"), ({"concurrent": -1}, "concurrent=-1"),
                     ({"concurrent": 65}, "concurrent=65"), ({"concurrent": "2"}, "concurrent='2'"),
                     ({"concurrent": 2.0}, "concurrent=2.0"), ({"concurrent": True}, "concurrent=True"),
                     ({"concurrent": 2, "search": True}, "concurrent=2 with search"),
                     ({"concurrent": 2, "data": "d"}, "concurrent=2 with data")):
        with pytest.raises(ConfigError, match=key):
            BenchOptions(**bad)
    seen = []
    monkeypatch.setattr("inat_tune.bench.run_bench", lambda options: seen.append(options) or 0)
    assert cli.main(["bench", "--concurrent", "4", "--image-size", "48", "--quick"]) == 0
    assert seen == [BenchOptions(image_size=48, quick=True, concurrent=4)]
    monkeypatch.undo()
    assert cli.main(["bench", "--concurrent", "0"]) == 2  # refused before any process starts
    assert "bench: error: concurrent=0: must be from 1 to 64" in capsys.readouterr().err


def test_concurrent_process_failure_is_raised_with_its_traceback():
    from inat_tune.bench.concurrent import ConcurrentBenchError, _launch

    # image_size 16 is refused by RunConfig inside each process: nobody waits forever
    with pytest.raises(ConcurrentBenchError, match=r"(?s)process 0 of 2 \(cpu\) failed.*image_size"):
        _launch(2, device="cpu", image_size=16, batch_size=4, variant=None, threads=1, steps=2,
                seconds=0.0, steps_range=(1, 2), repeats=1)


@pytest.mark.slow  # three spawned processes, each importing torch: ~30-60 s on 2 cores
def test_concurrent_bench_runs_and_its_figures_add_up(tmp_path, capsys):
    path = tmp_path / "c.json"
    assert cli.main(["bench", "--concurrent", "2", "--quick", "--image-size", "32",
                     "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 at once: aggregate images/s" in out and "aggregate / alone" in out
    res = json.loads(path.read_text())
    assert "inat-tune bench --concurrent 2 --image-size 32 --quick --json" in res["command"]
    assert res["settings"]["concurrent"] == 2 and "naive" not in res and "targets" not in res
    r = res["concurrent"]
    assert (r["n"], r["device"], r["variant"], r["image_size"]) == (2, "cpu", "fp32", 32)
    assert r["batch_size"] == 16 and r["steps"] >= 1  # --quick: the quick settings' batch
    assert r["images_per_process"] == r["steps"] * r["batch_size"]
    assert r["threads_alone"] == max(1, r["cores"]) and r["threads_per_process"] == max(1, r["cores"] // 2)
    a, c = r["alone"], r["concurrent"]
    assert finite_positive(a["images_per_s"]) and a["images"] == r["images_per_process"]
    assert a["images_per_s"] == pytest.approx(a["images"] / a["seconds"])
    assert finite_positive(a["bench_train_step_images_per_s"])
    assert len(c["per_process"]) == 2 == c["processes"]
    for p in c["per_process"]:  # each process trained the same steps, inside the span
        assert p["images"] == r["images_per_process"] and finite_positive(p["images_per_s"])
        assert p["images_per_s"] == pytest.approx(p["images"] / p["seconds"])
        assert 0.0 <= p["start_s"] < p["end_s"] <= c["span_s"] * (1 + 1e-9)
    assert min(p["start_s"] for p in c["per_process"]) == 0.0
    # by construction: aggregate = all images / span; the span holds each window, so the
    # aggregate is at most the sum of the per-process rates
    assert c["total_images"] == 2 * r["images_per_process"]
    assert c["aggregate_images_per_s"] == pytest.approx(c["total_images"] / c["span_s"], rel=1e-12)
    assert c["span_s"] == pytest.approx(max(p["end_s"] for p in c["per_process"]), rel=1e-12)
    assert c["aggregate_images_per_s"] <= c["sum_per_process_images_per_s"] * (1 + 1e-9)
    assert c["sum_per_process_images_per_s"] == pytest.approx(
        sum(p["images_per_s"] for p in c["per_process"]))
    assert 0.0 <= c["overlap_s"] <= c["span_s"] and 0.0 <= c["overlap_fraction"] <= 1.0
    assert r["ratio"] == pytest.approx(c["aggregate_images_per_s"] / a["images_per_s"])
    assert c["peak_fraction"] is None and a["peak_fraction"] is None  # no peak on a CPU
