"""How much memory a node spends on data when several trials run on it (issue 13, item 6).

Generates an iNaturalist-sized set (10 classes x 1,000 train images, drawn at 224 px), runs a
real sweep of 4 concurrent trials (--cpus-per-trial 0.5, no W&B) at 224 px on it, and while
they train samples every trial process's memory from /proc/<pid>/smaps_rollup: private
(USS: this process's own pages) and PSS (shared pages split between the processes mapping
them). The decode cache is a memory map shared by every trial, so it shows up in PSS once,
not in each USS. Stops the sweep after ``--seconds`` of training (the trials need not finish:
the data is loaded before the first batch).

    .venv/bin/python scripts/node_memory.py [--seconds 60] [--out /tmp/node_memory]

Run it with PYTHONPATH pointing at another checkout to measure that version (Ray's local
workers inherit the driver's environment).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path


def smaps(pid: int) -> dict[str, int]:
    """kB fields of /proc/<pid>/smaps_rollup (Rss, Pss, Private_*, Shared_*)."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            m = re.match(r"(\w+):\s+(\d+) kB", line)
            if m:
                out[m.group(1)] = int(m.group(2))
    return out


def trial_pids() -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::ImplicitFunc"):  # a function trainable's worker
            pids.append(int(p.name))
    return pids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/node_memory")
    ap.add_argument("--seconds", type=float, default=60.0, help="of sampling once 4 trials run")
    ap.add_argument("--per-class", type=int, default=1000)
    args = ap.parse_args()
    out = Path(args.out)
    data = out / f"inat-sized-{args.per_class}pc"
    if not (data / "train").is_dir():
        from inat_tune.data.synth import make_synthetic
        t0 = time.time()
        make_synthetic(data, per_class=args.per_class, val_per_class=10, image_size=224, seed=0)
        print(f"generated {args.per_class * 10} images in {time.time() - t0:.0f} s", flush=True)
    space = {"model": "scratch_cnn", "method": "random", "metric": {"name": "val_acc", "goal": "maximize"},
             "parameters": {"image_size": {"value": 224}, "filters": {"value": 4}, "dense": {"value": 8},
                            "batch_size": {"value": 32}, "epochs": {"value": 1}, "augment": {"value": True},
                            "lr": {"values": [0.01, 0.003, 0.001, 0.0003]}}}
    (out / "space.json").write_text(json.dumps(space))
    env = {**os.environ, "INAT_TUNE_CACHE": str(out / "cache"), "OMP_NUM_THREADS": "1"}
    code = ("import json, sys; from inat_tune import sweep; "
            f"sweep(json.load(open({str(out / 'space.json')!r})), {str(data)!r}, name='mem-' + str(int(__import__('time').time())), "
            f"storage={str(out / 'results')!r}, num_samples=4, cpus_per_trial=0.5, max_concurrent=4, use_wandb=False)")
    import inat_tune
    print("inat_tune from", Path(inat_tune.__file__).parent, flush=True)
    driver = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    samples = []
    t_four = None
    t0 = time.time()
    try:
        while driver.poll() is None and time.time() - t0 < 1800:
            pids = trial_pids()
            rows = []
            for pid in pids:
                try:
                    s = smaps(pid)
                except OSError:
                    continue
                rows.append({"pid": pid, "rss_mb": s.get("Rss", 0) / 1024, "pss_mb": s.get("Pss", 0) / 1024,
                             "uss_mb": (s.get("Private_Clean", 0) + s.get("Private_Dirty", 0)) / 1024})
            if len(rows) >= 4 and t_four is None:
                t_four = time.time()
            if rows:
                samples.append({"t": time.time() - t0, "procs": rows,
                                "uss_mb": sum(r["uss_mb"] for r in rows), "pss_mb": sum(r["pss_mb"] for r in rows),
                                "rss_mb": sum(r["rss_mb"] for r in rows)})
            if t_four is not None and time.time() - t_four > args.seconds:
                break
            time.sleep(2)
    finally:
        driver.terminate()
        try:
            driver.wait(30)
        except subprocess.TimeoutExpired:
            driver.kill()
        subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)
    four = [s for s in samples if len(s["procs"]) >= 4]
    cache_mb = sum(f.stat().st_size for f in (out / "cache").rglob("images.u8")) / 2**20
    split_mb = 10 * args.per_class * 224 * 224 * 3 / 2**20
    res = {"version": str(Path(inat_tune.__file__).parent), "trials_running": 4,
           "images": 10 * args.per_class, "image_size": 224,
           "one_split_copy_mb": split_mb, "cache_files_mb": cache_mb,
           "max_sum_uss_mb": max((s["uss_mb"] for s in four), default=None),
           "max_sum_pss_mb": max((s["pss_mb"] for s in four), default=None),
           "max_sum_rss_mb": max((s["rss_mb"] for s in four), default=None),
           "max_uss_per_trial_mb": max((r["uss_mb"] for s in four for r in s["procs"]), default=None),
           "samples_with_4": len(four)}
    print(json.dumps(res, indent=1))
    (out / f"node_memory-{int(time.time())}.json").write_text(json.dumps({**res, "samples": samples}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
