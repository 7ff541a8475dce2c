"""The bench's datasets: generated photo-sized JPEGs kept in the temporary folder, and what a
dataset's training files look like."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PHOTO_SIZE = 600  # nominal side of the generated photos (synth draws 0.75-1.6 x this)


def bench_root() -> Path:
    """Where the bench keeps generated sets (reused by later runs) and its scratch folders."""
    return Path(tempfile.gettempdir()) / "inat_tune_bench"


def synthetic_set(per_class: int, image_size: int, seed: int = 0) -> Path:
    """A generated dataset kept under the temporary folder (built once, then reused)."""
    from ..data.synth import make_synthetic

    out = bench_root() / f"synth-{per_class}pc-{image_size}px-seed{seed}"
    if (out / "train").is_dir() and (out / "val").is_dir():
        return out
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    t0 = time.perf_counter()
    print(f"[bench] generating {per_class * 10} + {max(per_class // 4, 2) * 10} synthetic JPEGs "
          f"at ~{image_size} px into {out} (once)", flush=True)
    make_synthetic(partial, per_class=per_class, image_size=image_size, seed=seed)
    try:
        os.replace(partial, out)  # complete sets appear atomically
    except OSError:  # another bench run finished it first
        shutil.rmtree(partial, ignore_errors=True)
    print(f"[bench] generated in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def dataset_info(root: Path, files: tuple[str, ...]) -> dict[str, Any]:
    """Image count, sizes and file sizes of the benchmark's training files."""
    from PIL import Image

    from ..data.synth import SYNTHETIC_NOTE

    sample = files[:: max(1, len(files) // 50)]
    sizes = []
    for rel in sample:
        with Image.open(root / rel) as im:
            sizes.append(im.size)
    nbytes = [(root / rel).stat().st_size for rel in files]
    marker = root / "SYNTHETIC.txt"  # written by make_synthetic
    synthetic = marker.is_file() and marker.read_text().startswith(SYNTHETIC_NOTE[:40])
    return {"root": str(root), "synthetic": synthetic, "train_images": len(files),
            "mean_width": float(np.mean([w for w, _ in sizes])),
            "mean_height": float(np.mean([h for _, h in sizes])),
            "min_side": int(min(min(s) for s in sizes)), "max_side": int(max(max(s) for s in sizes)),
            "mean_kb": float(np.mean(nbytes) / 1024), "total_mb": float(sum(nbytes) / 2**20)}


def warm_page_cache(root: Path, files: tuple[str, ...]) -> None:
    """Read every file once, so neither pipeline pays (or is spared) the first disk read."""
    for rel in files:
        (root / rel).read_bytes()
