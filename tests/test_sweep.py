"""The sweep service end to end: TPE + ASHA on Ray Tune, checkpoints, W&B offline, errors;
and ``plan_sweep``, the checks and settings of ``inat_tune.sweep`` before Ray starts."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from inat_tune.cli import main
from inat_tune.tune.runner import SweepError, SweepOptions, check_gpus, plan_sweep

TINY_SPACE = {
    "model": "scratch_cnn",
    "method": "bayes",
    "metric": {"name": "val_acc", "goal": "maximize"},
    "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
    "parameters": {
        "image_size": {"value": 32},
        "filters": {"values": [8, 16]},
        "dense": {"values": [16, 32]},
        # wide on purpose: low rates stay near chance and ASHA has something to stop
        "lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 3e-2},
        "batch_size": {"value": 16},
        "augment": {"value": False},
        "epochs": {"value": 4},
    },
}


def _trial_dirs(exp: Path) -> list[Path]:
    return sorted(p for p in exp.iterdir() if p.is_dir() and (p / "params.json").is_file())


def _results(trial: Path) -> list[dict]:
    return [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One real 6-trial TPE + ASHA sweep (W&B offline) shared by the tests below, run through
    the Python API (``inat_tune.sweep``) with the space as a mapping; the CLI's own path is
    the one the error tests below, the cluster tests and helpers_sweep take."""
    import ray

    import inat_tune
    from inat_tune.data.synth import make_synthetic

    base = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INAT_TUNE_CACHE", str(base / "cache"))
        mp.setenv("WANDB_MODE", "offline")
        mp.delenv("WANDB_API_KEY", raising=False)
        ds = make_synthetic(base / "ds", per_class=16, val_per_class=4, image_size=36, seed=1)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exp = inat_tune.sweep(TINY_SPACE, ds, storage=base / "exps", name="tiny", num_samples=6,
                                  max_concurrent=2, seed=3, overrides={"batch_size": 16})
        ray.shutdown()
    return {"experiment": exp, "exp": base / "exps" / "tiny", "ds": ds, "out": out.getvalue(),
            "base": base}


@pytest.mark.slow
def test_sweep_finishes_with_asha_stopping_some_trials(sweep):
    from inat_tune.experiment import Experiment

    assert isinstance(sweep["experiment"], Experiment), sweep["out"]
    assert sweep["experiment"].path == sweep["exp"] and len(sweep["experiment"].trials) == 6
    trials = _trial_dirs(sweep["exp"])
    assert len(trials) == 6
    epochs_run = [len(_results(t)) for t in trials]
    assert all(1 <= e <= 4 for e in epochs_run)
    assert any(e < 4 for e in epochs_run), epochs_run  # ASHA stopped at least one early
    assert any(e == 4 for e in epochs_run)
    # the experiment records what it ran with
    exp = sweep["exp"]
    saved = json.loads((exp / "sweep.json").read_text())
    assert saved["data_dir"] == str(sweep["ds"].resolve()) and saved["space_path"] == "<mapping>"
    assert saved["overrides"] == ["batch_size=16"] and saved["num_samples"] == 6
    assert yaml.safe_load((exp / "space.yaml").read_text())["method"] == "bayes"
    manifest = json.loads((exp / "split_manifest.json").read_text())
    assert manifest["val"] and all(f.startswith("train/") for f in manifest["train"] + manifest["val"])
    # compact console output, then the summary with the next commands
    out = sweep["out"]
    assert "[start]" in out and "best val_acc" in out and "inat-tune evaluate" in out
    assert "CPU-seconds" in out


@pytest.mark.slow
def test_summary_names_the_trial_evaluate_would_pick(sweep):
    import re

    from inat_tune.experiment import best_trial

    best = best_trial(sweep["experiment"])
    line = re.search(r"best val_acc: ([0-9.]+) \(trial (\w+), checkpoint: (\S+)\)", sweep["out"])
    assert line, sweep["out"]
    assert line[2] == best.trial.trial_id and float(line[1]) == pytest.approx(best.value, abs=1e-4)
    assert Path(line[3]) == best.checkpoint.parent


@pytest.mark.slow
def test_every_trial_checkpointed_and_best_reproduces_val_acc(sweep):
    from inat_tune.data.loader import DeviceLoader, to_device
    from inat_tune.data.pipeline import load_tuning_data
    from inat_tune.train import evaluate, load_model

    best = None
    for t in _trial_dirs(sweep["exp"]):
        ckpts = sorted(t.glob("checkpoint_*/checkpoint.pt"))
        assert ckpts, f"{t.name} has no checkpoint"
        for c in ckpts:
            import torch
            epoch = torch.load(c, map_location="cpu", weights_only=False)["epoch"]
            acc = _results(t)[epoch - 1]["val_acc"]
            if best is None or acc > best[0]:
                best = (acc, c)
        r = _results(t)[-1]
        assert {"gpu_seconds", "cpu_seconds", "trainable_params", "node_ip"} <= set(r)
    acc, path = best
    model, cfg, ckpt = load_model(path)
    data = load_tuning_data(sweep["ds"], cfg.image_size, cfg.val_fraction, cfg.split_seed,
                            cache_dir=sweep["base"] / "cache", progress=False)
    x, y = to_device(data.val.images, data.val.labels, "cpu")
    again = evaluate(model, DeviceLoader(x, y, 256, mean=ckpt["mean"], std=ckpt["std"]))
    assert again["acc"] == pytest.approx(acc, abs=1e-9)


@pytest.mark.slow
def test_wandb_offline_runs_mirror_every_trial(sweep):
    runs = sorted(sweep["exp"].glob("*/wandb/offline-run-*"))
    assert len(runs) == 6
    # Every trial gets its offline run, complete: the logging actor is killed only after
    # wandb.teardown (a kill right after wandb.finish left 7-byte .wandb files), and runs are
    # written into the experiment folder, not synced there before they end (wandb_mirror.py).
    complete = 0
    for run in runs:
        trial = run.parent.parent
        (log,) = run.glob("*.wandb")  # the offline run's record log (what `wandb sync` uploads)
        data = log.read_bytes()
        # one history record per epoch, each holding the metric keys as protobuf strings
        if data.count(b"val_acc") >= len(_results(trial)) and b"filters" in data:
            complete += 1
    assert complete == len(runs), f"{complete} of {len(runs)} W&B runs hold their metrics"
    assert "wandb sync" in sweep["out"]


# --- refused before Ray starts ------------------------------------------------------------

@pytest.fixture()
def space_file(tmp_path):
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(TINY_SPACE))
    return p


def _has_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


@pytest.mark.parametrize("extra,message", [
    (["--num-samples", "0"], "--num-samples"),
    pytest.param(["--gpus-per-trial", "0.25"], "no GPU",
                 marks=pytest.mark.skipif(_has_cuda(), reason="a GPU is visible here")),
    (["--cpus-per-trial", "0"], "--cpus-per-trial"),
])
def test_bad_options_refused(space_file, synth_data, tmp_path, extra, message, capsys):
    rc = main(["sweep", str(space_file), "--data", str(synth_data), "--storage", str(tmp_path / "s"),
               "--no-wandb", *extra])
    assert rc == 2 and message in capsys.readouterr().out


def test_missing_data_and_unwritable_storage_refused(space_file, synth_data, tmp_path, capsys):
    rc = main(["sweep", str(space_file), "--data", str(tmp_path / "nope"), "--no-wandb",
               "--storage", str(tmp_path / "s")])
    assert rc == 2 and "does not exist" in capsys.readouterr().out
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = main(["sweep", str(space_file), "--data", str(synth_data), "--no-wandb",
               "--storage", str(blocker / "sub")])
    assert rc == 2 and "--storage" in capsys.readouterr().out


def test_bad_space_refused_naming_the_key(tmp_path, synth_data, capsys):
    bad = dict(TINY_SPACE, parameters={**TINY_SPACE["parameters"], "learning_rate": {"value": 0.1}})
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    rc = main(["sweep", str(p), "--data", str(synth_data), "--no-wandb", "--storage", str(tmp_path)])
    assert rc == 2 and "parameters.learning_rate" in capsys.readouterr().out


def test_resume_of_unknown_experiment_refused(space_file, synth_data, tmp_path, capsys):
    rc = main(["sweep", str(space_file), "--data", str(synth_data), "--no-wandb",
               "--storage", str(tmp_path), "--resume"])
    assert rc == 2 and "--name" in capsys.readouterr().out


def test_unknown_finetune_stage_refused_before_ray(tmp_path, synth_data, capsys):
    space = {"model": "finetune", "method": "random", "metric": {"name": "val_acc", "goal": "maximize"},
             "parameters": {"backbone": {"value": "resnet18"}, "image_size": {"value": 32},
                            "strategy": {"values": ["head_only", "freeze_until:layer9"]}}}
    p = tmp_path / "ft.yaml"
    p.write_text(yaml.safe_dump(space))
    rc = main(["sweep", str(p), "--data", str(synth_data), "--no-wandb", "--storage", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 2 and "parameters.strategy" in out and "layer9" in out and "layer4" in out


def test_gpu_requests_are_checked_against_what_is_visible():
    check_gpus(0, None)
    check_gpus(0.25, 1)
    check_gpus(1, 2)
    one = "fractions <= 1 share GPUs; one trial uses one GPU"  # fit() trains on one device
    for gpus, available, message in ((0.25, 0, "no GPU"), (0.25, None, "no GPU"),
                                     (2, 2, one), (2, 1, one), (1.5, 2, one), (2, float("inf"), one),
                                     (-1, 1, "must be >= 0")):
        with pytest.raises(SweepError, match=message):
            check_gpus(gpus, available)


# --- plan_sweep: what inat_tune.sweep checks and resolves before Ray starts ------------------

def test_plan_takes_a_mapping_and_overrides_in_either_form(synth_data, tmp_path):
    opts, spec = plan_sweep(TINY_SPACE, synth_data, storage=tmp_path, overrides={"lr": 1e-3})
    assert opts.space_path == "<mapping>" and opts.name.startswith("sweep-")
    assert opts.num_samples == 20 and opts.data_dir == str(synth_data.resolve())
    assert opts.experiment_path == str(tmp_path.resolve() / opts.name)
    assert spec.parameters["lr"].is_constant and spec.parameters["lr"].value == 1e-3
    assert opts.overrides == ("lr=0.001",)
    opts2, spec2 = plan_sweep(TINY_SPACE, synth_data, storage=tmp_path, overrides=["lr=0.001"],
                              name="n", num_samples=3, use_wandb=False)
    assert spec2 == spec and (opts2.name, opts2.num_samples, opts2.use_wandb) == ("n", 3, False)
    grid = dict(TINY_SPACE, method="grid", parameters={"filters": {"values": [8, 16]}})
    assert plan_sweep(grid, synth_data, num_samples=5)[0].num_samples == 1  # one pass of the grid


def test_plan_of_a_resume_keeps_the_saved_settings_and_a_new_address(space_file, synth_data,
                                                                     tmp_path):
    with pytest.raises(SweepError, match="--name"):
        plan_sweep(space_file, synth_data, storage=tmp_path, resume=True)
    first, _ = plan_sweep(space_file, synth_data, storage=tmp_path, name="exp", num_samples=4,
                          seed=9, overrides=["epochs=2"], address="ray://old:10001")
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "sweep.json").write_text(json.dumps({**first.__dict__, "overrides":
                                                             list(first.overrides)}))
    again, _ = plan_sweep(space_file, synth_data, storage=tmp_path, name="exp", resume=True,
                          num_samples=7, seed=1)
    assert again == first  # options given again (num_samples, seed) do not change the experiment
    moved, _ = plan_sweep(space_file, synth_data, storage=tmp_path, name="exp", resume=True,
                          address="ray://new:10001")
    assert moved == SweepOptions(**{**first.__dict__, "address": "ray://new:10001"})
