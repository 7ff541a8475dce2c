"""Reading experiment folders (no Ray): trial table, history, statuses, importance, insights.

The folders are written by hand the way Ray Tune writes them (params.json, result.json lines,
error.txt, experiment_state-*.json), with one planted hyperparameter that decides accuracy.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from inat_tune import analysis as an

PLANTED = "conv_activation"
SPACE = {
    "model": "scratch_cnn",
    "method": "bayes",
    "metric": {"name": "val_acc", "goal": "maximize"},
    "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
    "parameters": {
        "image_size": {"value": 32},
        "conv_activation": {"values": ["relu", "gelu", "silu"]},
        "filters": {"values": [16, 32, 64]},
        "batch_norm": {"values": [True, False]},
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
        "dropout": {"distribution": "uniform", "min": 0.0, "max": 0.5},
        "epochs": {"value": 4},
    },
}
EPOCHS = 4


def _result_line(tid: str, cfg: dict, epoch: int, acc: float, t0: float, gpu_frac: float,
                 done: bool, params: int) -> dict:
    t = 5.0 + 2.0 * epoch  # Ray's time_total_s: start-up + 2 s per epoch
    return {"epoch": epoch, "train_loss": 2.3 - acc, "train_acc": acc + 0.05, "val_loss": 2.3 - 1.5 * acc,
            "val_acc": acc, "lr": cfg["lr"], "epoch_seconds": 2.0, "images_per_s": 500.0,
            "time_total_s": t, "trainable_params": params, "gpu_seconds": t * gpu_frac,
            "cpu_seconds": t, "device": "cpu", "node_ip": "10.0.0.1", "hostname": "h",
            "timestamp": int(t0 + t), "checkpoint_dir_name": f"checkpoint_{epoch - 1:06d}",
            "should_checkpoint": True, "done": done, "training_iteration": epoch, "trial_id": tid,
            "date": "2026-01-01_00-00-00", "time_this_iter_s": 2.0, "pid": 1, "config": cfg}


def make_experiment(root: Path, name: str = "exp", n: int = 30, seed: int = 0, *,
                    stopped: int = 6, errored_empty: int = 1, errored_late: int = 1,
                    state: dict[str, str] | None = None, pending: int = 0, gpu_frac: float = 0.0,
                    planted_effect: float = 0.5, with_space: bool = True) -> Path:
    """A Ray-Tune-like experiment folder of ``n`` trials, in creation order.

    val_acc of a trial = 0.2 + planted_effect x (conv_activation == "gelu") + noise(0.02),
    reached at the last epoch it runs; other hyperparameters are random. The first
    ``errored_empty`` trials raised before any epoch (error.txt, empty result.json), the next
    ``errored_late`` raised after 2 epochs, the next ``stopped`` non-gelu trials were stopped by
    ASHA after 1 or 2 epochs. ``state`` maps trial ids to a Ray status written to
    experiment_state-*.json (no state file when None); ``pending`` adds trials that exist only
    there (PENDING, no folder).
    """
    rng = np.random.default_rng(seed)
    exp = root / name
    exp.mkdir(parents=True)
    if with_space:
        (exp / "space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    (exp / "sweep.json").write_text(json.dumps({"name": name, "data_dir": str(root / "no-data"),
                                                "cpus_per_trial": 1.0, "gpus_per_trial": gpu_frac,
                                                "num_samples": n}))
    t0 = 1_800_000_000.0
    stopped_left = stopped
    trials = []
    for i in range(n):
        tid = f"{seed:02d}{i:06x}"
        act = ["relu", "gelu", "silu"][i % 3]
        cfg = {"image_size": 32, "conv_activation": act,
               "filters": int(rng.choice([16, 32, 64])), "batch_norm": bool(rng.integers(2)),
               "lr": float(10 ** rng.uniform(-4, -1)), "dropout": float(rng.uniform(0, 0.5)),
               "epochs": EPOCHS, "model": "scratch_cnn"}
        final = 0.2 + planted_effect * (act == "gelu") + float(rng.normal(0, 0.02))
        d = exp / f"scratch_cnn_trainable_{tid}"
        d.mkdir()
        (d / "params.json").write_text(json.dumps(cfg, indent=2))
        if i < errored_empty:
            run, err = 0, True
        elif i < errored_empty + errored_late:
            run, err = 2, True
        elif act != "gelu" and stopped_left > 0:
            run, err = 1 + stopped_left % 2, False
            stopped_left -= 1
        else:
            run, err = EPOCHS, False
        start = t0 + 30.0 * i
        lines = [_result_line(tid, cfg, e, final * (0.7 + 0.3 * e / run), start, gpu_frac,
                              done=(e == run and not err), params=1000 * cfg["filters"])
                 for e in range(1, run + 1)]
        (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in lines))
        if err:
            (d / "error.txt").write_text("Failure # 1 (occurred at 2026-01-01)\nTraceback (most recent call last):\n"
                                         "  File \"x.py\", line 1\nRuntimeError: CUDA out of memory\n")
        trials.append((tid, cfg, d.name))
    if state is not None or pending:
        state = dict(state or {})
        data = []
        for tid, cfg, dirname in trials:
            default = "ERROR" if (exp / dirname / "error.txt").exists() else "TERMINATED"
            info = {"trial_id": tid, "status": state.get(tid, default), "config": cfg,
                    "relative_logdir": dirname}
            data.append([json.dumps(info), json.dumps({"start_time": 0})])
        for k in range(pending):
            info = {"trial_id": f"pend{k:04d}", "status": "PENDING",
                    "config": {**trials[0][1], "conv_activation": "gelu"}, "relative_logdir": None}
            data.append([json.dumps(info), json.dumps({})])
        (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(
            json.dumps({"trial_data": data, "runner_data": {}, "stats": {}}))
    return exp


@pytest.fixture
def exp(tmp_path) -> Path:
    return make_experiment(tmp_path)


# ---------------------------------------------------------------------------------------------


def test_one_row_per_trial_with_the_right_status(exp):
    df = an.load_results(exp)
    assert len(df) == 30
    assert df["trial_id"].is_unique
    counts = df["status"].value_counts().to_dict()
    assert counts == {"finished": 22, "stopped_early": 6, "errored": 2}
    stopped = df[df["status"] == "stopped_early"]
    assert stopped["stopped_early"].all() and not df.loc[df["status"] != "stopped_early", "stopped_early"].any()
    assert set(stopped["epochs_run"]) == {1, 2}
    assert (df.loc[df["status"] == "finished", "epochs_run"] == EPOCHS).all()
    # the trial that errored before its first epoch is a row, with no metrics
    empty = df[(df["status"] == "errored") & (df["epochs_run"] == 0)]
    assert len(empty) == 1 and math.isnan(empty["val_acc"].iloc[0]) and math.isnan(empty["best_val_acc"].iloc[0])
    assert empty["error"].iloc[0] == "RuntimeError: CUDA out of memory"
    late = df[(df["status"] == "errored") & (df["epochs_run"] == 2)]
    assert len(late) == 1 and late["best_val_acc"].iloc[0] > 0
    # config columns, metrics, cost, creation order
    for key in ("conv_activation", "filters", "batch_norm", "lr", "dropout", "epochs"):
        assert f"config/{key}" in df
    for col in ("val_acc", "best_val_acc", "val_loss", "best_val_loss", "epochs_run", "wall_seconds",
                "gpu_seconds", "cpu_seconds", "trainable_params", "created", "trial_id", "experiment"):
        assert col in df
    assert df["created"].is_monotonic_increasing
    finished = df[df["status"] == "finished"].iloc[0]
    assert finished["wall_seconds"] == pytest.approx(5.0 + 2.0 * EPOCHS)
    assert finished["best_val_acc"] >= finished["val_acc"] - 1e-12
    assert finished["best_val_loss"] <= finished["val_loss"] + 1e-12
    assert finished["trainable_params"] == 1000 * finished["config/filters"]


def test_gpu_seconds_are_fraction_times_time(tmp_path):
    exp = make_experiment(tmp_path, gpu_frac=0.25, n=6, stopped=0, errored_empty=0, errored_late=0)
    df = an.load_results(exp)
    assert df["gpu_seconds"].to_numpy() == pytest.approx(0.25 * df["wall_seconds"].to_numpy())
    # without gpu_seconds in result.json, the sweep's fraction x Ray's time is used
    for d in exp.glob("scratch_cnn_trainable_*"):
        lines = [json.loads(x) for x in (d / "result.json").read_text().splitlines()]
        (d / "result.json").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "gpu_seconds"}) + "\n"
                                               for r in lines))
    df2 = an.load_results(exp)
    assert df2["gpu_seconds"].to_numpy() == pytest.approx(df["gpu_seconds"].to_numpy())


def test_ray_state_decides_status_and_adds_pending_trials(tmp_path):
    exp = make_experiment(tmp_path, n=9, stopped=2, errored_empty=1, errored_late=0, pending=2,
                          state={"00000008": "RUNNING"})
    df = an.load_results(exp)
    assert len(df) == 11  # 9 folders + 2 trials Ray created but has not started
    st = df.set_index("trial_id")["status"]
    assert st["00000008"] == "unfinished"
    assert st["pend0000"] == "unfinished" and st["pend0001"] == "unfinished"
    assert st["00000000"] == "errored"
    assert (df["status"] == "stopped_early").sum() == 2
    assert df.iloc[-2:]["trial_id"].tolist() == ["pend0000", "pend0001"]  # no creation time: last
    # a trial Ray retried after an error and that then completed is not "errored"
    exp2 = make_experiment(tmp_path / "b", n=3, stopped=0, errored_empty=0, errored_late=0,
                           state={"00000001": "TERMINATED"})
    (exp2 / "scratch_cnn_trainable_00000001" / "error.txt").write_text("RuntimeError: node lost\n")
    assert an.load_results(exp2).set_index("trial_id").loc["00000001", "status"] == "finished"


def test_without_state_a_last_line_not_done_is_unfinished(tmp_path):
    exp = make_experiment(tmp_path, n=3, stopped=0, errored_empty=0, errored_late=0)
    d = exp / "scratch_cnn_trainable_00000002"
    lines = [json.loads(x) for x in (d / "result.json").read_text().splitlines()][:2]
    lines[-1]["done"] = False
    (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"epoch": 3, "val_')
    row = an.load_results(exp).set_index("trial_id").loc["00000002"]
    assert row["status"] == "unfinished" and row["epochs_run"] == 2  # half-written line skipped


def test_history_one_row_per_trial_and_epoch(exp):
    df = an.load_results(exp)
    hist = an.load_history(exp)
    assert len(hist) == int(df["epochs_run"].sum())
    assert not hist.duplicated(["trial_id", "epoch"]).any()
    for col in ("trial_id", "epoch", "val_acc", "val_loss", "train_acc", "train_loss", "lr",
                "epoch_seconds", "images_per_s", "time_total_s", "training_iteration"):
        assert col in hist
    assert "config" not in hist
    per_trial = hist.groupby("trial_id")["epoch"].max()
    ran = df[df["epochs_run"] > 0].set_index("trial_id")["epochs_run"]
    assert per_trial.sort_index().tolist() == ran.sort_index().tolist()


def test_history_carries_the_swept_config_columns(exp, tmp_path):
    """load_history(EXP).to_csv is the replay table: one config/<key> per swept parameter."""
    hist = an.load_history(exp)
    swept = sorted(c for c in hist.columns if c.startswith("config/"))
    assert swept == sorted(f"config/{k}" for k in SPACE["parameters"]
                           if "value" not in SPACE["parameters"][k])
    params = {p.parent.name.rsplit("_", 1)[-1]: json.loads(p.read_text()) for p in exp.glob("*/params.json")}
    for tid, rows in hist.groupby("trial_id"):
        for col in swept:
            assert rows[col].nunique() == 1 and rows[col].iloc[0] == params[tid][col[len("config/"):]]
    without_space = make_experiment(tmp_path / "b", with_space=False)
    cols = {c for c in an.load_history(without_space).columns if c.startswith("config/")}
    # no space.yaml: the keys whose value differs between trials (not image_size, epochs, model)
    assert cols == {"config/conv_activation", "config/filters", "config/batch_norm", "config/lr",
                    "config/dropout"}


def test_history_keeps_the_last_report_of_a_repeated_epoch(tmp_path):
    exp = make_experiment(tmp_path, n=2, stopped=0, errored_empty=0, errored_late=0)
    d = exp / "scratch_cnn_trainable_00000000"
    lines = [json.loads(x) for x in (d / "result.json").read_text().splitlines()]
    again = dict(lines[2], val_acc=0.99)  # restored from the epoch-2 checkpoint, epoch 3 again
    (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in lines[:3] + [again] + lines[3:]))
    hist = an.load_history(exp)
    h = hist[hist["trial_id"] == "00000000"]
    assert h["epoch"].tolist() == [1, 2, 3, 4]
    assert h.loc[h["epoch"] == 3, "val_acc"].item() == 0.99


def test_several_experiments_add_an_experiment_column(tmp_path):
    a = make_experiment(tmp_path, "scratch", n=5, stopped=0, errored_empty=0, errored_late=0)
    b = make_experiment(tmp_path, "finetune", n=4, seed=1, stopped=0, errored_empty=0, errored_late=0)
    df = an.load_results([a, b])
    assert df["experiment"].value_counts().to_dict() == {"scratch": 5, "finetune": 4}
    hist = an.load_history([a, b])
    assert set(hist["experiment"]) == {"scratch", "finetune"}


def test_not_an_experiment_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trial folders"):
        an.load_results(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such experiment"):
        an.load_results(tmp_path / "missing")


def test_importance_ranks_the_planted_hyperparameter_first(exp):
    df = an.load_results(exp)
    space = an.read_space(exp)
    assert space.params[PLANTED].kind == "categorical" and space.params["lr"].log
    imp = an.importance_table(df, space)
    assert imp.iloc[0]["param"] == PLANTED
    assert imp.iloc[0]["importance"] > 0.5
    assert imp["importance"].sum() == pytest.approx(1.0)
    assert math.isnan(imp.set_index("param").loc[PLANTED, "spearman"])  # unordered categories
    assert imp["n"].iloc[0] == 29  # the trial that errored before epoch 1 has no score
    # the per-value table: gelu far ahead
    cats = an.category_table(df, space)
    act = cats[cats["param"] == PLANTED].set_index("value")
    assert act.loc["gelu", "mean"] > act.loc["relu", "mean"] + 0.3
    assert act["n"].sum() == 29


def test_importance_without_space_yaml_is_inferred(tmp_path):
    exp = make_experiment(tmp_path, with_space=False)
    df = an.load_results(exp)
    space = an.resolve_space(None, df)
    assert set(space.params) == {"conv_activation", "filters", "batch_norm", "lr", "dropout"}
    assert space.params["lr"].log and not space.params["dropout"].log
    assert an.importance_table(df, space).iloc[0]["param"] == PLANTED


def test_insights_name_the_planted_hyperparameter_and_the_numbers(exp):
    df = an.load_results(exp)
    space = an.read_space(exp)
    ins = an.insights(df, space)
    text = "\n".join(ins)
    imp_line = next(s for s in ins if s.startswith("Most important"))
    assert f": {PLANTED} (" in imp_line
    best = an.best_trial(df, space)
    assert best[f"config/{PLANTED}"] == "gelu"
    assert f"Best trial {best['trial_id']}" in text and an.fmt_metric(best["best_val_acc"]) in text
    act_line = next(s for s in ins if s.startswith(PLANTED))
    assert act_line.index("gelu") < act_line.index("relu")  # best value first
    cost = an.cost_summary(df)
    assert cost["epochs_saved"] == sum(EPOCHS - e for e in df.loc[df["stopped_early"], "epochs_run"])
    assert f"saving {cost['epochs_saved']} of {cost['epochs_planned']}" in text
    assert "CPU-seconds (no GPU)" in text
    assert "2 of 30 trials errored" in text
    for s in ins:  # numeric hyperparameters get a qualifier
        if s.startswith(("lr", "dropout")):
            assert re.search(r"(weak|moderate|strong) (positive|negative) correlation", s), s


def test_insights_refuse_to_conclude_from_few_trials(tmp_path):
    exp = make_experiment(tmp_path, n=3, stopped=0, errored_empty=0, errored_late=0)
    df = an.load_results(exp)
    ins = an.insights(df, an.read_space(exp))
    text = "\n".join(ins)
    assert "too few trials to say" in text
    assert not any(s.startswith("Most important") for s in ins)
    assert "correlation with" not in text


def test_no_planted_effect_gives_weak_or_chance_wording(tmp_path):
    exp = make_experiment(tmp_path, planted_effect=0.0, stopped=0)
    df = an.load_results(exp)
    for s in an.insights(df, an.read_space(exp)):
        if "correlation with" in s:
            assert "weak" in s or "could be chance" in s, s
    assert an.strength(0.1, 30) == "weak" and an.strength(0.45, 30) == "moderate"
    assert an.strength(-0.8, 30) == "strong" and an.strength(0.9, 4) == "too few trials to say"


def test_rungs_and_epochs_to_90pct(exp):
    df = an.load_results(exp)
    space = an.read_space(exp)
    rt = an.rung_table(df, space)
    assert rt["rung_epochs"].tolist() == [1, 2, 4]
    assert rt["trials_reached"].tolist() == [int((df["epochs_run"] >= r).sum()) for r in (1, 2, 4)]
    hist = an.load_history(exp)
    best = an.best_trial(df, space)
    e90 = an.epochs_to_fraction(hist, best["trial_id"])
    h = hist[hist["trial_id"] == best["trial_id"]]
    assert h.loc[h["epoch"] == e90, "val_acc"].item() >= 0.9 * h["val_acc"].max()
    assert e90 == 1 or h.loc[h["epoch"] == e90 - 1, "val_acc"].item() < 0.9 * h["val_acc"].max()


def test_best_trial_ties_go_to_the_evaluated_trial(tmp_path):
    exp = make_experiment(tmp_path, n=4, stopped=0, errored_empty=0, errored_late=0)
    df = an.load_results(exp)
    space = an.read_space(exp)
    df["best_val_acc"] = 0.5
    assert an.best_trial(df, space)["trial_id"] == df["trial_id"].iloc[0]  # first created
    assert an.best_trial(df, space, prefer=df["trial_id"].iloc[2])["trial_id"] == df["trial_id"].iloc[2]
    df.loc[1, "best_val_acc"] = 0.6  # a preference never overrides a better score
    assert an.best_trial(df, space, prefer=df["trial_id"].iloc[2])["trial_id"] == df["trial_id"].iloc[1]


def make_unfinished_leaders(root: Path) -> tuple[Path, str]:
    """An experiment whose highest val_acc belongs to an errored trial, the next highest to a
    trial Ray still runs; returns it and the best *finished* trial, found from the raw files."""
    exp = make_experiment(root, n=9, stopped=2, errored_empty=0, errored_late=1,
                          state={"00000004": "RUNNING"})
    for tid, acc in (("00000000", 0.99), ("00000004", 0.98)):  # errored, then unfinished
        f = exp / f"scratch_cnn_trainable_{tid}" / "result.json"
        rows = [json.loads(x) for x in f.read_text().splitlines()]
        f.write_text("".join(json.dumps(dict(r, val_acc=acc)) + "\n" for r in rows))
    best = {}
    for d in sorted(exp.glob("scratch_cnn_trainable_*")):
        tid = d.name.rsplit("_", 1)[1]
        if tid not in ("00000000", "00000004"):
            best[tid] = max(json.loads(x)["val_acc"] for x in (d / "result.json").read_text().splitlines())
    return exp, max(best, key=best.get)


def test_best_trial_is_the_best_finished_one_as_evaluate_takes(tmp_path):
    from inat_tune.experiment import choose_trial, load_experiment

    exp, expected = make_unfinished_leaders(tmp_path)
    df = an.load_results(exp)
    st = df.set_index("trial_id")["status"]
    assert (st["00000000"], st["00000004"]) == ("errored", "unfinished")
    assert df.loc[df["best_val_acc"].idxmax(), "trial_id"] == "00000000"  # the raw leader
    space = an.read_space(exp)
    assert an.best_trial(df, space)["trial_id"] == expected
    assert choose_trial(load_experiment(exp))[0].trial_id == expected  # evaluate's choice
    assert f"Best trial {expected} " in "\n".join(an.insights(df, space))
    # a tie with an unfinished trial is never broken in its favour, even when preferred
    df.loc[df["trial_id"] == "00000004", "best_val_acc"] = df.loc[df["trial_id"] == expected, "best_val_acc"].item()
    assert an.best_trial(df, space, prefer="00000004")["trial_id"] == expected


def test_no_finished_trial_names_no_best(tmp_path):
    exp = make_experiment(tmp_path, n=3, stopped=0, errored_empty=0, errored_late=0,
                          state={f"{i:08d}": "RUNNING" for i in range(3)})
    df = an.load_results(exp)
    assert an.best_trial(df, an.read_space(exp)) is None
    assert an.insights(df, an.read_space(exp))[0].startswith("No trial has finished yet: 3 of 3 trials")
