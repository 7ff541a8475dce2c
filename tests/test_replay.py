"""``inat-tune bench --replay``: tables it refuses, the scoring, the recorded CIFAR grid, and the
simulated search equal to the same search run by Ray Tune."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from inat_tune.bench.replay import (METHODS, ReplayError, ReplayOptions, epochs_to_reach, running_best,
                                    score, simulate, table_from_history)
from inat_tune.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "cifar10_grid48_32px.csv"


def grid_table(levels: dict[str, list], epochs: int = 6, seed: int = 0) -> pd.DataFrame:
    """A full-factorial history: val_acc rises to a level set by the config (plus noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, combo in enumerate(itertools.product(*levels.values())):
        top = 0.2 + 0.5 * rng.random()
        for e in range(1, epochs + 1):
            rows.append({"trial_id": f"t{i:03d}", "epoch": e, "val_acc": round(top * (1 - 0.6 ** e), 4),
                         "epoch_seconds": float(rng.uniform(1, 3)),
                         **{f"config/{k}": v for k, v in zip(levels, combo)}})
    return pd.DataFrame(rows)


LEVELS = {"filters": [8, 16, 32], "lr": [1e-3, 3e-3], "batch_norm": [True, False]}


def test_a_full_factorial_table_is_indexed_by_configuration():
    t = table_from_history(grid_table(LEVELS), "g")
    assert t.keys == ("filters", "lr", "batch_norm") and t.epochs == 6 and len(t.curves) == 12
    assert t.levels["filters"] == (8, 16, 32)
    assert max(t.curves[(32, 3e-3, False)]) <= t.best


@pytest.mark.parametrize("mutate, reason", [
    (lambda df: df[df.trial_id != "t000"], "not a full factorial: 11 configurations of the 12"),
    (lambda df: df[~((df.trial_id == "t001") & (df.epoch == 6))], "unequal epochs"),
    (lambda df: df.drop(columns=["epoch_seconds"]), "missing column"),
    (lambda df: df[[c for c in df.columns if not c.startswith("config/")]], "no config/<key> columns"),
    (lambda df: pd.concat([df, df[df.trial_id == "t000"].assign(trial_id="dup")]), "appears twice"),
    (lambda df: df.assign(**{"config/lr": df.trial_id.map(lambda t: 1e-3 * (1 + int(t[1:])))}),
     "continuous parameter"),
    (lambda df: df[df.epoch != 3], "every trial needs each epoch from 1 once"),
])
def test_tables_that_cannot_be_replayed_are_refused_with_the_reason(mutate, reason):
    with pytest.raises(ReplayError, match=reason):
        table_from_history(mutate(grid_table(LEVELS)), "bad")


def test_scoring():
    assert running_best([("a", 1, 0.2), ("a", 2, 0.1), ("b", 1, 0.5)]) == [0.2, 0.2, 0.5]
    assert epochs_to_reach([0.1, 0.3, 0.5], 0.3) == 2 and epochs_to_reach([0.1], 0.3) is None
    out = score({"random": [[0.1, 0.4, 0.4, 0.5]], "tpe+asha": [[0.5, 0.5]]})
    assert out["random"] == {"epochs": [4], "best": [0.5], "epochs_to_random_best": [4],
                             "beats_random_at_equal_epochs": [True]}
    assert out["tpe+asha"]["epochs_to_random_best"] == [1]


def test_a_simulated_search_runs_its_budget_and_asha_cuts_it():
    t = table_from_history(grid_table(LEVELS), "g")
    opts = ReplayOptions(table="-", seeds=1, num_samples=10, max_concurrent=2)
    for name in METHODS:
        got = simulate(t, name, 0, opts)
        trials = {tid for tid, _, _ in got}
        assert len(trials) == 10
        per_trial = {tid: max(e for t_, e, _ in got if t_ == tid) for tid in trials}
        if METHODS[name].asha:
            assert min(per_trial.values()) < 6  # someone was cut at a rung
        else:
            assert set(per_trial.values()) == {6}
    assert simulate(t, "tpe+asha", 3, opts) == simulate(t, "tpe+asha", 3, opts)  # deterministic


def test_the_recorded_grid_replays_from_the_cli(tmp_path, capsys):
    """The CIFAR-10 fixture (48 configurations x 12 epochs, see tests/fixtures/README.md)."""
    js, fig = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["bench", "--replay", str(FIXTURE), "--seeds", "3", "--num-samples", "20",
                 "--json", str(js), "--figure", str(fig)]) == 0
    out = json.loads(js.read_text())
    assert out["configurations"] == 48 and out["epochs_per_trial"] == 12
    assert set(out["methods"]) == set(METHODS)
    for name, m in out["methods"].items():
        assert len(m["epochs"]) == len(m["best"]) == len(m["epochs_to_random_best"]) == 3
        assert all(b <= out["best_in_table"] + 1e-12 for b in m["best"])
        if METHODS[name].asha:
            assert all(e < 20 * 12 for e in m["epochs"])
        else:
            assert m["epochs"] == [240, 240, 240]
    assert out["methods"]["random"]["epochs_to_random_best"] == [
        e for e in out["methods"]["random"]["epochs_to_random_best"] if e is not None]
    assert fig.stat().st_size > 10_000
    assert "tpe+asha" in capsys.readouterr().out
    assert main(["bench", "--replay", str(tmp_path / "none.csv")]) == 2


@pytest.mark.slow
def test_the_simulation_makes_the_calls_ray_tune_makes(tmp_path):
    """One trial at a time, the order of events is fixed: the simulated search and the same
    search run by Ray Tune (Tuner.fit, reporting the recorded curves) see identical results."""
    import ray

    from inat_tune.bench.replay import replay_through_tune

    t = table_from_history(grid_table(LEVELS, seed=1), "g")
    opts = ReplayOptions(table="-", seeds=1, num_samples=6, max_concurrent=1, time_scale=0.0)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for name in ("tpe+asha", "random+asha"):
            sim = [(e, a) for _, e, a in simulate(t, name, 0, opts)]
            real = [(e, a) for _, e, a in replay_through_tune(t, name, 0, opts, tmp_path)]
            if name == "tpe+asha":
                assert sim == real
            else:  # random draws come from Ray's generator in Tune: same budget and rules only
                assert len(sim) <= 6 * 6 and len(real) <= 6 * 6
    finally:
        ray.shutdown()
