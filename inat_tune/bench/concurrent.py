"""``inat-tune bench --concurrent N``: N trainings of the default scratch CNN at once on one
device, each in its own process (``multiprocessing`` spawn, no Ray: this runs where Ray is not
installed), against the same training alone.

Each process trains with :func:`.training.bench_train_step` (the train section's timed steps:
AdamW, cross-entropy, 4 pre-augmented batches of synthetic uint8 images already on the
device): fp32 on the CPU, bf16 autocast on CUDA where the GPU computes bf16 natively (else
fp32). Every process first runs a few untimed steps (first-call costs), then waits at a
barrier before each measurement, then runs the warm-up (4 steps) and the same fixed number of
timed steps, so the timed windows overlap; each reports its window's start and end on
``time.perf_counter`` (CLOCK_MONOTONIC on Linux: one clock for all processes).

Figures, for one run of N processes:

- per process: images / its own timed seconds;
- aggregate: all processes' images / the span from the first window's start to the last
  window's end (a lower bound: the windows' ragged edges count as time; ``overlap_fraction``,
  the time all N ran together over the span, says how ragged they were);
- alone: the same measurement with 1 process using all the cores (on CUDA: the whole GPU);
- ratio: aggregate / alone. Above 1 on a GPU means one training alone left the GPU idle (small
  kernels, launch gaps) and the others filled it; on a CPU the N processes split the cores
  (``cores // N`` torch threads each), so expect about 1 or less.

Without CUDA MPS (see README, "Running on a cluster") the GPU time-slices between the
processes' contexts; under MPS their kernels can run at the same time. ``mps_hint`` in the
result records whether an MPS control pipe was found, so runs with and without it can be told
apart. Imports no Ray.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
import traceback
from typing import Any, Callable

import numpy as np
import torch

from .environment import flop_fraction, peak_flops
from .options import MAX_CONCURRENT
from .training import bench_train_step, train_variants

NUM_CLASSES = 10
TARGET_RATIO = 1.5  # issue 13: 4 concurrent trainings >= 1.5x one alone (aggregate images/s) ...
TARGET_CASE = {"n": 4, "image_size": 64, "batch_size": 64, "device": "cuda"}  # ... in this case
BARRIER_TIMEOUT_S = 900.0  # the first wait also covers the slowest process's imports and data


class ConcurrentBenchError(RuntimeError):
    """A process of the concurrent measurement failed (its traceback is in the message)."""


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_process(n: int, cores: int | None = None) -> int:
    """Torch intra-op threads of each of ``n`` processes sharing ``cores``: cores // n, >= 1."""
    return max(1, (usable_cores() if cores is None else cores) // n)


def default_device() -> str:
    """cuda:0 where CUDA is available, else cpu (checked without creating a CUDA context)."""
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def mps_hint() -> str | None:
    """The CUDA MPS control pipe when one exists (a daemon was started with
    ``nvidia-cuda-mps-control -d``; a stale pipe of a killed daemon also counts), else None."""
    pipe = os.path.join(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"), "control")
    return pipe if os.path.exists(pipe) else None


def pick_variant(device: torch.device, name: str | None = None) -> dict[str, Any]:
    """The train-section variant each process runs: ``name`` if given, else fp32 on the CPU
    and bf16 (autocast) on a CUDA GPU that computes bf16 natively (fp32 on older GPUs)."""
    variants = {v["name"]: v for v in train_variants(device)}
    if name is None:
        name = "fp32"
        if device.type == "cuda":
            from ..train import native_bf16
            name = "bf16" if native_bf16(device) else "fp32"
    if name not in variants:
        raise ValueError(f"variant {name!r} is not measured on {device.type} "
                         f"(known: {', '.join(variants)})")
    return variants[name]


def timed_trainer(x: torch.Tensor, y: torch.Tensor, image_size: int, batch_size: int,
                  device: torch.device,
                  variant: dict[str, Any]) -> Callable[[int], tuple[float, float]]:
    """:func:`.training.step_timer` (the train section's timed step), as
    ``run(steps) -> (start, end)`` on ``time.perf_counter``.
    bench_train_step runs its warm-up and its timed steps in one call; here a barrier has to
    sit between the two, so the timed windows of all processes start together."""
    from .training import step_timer

    return step_timer(x, y, NUM_CLASSES, image_size, batch_size, device, variant)[1]


def _child(rank: int, device: str, image_size: int, batch_size: int, variant: str | None,
           threads: int, steps: int | None, seconds: float, steps_range: tuple[int, int],
           repeats: int, barrier, results) -> None:
    """One process: one bench_train_step (first-call costs; with ``steps`` None it also chooses
    them), a fresh :func:`timed_trainer` warmed up, then ``repeats`` x (barrier, timed steps).
    Puts ("ok", rank, payload) or ("error", rank, {"traceback", "broken_barrier"}) on
    ``results``."""
    try:
        torch.set_num_threads(threads)
        dev = torch.device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        v = pick_variant(dev, variant)
        from ..data.loader import to_device
        rng = np.random.default_rng(rank)
        n_images = 4 * batch_size  # 4 whole batches, as bench_train_step takes
        images = rng.integers(0, 256, (n_images, image_size, image_size, 3), dtype=np.uint8)
        x, y = to_device(images, np.arange(n_images) % NUM_CLASSES, dev)
        first = bench_train_step(x, y, NUM_CLASSES, image_size, batch_size, dev, v,
                                 seconds if steps is None else 0.0,
                                 steps_range if steps is None else (1, 1))
        steps = steps or first["steps"]
        run = timed_trainer(x, y, image_size, batch_size, dev, v)
        run(2)  # this model's warm-up, before the barrier
        runs = []
        for _ in range(repeats):
            barrier.wait(BARRIER_TIMEOUT_S)
            start, end = run(steps)
            images = steps * first["batch_size"]
            runs.append({"images": images, "steps": steps, "seconds": end - start,
                         "images_per_s": images / (end - start), "start": start, "end": end})
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        results.put(("ok", rank, {"runs": runs, "variant": v["name"], "device_name": name,
                                  "threads": torch.get_num_threads(), "pid": os.getpid(),
                                  "batch_size": first["batch_size"],
                                  "fwd_gflop_per_image": first["fwd_gflop_per_image"],
                                  "bench_train_step": first}))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises
        barrier.abort()  # the others stop waiting for this one
        broken = isinstance(e, threading.BrokenBarrierError)
        results.put(("error", rank, {"traceback": traceback.format_exc(), "broken_barrier": broken}))


def _launch(n: int, *, device: str, image_size: int, batch_size: int, variant: str | None,
            threads: int, steps: int | None, seconds: float, steps_range: tuple[int, int],
            repeats: int) -> list[dict[str, Any]]:
    """Start ``n`` spawned processes running :func:`_child` together; their payloads by rank.
    A process that fails (or dies) breaks the barrier, the others stop, and this raises
    :class:`ConcurrentBenchError` with the first real failure (not a broken barrier)."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [ctx.Process(target=_child, daemon=False, name=f"inat-tune-bench-concurrent-{rank}",
                         args=(rank, device, image_size, batch_size, variant, threads, steps,
                               seconds, steps_range, repeats, barrier, results))
             for rank in range(n)]
    got: dict[int, dict[str, Any]] = {}
    errors: dict[int, dict[str, Any]] = {}
    try:
        for p in procs:
            p.start()
        while len(got) + len(errors) < n:
            try:
                kind, rank, payload = results.get(timeout=1.0)
            except queue.Empty:
                dead = [r for r, p in enumerate(procs)
                        if r not in got and r not in errors and p.exitcode is not None]
                if dead:  # a message sent just before exiting is read first
                    try:
                        kind, rank, payload = results.get(timeout=2.0)
                    except queue.Empty:
                        r = dead[0]
                        errors[r] = {"traceback": f"exited with code {procs[r].exitcode} without "
                                     "a result (killed? out of memory?)", "broken_barrier": False}
                        barrier.abort()
                        continue
                else:
                    continue
            (got if kind == "ok" else errors)[rank] = payload
    finally:
        if len(got) < n:
            barrier.abort()
            for p in procs:
                if p.is_alive():
                    p.terminate()
        for p in procs:
            p.join(timeout=60)
    if errors:
        rank, err = min(errors.items(), key=lambda kv: (kv[1]["broken_barrier"], kv[0]))
        raise ConcurrentBenchError(f"process {rank} of {n} ({device}) failed:\n"
                                   f"{err['traceback'].rstrip()}")
    return [got[r] for r in range(n)]


def window_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one measurement of processes running together, from each process's
    ``images``, ``seconds``, ``start`` and ``end`` (one clock): aggregate images/s = total
    images / span (first start to last end), the overlap of all windows and its share of the
    span, the per-process images/s and their sum (>= the aggregate: each window <= the span)."""
    t0, t1 = min(r["start"] for r in runs), max(r["end"] for r in runs)
    span = t1 - t0
    overlap = max(0.0, min(r["end"] for r in runs) - max(r["start"] for r in runs))
    total = sum(r["images"] for r in runs)
    per = [{"images": r["images"], "seconds": r["seconds"],
            "images_per_s": r["images"] / r["seconds"],
            "start_s": r["start"] - t0, "end_s": r["end"] - t0} for r in runs]
    return {"processes": len(runs), "total_images": total, "span_s": span,
            "aggregate_images_per_s": total / span, "overlap_s": overlap,
            "overlap_fraction": overlap / span,
            "sum_per_process_images_per_s": sum(p["images_per_s"] for p in per),
            "per_process": per}


def bench_concurrent(n: int, image_size: int, batch_size: int = 64, device: str | None = None,
                     seconds: float = 4.0, steps: int | None = None,
                     steps_range: tuple[int, int] = (5, 200), repeats: int = 1,
                     variant: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train the default scratch CNN in ``n`` processes at once on ``device`` (default cuda:0,
    else cpu), and in 1 process alone, for the same fixed number of timed steps after warm-up.

    ``steps`` None: the alone run chooses them to last about ``seconds`` (within
    ``steps_range``) and the concurrent run repeats them. Each measurement runs ``repeats``
    times in the same processes; the best (highest images/s) is reported, all kept under
    ``runs``. Returns the settings, ``alone``, ``concurrent`` (see :func:`window_summary`),
    ``ratio`` (aggregate / alone), ``section_seconds`` and ``note``; raises
    :class:`ConcurrentBenchError` when a process fails."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CONCURRENT:
        raise ValueError(f"n={n!r}: expected a whole number of processes, 1 to {MAX_CONCURRENT}")
    device = str(device or default_device())
    dev_type = torch.device(device).type
    known = {v["name"] for v in train_variants(torch.device(device))}
    if variant is not None and variant not in known:
        raise ValueError(f"variant {variant!r} is not measured on {dev_type}")
    cores = usable_cores()
    common = dict(device=device, image_size=image_size, batch_size=batch_size, variant=variant,
                  seconds=seconds, steps_range=tuple(steps_range), repeats=repeats)
    section_seconds: dict[str, float] = {}

    def say(text: str) -> None:
        if progress:
            print(f"[bench] {text} ...", flush=True)

    say(f"concurrent: 1 process alone ({threads_per_process(1, cores)} torch threads, {device})")
    t = time.perf_counter()
    alone_payload = _launch(1, threads=threads_per_process(1, cores), steps=steps, **common)[0]
    section_seconds["alone"] = time.perf_counter() - t
    alone_runs = alone_payload["runs"]
    steps = alone_runs[0]["steps"]
    alone = max(alone_runs, key=lambda r: r["images_per_s"])

    say(f"concurrent: {n} processes at once ({threads_per_process(n, cores)} torch threads each, "
        f"{steps} timed steps each)")
    t = time.perf_counter()
    payloads = _launch(n, threads=threads_per_process(n, cores), steps=steps, **common)
    section_seconds[f"concurrent x{n}"] = time.perf_counter() - t
    windows = [window_summary([p["runs"][i] for p in payloads]) for i in range(repeats)]
    best = max(windows, key=lambda w: w["aggregate_images_per_s"])

    name = alone_payload["device_name"]
    peak = peak_flops(name) if dev_type == "cuda" else None
    gflop = alone_payload["fwd_gflop_per_image"]
    first = alone_payload["bench_train_step"]
    return {
        "n": n, "device": dev_type, "device_name": name, "variant": alone_payload["variant"],
        "image_size": image_size, "batch_size": alone_payload["batch_size"], "steps": steps,
        "images_per_process": alone["images"], "cores": cores,
        "threads_alone": alone_payload["threads"], "threads_per_process": payloads[0]["threads"],
        "repeats": repeats, "mps_hint": mps_hint() if dev_type == "cuda" else None,
        "alone": {"images_per_s": alone["images_per_s"], "images": alone["images"],
                  "seconds": alone["seconds"], "fwd_gflop_per_image": gflop,
                  "peak_fraction": flop_fraction(gflop * 1e9, alone["images_per_s"], peak),
                  "runs_images_per_s": [r["images_per_s"] for r in alone_runs],
                  # the train section's own measurement in the same process (it chose the steps)
                  "bench_train_step_images_per_s": first["images_per_s"]},
        "concurrent": {**best, "peak_fraction": flop_fraction(gflop * 1e9,
                                                              best["aggregate_images_per_s"], peak),
                       "runs_aggregate_images_per_s": [w["aggregate_images_per_s"] for w in windows],
                       "runs": windows},
        "ratio": best["aggregate_images_per_s"] / alone["images_per_s"],
        "section_seconds": section_seconds,
        "clock": "time.perf_counter in every process (CLOCK_MONOTONIC on Linux)",
        "note": (f"{n} processes on one GPU: ratio > 1 means one training alone left it idle; "
                 f"MPS {'control pipe found' if mps_hint() else 'not running (time-slicing)'}"
                 if dev_type == "cuda" else
                 f"CPU: the {n} processes split {cores} cores ({payloads[0]['threads']} torch "
                 "threads each, the one alone gets all): no idle device to fill, expect a ratio "
                 "of about 1 or less"),
    }


def concurrent_targets(res: dict[str, Any]) -> dict[str, Any]:
    """Issue 13's target when ``res`` (:func:`bench_concurrent`) is its case (4 processes, CUDA,
    64 px, batch 64): {name: {value, met}}; else {}."""
    case = {"n": res["n"], "image_size": res["image_size"], "batch_size": res["batch_size"],
            "device": res["device"]}
    if case != TARGET_CASE:
        return {}
    return {f"4 concurrent trainings >= {TARGET_RATIO:g}x one alone (aggregate images/s, CUDA, "
            "64 px, batch 64)": {"value": res["ratio"], "met": res["ratio"] >= TARGET_RATIO}}


def _n(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def format_concurrent(result: dict[str, Any]) -> str:
    """The rows printed under :func:`.report.format_table`'s header for a bench result holding
    ``concurrent`` (a :func:`bench_concurrent` result): figures, targets, seconds."""
    res = result["concurrent"]
    c, a, n = res["concurrent"], res["alone"], res["n"]

    def spread(vs: list[float]) -> str:
        return f"  [runs {_n(min(vs))} .. {_n(max(vs))}, n={len(vs)}]" if len(vs) > 1 else ""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1%}"

    rows = [
        ("concurrent", "device / precision / image size / batch",
         f"{res['device_name']} / {res['variant']} / {res['image_size']} px / {res['batch_size']}"),
        ("concurrent", "timed steps per process",
         f"{res['steps']} ({res['images_per_process']} images)"),
        ("concurrent", "torch threads: alone / each of N",
         f"{res['threads_alone']} / {res['threads_per_process']} ({res['cores']} cores)"),
        ("concurrent", "1 alone: images/s", _n(a["images_per_s"]) + spread(a["runs_images_per_s"])),
        ("concurrent", f"{n} at once: aggregate images/s",
         f"{_n(c['aggregate_images_per_s'])}  ({c['total_images']} images in {c['span_s']:.3g} s; "
         f"all {n} ran together {c['overlap_fraction']:.0%} of it)"
         + spread(c["runs_aggregate_images_per_s"])),
        ("concurrent", f"{n} at once: per process images/s",
         " / ".join(_n(p["images_per_s"]) for p in c["per_process"])),
        ("concurrent", "aggregate / alone", f"{res['ratio']:.2f}x"),
    ]
    if res["device"] == "cuda":
        rows.append(("concurrent", "peak fraction: alone / aggregate",
                     f"{pct(a['peak_fraction'])} / {pct(c['peak_fraction'])}"))
    rows.append(("concurrent", "note", res["note"]))
    if c["overlap_fraction"] < 0.5:
        rows.append(("concurrent", "WARNING", f"the {n} timed windows overlapped for only "
                     f"{c['overlap_fraction']:.0%} of the span (a busy machine?): the aggregate "
                     "is far below what running together gives; rerun with more timed steps"))
    for name, t in result.get("targets", {}).items():
        rows.append(("target", name, f"{t['value']:.2f}x -> {'met' if t['met'] else 'MISSED'}"))
    w = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{x:<{w[0]}}  {y:<{w[1]}}  {z}" for x, y, z in rows]
    lines.append("\nseconds per section (processes started included): " + ", ".join(
        f"{k} {v:.1f}" for k, v in res["section_seconds"].items()))
    return "\n".join(lines)
