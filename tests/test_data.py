"""Scanning, bad files, the stratified split, the decode cache and the device loader."""

from __future__ import annotations

import json
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inat_tune.data.atomic import build_folder_once
from inat_tune.data.cache import build_cache, fingerprint
from inat_tune.data.loader import Augment, DeviceLoader, to_device
from inat_tune.data.pipeline import load_test_data, load_tuning_data, warn_duplicates
from inat_tune.data.scan import DatasetError, decode_image, scan_dataset
from inat_tune.data.split import stratified_split


def _jpeg(path: Path, size=(40, 30), color=(200, 30, 30), mode="RGB", fmt="JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, color)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, format=fmt)
    return path


def _tiny_layout(root: Path, classes=("a", "b"), n_train=3, n_val=1) -> Path:
    for c_i, c in enumerate(classes):
        for i in range(n_train):
            _jpeg(root / "train" / c / f"{i}.jpg", color=(40 * i, 100 * c_i, 90))
        for i in range(n_val):
            _jpeg(root / "val" / c / f"{i}.jpg", color=(10, 100 * c_i, 40 * i + 5))
    return root


# --- layout -------------------------------------------------------------------------------

def test_missing_folder_names_path_and_layout(tmp_path):
    with pytest.raises(DatasetError, match="does not exist.*train/<class>"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "ds" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"ds/val is missing"):
        scan_dataset(tmp_path / "ds")


def test_points_at_extracted_subfolder(tmp_path):
    _tiny_layout(tmp_path / "inaturalist_12K")
    with pytest.raises(DatasetError, match="did you mean .*inaturalist_12K"):
        scan_dataset(tmp_path)


def test_class_mismatch_and_empty_class(tmp_path):
    root = _tiny_layout(tmp_path / "ds")
    _jpeg(root / "train" / "extra" / "0.jpg")
    with pytest.raises(DatasetError, match=r"only in train/: \['extra'\]"):
        scan_dataset(root)
    root2 = _tiny_layout(tmp_path / "ds2")
    (root2 / "val" / "c").mkdir()
    (root2 / "train" / "c").mkdir()
    (root2 / "train" / "c" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="has no images"):
        scan_dataset(root2)


def test_every_bad_file_kind_is_converted_or_skipped(tmp_path, caplog):
    root = _tiny_layout(tmp_path / "ds")
    a = root / "train" / "a"
    (a / ".DS_Store").write_bytes(b"\x00\x01junk")
    (a / "readme.txt").write_text("not an image")
    (a / "empty.jpg").write_bytes(b"")
    good = _jpeg(tmp_path / "big.jpg", size=(300, 200)).read_bytes()
    (a / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (a / "garbage.jpg").write_bytes(os.urandom(500))
    _jpeg(a / "png_named.jpg", fmt="PNG")
    _jpeg(a / "gray.jpg", mode="L")
    _jpeg(a / "cmyk.jpg", mode="CMYK")
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))  # fully transparent -> white after compositing
    rgba.save(a / "rgba.png")

    images = scan_dataset(root)
    assert sorted(Path(f).name for f in images.ignored) == [".DS_Store", "readme.txt"]
    data = load_tuning_data(root, 32, 0.2, 0, progress=False)
    skipped = {Path(f).name for f, _ in data.skipped}
    assert skipped == {"empty.jpg", "truncated.jpg", "garbage.jpg"}
    kept = {Path(f).name for f in data.train.files + data.val.files}
    assert {"png_named.jpg", "gray.jpg", "cmyk.jpg", "rgba.png"} <= kept
    assert sum("skipped 3 unreadable" in r.message for r in caplog.records) == 1
    i = (data.train.files + data.val.files).index("train/a/rgba.png")
    arr = np.concatenate([data.train.images, data.val.images])[i]
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8 and arr.min() == 255
    j = (data.train.files + data.val.files).index("train/a/gray.jpg")
    gray = np.concatenate([data.train.images, data.val.images])[j]
    assert (gray[..., 0] == gray[..., 1]).all()


def test_decode_resizes_shorter_side_and_center_crops():
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 50, 100))  # white left quarter is cropped away
    import io
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    arr = decode_image(buf.getvalue(), 50)
    assert arr.shape == (50, 50, 3)
    assert arr[:, 2:].max() < 5  # the centre crop shows only the black part (edge: filter bleed)
    assert arr[:, 0].mean() < 64
    with pytest.raises(ValueError, match="zero-byte"):
        decode_image(b"", 32)


# --- split --------------------------------------------------------------------------------

def test_split_is_stratified_deterministic_and_ignores_val(synth_data):
    labels = [i // 50 for i in range(500)]
    s1 = stratified_split(labels, 0.2, seed=3)
    s2 = stratified_split(labels, 0.2, seed=3)
    s3 = stratified_split(labels, 0.2, seed=4)
    assert s1 == s2 and s1 != s3
    assert set(s1.train).isdisjoint(s1.val) and len(s1.train) + len(s1.val) == 500
    counts = np.bincount(np.asarray(labels)[list(s1.val)])
    assert counts.tolist() == [10] * 10
    data = load_tuning_data(synth_data, 32, 0.2, 0, progress=False)
    files = data.train.files + data.val.files
    assert all(f.startswith("train/") for f in files)  # val/ is the test set, never read here
    assert np.bincount(data.val.labels).tolist() == [8] * 10
    manifest = json.loads(data.write_manifest(synth_data.parent / "m.json").read_text())
    assert manifest["val"] == list(data.val.files) and manifest["classes"] == list(data.classes)


def test_duplicate_between_test_and_train_is_warned(tmp_path, caplog):
    root = _tiny_layout(tmp_path / "ds")
    (root / "val" / "a" / "copy.jpg").write_bytes((root / "train" / "b" / "1.jpg").read_bytes())
    _, test = load_test_data(root, 32, progress=False)
    assert len(test.labels) == 3
    assert any("also appear in train/" in r.message for r in caplog.records)
    images = scan_dataset(root)
    dups = warn_duplicates(build_cache(root, images.train, 32, progress=False),
                           build_cache(root, images.test, 32, progress=False))
    assert dups == [("val/a/copy.jpg", "train/b/1.jpg")]


def test_test_data_refuses_other_classes(tmp_path):
    root = _tiny_layout(tmp_path / "ds")
    with pytest.raises(DatasetError, match="differ from the model's"):
        load_test_data(root, 32, classes=("a", "z"), progress=False)


# --- cache --------------------------------------------------------------------------------

def test_cache_is_reused_and_invalidated(tmp_path):
    root = _tiny_layout(tmp_path / "ds")
    files = scan_dataset(root).train
    c1 = build_cache(root, files, 32, progress=False)
    c2 = build_cache(root, files, 32, progress=False)
    assert c1.path == c2.path and c1.images.shape == (6, 32, 32, 3)
    assert isinstance(c2.images, np.memmap) and not c2.images.flags.writeable
    built_by = json.loads((c1.path / "meta.json").read_text())["built_by"]
    assert built_by == os.getpid()
    assert build_cache(root, files, 48, progress=False).path != c1.path  # other size, other key
    key = fingerprint(root, files, 32)
    _jpeg(root / files[0], color=(1, 2, 3), size=(41, 30))  # a changed file
    assert fingerprint(root, files, 32) != key
    c3 = build_cache(root, files, 32, progress=False)
    assert c3.path != c1.path and c3.images[0, 16, 16].tolist() == pytest.approx([1, 2, 3], abs=3)
    assert not list(c1.path.parent.glob("*.build-*"))  # no half-built folder left behind


def _build_in_process(args):
    root, files, cache_dir = args
    c = build_cache(root, files, 32, cache_dir=cache_dir, progress=False)
    return os.getpid(), str(c.path), c.images.sum(dtype=np.int64).item()


def test_two_concurrent_builders_build_once(tmp_path):
    root = _tiny_layout(tmp_path / "ds", n_train=150)
    files = scan_dataset(root).train
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        out = list(pool.map(_build_in_process, [(root, files, tmp_path / "c")] * 2))
    (pid1, path1, sum1), (pid2, path2, sum2) = out
    assert pid1 != pid2 and path1 == path2 and sum1 == sum2
    built_by = json.loads((Path(path1) / "meta.json").read_text())["built_by"]
    assert built_by in (pid1, pid2)
    assert len([p for p in (tmp_path / "c").iterdir() if p.is_dir()]) == 1


def test_parallel_build_equals_serial(tmp_path):
    root = _tiny_layout(tmp_path / "ds", n_train=140)
    files = scan_dataset(root).train
    serial = build_cache(root, files, 32, cache_dir=tmp_path / "s", workers=1, progress=False)
    par = build_cache(root, files, 32, cache_dir=tmp_path / "p", workers=2, progress=False)
    assert np.array_equal(np.asarray(serial.images), np.asarray(par.images))



def test_build_folder_once_builds_once_and_never_leaves_half_a_folder(tmp_path):
    final = tmp_path / "base" / "key"
    calls = []

    def writer(target: Path):
        def build(tmp: Path) -> None:
            calls.append(tmp)
            assert tmp.parent == target.parent and not target.exists()  # beside, not in place
            (tmp / "data.bin").write_bytes(b"x")
            (tmp / "meta.json").write_text("{}")
        return build

    assert build_folder_once(final, writer(final)) is True
    assert build_folder_once(final, writer(final)) is False and len(calls) == 1  # complete: reused
    assert (final / "data.bin").read_bytes() == b"x"

    def fails(tmp: Path) -> None:
        (tmp / "data.bin").write_bytes(b"half")
        raise OSError("disk full")

    def no_marker(tmp: Path) -> None:
        (tmp / "data.bin").write_bytes(b"x")

    other = tmp_path / "base" / "other"
    with pytest.raises(OSError, match="disk full"):
        build_folder_once(other, fails)
    with pytest.raises(RuntimeError, match="wrote no meta.json"):
        build_folder_once(other, no_marker)
    assert not other.exists() and not list(other.parent.glob("*.build-*"))
    assert build_folder_once(other, writer(other)) is True and (other / "meta.json").is_file()


# --- loader -------------------------------------------------------------------------------

def _batch_tensors(n=10, s=16):
    g = np.random.default_rng(0)
    return to_device(g.integers(0, 256, (n, s, s, 3), dtype=np.uint8), np.arange(n) % 3, "cpu")


def test_loader_shapes_dtypes_and_normalisation():
    x, y = _batch_tensors()
    assert x.shape == (10, 3, 16, 16) and x.dtype == torch.uint8 and y.dtype == torch.long
    loader = DeviceLoader(x, y, 4, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    batches = list(loader)
    assert len(loader) == 3 and [len(b[1]) for b in batches] == [4, 4, 2]
    xb, yb = batches[0]
    assert xb.dtype == torch.float32 and xb.shape == (4, 3, 16, 16)
    assert torch.allclose(xb, x[:4].float() / 255 * 2 - 1, atol=1e-6)  # one fused scale: float rounding
    assert torch.equal(yb, y[:4])
    assert len(DeviceLoader(x, y, 4, drop_last=True)) == 2


def test_augmentation_is_seeded_and_changes_images():
    x, y = _batch_tensors()
    aug = Augment(color_jitter=0.3)
    a = DeviceLoader(x, y, 10, shuffle=True, augment=aug, seed=1)
    b = DeviceLoader(x, y, 10, shuffle=True, augment=aug, seed=1)
    xa, ya = next(iter(a))
    xb, yb = next(iter(b))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    a.set_epoch(1)
    xa1, ya1 = next(iter(a))
    assert not torch.equal(xa1, xa)
    plain = DeviceLoader(x, y, 10)
    assert not torch.allclose(next(iter(plain))[0], xa)
    assert torch.isfinite(xa).all()


def test_flip_only_gives_image_or_its_mirror():
    x, y = _batch_tensors(n=32)
    aug = Augment(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=True)
    out, _ = next(iter(DeviceLoader(x, y, 32, augment=aug, seed=0)))
    ref, _ = next(iter(DeviceLoader(x, y, 32)))
    same = [(o - r).abs().max() < 1e-4 for o, r in zip(out, ref)]
    mirrored = [(o - r.flip(-1)).abs().max() < 1e-4 for o, r in zip(out, ref)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 4 < sum(mirrored) < 28  # about half are flipped


# ---------------------------------------------------------------------------------------------
# The epoch's augmentation numbers are drawn once and copied once (no host sync per batch); a
# seeded epoch must give exactly what the per-batch drawing gave. _old_epoch is that code, as it
# was before (it drew, per batch: crop b x 4, flip b, jitter b x 3 x 1 x 1 x 1, after the
# permutation, from the same CPU generator).

def _old_crop_flip(x, aug, gen):
    import math

    import torch.nn.functional as F
    b = x.shape[0]
    rand = torch.rand(b, 4, generator=gen)
    lo, hi = aug.crop_scale
    area = lo + (hi - lo) * rand[:, 0]
    log_r = math.log(aug.crop_ratio[0]) + (math.log(aug.crop_ratio[1]) - math.log(aug.crop_ratio[0])) * rand[:, 1]
    ratio = torch.exp(log_r)
    sw = torch.sqrt(area * ratio).clamp(max=1.0)
    sh = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (1 - sw) * (2 * rand[:, 2] - 1)
    ty = (1 - sh) * (2 * rand[:, 3] - 1)
    sign = torch.ones(b)
    if aug.flip:
        sign = torch.where(torch.rand(b, generator=gen) < 0.5, -sign, sign)
    theta = torch.zeros(b, 2, 3, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw * sign, tx, sh, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _old_jitter(x, strength, gen):
    f = 1 + strength * (2 * torch.rand(x.shape[0], 3, 1, 1, 1, generator=gen) - 1)
    x = x * f[:, 0]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * f[:, 1] + mean
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    return ((x - gray) * f[:, 2] + gray).clamp_(0, 1)


def _old_epoch(dl: DeviceLoader):
    n = len(dl.y)
    gen = dl._generator()
    order = torch.randperm(n, generator=gen) if dl.shuffle else torch.arange(n)
    out = []
    for i in range(len(dl)):
        idx = order[i * dl.batch_size:min((i + 1) * dl.batch_size, n)]
        xb = dl.x[idx].float().div_(255)
        xb = _old_crop_flip(xb, dl.augment, gen)
        if dl.augment.color_jitter > 0:
            xb = _old_jitter(xb, dl.augment.color_jitter, gen)
        out.append(((xb - dl.mean) / dl.std, dl.y[idx]))
    return out


@pytest.mark.parametrize("aug", [Augment(), Augment(flip=False), Augment(color_jitter=0.4),
                                 Augment(flip=False, color_jitter=0.3)], ids=str)
@pytest.mark.parametrize("shuffle,drop_last", [(True, False), (True, True), (False, False)])
def test_seeded_epoch_augmentation_unchanged_by_drawing_once(aug, shuffle, drop_last):
    rng = np.random.default_rng(0)
    x, y = to_device(rng.integers(0, 256, (37, 16, 16, 3), dtype=np.uint8), np.arange(37) % 10, "cpu")
    dl = DeviceLoader(x, y, 8, shuffle=shuffle, augment=aug, seed=3, drop_last=drop_last)
    dl.set_epoch(2)
    new, old = list(dl), _old_epoch(dl)
    assert len(new) == len(old) == (4 if drop_last else 5)
    for (xn, yn), (xo, yo) in zip(new, old):
        assert torch.equal(yn, yo)
        # the same random numbers; the arithmetic differs by float rounding only (a separable
        # sampling grid instead of affine_grid's matmul, /255 and /std fused into one scale)
        torch.testing.assert_close(xn, xo, atol=5e-5, rtol=0)


def test_epoch_params_are_one_tensor_on_the_loader_device():
    x, y = to_device(np.zeros((10, 8, 8, 3), np.uint8), np.arange(10) % 10, "cpu")
    dl = DeviceLoader(x, y, 4, shuffle=True, augment=Augment(color_jitter=0.2))
    params = dl.epoch_params(dl._generator())
    assert params.shape == (10, 8) and params.device == x.device
    assert DeviceLoader(x, y, 4).epoch_params(dl._generator()) is None  # no augmentation


def test_separable_grid_is_affine_grid_without_rotation():
    from inat_tune.data.loader import separable_grid

    g = torch.Generator().manual_seed(0)
    b, h, w = 6, 7, 11
    ax, bx, ay, by = (torch.rand(b, generator=g) * 2 - 1 for _ in range(4))
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = ax, bx, ay, by
    want = torch.nn.functional.affine_grid(theta, [b, 3, h, w], align_corners=False)
    torch.testing.assert_close(separable_grid(ax, bx, ay, by, h, w, torch.float32), want, atol=1e-6, rtol=0)
