"""Every subcommand, given a bad input a new user would type: exit 2, one line naming the thing
and what to do, no traceback, and nothing written or changed (the working folder, the dataset,
the experiments are compared file by file before and after)."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from inat_tune.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "cifar10_grid48_32px.csv"
GOOD_SPACE = {"model": "scratch_cnn", "method": "random", "metric": {"name": "val_acc", "goal": "maximize"},
              "parameters": {"lr": {"values": [1e-3, 3e-3]}, "epochs": {"value": 2}, "image_size": {"value": 32}}}


def _space(**changes) -> dict:
    out = json.loads(json.dumps(GOOD_SPACE))
    for key, value in changes.items():
        if key.startswith("p_"):
            out["parameters"][key[2:]] = value
        else:
            out[key] = value
    return out


SPACES = {
    "unknown_top": _space(early_stop={"type": "hyperband"}),
    "typo_distribution": _space(p_lr={"distribuion": "uniform", "min": 1e-3, "max": 1e-2}),
    "min_gt_max": _space(p_lr={"distribution": "uniform", "min": 1e-2, "max": 1e-3}),
    "searched_split": _space(p_val_fraction={"values": [0.1, 0.2]}),
    "max_iter": _space(early_terminate={"type": "hyperband", "min_iter": 1, "max_iter": 27, "eta": 3}),
    "unknown_param": _space(p_learning_rate={"value": 0.1}),
    "bad_value": _space(p_filter_org={"values": ["same", "triple"]}),
    "log_through_zero": _space(p_lr={"distribution": "log_uniform_values", "min": 0.0, "max": 1e-2}),
    "grid_continuous": _space(method="grid", p_lr={"distribution": "uniform", "min": 1e-3, "max": 1e-2}),
}

# (id, argv with {data}, {tmp}, {space:<name>}, {exp}, {run}, ...; what the one line must contain)
CASES = [
    ("count-even-kernel", "count --filters 32 --kernel-size 4 --dense 10", "--kernel-size 4"),
    ("count-zero-kernel", "count --filters 32 --kernel-size 0 --dense 10", "--kernel-size 0"),
    ("count-small-image", "count --filters 32 --kernel-size 3 --dense 10 --image-size 16", "--image-size 16"),
    ("count-zero-filters", "count --filters 0 --kernel-size 3 --dense 10", "--filters 0"),
    ("count-negative-filters", "count --filters -5 --kernel-size 3 --dense 10", "--filters -5"),
    ("count-zero-dense", "count --filters 8 --kernel-size 3 --dense 0", "--dense 0"),
    ("count-one-class", "count --filters 8 --kernel-size 3 --dense 8 --num-classes 1", "--num-classes 1"),
    ("synth-zero-per-class", "data synth --out {tmp}/new --per-class 0", "--per-class 0"),
    ("synth-zero-val", "data synth --out {tmp}/new --val-per-class 0", "--val-per-class 0"),
    ("synth-tiny-image", "data synth --out {tmp}/new --image-size 4", "--image-size 4"),
    ("synth-foreign-folder", "data synth --out {foreign}", "not a synthetic set"),
    ("cache-tiny-image", "data cache --data {data} --image-size 8", "--image-size 8"),
    ("cache-missing-data", "data cache --data {tmp}/nowhere --image-size 32", "nowhere"),
    ("cache-no-train", "data cache --data {foreign} --image-size 32", "train"),
    ("download-not-a-url", "data download --root {tmp}/dl --url notaurl", "not a URL"),
    ("download-ftp", "data download --root {tmp}/dl --url ftp://example.org/x.zip", "not a URL"),
    ("download-root-is-file", "data download --root {file} --url http://127.0.0.1:9/x.zip", "is a file"),
    ("train-bad-yaml", "train {badyaml} --data {data} --out {tmp}/run", "not valid YAML"),
    ("train-missing-config", "train {tmp}/none.yaml --data {data} --out {tmp}/run", "does not exist"),
    ("train-unknown-key", "train --set learning_rate=0.1 --data {data} --out {tmp}/run", "did you mean 'lr'"),
    ("train-negative-lr", "train --set lr=-1 --data {data} --out {tmp}/run", "lr=-1"),
    ("train-zero-epochs", "train --set epochs=0 --data {data} --out {tmp}/run", "epochs"),
    ("train-small-image", "train --set image_size=16 --data {data} --out {tmp}/run", "image_size=16"),
    ("train-bad-choice", "train --set filter_org=triple --data {data} --out {tmp}/run", "filter_org"),
    ("train-missing-data", "train --data {tmp}/nowhere --out {tmp}/run", "nowhere"),
    ("train-existing-run", "train --data {data} --out {run}", "--resume continues it"),
    ("train-resume-nothing", "train --data {data} --out {tmp}/run --resume", "no checkpoint.pt"),
    ("train-junk-weights", "train --set model=finetune --set backbone=resnet18 --set weights={junk} "
                           "--data {data} --out {tmp}/run", "is not a state dict"),
    ("sweep-missing-space", "sweep {tmp}/none.yaml --data {data} --storage {tmp}/exps", "does not exist"),
    ("sweep-bad-yaml", "sweep {badyaml} --data {data} --storage {tmp}/exps", "not valid YAML"),
    ("sweep-unknown-top", "sweep {space:unknown_top} --data {data} --storage {tmp}/exps", "early_stop"),
    ("sweep-typo", "sweep {space:typo_distribution} --data {data} --storage {tmp}/exps",
     "did you mean 'distribution'"),
    ("sweep-min-gt-max", "sweep {space:min_gt_max} --data {data} --storage {tmp}/exps", "parameters.lr"),
    ("sweep-searched-split", "sweep {space:searched_split} --data {data} --storage {tmp}/exps",
     "top level of the space file"),
    ("sweep-max-iter", "sweep {space:max_iter} --data {data} --storage {tmp}/exps", "max_iter"),
    ("sweep-unknown-param", "sweep {space:unknown_param} --data {data} --storage {tmp}/exps",
     "parameters.learning_rate: unknown hyperparameter 'learning_rate' (did you mean 'lr'?)"),
    ("sweep-bad-value", "sweep {space:bad_value} --data {data} --storage {tmp}/exps", "filter_org"),
    ("sweep-log-zero", "sweep {space:log_through_zero} --data {data} --storage {tmp}/exps", "parameters.lr"),
    ("sweep-grid-continuous", "sweep {space:grid_continuous} --data {data} --storage {tmp}/exps", "grid"),
    ("sweep-zero-samples", "sweep {space:good} --data {data} --storage {tmp}/exps --num-samples 0", "--num-samples 0"),
    ("sweep-zero-cpus", "sweep {space:good} --data {data} --storage {tmp}/exps --cpus-per-trial 0", "--cpus-per-trial"),
    ("sweep-more-cpus-than-cores", "sweep {space:good} --data {data} --storage {tmp}/exps --cpus-per-trial 4096",
     "no trial could ever start"),
    ("sweep-negative-gpus", "sweep {space:good} --data {data} --storage {tmp}/exps --gpus-per-trial -1", "--gpus-per-trial"),
    ("sweep-zero-concurrent", "sweep {space:good} --data {data} --storage {tmp}/exps --max-concurrent 0", "--max-concurrent"),
    ("sweep-bad-set", "sweep {space:good} --data {data} --storage {tmp}/exps --set learning_rate=1",
     "--set learning_rate: unknown config key 'learning_rate' (did you mean 'lr'?)"),  # as README says
    ("sweep-bad-split-flag", "sweep {space:good} --data {data} --storage {tmp}/exps --val-fraction 1.5", "val_fraction"),
    ("sweep-missing-data", "sweep {space:good} --data {tmp}/nowhere --storage {tmp}/exps", "nowhere"),
    ("sweep-existing-name", "sweep {space:good} --data {data} --storage {exps} --name exp", "--resume --name exp"),
    ("sweep-resume-nameless", "sweep {space:good} --data {data} --storage {tmp}/exps --resume", "--name"),
    ("evaluate-missing", "evaluate {tmp}/nowhere", "nowhere"),
    ("evaluate-not-experiment", "evaluate {foreign}", "not an inat-tune experiment"),
    ("evaluate-unfinished-run", "evaluate {run}", "has not finished (no metrics.csv or best.pt)"),
    ("explain-missing", "explain {tmp}/nowhere", "nowhere"),
    ("explain-not-experiment", "explain {foreign}", "not an inat-tune experiment"),
    ("report-missing", "report {tmp}/nowhere", "nowhere"),
    ("report-compare-into-experiment", "report {exp} {exp2} --out {exp}", "folder of its own"),
    ("bench-tiny-image", "bench --image-size 8 --quick", "image_size=8"),
    ("replay-missing", "bench --replay {tmp}/none.csv", "no such"),
    ("replay-not-a-table", "bench --replay {badyaml}", "missing column"),
    ("replay-zero-seeds", "bench --replay {fixture} --seeds 0", "--seeds 0"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """The inputs the cases point at: a small real dataset, a foreign folder, a finished run
    folder, two experiment folders, a junk weights file, a broken YAML file."""
    from inat_tune.data.synth import make_synthetic
    from test_analysis import make_experiment

    base = tmp_path_factory.mktemp("world")
    data = make_synthetic(base / "data", per_class=4, val_per_class=1, image_size=32)
    foreign = base / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    run = base / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"epochs": 1}))
    torch.save({"x": torch.zeros(1)}, run / "checkpoint.pt")
    (base / "junk.pth").write_bytes(bytes(range(256)) * 8)
    (base / "bad.yaml").write_text("lr: [1, 2\n")
    (base / "afile").write_text("x")
    exps = base / "exps"
    exp = make_experiment(exps, "exp", n=5, stopped=0)
    exp2 = make_experiment(exps, "exp2", n=5, seed=1, stopped=0)
    spaces = base / "spaces"
    spaces.mkdir()
    for name, space in {**SPACES, "good": GOOD_SPACE}.items():
        (spaces / f"{name}.yaml").write_text(yaml.safe_dump(space))
    return {"data": str(data), "foreign": str(foreign), "run": str(run), "junk": str(base / "junk.pth"),
            "badyaml": str(base / "bad.yaml"), "file": str(base / "afile"), "exp": str(exp),
            "exp2": str(exp2), "exps": str(exps), "spaces": str(spaces), "base": str(base), "fixture": str(FIXTURE)}


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case, argv, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(world, tmp_path, monkeypatch, case, argv, needle):
    monkeypatch.chdir(tmp_path)  # results/ and other defaults would land here
    fill = {**world, "tmp": str(tmp_path)}
    words = []
    for w in argv.split():
        if w.startswith("{space:"):
            w = str(Path(world["spaces"]) / f"{w[7:-1]}.yaml")
        words.append(w.format(**fill))
    before = (_snapshot(Path(world["base"])), _snapshot(tmp_path))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(words)
    text = out.getvalue() + err.getvalue()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ": error: " in ln]
    assert rc == 2, text
    assert len(errors) == 1 and "Traceback" not in text, text
    assert needle in errors[0], errors[0]
    assert (_snapshot(Path(world["base"])), _snapshot(tmp_path)) == before, f"{case} wrote something"


def test_the_table_covers_every_subcommand():
    commands = {argv.split()[0] for _, argv, _ in CASES}
    assert commands >= {"count", "data", "train", "sweep", "evaluate", "explain", "report", "bench"}
    assert len(CASES) >= 40
    assert os.path.isfile(FIXTURE)


def test_a_non_image_file_is_skipped_naming_its_path_and_what_it_is(tmp_path, caplog):
    """A .jpg that is no image is skipped with its path and "not an image (PIL cannot identify
    it)", never PIL's "cannot identify image file <_io.BytesIO object at 0x...>"."""
    from inat_tune.data.cache import build_cache
    from inat_tune.data.scan import decode_image
    from inat_tune.data.synth import make_synthetic

    with pytest.raises(ValueError, match=r"^not an image \(PIL cannot identify it\)$"):
        decode_image(b"these bytes are no image\n" * 20, 32)
    data = make_synthetic(tmp_path / "data", per_class=3, val_per_class=1, image_size=32)
    cls = sorted(p.name for p in (data / "train").iterdir())[0]
    junk = data / "train" / cls / "junk.jpg"
    junk.write_bytes(b"these bytes are no image\n" * 20)
    caplog.set_level("WARNING")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["data", "cache", "--data", str(data), "--image-size", "32"]) == 0
    assert json.loads(out.getvalue())["skipped"] == 1
    said = [r.getMessage() for r in caplog.records if "skipped 1 unreadable" in r.getMessage()]
    assert len(said) == 1 and f"{junk} (not an image (PIL cannot identify it))" in said[0], said
    assert "BytesIO" not in caplog.text
    # a cache built before this wording holds PIL's text: it is read back as the same reason
    images = sorted(f"train/{c.name}/{f.name}" for c in (data / "train").iterdir() for f in c.iterdir())
    cache = build_cache(data, images, 32, progress=False)
    meta = json.loads((cache.path / "meta.json").read_text())
    meta["skipped"] = [[f, "cannot decode: cannot identify image file <_io.BytesIO object at 0x7f00>"]
                       for f, _ in meta["skipped"]]
    (cache.path / "meta.json").write_text(json.dumps(meta))
    assert build_cache(data, images, 32, progress=False).skipped == \
        ((f"train/{cls}/junk.jpg", "not an image (PIL cannot identify it)"),)
