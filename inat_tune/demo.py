"""``inat-tune demo``: the whole pipeline on the embedded SYNTHETIC dataset, on a laptop CPU.

synth data -> TPE + ASHA sweep -> evaluate the best trial on the test set -> explain it ->
report. Every step is the same command a user runs on the real dataset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

BANNER = """\
==============================================================================
 inat-tune demo on a SYNTHETIC dataset (generated shapes, not photographs).
 Accuracies below say nothing about iNaturalist-12K; for the real data run
 `inat-tune data download` and point --data at data/inaturalist_12K.
=============================================================================="""


def demo_space() -> Path:
    """search_spaces/demo.yaml of the source tree (installed editable) or of the cwd."""
    for base in (Path(__file__).resolve().parent.parent, Path.cwd()):
        p = base / "search_spaces" / "demo.yaml"
        if p.is_file():
            return p
    raise FileNotFoundError("search_spaces/demo.yaml not found: run the demo from the repository root")


def run_demo(out: str | Path = "results/demo", num_samples: int = 8, use_wandb: bool = True) -> int:
    from .cli import main
    from .data.synth import make_synthetic

    out = Path(out).resolve()
    print(BANNER)
    data = out / "synthetic_data"
    if not (data / "SYNTHETIC.txt").is_file():
        make_synthetic(data, per_class=80, val_per_class=20, image_size=48, seed=0)
    print(f"[1/5] synthetic dataset: {data}")
    name = "demo-sweep"
    exp = out / name
    sweep = ["sweep", str(demo_space()), "--data", str(data), "--storage", str(out), "--name", name,
             "--num-samples", str(num_samples), "--max-concurrent", "2"]
    if not use_wandb:
        sweep.append("--no-wandb")
    if (exp / "sweep.json").is_file():
        sweep.append("--resume")  # a second `make demo` continues (or just reports) the first
    print(f"[2/5] inat-tune {' '.join(sweep)}")
    rc = main(sweep)
    if rc:
        return rc
    for i, cmd in enumerate((["evaluate", str(exp)], ["explain", str(exp)], ["report", str(exp)]), start=3):
        print(f"[{i}/5] inat-tune {' '.join(cmd)}")
        rc = main(cmd + ([] if use_wandb or cmd[0] == "explain" else ["--no-wandb"]))
        if rc:
            return rc
    print(BANNER.splitlines()[1])
    print(f"done: open {exp / 'report.html'} (SYNTHETIC data)")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="results/demo")
    raise SystemExit(run_demo(p.parse_args().out))
