"""Decode once: a memory-mapped uint8 cache of resized images, shared by every trial on a node.

Each image is decoded once per (file list, image size, preprocessing version) into
``$INAT_TUNE_CACHE/<key>/images.u8`` (N x S x S x 3 uint8, row-major). The key is a
fingerprint of the files (relative path, size, mtime) and the preprocessing parameters, so a
changed file or another image size gives a new key. A build runs under a file lock in a
temporary folder that is renamed into place when complete: concurrent trials build it once
and never read a half-written cache. Deleting the cache folder is always safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import current_process, get_context
from pathlib import Path
from typing import Sequence

import numpy as np
from filelock import FileLock

from .scan import decode_image

log = logging.getLogger(__name__)

# Bump when decode_image's output changes (resize policy, colour handling): old caches then
# simply stop matching.
PREPROCESS_VERSION = "shorter-side-bilinear-centercrop-v1"
_SERIAL_BELOW = 256  # process pools cost ~1 s to start: decode small sets in-process


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


def _decode_chunk(args: tuple[str, str, list[tuple[int, str]], int, int]) -> list[tuple[int, str, str]]:
    """Worker: decode files into the shared memmap; return (index, digest, error) per file."""
    out_path, root, items, n, size = args
    arr = np.memmap(out_path, dtype=np.uint8, mode="r+", shape=(n, size, size, 3))
    results = []
    for i, rel in items:
        try:
            data = Path(root, rel).read_bytes()
        except OSError as e:
            results.append((i, "", f"unreadable: {e}"))
            continue
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        try:
            arr[i] = decode_image(data, size)
            results.append((i, digest, ""))
        except ValueError as e:
            results.append((i, digest, str(e)))
    arr.flush()
    return results


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
        skipped=tuple((f, r) for f, r in meta["skipped"]),
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
    base.mkdir(parents=True, exist_ok=True)
    key = fingerprint(root, files, image_size)
    final = base / key
    if (final / "meta.json").is_file():  # complete caches appear by an atomic rename
        return _load(final)
    with FileLock(str(base / f"{key}.lock")):
        if (final / "meta.json").is_file():  # another process built it while we waited
            return _load(final)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.build-", dir=base))
        try:
            n = len(files)
            out = tmp / "images.u8"
            np.memmap(out, dtype=np.uint8, mode="w+", shape=(n, image_size, image_size, 3)).flush()
            workers = workers or min(os.cpu_count() or 1, 16)
            chunk = max(16, min(256, n // (workers * 4) + 1))
            jobs = [(str(out), str(root), [(i, files[i]) for i in range(s, min(s + chunk, n))], n, image_size)
                    for s in range(0, n, chunk)]
            results: list[tuple[int, str, str]] = []
            bar = tqdm(total=n, desc=f"decode cache {image_size}px", unit="img", disable=not progress)
            # daemonic processes (multiprocessing.Pool workers) may not start children
            if workers == 1 or n < _SERIAL_BELOW or current_process().daemon:
                for job in jobs:
                    results += _decode_chunk(job)
                    bar.update(len(job[2]))
            else:
                # spawn, not fork: the parent may hold torch / Ray threads that fork would copy.
                with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                    for res in pool.map(_decode_chunk, jobs):
                        results += res
                        bar.update(len(res))
            bar.close()
            results.sort()
            ok = [not err for _, _, err in results]
            skipped = [(files[i], err) for i, _, err in results if err]
            meta = {
                "n": n, "image_size": image_size, "files": list(files), "ok": ok,
                "digests": [d for _, d, _ in results], "skipped": skipped,
                "root": str(root), "preprocess": PREPROCESS_VERSION, "built_by": os.getpid(),
            }
            (tmp / "meta.json").write_text(json.dumps(meta))
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    cache = _load(final)
    if cache.skipped:
        shown = "; ".join(f"{f} ({r})" for f, r in cache.skipped[:10])
        more = f" and {len(cache.skipped) - 10} more" if len(cache.skipped) > 10 else ""
        log.warning("skipped %d unreadable image(s) of %d: %s%s", len(cache.skipped), len(files), shown, more)
    return cache
