"""The bench's output: the printed table of a result and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .environment import busy_machine


def _f(v: Any, unit: str = "", digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        text = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.{digits}g}"
        return f"{text}{unit}"
    return f"{v}{unit}"


def _peak_text(fraction: float | None, device: str, source: str | None = None) -> str:
    if device != "cuda":
        return "n/a on CPU"
    if fraction is None:
        return "unknown GPU"
    return f"{fraction:.1%}" + (f" of {source}" if source else "")


def _spread(values: list[float], unit: str = "") -> str:
    if len(values) < 2:
        return ""
    return f"  [runs {_f(min(values), unit)} .. {_f(max(values), unit)}, n={len(values)}]"


def format_table(res: dict[str, Any]) -> str:
    """The human-readable table of a bench result (``run_bench``'s JSON): header lines, one
    row per figure (section, what, value), then the seconds each section took."""
    m = res["machine"]
    mode = ("best of each measurement's repeats; "
            if res.get("settings", {}).get("repeats", 1) > 1 and "search" not in res else "")
    lines = [f"command : {res['command']}", f"date    : {res['date']}  ({mode}see JSON for all runs)",
             f"machine : {m['cpu']}, {m['usable_cores']} cores, torch {m['torch']}, "
             f"torchvision {m['torchvision']}, device {m['device_name']}, "
             f"load average {_f(m['load_average'][0] if m['load_average'] else None)}"]
    if busy_machine(m):
        lines.append(f"WARNING : the machine was busy (load average {m['load_average'][0]:.1f} on "
                     f"{m['usable_cores']} cores): every figure is a lower bound, and torch's "
                     "intra-op threads suffer most (OMP_WAIT_POLICY=PASSIVE limits that)")
    rows: list[tuple[str, str, str]] = []

    def add(section: str, what: str, value: str) -> None:
        rows.append((section, what, value))

    if "dataset" in res:
        d = res["dataset"]
        add("data", "train images", f"{d['train_images']} ({'synthetic, ' if d['synthetic'] else ''}"
            f"mean {d['mean_width']:.0f}x{d['mean_height']:.0f} px, {d['mean_kb']:.0f} kB)")
    if "naive" in res:
        n, c = res["naive"], res["cached"]
        add("naive", "images/s (first batch excluded)",
            _f(n["images_per_s"]) + _spread([r["images_per_s"] for r in n["runs"]]))
        add("naive", "one epoch" + ("" if n["epoch_measured"] else " (extrapolated)"),
            _f(n["epoch_s"], " s") + _spread([r["epoch_s"] for r in n["runs"]], " s"))
        add("naive", "CPU ms per image (workers included)", _f(n["cpu_ms_per_image"]))
        add("naive", "workers / batch", f"{n['workers']} / {n['batch_size']}")
        add("cached", "cache build (once)", _f(c["build_s"], " s") + _spread(c["build_runs_s"], " s"))
        add("cached", "build / naive epoch", _f(c["build_over_naive_epoch"], "x"))
        add("cached", "build CPU ms per image", _f(c["build_cpu_ms_per_image"]))
        add("cached", "device loader images/s (augmented)",
            _f(c["images_per_s"]) + _spread([r["images_per_s"] for r in c["runs"]]))
        add("cached", "device loader CPU ms per image", _f(c["cpu_ms_per_image"]))
        add("cached", "speed-up over naive (images/s)", _f(c["speedup_over_naive"], "x"))
        add("cached", "speed-up over naive (CPU time per image)", _f(c["cpu_speedup_over_naive"], "x"))
    for v in res.get("train", {}).get("variants", []):
        if "error" in v:
            add("train", f"scratch CNN {v['name']}", f"FAILED: {v['error']}")
            continue
        frac = v["peak_fraction"]
        add("train", f"scratch CNN {v['name']} images/s", f"{_f(v['images_per_s'])}  "
            f"({_f(v['achieved_tflops'], ' TFLOP/s')}, peak fraction "
            f"{_peak_text(frac, res['machine']['device'], res['machine'].get('peak_source'))})"
            + _spread(v["runs_images_per_s"]))
    if res.get("train", {}).get("note"):
        add("train", "note", res["train"]["note"])
    ft = res.get("finetune")
    if ft is not None:
        if "skipped" in ft or "error" in ft:
            add("finetune", "skipped", ft.get("skipped") or ft.get("error"))
        else:
            for k in ("without_cache", "with_cache", "with_cache_later_trial"):
                add("finetune", f"ResNet50 head-only, {k.replace('_', ' ')}",
                    f"epoch {_f(ft[k]['epoch_s'], ' s')}, fit wall {_f(ft[k]['fit_wall_s'], ' s')}")
            add("finetune", "epoch speed-up from the feature cache", _f(ft["epoch_speedup"], "x"))
            add("finetune", "1-epoch fit speed-up, first / later trial",
                f"{_f(ft['first_trial_wall_speedup'], 'x')} / {_f(ft['later_trial_wall_speedup'], 'x')}")
    ray = res.get("ray")
    if ray is not None:
        if "skipped" in ray or "error" in ray:
            add("ray", "skipped", ray.get("skipped") or ray.get("error"))
        else:
            add("ray", "ray.init", _f(ray["ray_init_s"], " s"))
            add("ray", "Tuner.fit -> trial running", _f(ray["launch_s"], " s"))
            add("ray", "trial start -> first epoch at driver", _f(ray["trial_start_to_first_report_s"], " s"))
    tr = res.get("trials")
    if tr is not None:
        if "skipped" in tr or "error" in tr:
            add("trials", "skipped", tr.get("skipped") or tr.get("error"))
        else:
            for label, t in (("warm (reused processes)", tr), ("--fresh-process", tr.get("fresh_process"))):
                if isinstance(t, dict) and "cold_start_s" in t:
                    add("trials", f"{label}: slot free -> first epoch, cold / warm (median)",
                        f"{_f(t['cold_start_s'], ' s')} / {_f(t['warm_start_s'], ' s')} "
                        f"({t['cold_trials']} cold, {t['warm_trials']} warm; sweep of {t['n_trials']} "
                        f"trials {_f(t['sweep_wall_s'], ' s')})")
    sr = res.get("search")
    if sr is not None:
        if "skipped" in sr:
            add("search", "skipped", sr["skipped"])
        else:
            for k in ("tpe_asha", "random"):
                r = sr[k]
                add("search", f"{k}: epochs / trial-seconds / sweep wall / best val_acc",
                    f"{r['epochs']} / {_f(r['trial_seconds'], ' s')} / {_f(r['wall_s'], ' s')} / "
                    f"{_f(r['best_val_acc'])}")
            c = sr["comparison"]
            add("search", "TPE+ASHA epochs to random's best",
                f"{_f(c['tpe_asha_epochs_to_random_best'])} of random's {c['random_epochs']}")
    for name, t in res.get("targets", {}).items():
        add("target", name, f"{_f(t['value'])} -> {'met' if t['met'] else 'MISSED'}")
    w = [max(len(r[i]) for r in rows) for i in range(2)] if rows else [0, 0]
    lines += [""] + [f"{a:<{w[0]}}  {b:<{w[1]}}  {c}" for a, b, c in rows]
    if res.get("section_seconds"):
        lines.append("\nseconds per section: " + ", ".join(
            f"{k} {v:.1f}" for k, v in res["section_seconds"].items()))
    return "\n".join(lines)


def write_json(res: dict[str, Any], path: str | Path) -> Path:
    """Write ``res`` to ``path`` (its folder created), values JSON cannot hold as text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, default=str))
    return path
