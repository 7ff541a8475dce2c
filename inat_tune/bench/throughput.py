"""The default bench run: the five sections (naive, cached, train, finetune, ray) on the same
files, the same cores and the same batch size, and the targets they are held to."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .data_path import bench_cache_build, bench_device_loader, bench_naive
from .datasets import PHOTO_SIZE, bench_root, dataset_info, synthetic_set, warm_page_cache
from .finetune import bench_finetune, finetune_available, subset
from .measure import SectionTimer, best_of, ratio, sync
from .options import BenchSettings
from .ray_overhead import bench_ray, bench_trials
from .training import bench_train_step, train_note, train_variants

log = logging.getLogger(__name__)

TARGET_SPEEDUP = 20.0  # cached pipeline images/s over naive, at 64 and 224 px
TARGET_BUILD_RATIO = 1.2  # cache build seconds over one naive epoch


def run_train_variants(x, y, num_classes: int, s: BenchSettings, device) -> list[dict[str, Any]]:
    """The train section: every variant of ``train_variants(device)``; one that raises (say
    torch.compile without Triton or a C compiler) is recorded as the variant with
    ``{"error": ...}`` and the others still run."""
    out = []
    for v in train_variants(device):
        try:
            out.append(bench_train_step(x, y, num_classes, s.image_size, s.batch_size, device, v,
                                        s.train_seconds, s.train_steps, s.repeats))
        except Exception as e:  # noqa: BLE001 - one variant's failure must not end the bench
            log.exception("train variant %s failed", v["name"])
            out.append({**v, "error": f"{type(e).__name__}: {e}"})
    return out


def run_throughput(s: BenchSettings, emit: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run every section on ``s.data`` (default: the generated photo-sized set) and return the
    result's ``dataset``, ``naive``, ``cached``, ``train``, ``finetune``, ``ray``,
    ``section_seconds`` and ``targets``. A finetune section that raises is recorded as
    ``{"error": ...}`` (and logged) so the other sections still report, and so is each train
    variant. ``emit(result so far)`` is called after each section (the JSON is written as
    results arrive)."""
    def done() -> None:
        if emit is not None:
            emit(out)

    from ..data.loader import to_device
    from ..data.pipeline import load_tuning_data
    from ..data.scan import scan_dataset
    from ..train import select_device

    device = select_device()
    root = Path(s.data).expanduser() if s.data else synthetic_set(s.photos_per_class, PHOTO_SIZE)
    images = scan_dataset(root)
    out: dict[str, Any] = {"dataset": dataset_info(images.root, images.train)}
    warm_page_cache(images.root, images.train)
    bench_root().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=bench_root()))
    sections = SectionTimer()
    try:
        sections.start("naive")
        naive = best_of([bench_naive(images.root, s.image_size, s.batch_size, device,
                                     s.naive_max_batches) for _ in range(s.repeats)],
                        "images_per_s", keep=("epoch_s", "first_batch_s", "cpu_ms_per_image"))
        naive["epoch_s"] = min(r["epoch_s"] for r in naive["runs"])
        naive["cpu_ms_per_image"] = min(r["cpu_ms_per_image"] for r in naive["runs"])
        out["naive"] = naive
        done()

        sections.start("cached")
        builds, build_cpu = [], []
        for i in range(s.repeats):  # a fresh cache folder each time: really built
            cache_dir = work / f"cache{i}"
            cache, seconds, cpu = bench_cache_build(images.root, images.train, s.image_size,
                                                    cache_dir)
            builds.append(seconds)
            build_cpu.append(cpu)
        build_s = min(builds)
        ok = cache.ok
        t0 = time.perf_counter()
        x, y = to_device(cache.images[ok], np.asarray(images.train_labels)[ok], device)
        sync(device)
        to_device_s = time.perf_counter() - t0
        dl = best_of([bench_device_loader(x, y, s.batch_size, s.loader_seconds, device)
                      for _ in range(s.repeats)], "images_per_s", keep=("cpu_ms_per_image",))
        dl["cpu_ms_per_image"] = min(r["cpu_ms_per_image"] for r in dl["runs"])
        out["cached"] = {
            "build_s": build_s, "build_runs_s": builds,
            "build_images_per_s": len(cache.files) / build_s,
            "build_cpu_ms_per_image": 1e3 * min(build_cpu) / len(cache.files),
            "build_over_naive_epoch": build_s / naive["epoch_s"], "to_device_s": to_device_s,
            "cache_mb": cache.images.nbytes / 2**20, "skipped": len(cache.skipped), **dl,
            "speedup_over_naive": ratio(dl["images_per_s"], naive["images_per_s"]),
            "cpu_speedup_over_naive": ratio(naive["cpu_ms_per_image"], dl["cpu_ms_per_image"]),
        }
        done()

        sections.start("train")
        train = run_train_variants(x, y, len(images.classes), s, device)
        out["train"] = {"variants": train, "config": "RunConfig() defaults at the bench image size",
                        "note": train_note(device)}
        done()
        del x, y

        sections.start("finetune")
        why = finetune_available()
        if why is not None:
            out["finetune"] = {"skipped": why}
        else:
            try:
                data = load_tuning_data(images.root, s.image_size, cache_dir=cache_dir,
                                        progress=False, images=images)
                out["finetune"] = bench_finetune(subset(data, s.finetune_images), s.image_size,
                                                 s.batch_size, device, work / "features")
            except Exception as e:  # noqa: BLE001 - a model being written elsewhere: report it
                log.exception("finetune measurement failed")
                out["finetune"] = {"error": f"{type(e).__name__}: {e}"}
        done()

        sections.start("ray")
        try:
            out["ray"] = bench_ray(work / "ray")
        except Exception as e:  # noqa: BLE001
            log.exception("ray measurement failed")
            out["ray"] = {"error": f"{type(e).__name__}: {e}"}
        done()

        sections.start("trials")
        try:
            small = synthetic_set(20, 40)  # the search bench's kind of set: trials of ~0.2 s
            out["trials"] = bench_trials(work / "trials", small, n_trials=s.trial_count)
            if not s.quick and "cold_start_s" in out["trials"]:
                out["trials"]["fresh_process"] = bench_trials(
                    work / "trials", small, n_trials=s.trial_count, fresh_process=True)
        except Exception as e:  # noqa: BLE001
            log.exception("trial start measurement failed")
            out["trials"] = {"error": f"{type(e).__name__}: {e}"}
        done()
        sections.start(None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["section_seconds"] = sections.seconds
    out["targets"] = targets(out, s.image_size)
    return out


def targets(out: dict[str, Any], image_size: int) -> dict[str, Any]:
    """The data-path targets of a :func:`run_throughput` result: {name: {value, met}}."""
    speed = out["cached"]["speedup_over_naive"]
    build_ratio = out["cached"]["build_over_naive_epoch"]
    out_targets = {
        f"cached >= {TARGET_SPEEDUP:g}x naive images/s ({image_size} px)":
            {"value": speed, "met": speed is not None and speed >= TARGET_SPEEDUP},
        f"cache build <= {TARGET_BUILD_RATIO:g}x one naive epoch":
            {"value": build_ratio, "met": build_ratio <= TARGET_BUILD_RATIO},
    }
    warm = out.get("trials", {}).get("warm_start_s")
    if warm is not None:
        out_targets[f"warm trial: slot free -> first epoch <= {TARGET_WARM_START_S:g} s (median)"] = \
            {"value": warm, "met": warm <= TARGET_WARM_START_S}
    return out_targets


TARGET_WARM_START_S = 1.0
