"""One training run without Ray: a config and a dataset -> a run folder.

The run folder holds ``config.yaml`` (the config, plus the dataset it trained on),
``split_manifest.json`` (the train/validation split), ``metrics.csv`` (one row per epoch),
``checkpoint.pt`` (the last epoch) and ``best.pt`` (the best epoch by val_acc).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import yaml

from .config import RunConfig

if TYPE_CHECKING:  # train imports torch: only where a run starts
    from .train import FitResult


def train_run(config: RunConfig | Mapping[str, Any] | None, data: str | Path, out: str | Path, *,
              device: str | None = None) -> FitResult:
    """Train ``config`` (a RunConfig, or a mapping ``RunConfig.from_dict`` takes; None: the
    defaults) on the dataset folder ``data``, writing the run folder ``out``.

    Returns ``inat_tune.train.FitResult`` (the per-epoch history and the best epoch). A bad
    config raises ConfigError and a bad dataset DatasetError, before any training.
    """
    from .data.pipeline import load_tuning_data
    from .train import fit

    if config is None:
        cfg = RunConfig()
    elif isinstance(config, RunConfig):
        cfg = config
    else:
        cfg = RunConfig.from_dict(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tuning = load_tuning_data(data, cfg.image_size, cfg.val_fraction, cfg.split_seed)
    (out / "config.yaml").write_text(yaml.safe_dump({**cfg.to_dict(), "data": str(Path(data).resolve())},
                                                    sort_keys=False))
    tuning.write_manifest(out / "split_manifest.json")
    print(f"training {cfg.model} on {len(tuning.train.labels)} images, validating on "
          f"{len(tuning.val.labels)} ({len(tuning.classes)} classes, {cfg.image_size}px); "
          f"writing to {out}")
    result = fit(cfg, tuning, device=device, out_dir=out)
    _write_csv(out / "metrics.csv", result.history)
    return result


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
