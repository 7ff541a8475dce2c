"""Decode once: a memory-mapped uint8 cache of resized images, shared by every trial on a node.

Each image is decoded once per (file list, image size, preprocessing version) into
``$INAT_TUNE_CACHE/<key>/images.u8`` (N x S x S x 3 uint8, row-major). The key is a
fingerprint of the files (relative path, size, mtime) and the preprocessing parameters, so a
changed file or another image size gives a new key. A build runs under a file lock in a
temporary folder that is renamed into place when complete (:mod:`inat_tune.data.atomic`):
concurrent trials build it once and never read a half-written cache. Deleting the cache
folder is always safe. Frozen-backbone features are cached the same way beside it
(:mod:`inat_tune.data.features`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from .atomic import build_folder_once
from .scan import NOT_AN_IMAGE, decode_image

log = logging.getLogger(__name__)

# Bump when decode_image's output changes (resize policy, colour handling): old caches then
# simply stop matching.
PREPROCESS_VERSION = "shorter-side-bilinear-centercrop-v1"


def cache_root() -> Path:
    return Path(os.environ.get("INAT_TUNE_CACHE", "~/.cache/inat_tune")).expanduser()


def fingerprint(root: Path, files: Sequence[str], image_size: int) -> str:
    """Hex key of (files, their sizes and mtimes, image size, preprocessing version)."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{PREPROCESS_VERSION}|{image_size}|{len(files)}|".encode())
    for rel in files:
        st = (root / rel).stat()
        h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class ImageCache:
    """Decoded images of one file list; ``images[i]`` is file ``files[i]`` (if ``ok[i]``)."""

    path: Path
    files: tuple[str, ...]
    images: np.ndarray  # memmap, N x S x S x 3 uint8, read-only
    ok: np.ndarray  # bool per file: False = skipped (see ``skipped``)
    digests: tuple[str, ...]  # content hash per file (duplicate check between train and test)
    skipped: tuple[tuple[str, str], ...]  # (file, reason)
    image_size: int


def _decode_into(arr: np.ndarray, root: Path, files: Sequence[str], i: int, size: int) -> tuple[str, str]:
    """Decode file ``i`` into ``arr[i]``; return (content digest, error or "")."""
    try:
        data = (root / files[i]).read_bytes()
    except OSError as e:
        return "", f"unreadable: {e}"
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        arr[i] = decode_image(data, size)
    except ValueError as e:
        return digest, str(e)
    return digest, ""


def _reason(reason: str) -> str:
    """A skipped file's reason; a cache built before decode_image said NOT_AN_IMAGE holds PIL's
    "cannot identify image file <_io.BytesIO object at 0x...>" instead."""
    return NOT_AN_IMAGE if reason.startswith("cannot decode: cannot identify image file") else reason


def _load(path: Path) -> ImageCache:
    meta = json.loads((path / "meta.json").read_text())
    n, size = meta["n"], meta["image_size"]
    images = np.memmap(path / "images.u8", dtype=np.uint8, mode="r", shape=(n, size, size, 3))
    return ImageCache(
        path=path,
        files=tuple(meta["files"]),
        images=images,
        ok=np.array(meta["ok"], dtype=bool),
        digests=tuple(meta["digests"]),
        skipped=tuple((f, _reason(r)) for f, r in meta["skipped"]),
        image_size=size,
    )


def build_cache(root: str | Path, files: Sequence[str], image_size: int, *,
                cache_dir: str | Path | None = None, workers: int | None = None,
                progress: bool = True) -> ImageCache:
    """Return the decode cache of ``files`` (relative to ``root``), building it if needed."""
    from tqdm.auto import tqdm

    root = Path(root)
    if not files:
        raise ValueError(f"no files to cache under {root}")
    base = Path(cache_dir) if cache_dir is not None else cache_root()
    final = base / fingerprint(root, files, image_size)

    def build(tmp: Path) -> None:
        n = len(files)
        arr = np.memmap(tmp / "images.u8", dtype=np.uint8, mode="w+", shape=(n, image_size, image_size, 3))
        # Threads, not processes: Pillow releases the GIL while it decodes and resizes, and
        # threads need no pickling, work inside Ray workers and daemonic processes, and do
        # not re-import a user's __main__ the way spawned processes do.
        n_workers = workers or min(os.cpu_count() or 1, 16)
        bar = tqdm(total=n, desc=f"decode cache {image_size}px", unit="img", disable=not progress)

        def one(i: int) -> tuple[int, str, str]:
            digest, err = _decode_into(arr, root, files, i, image_size)
            bar.update(1)
            return i, digest, err

        if n_workers == 1:
            results = [one(i) for i in range(n)]
        else:
            with ThreadPoolExecutor(n_workers) as pool:
                results = list(pool.map(one, range(n)))
        arr.flush()
        del arr
        bar.close()
        meta = {
            "n": n, "image_size": image_size, "files": list(files),
            "ok": [not err for _, _, err in results], "digests": [d for _, d, _ in results],
            "skipped": [(files[i], err) for i, _, err in results if err],
            "root": str(root), "preprocess": PREPROCESS_VERSION, "built_by": os.getpid(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta))  # last: it marks the folder complete

    if not build_folder_once(final, build):
        return _load(final)
    cache = _load(final)
    if cache.skipped:
        shown = "; ".join(f"{root / f} ({r})" for f, r in cache.skipped[:10])
        more = f" and {len(cache.skipped) - 10} more" if len(cache.skipped) > 10 else ""
        log.warning("skipped %d unreadable image(s) of %d: %s%s", len(cache.skipped), len(files), shown, more)
    return cache
