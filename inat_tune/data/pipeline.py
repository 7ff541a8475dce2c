"""One path from a dataset folder to arrays: scan -> split -> decode cache.

``load_tuning_data`` gives the tuning train/validation arrays (train/ only);
``load_test_data`` gives the held-out test arrays (val/). Both are uint8 N x S x S x 3
(views of the shared memory-mapped cache) plus int labels; the trainer moves them to the
device once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import build_folder_once
from .cache import ImageCache, build_cache
from .scan import DatasetError, ImageSet, scan_dataset
from .split import stratified_split, write_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArraySplit:
    images: np.ndarray  # N x S x S x 3 uint8
    labels: np.ndarray  # N int64
    files: tuple[str, ...]  # relative to the dataset root


@dataclass(frozen=True)
class TuningData:
    root: Path
    classes: tuple[str, ...]
    train: ArraySplit
    val: ArraySplit
    skipped: tuple[tuple[str, str], ...]  # files that could not be decoded, with the reason
    image_size: int
    val_fraction: float
    split_seed: int
    key: str = ""  # identifies these arrays: decode cache (files, image size) + split

    def write_manifest(self, path: str | Path) -> Path:
        return write_manifest(path, classes=self.classes, train=self.train.files,
                              val=self.val.files, val_fraction=self.val_fraction,
                              seed=self.split_seed, skipped=self.skipped)


def _take(cache: ImageCache, idx: Sequence[int], labels: Sequence[int]) -> ArraySplit:
    """The rows ``idx`` (decodable ones) of ``cache``; their images are a read-only view of a
    memory map (:func:`rows_view`), not a copy."""
    idx = [i for i in idx if cache.ok[i]]
    arr = np.asarray(idx, dtype=np.int64)
    return ArraySplit(images=rows_view(cache, arr), labels=np.asarray(labels, dtype=np.int64)[arr],
                      files=tuple(cache.files[i] for i in idx))


def rows_view(cache: ImageCache, rows: np.ndarray) -> np.ndarray:
    """``cache.images[rows]`` as a read-only memory map: every process on a node then shares
    one copy (the page cache) instead of holding its own.

    Rows in order from 0 are a slice of the cache itself; any other selection (a stratified
    split picks rows all over the file) is written once per node, in that order, to
    ``<cache>.rows-<digest>/images.u8`` beside the cache (under the cache's lock-and-rename
    rule, :mod:`inat_tune.data.atomic`). Where that folder cannot be written the rows are
    copied into this process's memory instead, as before.
    """
    if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
        return cache.images[int(rows[0]):int(rows[0]) + len(rows)]
    shape = (len(rows), *cache.images.shape[1:])
    if not len(rows):
        return np.empty(shape, dtype=np.uint8)
    digest = hashlib.blake2b(rows.astype("<i8").tobytes(), digest_size=10).hexdigest()
    final = cache.path.with_name(f"{cache.path.name}.rows-{digest}")

    def build(tmp: Path) -> None:
        out = np.memmap(tmp / "images.u8", dtype=np.uint8, mode="w+", shape=shape)
        for i in range(0, len(rows), _COPY_ROWS):  # in pieces: memory stays bounded
            out[i:i + _COPY_ROWS] = cache.images[rows[i:i + _COPY_ROWS]]
        out.flush()
        del out
        (tmp / "meta.json").write_text(json.dumps({"n": len(rows), "of": cache.path.name}))

    try:
        build_folder_once(final, build)
    except OSError as e:
        log.warning("could not store the split's images beside %s (%s): copying them into memory",
                    cache.path, e)
        return cache.images[rows]
    return np.memmap(final / "images.u8", dtype=np.uint8, mode="r", shape=shape)


_COPY_ROWS = 1024


def _report(images: ImageSet, caches: Sequence[ImageCache]) -> tuple[tuple[str, str], ...]:
    skipped = tuple(s for c in caches for s in c.skipped)
    if images.ignored:
        log.info("ignored %d non-image file(s): %s", len(images.ignored), ", ".join(images.ignored[:5]))
    return skipped


def load_tuning_data(root: str | Path, image_size: int, val_fraction: float = 0.2,
                     split_seed: int = 0, *, cache_dir: str | Path | None = None,
                     progress: bool = True, images: ImageSet | None = None) -> TuningData:
    """The stratified tuning split of ``root/train``; ``root/val`` is not read."""
    images = images or scan_dataset(root)
    cache = build_cache(images.root, images.train, image_size, cache_dir=cache_dir, progress=progress)
    split = stratified_split(images.train_labels, val_fraction, split_seed)
    train = _take(cache, split.train, images.train_labels)
    val = _take(cache, split.val, images.train_labels)
    for name, part in (("training", train), ("validation", val)):
        present = set(part.labels.tolist())
        missing = [c for i, c in enumerate(images.classes) if i not in present]
        if missing:
            raise DatasetError(f"{images.root / 'train'}: the {name} split has no decodable "
                               f"image of class(es) {missing}")
    return TuningData(root=images.root, classes=images.classes, train=train, val=val,
                      skipped=_report(images, [cache]), image_size=image_size,
                      val_fraction=val_fraction, split_seed=split_seed,
                      key=f"{cache.path.name}|{val_fraction!r}|{split_seed}")


def load_test_data(root: str | Path, image_size: int, *, classes: Sequence[str] | None = None,
                   cache_dir: str | Path | None = None, progress: bool = True,
                   check_duplicates: bool = True) -> tuple[tuple[str, ...], ArraySplit]:
    """The held-out test set (``root/val``). ``classes`` (the model's) must match the folder's."""
    images = scan_dataset(root)
    if classes is not None and tuple(classes) != images.classes:
        raise DatasetError(f"{images.root}: classes {list(images.classes)} differ from the "
                           f"model's {list(classes)}")
    cache = build_cache(images.root, images.test, image_size, cache_dir=cache_dir, progress=progress)
    if check_duplicates:
        train_cache = build_cache(images.root, images.train, image_size, cache_dir=cache_dir, progress=progress)
        warn_duplicates(train_cache, cache)
    _report(images, [cache])
    return images.classes, _take(cache, range(len(images.test)), images.test_labels)


def warn_duplicates(train: ImageCache, test: ImageCache) -> list[tuple[str, str]]:
    """Warn (and return pairs) when a test image's bytes also appear in train/."""
    seen = {d: f for f, d in zip(train.files, train.digests) if d}
    dups = [(f, seen[d]) for f, d in zip(test.files, test.digests) if d and d in seen]
    if dups:
        log.warning("%d test image(s) also appear in train/ (content hash), e.g. %s == %s: "
                    "test accuracy will be optimistic", len(dups), dups[0][0], dups[0][1])
    return dups


def cache_dataset(root: str | Path, image_size: int, *, cache_dir: str | Path | None = None) -> dict:
    """Decode train/ and val/ once (``inat-tune data cache``); returns a summary."""
    images = scan_dataset(root)
    tr = build_cache(images.root, images.train, image_size, cache_dir=cache_dir)
    te = build_cache(images.root, images.test, image_size, cache_dir=cache_dir)
    dups = warn_duplicates(tr, te)
    return {"train_images": int(tr.ok.sum()), "test_images": int(te.ok.sum()),
            "skipped": len(tr.skipped) + len(te.skipped), "ignored": len(images.ignored),
            "duplicates": len(dups), "cache": [str(tr.path), str(te.path)]}
