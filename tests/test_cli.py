"""The command-line contract: help, count, data synth/cache, and clean error exits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from inat_tune.cli import get_args_parser, main
from inat_tune.models.counting import cnn_macs, cnn_param_count


def test_every_command_of_the_design_parses():
    p = get_args_parser()
    for argv in (["data", "download", "--root", "d"], ["data", "synth", "--out", "d", "--per-class", "3"],
                 ["data", "cache", "--data", "d", "--image-size", "64"],
                 ["count", "--filters", "32", "--kernel-size", "3", "--dense", "128", "--image-size", "224",
                  "--filter-org", "double"],
                 ["train", "c.yaml", "--data", "d", "--out", "o", "--set", "lr=0.1"],
                 ["sweep", "s.yaml", "--data", "d", "--name", "n", "--storage", "s3://b/p", "--num-samples", "4",
                  "--cpus-per-trial", "2", "--gpus-per-trial", "0.25", "--resume", "--no-wandb", "--set", "a=1"],
                 ["evaluate", "e", "--data", "d"], ["explain", "e"], ["report", "e1", "e2"],
                 ["bench", "--data", "d", "--image-size", "224"], ["demo", "--out", "o"]):
        assert p.parse_args(argv).command == argv[0]


def test_count_prints_the_formula_values(capsys):
    assert main(["count", "--filters", "32", "--kernel-size", "3", "--dense", "256", "--image-size", "224"]) == 0
    out = capsys.readouterr().out
    params = cnn_param_count([32] * 5, [3] * 5, 256, 224)
    macs = cnn_macs([32] * 5, [3] * 5, 256, 224)
    assert f"{params:,}" in out and f"{macs:,}" in out


def test_synth_and_cache_commands(tmp_path, capsys):
    ds = tmp_path / "ds"
    assert main(["data", "synth", "--out", str(ds), "--per-class", "3", "--val-per-class", "2",
                 "--image-size", "32"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    assert main(["data", "cache", "--data", str(ds), "--image-size", "32"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train_images"] == 30 and summary["test_images"] == 20 and summary["skipped"] == 0


def test_layout_error_is_one_line_and_exit_2(tmp_path, capsys):
    rc = main(["data", "cache", "--data", str(tmp_path / "missing"), "--image-size", "32"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err and "Traceback" not in err


def test_sweep_command_passes_its_flags_to_the_library(monkeypatch, capsys):
    from inat_tune.tune import runner
    from inat_tune.tune.space import SpaceError

    calls = []
    monkeypatch.setattr(runner, "sweep", lambda *a, **kw: calls.append((a, kw)))
    assert main(["sweep", "s.yaml", "--data", "d", "--name", "n", "--storage", "s3://b/p",
                 "--num-samples", "4", "--cpus-per-trial", "2", "--gpus-per-trial", "0.5",
                 "--max-concurrent", "3", "--resume", "--no-wandb", "--wandb-project", "w",
                 "--address", "auto", "--seed", "5", "--max-failures", "1",
                 "--set", "lr=0.1", "--set", "epochs=2", "--val-fraction", "0.3",
                 "--split-seed", "7", "--fresh-process"]) == 0
    expected = dict(
        name="n", storage="s3://b/p", num_samples=4, cpus_per_trial=2.0, gpus_per_trial=0.5,
        max_concurrent=3, use_wandb=False, wandb_project="w", address="auto", seed=5,
        max_failures=1, overrides=["lr=0.1", "epochs=2"], val_fraction=0.3, split_seed=7,
        resume=True, fresh_process=True)
    assert calls == [(("s.yaml", "d"), expected)]

    previews = []
    monkeypatch.setattr(runner, "preview", lambda *a, **kw: previews.append((a, kw)) or "PLAN")
    calls.clear()
    assert main(["sweep", "s.yaml", "--data", "d", "--dry-run"]) == 0
    assert calls == [] and previews[0][0] == ("s.yaml", "d")  # --dry-run never runs the sweep
    assert capsys.readouterr().out.strip() == "PLAN"

    def refuse(*a, **kw):
        raise SpaceError("parameters.lr.min: bad")

    monkeypatch.setattr(runner, "sweep", refuse)
    assert main(["sweep", "s.yaml", "--data", "d"]) == 2
    assert capsys.readouterr().out.strip().endswith("inat-tune sweep: error: parameters.lr.min: bad")


def test_demo_calls_the_library_steps_in_order(monkeypatch, tmp_path, capsys):
    import inat_tune.data.synth
    import inat_tune.evaluate
    import inat_tune.explain
    import inat_tune.report
    from inat_tune.tune import runner

    calls = []

    def record(step):
        return lambda *a, **kw: calls.append((step, a, kw))

    monkeypatch.setattr(inat_tune.data.synth, "make_synthetic", record("synth"))
    monkeypatch.setattr(runner, "sweep", record("sweep"))
    monkeypatch.setattr(inat_tune.evaluate, "evaluate_experiment", record("evaluate"))
    monkeypatch.setattr(inat_tune.explain, "explain_experiment", record("explain"))
    monkeypatch.setattr(inat_tune.report, "write_report", record("report"))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--num-samples", "3"]) == 0
    exp = out.resolve() / "demo-sweep"
    assert [c[0] for c in calls] == ["synth", "sweep", "evaluate", "explain", "report"]
    _, (space, data), kw = calls[1]
    assert Path(space).name == "demo.yaml" and data == out.resolve() / "synthetic_data"
    assert kw["name"] == "demo-sweep" and kw["num_samples"] == 3 and kw["resume"] is False
    assert calls[2][1] == (exp,) and calls[4][1] == ([exp],)
    printed = capsys.readouterr().out
    assert "SYNTHETIC" in printed and "[2/5] inat-tune sweep" in printed and "--num-samples 3" in printed
    exp.mkdir(parents=True)
    (exp / "sweep.json").write_text("{}")
    calls.clear()
    assert main(["demo", "--out", str(out)]) == 0
    assert calls[1][2]["resume"] is True  # a second demo continues the first sweep


@pytest.mark.slow
def test_console_script_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "inat_tune.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "sweep" in out.stdout and "evaluate" in out.stdout


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    from inat_tune.data.synth import make_synthetic

    data = make_synthetic(tmp_path / "d", per_class=4, val_per_class=1, image_size=32, seed=0)
    space = tmp_path / "s.yaml"
    space.write_text("model: scratch_cnn\nmethod: bayes\nmetric: {name: val_acc, goal: maximize}\n"
                     "early_terminate: {type: hyperband, min_iter: 1, eta: 3}\n"
                     "parameters:\n  lr: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}\n"
                     "  epochs: {value: 27}\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["sweep", str(space), "--data", str(data), "--storage", str(tmp_path / "exps"),
                 "--num-samples", "30", "--max-concurrent", "4", "--split-seed", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "rungs at epochs 1, 3, 9 of max 27; keeps 1/3 at each" in out
    assert "10 random start-up trials of 30" in out and "constant liar on" in out
    assert "worst case 810 epochs" in out and "expected 90" in out  # 30 x 27; 30 x 3
    assert "split_seed 2" in out and "lr " in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no experiment folder
    assert main(["sweep", str(space), "--data", str(tmp_path / "none"), "--dry-run"]) == 2


def test_train_then_evaluate_and_explain_its_run_folder(synth_data, tmp_path, capsys, monkeypatch):
    import wandb

    calls = []
    monkeypatch.setattr(wandb, "init", lambda *a, **k: calls.append(k))  # a train run logs no W&B
    run = tmp_path / "run"
    assert main(["train", "--data", str(synth_data), "--out", str(run), "--set", "image_size=32",
                 "--set", "epochs=1", "--set", "filters=8", "--set", "dense=16", "--set", "augment=false"]) == 0
    out = capsys.readouterr().out
    assert f"next: inat-tune evaluate {run}" in out and f"inat-tune explain {run}" in out, out
    assert main(["evaluate", str(run)]) == 0
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["checkpoint"] == str(run.resolve() / "best.pt") and metrics["checkpoint_epoch"] == 1
    assert metrics["n_test"] == 80 and metrics["data_dir"] == str(synth_data.resolve())
    for name in ("predictions.csv", "confusion_matrix.csv", "confusion_matrix.png", "prediction_grid.png"):
        assert (run / name).is_file(), name
    assert main(["explain", str(run)]) == 0
    for name in ("filters.png", "feature_maps.png", "guided_backprop.png"):
        assert (run / name).stat().st_size > 0, name
    assert calls == [] and not (run / "wandb").exists()
    # a folder that is neither an experiment nor a run: exit 2, one line
    neither = tmp_path / "neither"
    neither.mkdir()
    (neither / "notes.txt").write_text("mine")
    for command in ("evaluate", "explain"):
        capsys.readouterr()
        assert main([command, str(neither)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"inat-tune {command}: error: {neither}" in err and "nor a training run folder" in err, err
