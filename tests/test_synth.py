"""The generated dataset: layout, determinism, photo-like sizes, learnable but not by colour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inat_tune.data.synth import CLASSES, SYNTHETIC_NOTE, make_synthetic

PER_CLASS, VAL_PER_CLASS, IMAGE_SIZE = 40, 20, 48  # 600 images: < 1 s to generate


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    return make_synthetic(out, per_class=PER_CLASS, val_per_class=VAL_PER_CLASS,
                          image_size=IMAGE_SIZE, seed=0)  # fmt: skip


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_layout_counts_and_note(tmp_path: Path) -> None:
    root = make_synthetic(tmp_path / "d", per_class=9, image_size=32)
    assert root == tmp_path / "d"
    assert len(set(CLASSES)) == 10
    for split, n in (("train", 9), ("val", 2)):  # default val: max(9 // 4, 2) = 2
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(CLASSES)
        for name in CLASSES:
            assert sorted(p.name for p in (root / split / name).iterdir()) == sorted(
                f"{name}_{i}.jpg" for i in range(n)
            )
    note = (root / "SYNTHETIC.txt").read_text()
    assert note.startswith(SYNTHETIC_NOTE) and "not real photographs" in note.lower()
    assert "synthetic" in SYNTHETIC_NOTE.lower() and "per_class: 9" in note and "seed: 0" in note
    default_val = make_synthetic(tmp_path / "e", per_class=12, image_size=32) / "val"
    assert len(list((default_val / CLASSES[0]).iterdir())) == 3  # 12 // 4


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    kw = dict(per_class=3, val_per_class=2, image_size=40)
    a = _files(make_synthetic(tmp_path / "a", seed=7, **kw))
    b = _files(make_synthetic(tmp_path / "b", seed=7, **kw))
    c = _files(make_synthetic(tmp_path / "c", seed=8, **kw))
    assert len(a) == 10 * 5 + 1 and a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != c[k] for k in images)


def test_photo_like_sizes_all_rgb_jpeg(synth_root: Path) -> None:
    sizes = set()
    for path in synth_root.rglob("*.jpg"):
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            im.load()  # fully decodable, not just a valid header
            sizes.add(im.size)
    assert len(sizes) > 10 and any(w != h for w, h in sizes)
    lo, hi = int(0.75 * IMAGE_SIZE), round(1.6 * IMAGE_SIZE)
    assert all(lo <= s <= hi for wh in sizes for s in wh)


def _load(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every image squashed to 16x16 RGB in [0, 1], with its class index."""
    xs, ys = [], []
    for k, name in enumerate(CLASSES):
        for path in sorted((root / split / name).glob("*.jpg")):
            with Image.open(path) as im:
                xs.append(np.asarray(im.resize((16, 16), Image.BILINEAR), np.float32) / 255)
            ys.append(k)
    return np.stack(xs), np.array(ys)


def _spectrum(x: np.ndarray) -> np.ndarray:
    # Log amplitude spectrum of the contrast-normalised grey image: blind to colour, to
    # foreground/background polarity and (circularly) to position, so it sees shape only.
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    grey = (grey - grey.mean((1, 2), keepdims=True)) / (grey.std((1, 2), keepdims=True) + 1e-6)
    return np.log1p(np.abs(np.fft.rfft2(grey))).reshape(len(x), -1)


def _logreg_accuracy(f_train: np.ndarray, y_train: np.ndarray, f_val: np.ndarray,
                     y_val: np.ndarray) -> float:  # fmt: skip
    """Val accuracy of a multinomial logistic regression (full-batch Adam, 300 steps)."""
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    a = torch.tensor((f_train - mu) / sd, dtype=torch.float32)
    b = torch.tensor((f_val - mu) / sd, dtype=torch.float32)
    torch.manual_seed(0)
    lin = torch.nn.Linear(a.shape[1], len(CLASSES))
    opt = torch.optim.Adam(lin.parameters(), lr=0.05, weight_decay=1e-3)
    target = torch.tensor(y_train)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(lin(a), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((lin(b).argmax(1).numpy() == y_val).mean())


def test_learnable_from_shape_not_from_mean_colour(synth_root: Path) -> None:
    x_train, y_train = _load(synth_root, "train")
    x_val, y_val = _load(synth_root, "val")
    shape_acc = _logreg_accuracy(_spectrum(x_train), y_train, _spectrum(x_val), y_val)
    colour_acc = _logreg_accuracy(x_train.mean((1, 2)), y_train, x_val.mean((1, 2)), y_val)
    # Observed over seeds 0-2: shape 0.51-0.65, mean colour 0.09-0.14 (chance 0.10).
    assert shape_acc >= 0.35, shape_acc
    assert colour_acc <= 0.22, colour_acc
    assert shape_acc - colour_acc >= 0.25, (shape_acc, colour_acc)


def test_refuses_foreign_folder_replaces_own(tmp_path: Path) -> None:
    photos = tmp_path / "my_photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(ValueError, match="my_photos"):
        make_synthetic(photos, per_class=2)
    assert [p.name for p in photos.iterdir()] == ["holiday.jpg"]
    with pytest.raises(ValueError, match="not a folder"):
        make_synthetic(photos / "holiday.jpg", per_class=2)

    empty = tmp_path / "empty"
    empty.mkdir()
    make_synthetic(empty, per_class=4, val_per_class=2, image_size=32)
    # Our own earlier set is replaced in full: no stale images from the larger run survive.
    make_synthetic(empty, per_class=2, val_per_class=2, image_size=32)
    assert len(list((empty / "train").rglob("*.jpg"))) == 2 * len(CLASSES)
    assert "per_class: 2" in (empty / "SYNTHETIC.txt").read_text()


@pytest.mark.parametrize("key", ["per_class", "val_per_class", "image_size", "seed"])
def test_refuses_impossible_arguments(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match=f"--{key.replace('_', '-')} -1"):  # the CLI flag
        make_synthetic(tmp_path / "d", **{key: -1})
    assert not (tmp_path / "d").exists()
