"""CUDA-only checks (``gpu`` marker; skipped without a CUDA device). ``make gpu-check`` runs
them on a GPU machine; none of them has run on a GPU from this repository's CI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inat_tune.data.loader import Augment, DeviceLoader, to_device

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
gpu = pytest.mark.gpu


def _images(n: int = 70, size: int = 32):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % 10


@gpu
@needs_cuda
@pytest.mark.parametrize("aug", [Augment(), Augment(color_jitter=0.3)], ids=["cropflip", "jitter"])
def test_device_loader_epoch_has_no_host_sync(aug):
    """A whole augmented, shuffled epoch under sync debug mode "error": any blocking
    host-device synchronisation (a .item(), a pageable copy, a .to() that waits) raises."""
    images, labels = _images()
    x, y = to_device(images, labels, "cuda")
    dl = DeviceLoader(x, y, 16, shuffle=True, augment=aug, seed=1, channels_last=True)
    dl.set_epoch(1)
    torch.cuda.synchronize(x.device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        batches = [xb for xb, _ in dl]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(batches) == 5 and all(b.is_cuda for b in batches)


@gpu
@needs_cuda
def test_device_loader_epoch_is_the_same_on_cpu_and_cuda():
    images, labels = _images()
    out = {}
    for dev in ("cpu", "cuda"):
        x, y = to_device(images, labels, dev)
        dl = DeviceLoader(x, y, 16, shuffle=True, augment=Augment(color_jitter=0.3), seed=2)
        out[dev] = [(xb.cpu(), yb.cpu()) for xb, yb in dl]
    for (xc, yc), (xg, yg) in zip(out["cpu"], out["cuda"]):
        assert torch.equal(yc, yg)  # the same permutation
        torch.testing.assert_close(xg, xc, atol=1e-4, rtol=1e-4)  # grid_sample differs in rounding


# ---------------------------------------------------------------------------------------------
# CPU-testable: what scripts/gpu_check.sh relies on (these are not gpu-marked)

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BLOCK = "import sys\nfor m in ('ray', 'optuna', 'wandb', 'captum'): sys.modules[m] = None\n"


def test_bench_and_training_import_without_ray_optuna_wandb_captum():
    code = BLOCK + ("import inat_tune.bench, inat_tune.bench.throughput, inat_tune.train, inat_tune.cli\n"
                    "from inat_tune.data.loader import DeviceLoader\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr



@pytest.mark.slow
def test_gpu_check_rehearses_on_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the real check, not the rehearsal")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=ROOT, capture_output=True,
                       text=True, timeout=600,
                       env={**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "gc")})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "REHEARSAL" in r.stdout
    res = json.loads((tmp_path / "gc" / "gpu_check.json").read_text())
    assert res["rehearsal"] is True and res["bench"]["train"]["variants"]
    status = {s["name"]: s["status"] for s in res["steps"]}
    assert status == {"environment": "ok", "gpu_tests": "ok", "bench": "ok", "bench_concurrent": "ok"}
    assert res["concurrent"]["n"] == 2 and res["concurrent"]["ratio"] > 0  # bench --concurrent ran
    env_log = next(s["log_tail"] for s in res["steps"] if s["name"] == "environment")
    assert "import with ray/optuna/wandb/captum blocked" in env_log
    assert "skipped" in json.dumps(res["bench"]["ray"])  # Ray blocked in the rehearsal
    assert (tmp_path / "gc" / "gpu_check.txt").read_text().startswith("gpu-check (REHEARSAL")


# ---------------------------------------------------------------------------------------------
# The memory pre-flight's estimate against a real fit() on CUDA (issue 13). CPU stand-in:
# tests/test_memory.py::test_estimate_matches_a_real_fit_on_the_cpu.


@gpu
@needs_cuda
@pytest.mark.parametrize("space,which", [("scratch_cnn", "largest"), ("resnet50_finetune", "largest"),
                                         ("resnet50_finetune", "cached")])
def test_memory_estimate_is_within_20_percent_of_a_real_fit(space, which):
    """fit() for 2 training steps and one validation batch of a shipped space's largest
    configuration (``cached``: its largest with a feature cache): the CUDA context plus
    torch.cuda.max_memory_allocated() against the same context plus the estimate, within 20 %.
    Random weights (no download; the same memory as ImageNet's); ``gradual`` is left out (at
    one epoch it is head_only; its last epoch is ``full``, which is measured)."""
    import gc

    from inat_tune.data.pipeline import ArraySplit, TuningData
    from inat_tune.train import choose_precision, fit
    from inat_tune.tune.memory import (cuda_context_bytes, describe_config, estimate_peak_bytes,
                                       largest_estimate)
    from inat_tune.tune.space import load_space

    dev = torch.device("cuda")
    spec = load_space(ROOT / "search_spaces" / f"{space}.yaml")
    batch = int(spec.parameters["batch_size"].extremes()[1])
    n_train, n_val = 2 * batch, max(1, batch // 2)  # drop_last: exactly 2 steps
    _, _, pairs = largest_estimate(spec, n_train, n_val, 10, auto_precision=choose_precision("auto", dev))
    pairs = [(c, e) for c, e in pairs if c.strategy != "gradual" or c.model != "finetune"]
    if which == "cached":
        pairs = [(c, e) for c, e in pairs if e.features]
    if not pairs:
        pytest.skip(f"{space}: no configuration of that kind")
    cfg = max(pairs, key=lambda ce: ce[1].total)[0].replace(epochs=1)
    if cfg.model == "finetune":
        cfg = cfg.replace(weights="none")
    rng = np.random.default_rng(0)

    def split(n: int) -> ArraySplit:
        return ArraySplit(rng.integers(0, 256, (n, cfg.image_size, cfg.image_size, 3), dtype=np.uint8),
                          np.arange(n, dtype=np.int64) % 10, tuple(f"x/{i}.jpg" for i in range(n)))

    data = TuningData(ROOT / "no-such-dataset", tuple(str(i) for i in range(10)), split(n_train), split(n_val),
                      (), cfg.image_size, 0.2, 0)  # features are then computed in memory, not stored
    est = estimate_peak_bytes(cfg, n_train, n_val, 10, precision=choose_precision(cfg.precision, dev))

    gc.collect()
    torch.cuda.empty_cache()
    context = cuda_context_bytes(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    fit(cfg, data, device=dev, log=None)
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) - base
    reserved = torch.cuda.max_memory_reserved(dev)
    free, total = torch.cuda.mem_get_info(dev)
    context_after = total - free - torch.cuda.memory_reserved(dev)
    measured, predicted = context + peak, context + est.total
    record = {"space": space, "which": which, "config": describe_config(cfg, est), "parts": est.parts(),
              "estimate": est.total, "max_allocated": peak, "max_reserved": reserved, "context": context,
              "context_after_fit": context_after, "ratio": predicted / measured}
    print(json.dumps(record))
    if os.environ.get("OUT") and Path(os.environ["OUT"]).is_dir():  # scripts/gpu_check.sh's folder
        with open(Path(os.environ["OUT"]) / "memory_estimate.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
    assert abs(predicted - measured) <= 0.2 * measured, (
        f"{record['config']}: estimate {est.describe()} + context {context / 1e9:.2f} GB = "
        f"{predicted / 1e9:.2f} GB vs measured max_allocated {peak / 1e9:.2f} + context = "
        f"{measured / 1e9:.2f} GB (max_reserved {reserved / 1e9:.2f} GB, context after fit "
        f"{context_after / 1e9:.2f} GB)")
