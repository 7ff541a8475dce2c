"""``inat-tune demo``: the whole pipeline on the embedded SYNTHETIC dataset, on a laptop CPU.

synth data -> TPE + ASHA sweep -> evaluate the best trial on the test set -> explain it ->
report. Each step calls the library function behind a command, and prints that command: the
one a user runs on the real dataset.
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
    """Run the five steps into ``out``; a second run continues (or just reports) the first
    sweep. Returns 0; a step's error propagates (the CLI prints user errors as one line)."""
    from .data.synth import make_synthetic
    from .evaluate import evaluate_experiment
    from .explain import explain_experiment
    from .report import write_report
    from .tune.runner import sweep

    out = Path(out).resolve()
    no_wandb = [] if use_wandb else ["--no-wandb"]
    print(BANNER)
    data = out / "synthetic_data"
    if not (data / "SYNTHETIC.txt").is_file():
        make_synthetic(data, per_class=80, val_per_class=20, image_size=48, seed=0)
    print(f"[1/5] synthetic dataset: {data}")
    name = "demo-sweep"
    exp = out / name
    space = demo_space()
    resume = (exp / "sweep.json").is_file()  # a second `make demo` continues the first
    _step(2, ["sweep", str(space), "--data", str(data), "--storage", str(out), "--name", name,
              "--num-samples", str(num_samples), "--max-concurrent", "2", *no_wandb,
              *(["--resume"] if resume else [])])
    sweep(space, data, name=name, storage=str(out), num_samples=num_samples, max_concurrent=2,
          use_wandb=use_wandb, resume=resume)
    _step(3, ["evaluate", str(exp), *no_wandb])
    evaluate_experiment(exp, use_wandb=use_wandb)
    _step(4, ["explain", str(exp)])
    explain_experiment(exp)
    _step(5, ["report", str(exp), *no_wandb])
    write_report([exp], use_wandb=use_wandb)
    print(BANNER.splitlines()[1])
    print(f"done: open {exp / 'report.html'} (SYNTHETIC data)")
    return 0


def _step(i: int, argv: list[str]) -> None:
    print(f"[{i}/5] inat-tune {' '.join(argv)}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="results/demo")
    raise SystemExit(run_demo(p.parse_args().out))
