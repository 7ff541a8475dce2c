"""Scanning a dataset folder and decoding one image, robust to the files real folders hold.

Layout: ``ROOT/train/<class>/*.jpg`` (tuning) and ``ROOT/val/<class>/*.jpg`` (the test set).
Non-image files (.DS_Store, .txt) are ignored at scan time; files that fail to decode
(zero bytes, truncated, not an image) are skipped at decode time and reported once.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
EXPECTED_LAYOUT = "ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg (same class folders)"
NOT_AN_IMAGE = "not an image (PIL cannot identify it)"  # decode_image's reason for such a file


class DatasetError(ValueError):
    """The dataset folder does not have the expected layout; the message names the path."""


@dataclass(frozen=True)
class ImageSet:
    """The files of one dataset folder, as paths relative to ``root``."""

    root: Path
    classes: tuple[str, ...]
    train: tuple[str, ...]  # train/<class>/<file>
    train_labels: tuple[int, ...]
    test: tuple[str, ...]  # val/<class>/<file>: the held-out test set
    test_labels: tuple[int, ...]
    ignored: tuple[str, ...]  # files that are not images by name (.DS_Store, notes.txt)


def _class_files(split_dir: Path) -> tuple[dict[str, list[str]], list[str]]:
    files: dict[str, list[str]] = {}
    ignored: list[str] = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if class_dir.name.startswith("."):
            continue
        names = []
        for f in sorted(class_dir.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("._"):
                names.append(f"{split_dir.name}/{class_dir.name}/{f.name}")
            elif f.is_file():
                ignored.append(f"{split_dir.name}/{class_dir.name}/{f.name}")
        files[class_dir.name] = names
    return files, ignored


def scan_dataset(root: str | Path) -> ImageSet:
    """List the images of ``root`` and check the layout, raising DatasetError if it is wrong."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist; expected {EXPECTED_LAYOUT}")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            hint = ""
            if (root / "inaturalist_12K").is_dir():
                hint = f" (did you mean {root / 'inaturalist_12K'}?)"
            raise DatasetError(f"{root / split} is missing{hint}; expected {EXPECTED_LAYOUT}")
    train, ignored_train = _class_files(root / "train")
    test, ignored_test = _class_files(root / "val")
    if not train:
        raise DatasetError(f"{root / 'train'} has no class folders; expected {EXPECTED_LAYOUT}")
    if sorted(train) != sorted(test):
        only_train = sorted(set(train) - set(test))
        only_test = sorted(set(test) - set(train))
        raise DatasetError(
            f"{root}: train/ and val/ must have the same class folders; "
            f"only in train/: {only_train or '-'}; only in val/: {only_test or '-'}"
        )
    for split, files in (("train", train), ("val", test)):
        empty = [c for c, names in files.items() if not names]
        if empty:
            raise DatasetError(f"{root / split / empty[0]} has no images (empty classes: {empty})")
    classes = tuple(sorted(train))
    tr = [(f, i) for i, c in enumerate(classes) for f in train[c]]
    te = [(f, i) for i, c in enumerate(classes) for f in test[c]]
    return ImageSet(
        root=root,
        classes=classes,
        train=tuple(f for f, _ in tr),
        train_labels=tuple(i for _, i in tr),
        test=tuple(f for f, _ in te),
        test_labels=tuple(i for _, i in te),
        ignored=tuple(ignored_train + ignored_test),
    )


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Decode image bytes to a ``size x size x 3`` uint8 RGB array.

    Shorter side resized to ``size`` then centre-cropped (torchvision's eval recipe).
    Grayscale, CMYK, palette and RGBA images are converted (alpha composited on white);
    EXIF orientation is applied. Raises ValueError for anything that cannot be decoded.
    """
    if not data:
        raise ValueError("zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's EXIF / palette warnings: not actionable
            img = Image.open(io.BytesIO(data))
            # JPEG DCT-domain downscaling: decoding a 600 px photo at 1/2, 1/4 or 1/8 scale is
            # several times faster and the result is then resized anyway. `draft` only picks a
            # scale that keeps both sides >= the requested size.
            w, h = img.size
            scale = size / min(w, h)
            img.draft("RGB", (max(size, int(w * scale + 0.5)), max(size, int(h * scale + 0.5))))
            img = ImageOps.exif_transpose(img)
            img.load()
    except UnidentifiedImageError:  # PIL's own text names only an in-memory buffer
        raise ValueError(NOT_AN_IMAGE) from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot decode: {e}") from None
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=None if scale > 0.5 else 2.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)
