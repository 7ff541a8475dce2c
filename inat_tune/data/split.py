"""The stratified tuning split of train/ and its manifest.

val/ is the test set and never takes part: the tuning validation set is a stratified share of
train/, fixed by a seed and written as a manifest of relative paths next to each experiment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Split:
    train: tuple[int, ...]  # indices into the train/ file list
    val: tuple[int, ...]


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> Split:
    """Hold out ``round(n_c * val_fraction)`` images of every class c (at least 1 when n_c >= 2).

    Deterministic for (labels, val_fraction, seed); each class is shuffled with its own
    generator so adding a class does not reshuffle the others.
    """
    labels_arr = np.asarray(labels)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for c in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == c)
        rng = np.random.default_rng([seed, int(c)])
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val_idx.extend(idx[:n_val].tolist())
        train_idx.extend(idx[n_val:].tolist())
    return Split(train=tuple(sorted(train_idx)), val=tuple(sorted(val_idx)))


def write_manifest(path: str | Path, *, classes: Sequence[str], train: Sequence[str],
                   val: Sequence[str], val_fraction: float, seed: int,
                   skipped: Sequence[tuple[str, str]] = ()) -> Path:
    """Write the split as JSON of relative paths (the experiment's record of what it saw)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "classes": list(classes),
        "val_fraction": val_fraction,
        "seed": seed,
        "train": list(train),
        "val": list(val),
        "skipped": [{"file": f, "reason": r} for f, r in skipped],
        "note": "val = tuning validation split of train/; the dataset's val/ folder is the test set",
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)
    return path


def read_manifest(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
