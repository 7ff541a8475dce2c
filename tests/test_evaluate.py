"""Reading experiment folders, choosing the best trial on validation data, and ``evaluate``.

The real (tiny) sweep is conftest's ``finished_experiment``, run once per session; the other
cases are hand-made experiment folders with the same layout, so each rule is checked on a
known answer.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from helpers_sweep import N_TRIALS
from inat_tune.data.scan import DatasetError
from inat_tune.evaluate import classification_metrics, evaluate_experiment, plot_prediction_grid
from inat_tune.experiment import ExperimentError, best_trial, load_experiment, trial_checkpoint


def _data(exp_dir: Path) -> Path:
    """The dataset the sweep ran on (its sweep.json names it)."""
    return Path(load_experiment(exp_dir).data_dir)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _results(trial_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (trial_dir / "result.json").read_text().splitlines() if x.strip()]


def _write_results(trial_dir: Path, rows: list[dict]) -> None:
    (trial_dir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


# ---------------------------------------------------------------------------------------------
# The real sweep

@pytest.mark.slow
def test_load_experiment_reads_a_real_sweep(finished_experiment):
    exp_dir = finished_experiment
    ds = exp_dir.parent / "ds"  # where the fixture generated the data
    exp = load_experiment(exp_dir)
    assert exp.name == "exp" and exp.data_dir == str(ds.resolve())
    assert (exp.metric, exp.mode) == ("val_acc", "max")
    assert exp.spec is not None and exp.spec.method == "bayes" and exp.spec.early_terminate
    # ASHA may stop a trial after epoch 1: it is finished all the same (Ray says TERMINATED)
    assert len(exp.trials) == N_TRIALS and all(t.status == "finished" for t in exp.trials)
    assert max(t.epochs_run for t in exp.trials) == 2  # the first trial at the rung goes on
    for t in exp.trials:
        assert t.config == json.loads((t.path / "params.json").read_text())
        assert [r["epoch"] for r in t.results] == list(range(1, t.epochs_run + 1)) and t.epochs_run >= 1
        assert t.checkpoints, t
        # Ray's numbering: checkpoint_00000N holds training_iteration N + 1; the file agrees
        for r in t.results:
            ckpt = trial_checkpoint(t, r)
            if ckpt is None:
                continue  # not kept
            assert ckpt.parent.name == f"checkpoint_{r['training_iteration'] - 1:06d}"
            assert torch.load(ckpt, weights_only=False)["epoch"] == r["epoch"]


@pytest.mark.slow
def test_evaluate_writes_consistent_outputs_and_wandb_run(experiment_copy):
    exp_dir = experiment_copy
    ds = _data(exp_dir)
    exp = load_experiment(exp_dir)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = evaluate_experiment(exp_dir, use_wandb=True)
    assert "test_acc" in out.getvalue()

    # the best trial by validation accuracy (computed here from the raw files)
    best_val = {t.trial_id: max(r["val_acc"] for r in t.results) for t in exp.trials}
    assert result["trial_id"] == max(best_val, key=best_val.get)
    assert result["val_metric"] == {"name": "val_acc", "mode": "max", "value": max(best_val.values())}

    preds = _rows(exp_dir / "predictions.csv")
    n_test = sum(1 for _ in (ds / "val").rglob("*.jpg"))
    assert len(preds) == n_test == result["n_test"] == 50
    assert {r["file"] for r in preds} == {str(p.relative_to(ds)) for p in (ds / "val").rglob("*.jpg")}
    acc = np.mean([r["true"] == r["predicted"] for r in preds])
    assert result["test_acc"] == pytest.approx(acc)
    assert all(0.0 < float(r["probability"]) <= 1.0 for r in preds)
    for c, a in result["per_class_accuracy"].items():
        mine = [r["true"] == r["predicted"] for r in preds if r["true"] == c]
        assert a == pytest.approx(np.mean(mine))

    saved = json.loads((exp_dir / "test_metrics.json").read_text())
    assert saved["test_acc"] == result["test_acc"] and saved["trial_id"] == result["trial_id"]
    assert saved["config"]["model"] == "scratch_cnn" and saved["config"]["filters"] == 8
    assert Path(saved["checkpoint"]).is_file()
    assert 0.0 <= saved["macro_f1"] <= 1.0

    cm = _rows(exp_dir / "confusion_matrix.csv")
    counts = np.array([[int(v) for k, v in r.items() if k != "true \\ predicted"] for r in cm])
    assert counts.shape == (10, 10) and counts.sum() == 50
    assert np.trace(counts) / 50 == pytest.approx(result["test_acc"])

    for name, least in (("confusion_matrix.png", (500, 500)), ("prediction_grid.png", (800, 1400))):
        w, h = Image.open(exp_dir / name).size
        assert w >= least[0] and h >= least[1], (name, w, h)
    # W&B offline (WANDB_MODE=offline from conftest): the run folder is in the experiment
    assert list((exp_dir / "wandb").glob("offline-run-*")), list(exp_dir.iterdir())


def _constant_predictor(ckpt_path: Path, cls: int) -> None:
    """Make a checkpoint's scratch CNN predict class ``cls`` for every image."""
    ckpt = torch.load(ckpt_path, weights_only=False)
    w = ckpt["model"]["head.out.weight"]
    ckpt["model"]["head.out.weight"] = torch.zeros_like(w)
    bias = torch.zeros(w.shape[0])
    bias[cls] = 10.0
    ckpt["model"]["head.out.bias"] = bias
    torch.save(ckpt, ckpt_path)


@pytest.mark.slow
def test_best_trial_is_chosen_by_validation_even_when_another_is_better_on_test(experiment_copy, tmp_path):
    """Trial A predicts class 0 everywhere, trial B class 1; the test set has 5 images of class
    0 and 1 of every other class, so A scores 5/14 on test and B 1/14. B has the higher
    validation accuracy: evaluate must report B, with B's best-epoch checkpoint."""
    exp_dir = experiment_copy
    ds = tmp_path / "ds"
    shutil.copytree(_data(exp_dir), ds)
    for cls_dir in sorted((ds / "val").iterdir())[1:]:
        for f in sorted(cls_dir.iterdir())[1:]:
            f.unlink()
    # A must have run both epochs (ASHA may have stopped the others after one); the other
    # trials are B and the rest, which score 0 on validation so they are never chosen
    trials = sorted(load_experiment(exp_dir).trials, key=lambda t: -t.epochs_run)
    a, b, rest = trials[0], trials[1], trials[2:]
    assert a.epochs_run == 2
    for t in rest:
        _write_results(t.path, [dict(r, val_acc=0.0) for r in _results(t.path)])
    for trial, cls in ((a, 0), (b, 1)):
        # Ray keeps a trial's best and latest checkpoints only: give every epoch its own, as
        # a sweep with a larger num_to_keep would leave them
        kept = trial.checkpoints[-1]
        for row in _results(trial.path):
            ckpt = trial.path / f"checkpoint_{row['training_iteration'] - 1:06d}" / "checkpoint.pt"
            if not ckpt.is_file():
                payload = torch.load(kept, weights_only=False)
                payload["epoch"] = row["epoch"]
                ckpt.parent.mkdir()
                torch.save(payload, ckpt)
            _constant_predictor(ckpt, cls)

    def set_val(trial, values):
        rows = _results(trial.path)
        for r, v in zip(rows, values):
            r["val_acc"] = v
        _write_results(trial.path, rows)

    set_val(a, [0.20, 0.30])
    set_val(b, [0.60, 0.50])  # B's best epoch is its first
    r = evaluate_experiment(exp_dir, data=ds, use_wandb=False)
    assert r["n_test"] == 14
    assert r["trial_id"] == b.trial_id and r["val_metric"]["value"] == 0.60
    assert r["test_acc"] == pytest.approx(1 / 14)
    assert r["checkpoint_epoch"] == 1
    assert Path(r["checkpoint"]).parent.name == "checkpoint_000000"

    # the other way round, A is chosen and scores 5/14: B was not chosen for its test score
    set_val(a, [0.70, 0.80])
    r = evaluate_experiment(exp_dir, data=ds, use_wandb=False)
    assert r["trial_id"] == a.trial_id and r["test_acc"] == pytest.approx(5 / 14)
    assert r["checkpoint_epoch"] == 2 and Path(r["checkpoint"]).parent.name == "checkpoint_000001"


@pytest.mark.slow
def test_dataset_whose_classes_differ_is_refused(finished_experiment, tmp_path):
    exp_dir = finished_experiment  # refused before anything is written into it
    ds = tmp_path / "other"
    shutil.copytree(_data(exp_dir), ds)
    for split in ("train", "val"):
        (ds / split / "Fungi").rename(ds / split / "Mushrooms")
    with pytest.raises(DatasetError, match="differ from the model's"):
        evaluate_experiment(exp_dir, data=ds, use_wandb=False)


@pytest.mark.slow
def test_missing_checkpoint_names_the_trial(experiment_copy):
    exp_dir = experiment_copy
    best = best_trial(load_experiment(exp_dir)).trial
    for ckpt in best.checkpoints:
        shutil.rmtree(ckpt.parent)
    with pytest.raises(ExperimentError, match=f"trial {best.trial_id}.*no checkpoint"):
        evaluate_experiment(exp_dir, use_wandb=False)


def _set_ray_status(exp_dir: Path, trial_id: str, status: str) -> None:
    """Rewrite a trial's status in Ray's experiment_state-*.json (what experiment.py trusts)."""
    for f in exp_dir.glob("experiment_state-*.json"):
        data = json.loads(f.read_text())
        for item in data["trial_data"]:
            info = json.loads(item[0]) if isinstance(item[0], str) else item[0]
            if info["trial_id"] == trial_id:
                info["status"] = status
                item[0] = json.dumps(info) if isinstance(item[0], str) else info
        f.write_text(json.dumps(data))


@pytest.mark.slow
def test_analysis_report_and_evaluate_take_the_same_finished_trial(experiment_copy):
    """The highest val_acc belongs to a trial that errored, then (second case) to one Ray
    still runs: the analysis, the report and evaluate all name the best *finished* trial."""
    from inat_tune import analysis as an
    from inat_tune.report import write_report

    exp_dir = experiment_copy
    leader, *others = load_experiment(exp_dir).trials  # the leader is created first: no tie helps it
    for t, acc in [(leader, 0.99)] + [(t, 0.5 + 0.1 * i) for i, t in enumerate(others)]:
        _write_results(t.path, [dict(r, val_acc=acc) for r in _results(t.path)])
    expected = others[-1].trial_id  # the best of the finished trials: 0.5 + 0.1 x (N_TRIALS - 2)
    (leader.path / "error.txt").write_text("Traceback ...\nRuntimeError: CUDA out of memory\n")
    for status in ("ERROR", "RUNNING"):
        if status == "RUNNING":
            (leader.path / "error.txt").unlink()
        _set_ray_status(exp_dir, leader.trial_id, status)
        (exp_dir / "test_metrics.json").unlink(missing_ok=True)  # the report must choose on its own
        df = an.load_results(exp_dir)
        row = df.set_index("trial_id").loc[leader.trial_id]
        assert row["status"] == {"ERROR": "errored", "RUNNING": "unfinished"}[status]
        assert row["best_val_acc"] == df["best_val_acc"].max() == 0.99
        assert an.best_trial(df, an.read_space(exp_dir))["trial_id"] == expected
        md = write_report(exp_dir, use_wandb=False).read_text()
        assert f"Best trial {expected} " in md and f"| trial | {expected} |" in md
        r = evaluate_experiment(exp_dir, use_wandb=False)
        assert r["trial_id"] == expected and r["val_metric"]["value"] == pytest.approx(0.5 + 0.1 * (N_TRIALS - 2))


# ---------------------------------------------------------------------------------------------
# Hand-made experiment folders

def make_experiment(root: Path, trials: dict[str, dict], metric=("val_acc", "maximize")) -> Path:
    """An experiment folder; ``trials[id]`` = {"val": [per-epoch metric], "done": bool,
    "error": bool, "keep": [checkpoint indices kept], "dir_names": bool}."""
    root.mkdir(parents=True)
    (root / "sweep.json").write_text(json.dumps({"name": root.name, "data_dir": str(root / "data")}))
    (root / "space.yaml").write_text(yaml.safe_dump({"model": "scratch_cnn", "method": "random",
                                                     "metric": {"name": metric[0], "goal": metric[1]}}))
    for tid, spec in trials.items():
        d = root / f"scratch_cnn_trainable_{tid}"
        d.mkdir()
        (d / "params.json").write_text(json.dumps({"lr": 0.001}))
        values = spec.get("val", [])
        rows = []
        for i, v in enumerate(values):
            row = {"epoch": i + 1, metric[0]: v, "training_iteration": i + 1, "trial_id": tid,
                   "done": bool(spec.get("done", True)) and i == len(values) - 1}
            if spec.get("dir_names", True):
                row["checkpoint_dir_name"] = f"checkpoint_{i:06d}"
            rows.append(row)
        _write_results(d, rows)
        history = [{"epoch": i + 1, metric[0]: v} for i, v in enumerate(values)]
        for i in spec.get("keep", range(len(values))):
            epoch = spec.get("saved_epoch", {}).get(i, i + 1)
            (d / f"checkpoint_{i:06d}").mkdir()
            torch.save({"epoch": epoch, "history": history[:epoch]}, d / f"checkpoint_{i:06d}" / "checkpoint.pt")
        if spec.get("error"):
            (d / "error.txt").write_text("Traceback ...\nRuntimeError: CUDA out of memory\n")
    return root


def test_best_trial_uses_the_best_epoch_of_each_trial(tmp_path):
    exp = load_experiment(make_experiment(tmp_path / "e", {
        "aaa": {"val": [0.5, 0.7, 0.6]},
        "bbb": {"val": [0.65, 0.66, 0.69]},  # better last epoch, worse best epoch
        "ccc": {"val": [0.9], "done": False},  # unfinished: not a candidate by default
    }))
    best = best_trial(exp)
    assert best.trial.trial_id == "aaa" and best.value == 0.7 and best.epoch == 2
    assert best.checkpoint == exp.trial("aaa").path / "checkpoint_000001" / "checkpoint.pt"
    assert best_trial(exp, include_unfinished=True).trial.trial_id == "ccc"
    assert [t.status for t in exp.trials] == ["finished", "finished", "unfinished"]


def test_best_trial_minimises_when_the_metric_says_so(tmp_path):
    exp = load_experiment(make_experiment(tmp_path / "e", {
        "aaa": {"val": [1.2, 0.9]}, "bbb": {"val": [1.0, 0.95]}}, metric=("val_loss", "minimize")))
    best = best_trial(exp)
    assert (exp.metric, exp.mode) == ("val_loss", "min")
    assert best.trial.trial_id == "aaa" and best.value == 0.9 and best.checkpoint.parent.name == "checkpoint_000001"


def test_checkpoint_index_follows_training_iteration_without_dir_names(tmp_path):
    exp = load_experiment(make_experiment(tmp_path / "e", {"aaa": {"val": [0.1, 0.8, 0.3], "dir_names": False}}))
    best = best_trial(exp)
    assert best.checkpoint.parent.name == "checkpoint_000001" and best.epoch == 2


def test_checkpoint_whose_saved_epoch_disagrees_is_not_trusted(tmp_path):
    # checkpoint_000001 claims epoch 3 and checkpoint_000002 epoch 2 (a renumbered folder):
    # the saved epoch decides
    exp = load_experiment(make_experiment(tmp_path / "e", {
        "aaa": {"val": [0.1, 0.8, 0.3], "saved_epoch": {1: 3, 2: 2}}}))
    best = best_trial(exp)
    assert best.epoch == 2 and best.checkpoint.parent.name == "checkpoint_000002"


def test_best_epoch_not_kept_falls_back_to_best_saved_metric(tmp_path, caplog):
    exp = load_experiment(make_experiment(tmp_path / "e", {
        "aaa": {"val": [0.5, 0.9, 0.6, 0.7], "keep": [2, 3]}}))
    best = best_trial(exp)
    assert best.checkpoint.parent.name == "checkpoint_000003"
    assert (best.epoch, best.value) == (4, 0.7)
    assert "was not kept" in caplog.text


def test_not_an_experiment_folder(tmp_path):
    with pytest.raises(ExperimentError, match="does not exist"):
        load_experiment(tmp_path / "nope")
    make_experiment(tmp_path / "storage" / "exp1", {"aaa": {"val": [0.5]}})
    with pytest.raises(ExperimentError, match=r"not an inat-tune experiment folder.*exp1"):
        load_experiment(tmp_path / "storage")  # the storage root: the message names what is inside


def test_no_finished_trial(tmp_path):
    exp = load_experiment(make_experiment(tmp_path / "e", {
        "aaa": {"val": [0.5], "done": False, "error": True},
        "bbb": {"val": [0.4], "done": False}}))
    with pytest.raises(ExperimentError, match=r"no finished trial \(2 trials: 1 errored, 1 unfinished\)"
                                              r".*CUDA out of memory.*--resume"):
        best_trial(exp)
    empty = load_experiment(make_experiment(tmp_path / "f", {}))
    with pytest.raises(ExperimentError, match="no trial folders"):
        best_trial(empty)
    other = make_experiment(tmp_path / "g", {"aaa": {"val": [0.5]}}, metric=("val_loss", "minimize"))
    (other / "space.yaml").write_text(yaml.safe_dump({"metric": {"name": "val_acc", "goal": "maximize"}}))
    with pytest.raises(ExperimentError, match="no finished trial reported val_acc"):
        best_trial(load_experiment(other))


def test_missing_checkpoint_of_a_hand_made_trial_names_it(tmp_path):
    exp = load_experiment(make_experiment(tmp_path / "e", {
        "aaa": {"val": [0.9], "keep": []}, "bbb": {"val": [0.5]}}))
    with pytest.raises(ExperimentError, match="trial aaa .*no checkpoint"):
        best_trial(exp)


def test_a_test_metric_cannot_choose(tmp_path):
    with pytest.raises(ExperimentError, match="test metric"):
        load_experiment(make_experiment(tmp_path / "e", {"aaa": {"val": [0.5]}},
                                        metric=("test_acc", "maximize")))


# ---------------------------------------------------------------------------------------------
# Metrics and the grid, on known numbers

def test_classification_metrics_on_a_known_case():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 0, 2])
    probs = np.eye(3)[pred] * 0.7 + 0.1
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["test_acc"] == pytest.approx(4 / 6)
    assert m["per_class_accuracy"] == pytest.approx({"a": 0.5, "b": 1.0, "c": 0.5})
    # F1: a: p=1/2 r=1/2 -> 0.5; b: p=2/3 r=1 -> 0.8; c: p=1 r=1/2 -> 2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_classification_metrics_keep_a_class_absent_from_the_test_set():
    # class "d" has no test image and is never predicted: it keeps its row, column and keys,
    # with F1 0, and counts in the macro F1 (4 classes, not 3)
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 0, 2])
    probs = np.eye(4)[pred] * 0.6 + 0.1
    m = classification_metrics(y, probs, ["a", "b", "c", "d"])
    assert m["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert m["per_class_n"] == {"a": 2, "b": 2, "c": 2, "d": 0}
    assert m["per_class_accuracy"]["d"] == 0.0 and m["per_class_f1"]["d"] == 0.0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3 + 0.0) / 4)


def test_prediction_grid_shape_and_size(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 4)[:-3]  # the last class has a single image
    images = rng.integers(0, 255, (len(labels), 32, 32, 3), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(10), len(labels)).astype(np.float32)
    classes = [f"class_{i}_with_a_long_name" for i in range(10)]
    assert plot_prediction_grid(images, labels, probs, classes, tmp_path / "g.png") == (10, 3)
    w, h = Image.open(tmp_path / "g.png").size
    assert 800 <= w <= 1400 and 1.3 * w < h < 2.5 * w


def test_a_tied_best_epoch_whose_checkpoint_was_kept_is_used_quietly(tmp_path, caplog):
    # epochs 2 and 4 tie; Ray kept only the later one's checkpoint
    exp = load_experiment(make_experiment(tmp_path / "e", {"aaa": {"val": [0.5, 0.8, 0.6, 0.8], "keep": [3]}}))
    best = best_trial(exp)
    assert (best.epoch, best.value, best.checkpoint.parent.name) == (4, 0.8, "checkpoint_000003")
    assert "not kept" not in caplog.text


# ---------------------------------------------------------------------------------------------
# W&B: evaluate and report do as the sweep did (sweep --no-wandb is remembered in sweep.json)

def _one_trial_experiment(base: Path, data: Path, use_wandb: bool) -> Path:
    """A sweep-like experiment folder of one trial whose checkpoint a real fit() wrote (1 epoch,
    32 px): what evaluate reads, without starting Ray."""
    from inat_tune.config import RunConfig
    from inat_tune.data.pipeline import load_tuning_data
    from inat_tune.train import fit

    cfg = RunConfig.from_dict({"image_size": 32, "filters": 8, "dense": 16, "batch_size": 32,
                               "augment": False, "epochs": 1})
    exp = base / "exp"
    trial = exp / "scratch_cnn_trainable_aaa"
    result = fit(cfg, load_tuning_data(data, 32, 0.2, 0, progress=False), out_dir=trial / "checkpoint_000000",
                 log=None)
    _write_results(trial, [{**m, "trial_id": "aaa", "training_iteration": m["epoch"], "done": True,
                            "checkpoint_dir_name": "checkpoint_000000", "config": cfg.to_dict()}
                           for m in result.history])
    (trial / "params.json").write_text(json.dumps(cfg.to_dict()))
    (exp / "space.yaml").write_text(yaml.safe_dump({"model": "scratch_cnn", "method": "random",
                                                    "metric": {"name": "val_acc", "goal": "maximize"},
                                                    "parameters": {"lr": {"values": [1e-3, 3e-3]}}}))
    (exp / "sweep.json").write_text(json.dumps({"name": "exp", "data_dir": str(data), "use_wandb": use_wandb}))
    return exp


def test_evaluate_and_report_follow_the_sweeps_wandb_setting(synth_data, tmp_path, monkeypatch):
    import wandb

    from inat_tune.cli import main
    from inat_tune.report import write_report
    from test_analysis import make_experiment

    calls: list[str] = []

    def init(*args, **kwargs):  # records the run that would be logged; no W&B here
        calls.append(kwargs.get("job_type"))
        raise RuntimeError("W&B stubbed out by the test")

    monkeypatch.setattr(wandb, "init", init)
    exp = _one_trial_experiment(tmp_path / "a", synth_data, use_wandb=False)  # as sweep --no-wandb
    many = make_experiment(tmp_path / "b", "many", n=5, stopped=0)  # a sweep of 5 trials to report
    for e in (exp, many):
        sweep = json.loads((e / "sweep.json").read_text())
        (e / "sweep.json").write_text(json.dumps({**sweep, "use_wandb": False}))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["evaluate", str(exp)]) == 0 and main(["report", str(many)]) == 0
        evaluate_experiment(exp)
        write_report(many)
        assert calls == [] and not list(tmp_path.rglob("wandb")), calls  # no W&B run anywhere
        assert main(["evaluate", str(exp), "--wandb"]) == 0 and main(["report", str(many), "--wandb"]) == 0
        assert calls == ["evaluate", "report"]
        calls.clear()
        for e in (exp, many):  # a sweep that mirrored to W&B: so do evaluate and report, unless told
            sweep = json.loads((e / "sweep.json").read_text())
            (e / "sweep.json").write_text(json.dumps({**sweep, "use_wandb": True}))
        assert main(["evaluate", str(exp)]) == 0 and main(["report", str(many)]) == 0
        assert calls == ["evaluate", "report"]
        calls.clear()
        assert main(["evaluate", str(exp), "--no-wandb"]) == 0 and main(["report", str(many), "--no-wandb"]) == 0
        assert calls == []


def test_prediction_grid_title_and_size_follow_what_is_drawn(tmp_path, drawn):
    # every class has 2 test images (one has none): asked for 3 per class, 2 are shown
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2, 4], 2)
    images = rng.integers(0, 255, (len(labels), 32, 32, 3), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(5), len(labels)).astype(np.float32)
    classes = ["a", "b", "c", "d", "e"]
    assert plot_prediction_grid(images, labels, probs, classes, tmp_path / "g.png", per_class=3,
                                title="exp: trial t") == (4, 2)
    fig = drawn[-1]
    title = fig._suptitle.get_text().replace("\n", " ")
    assert "2 per class" in title and "3 per class" not in title, title
    assert "no test image" in title and ": d" in title
    # the size follows 4 rows of 2 cells, and no panel is an empty placeholder
    w, h = fig.get_size_inches()
    assert w == pytest.approx(3.5 * 2 + 0.2) and h < 1.95 * 4 + 1.5
    assert all(ax.axison for ax in fig.axes) and len(fig.axes) == 4 * 2 * 2
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()  # the figure as saved, on a canvas that measures text
    r = fig.canvas.get_renderer()
    sup = fig._suptitle.get_window_extent(r)
    assert fig.bbox.x0 <= sup.x0 and sup.x1 <= fig.bbox.x1  # a long title is wrapped, not clipped


def test_prediction_grid_title_says_a_varying_count(tmp_path, drawn):
    rng = np.random.default_rng(1)
    labels = np.array([0, 0, 0, 1])
    images = rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(2), 4).astype(np.float32)
    assert plot_prediction_grid(images, labels, probs, ["a", "b"], tmp_path / "g.png", per_class=3) == (2, 3)
    assert "1-3 per class" in drawn[-1]._suptitle.get_text().replace("\n", " ")
