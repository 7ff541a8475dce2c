"""``inat-tune bench``: measure where the speed comes from, on one machine, in one run.

Default mode (the same files, the same cores, the same batch size for every line;
:mod:`.throughput` runs them):

1. naive      ImageFolder + per-image torchvision transforms + DataLoader(num_workers=cores):
              images/s delivered to the device and the wall time of one epoch (:mod:`.data_path`).
2. cached     the one-time decode-cache build against one naive epoch, and DeviceLoader's
              batched augmentation over the cache on the device: images/s and the speed-up
              over naive (:mod:`.data_path`).
3. train      the default scratch CNN trained for a fixed number of steps after warm-up:
              images/s and, on CUDA, the fraction of the GPU's bf16 dense peak, for fp32 / bf16 /
              + channels_last / + torch.compile (CPU: fp32) (:mod:`.training`).
4. finetune   one epoch of fit() for a head-only ResNet50 with and without the frozen-feature
              cache (:mod:`.finetune`).
5. ray        ray.init seconds, and a 1-trial Ray Tune run: trial start -> first reported epoch
              (:mod:`.ray_overhead`).

``search=True`` (``--search``): TPE + ASHA against random search with every trial run to full
epochs, on a fixed small synthetic dataset with equal numbers of trials, through the real sweep
machinery (:mod:`.search`).

``concurrent=N`` (``--concurrent N``): the default scratch CNN trained in N processes at once on
one device (spawned, no Ray) against one alone: per-process and aggregate images/s and their
ratio (:mod:`.concurrent`); only that is measured.

Without ``data`` the photos are generated (``inat_tune.data.synth`` at a nominal 600 px:
450-960 px sides, JPEG quality 90, about 170 kB each, like iNaturalist photos) and kept in the
temporary folder for the next run, so decoding costs what it costs in real use
(:mod:`.datasets`). Ray is imported only by the sections that need it: everything else runs
where Ray is not installed.

Timed measurements are repeated (3x; 1x with ``quick``) and the best run is reported, every
run kept in the JSON; CPU-seconds per image (worker processes included) are reported next to
images/s because they hardly depend on what else the machine runs. On a CPU shared with other
jobs, OpenMP's spinning threads slow the torch sections several-fold: run with
``OMP_WAIT_POLICY=PASSIVE`` there (the command line printed with the results shows it,
:mod:`.environment`). Benchmarks are commands, not timed tests; results that matter go to
results/BENCHMARKS.md with the command that produced them. The table and the JSON are written
by :mod:`.report`.

From Python::

    from inat_tune.bench import BenchOptions, bench, run_bench
    res = bench(image_size=32, quick=True)        # prints the table, returns the result
    run_bench(BenchOptions(search=True, json_path="search.json"))  # what the CLI calls
    bench(concurrent=4, image_size=64)            # 4 trainings at once against one alone
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from .concurrent import bench_concurrent, concurrent_targets, format_concurrent
from .environment import command_line, flop_fraction, load_average, machine_info, peak_flops
from .options import BenchOptions, BenchSettings
from .report import format_table, write_json
from .search import bench_search, epochs_to_reach, search_targets, summarize_sweep
from .throughput import run_throughput

__all__ = ["BenchOptions", "BenchSettings", "bench", "run_bench", "collect", "format_table",
           "bench_search", "run_throughput", "summarize_sweep", "epochs_to_reach", "peak_flops",
           "flop_fraction", "bench_concurrent"]


def collect(options: BenchOptions) -> dict[str, Any]:
    """Run the measurements ``options`` ask for and return the result (what the JSON holds):
    date, command, argv, machine, settings, the sections' results, targets and total_s.
    Prints only the progress lines of the sections. With ``options.json_path`` the JSON is
    written after each section too (``"partial": true`` until the end), so a run that dies
    keeps what it measured."""
    s = BenchSettings.from_options(options)
    res: dict[str, Any] = {
        "date": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "command": command_line(options), "argv": list(sys.argv),
        "machine": machine_info(), "settings": asdict(s),
    }
    t0 = time.perf_counter()
    if options.concurrent is not None:
        # environment.command_line does not know the flag: it follows "bench" here
        res["command"] = res["command"].replace("inat-tune bench",
                                                f"inat-tune bench --concurrent {s.concurrent}", 1)
        cr = bench_concurrent(s.concurrent, s.image_size, s.batch_size, seconds=s.train_seconds,
                              steps_range=s.train_steps, repeats=s.repeats)
        res["concurrent"] = cr
        if concurrent_targets(cr):
            res["targets"] = concurrent_targets(cr)
    elif options.search:
        sr = bench_search(s)
        res["search"] = sr
        if "comparison" in sr:
            res["targets"] = search_targets(sr)
    else:
        def emit(partial: dict[str, Any]) -> None:
            if options.json_path:
                write_json({**res, **partial, "partial": True,
                            "total_s": time.perf_counter() - t0}, options.json_path)
        res.update(run_throughput(s, emit=emit))
    res["total_s"] = time.perf_counter() - t0
    res["machine"]["load_average_end"] = load_average()
    return res


def _run(options: BenchOptions) -> dict[str, Any]:
    res = collect(options)
    print()
    if "concurrent" in res:  # the header of format_table, then the section's own rows
        print(format_table({k: v for k, v in res.items() if k != "targets"}))
        print(format_concurrent(res))
    else:
        print(format_table(res))
    if options.json_path:
        path = write_json(res, options.json_path)
        print(f"\nwrote {path}")
    return res


def run_bench(options: BenchOptions) -> int:
    """``inat-tune bench``: run the measurements, print the table, write the JSON if
    ``options.json_path`` is set; returns the exit status (0)."""
    _run(options)
    return 0


def bench(**options: Any) -> dict[str, Any]:
    """:func:`run_bench` with keyword options (those of :class:`BenchOptions`; an unknown one
    raises ConfigError), returning the result instead of an exit status."""
    return _run(BenchOptions.from_dict(options))
