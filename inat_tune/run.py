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

from .config import ConfigError, RunConfig

if TYPE_CHECKING:  # train imports torch: only where a run starts
    from .train import FitResult


RUN_FILES = ("config.yaml", "split_manifest.json", "metrics.csv", "checkpoint.pt", "best.pt")


def train_run(config: RunConfig | Mapping[str, Any] | None, data: str | Path, out: str | Path, *,
              device: str | None = None, resume: bool = False, overwrite: bool = False) -> FitResult:
    """Train ``config`` (a RunConfig, or a mapping ``RunConfig.from_dict`` takes; None: the
    defaults) on the dataset folder ``data``, writing the run folder ``out``.

    An ``out`` that already holds a run is refused unless ``resume`` (continue from its
    ``checkpoint.pt``, with its saved config) or ``overwrite`` (replace it). Everything is
    checked before anything is written: a bad config raises ConfigError, a bad dataset
    DatasetError, unusable weights WeightsError. Returns ``inat_tune.train.FitResult``.
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
    existing = [n for n in RUN_FILES if (out / n).exists()]
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder")
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite: choose one")
    checkpoint = out / "checkpoint.pt"
    if resume and not checkpoint.is_file():
        raise ConfigError(f"--resume: {out} has no checkpoint.pt to continue from")
    if existing and not (resume or overwrite):
        raise ConfigError(f"--out {out} already holds a run ({', '.join(existing)}); --resume "
                          "continues it, --overwrite replaces it, or choose another --out")
    _check_weights(cfg)
    tuning = load_tuning_data(data, cfg.image_size, cfg.val_fraction, cfg.split_seed)  # checks data
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump({**cfg.to_dict(), "data": str(Path(data).resolve())},
                                                    sort_keys=False))
    tuning.write_manifest(out / "split_manifest.json")
    print(f"training {cfg.model} on {len(tuning.train.labels)} images, validating on "
          f"{len(tuning.val.labels)} ({len(tuning.classes)} classes, {cfg.image_size}px); "
          f"writing to {out}")
    result = fit(cfg, tuning, device=device, out_dir=out, resume=checkpoint if resume else None)
    _write_csv(out / "metrics.csv", result.history)
    return result


def _check_weights(cfg: RunConfig) -> None:
    """A local weights file is read (and its keys checked) before anything is written."""
    if cfg.model == "finetune" and cfg.weights not in ("imagenet", "none"):
        from .models.backbones import build_net, get_backbone
        from .models.weights import load_backbone_state, resolve_weights

        spec = get_backbone(cfg.backbone)
        state, source = resolve_weights(spec, cfg.weights)
        load_backbone_state(build_net(spec, cfg.image_size), spec, state, source)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
