"""Warm trials: reused trial processes give what fresh ones give, leave nothing behind, and keep
their data; the tuning split is one shared memory map per node, not a copy per trial."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inat_tune.data.cache import build_cache
from inat_tune.data.loader import to_device
from inat_tune.data.pipeline import load_tuning_data, rows_view
from inat_tune.data.warm import WarmCache


# ---------------------------------------------------------------------------------------------
# The warm cache

def test_warm_cache_loads_once_and_drops_the_least_recently_used(monkeypatch):
    monkeypatch.setenv("INAT_TUNE_WARM_MB", str(3 / 2**20 * 10))  # 30 bytes
    cache, loads = WarmCache(), []

    def get(key: str, size: int) -> str:
        return cache.get(key, lambda: loads.append(key) or key, nbytes=lambda v: size)

    assert get("a", 10) == "a" and get("a", 10) == "a"
    assert loads == ["a"] and cache.hits == 1 and cache.misses == 1
    get("b", 10), get("c", 10)
    get("a", 10)  # a is now the most recent
    get("d", 10)  # 40 > 30 bytes: the least recently used (b) goes
    assert cache.held_bytes("cpu") == 30
    loads.clear()
    get("a", 10), get("c", 10), get("d", 10)
    assert loads == []
    get("b", 10)
    assert loads == ["b"]
    get("big", 31)  # over the whole budget: used, never kept
    get("big", 31)
    assert loads.count("big") == 2 and cache.held_bytes("cpu") == 30


def test_warm_cache_off_keeps_nothing(monkeypatch):
    monkeypatch.setenv("INAT_TUNE_WARM_MB", "0")
    cache = WarmCache()
    cache.get("a", lambda: 1, nbytes=lambda v: 1)
    assert len(cache) == 0 and cache.get("a", lambda: 2, nbytes=lambda v: 1) == 2


# ---------------------------------------------------------------------------------------------
# One copy per node

def test_the_split_is_a_shared_read_only_memory_map_not_a_copy(synth_data, tmp_path):
    data = load_tuning_data(synth_data, 32, 0.25, 3, cache_dir=tmp_path, progress=False)
    for part in (data.train, data.val):
        assert isinstance(part.images, np.memmap) and not part.images.flags.writeable
    # The same pixels as the decode cache's rows, in the split's order.
    full = load_tuning_data(synth_data, 32, 0.25, 3, cache_dir=tmp_path, progress=False)
    from inat_tune.data.scan import scan_dataset
    images = scan_dataset(synth_data)
    train_cache = build_cache(images.root, images.train, 32, cache_dir=tmp_path, progress=False)
    row = {f: i for i, f in enumerate(train_cache.files)}
    want = np.stack([train_cache.images[row[f]] for f in full.val.files])
    np.testing.assert_array_equal(np.asarray(full.val.images), want)
    # Built once per node: a second load maps the same file.
    assert Path(full.train.images.filename) == Path(data.train.images.filename)
    assert len(list(tmp_path.glob("*.rows-*/images.u8"))) == 2  # train and val
    # On the CPU the trainer's tensor is a view of those pages, not a copy.
    x, _ = to_device(data.train.images, data.train.labels, "cpu")
    assert x.untyped_storage().data_ptr() == data.train.images.ctypes.data


def test_rows_in_order_are_a_slice_of_the_cache_itself(synth_data, tmp_path):
    from inat_tune.data.scan import scan_dataset
    images = scan_dataset(synth_data)
    cache = build_cache(images.root, images.train, 32, cache_dir=tmp_path, progress=False)
    view = rows_view(cache, np.arange(3, 9))
    assert np.shares_memory(view, cache.images)
    np.testing.assert_array_equal(view, cache.images[3:9])
    assert not list(tmp_path.glob("*.rows-*"))


def test_an_unwritable_cache_folder_falls_back_to_a_copy(synth_data, tmp_path, monkeypatch, caplog):
    from inat_tune.data import pipeline
    from inat_tune.data.scan import scan_dataset

    images = scan_dataset(synth_data)
    cache = build_cache(images.root, images.train, 32, cache_dir=tmp_path, progress=False)

    def refuse(final, build, **kw):
        raise PermissionError(13, "Permission denied", str(final))

    monkeypatch.setattr(pipeline, "build_folder_once", refuse)
    rows = np.array([5, 1, 7])
    out = rows_view(cache, rows)
    np.testing.assert_array_equal(out, cache.images[rows])
    assert "copying them into memory" in caplog.text


# ---------------------------------------------------------------------------------------------
# Reused trial processes (real Ray Tune sweeps)

SPACE = {
    "model": "scratch_cnn",
    "method": "grid",
    "metric": {"name": "val_acc", "goal": "maximize"},
    "parameters": {
        "image_size": {"value": 32}, "filters": {"value": 8}, "dense": {"value": 16},
        "batch_size": {"value": 32}, "epochs": {"value": 2}, "lr": {"value": 0.01},
        "dropout": {"value": 0.2},  # dropout draws from the global RNG
        "seed": {"values": [1, 2]},
    },
}


def _sweep(tmp_path: Path, data: Path, name: str, space: dict, **kw):
    import ray

    from inat_tune.tune.runner import sweep

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return sweep(space, data, name=name, storage=tmp_path, use_wandb=False, **kw)
    finally:
        ray.shutdown()


def _results(exp) -> dict[int, list[dict]]:
    """{seed: that trial's reported rows} of a finished experiment."""
    out = {}
    for t in exp.trials:
        rows = [json.loads(line) for line in (t.path / "result.json").read_text().splitlines()]
        out[t.config["seed"]] = rows
    return out


@pytest.mark.slow
def test_a_reused_process_gives_exactly_what_a_fresh_one_gives(synth_data, tmp_path):
    """Seed 1 trains in a fresh process in one sweep, and in a process that has just trained
    seed 2 in the other: every reported metric of every epoch is the same."""
    fresh = _results(_sweep(tmp_path, synth_data, "fresh", SPACE, max_concurrent=1, fresh_process=True))
    second_first = {**SPACE, "parameters": {**SPACE["parameters"], "seed": {"values": [2, 1]}}}
    reused = _results(_sweep(tmp_path, synth_data, "reused", second_first, max_concurrent=1))

    assert all(r["worker_trial"] == 1 for rows in fresh.values() for r in rows)
    assert {r["worker_trial"] for r in reused[1]} == {2}, "seed 1 should have run second, in a reused process"
    assert reused[1][0]["worker_pid"] == reused[2][0]["worker_pid"]
    keys = ["train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    for seed in (1, 2):
        assert [[r[k] for k in keys] for r in reused[seed]] == [[r[k] for k in keys] for r in fresh[seed]]
    assert fresh[1][-1]["val_loss"] != fresh[2][-1]["val_loss"]  # the seeds do differ


@pytest.mark.slow
def test_thirty_trials_in_reused_processes_leave_nothing_behind(synth_data, tmp_path):
    """>= 30 short trials, ASHA stopping many after one epoch, on two reused worker processes:
    the tensors alive when a trial starts are the same for every trial after a worker's first
    (nothing of a finished or stopped trial stays), and resident memory stays at its level
    after the first trials (plus allocator noise)."""
    space = {
        "model": "scratch_cnn", "method": "random",
        "metric": {"name": "val_acc", "goal": "maximize"},
        "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
        "parameters": {
            "image_size": {"value": 32}, "filters": {"value": 8}, "dense": {"value": 16},
            "batch_size": {"value": 64}, "epochs": {"value": 2}, "augment": {"value": False},
            "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
        },
    }
    exp = _sweep(tmp_path, synth_data, "many", space, num_samples=32, max_concurrent=2)
    rows = [json.loads((t.path / "result.json").read_text().splitlines()[0]) for t in exp.trials]
    assert len(rows) == 32
    stopped = sum(1 for t in exp.trials if len((t.path / "result.json").read_text().splitlines()) < 2)
    assert stopped >= 5, "ASHA should have stopped some trials after one epoch"
    by_worker: dict[int, list[dict]] = {}
    for r in rows:
        by_worker.setdefault(r["worker_pid"], []).append(r)
    assert max(len(v) for v in by_worker.values()) >= 10, "trial processes were not reused"
    for pid, trials in by_worker.items():
        trials.sort(key=lambda r: r["worker_trial"])
        assert [r["worker_trial"] for r in trials] == list(range(1, len(trials) + 1))
        later = trials[1:]
        if len(later) < 5:
            continue
        # exact: a leak of even one small tensor per trial changes the sum
        assert {round(r["worker_tensor_mb"], 6) for r in later} == {round(later[0]["worker_tensor_mb"], 6)}
        baseline = min(r["worker_rss_mb"] for r in later[:3])
        grown = later[-1]["worker_rss_mb"] - baseline
        # one model of this size is ~0.5 MB; a trial's data and model staying behind would add
        # up over 10+ trials. 40 MB allows glibc's arenas and Ray's own buffers.
        assert grown < 40, f"worker {pid} grew {grown:.1f} MB over {len(later)} reused trials"


def test_on_a_gpu_a_miss_drops_the_older_entry_of_its_category(monkeypatch):
    """A process's GPU memory estimate counts the current trial's data and features only, so on
    CUDA the warm cache keeps one of each (no device needed: the kind is just a label here)."""
    monkeypatch.setenv("INAT_TUNE_WARM_MB", "100")
    cache = WarmCache()
    cache.get(("device", "a"), lambda: "A", nbytes=lambda v: 10, device="cuda")
    cache.get(("features", "a"), lambda: "FA", nbytes=lambda v: 10, device="cuda")
    cache.get(("device", "a"), lambda: "A2", nbytes=lambda v: 10, device="cuda:0")  # a hit
    assert cache.held_bytes("cuda") == 20 and cache.hits == 1
    cache.get(("device", "b"), lambda: "B", nbytes=lambda v: 10, device="cuda")
    assert cache.held_bytes("cuda") == 20  # device a went, features a stay
    loads = []
    cache.get(("features", "a"), lambda: loads.append(1), nbytes=lambda v: 10, device="cuda")
    cache.get(("device", "a"), lambda: loads.append(2) or "A", nbytes=lambda v: 10, device="cuda")
    assert loads == [2]
    cache.get(("device", "x"), lambda: "X", nbytes=lambda v: 10, device="cpu")
    cache.get(("device", "y"), lambda: "Y", nbytes=lambda v: 10, device="cpu")
    assert cache.held_bytes("cpu") == 20  # the CPU keeps several (LRU within its budget)
