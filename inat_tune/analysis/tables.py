"""The tables a report is made of, from :func:`~inat_tune.analysis.load.load_results` /
``load_history``: per-value accuracy, correlation + importance, cost, ASHA rungs, the best
trial (by :func:`inat_tune.experiment.choose_best`, the rule ``inat-tune evaluate`` uses) and
the side-by-side comparison of several experiments. Every number a report or an insight states
comes from one of these.

Accuracies here are each trial's *best* validation value over the epochs it ran
(``best_val_acc``), which is what the sweep optimises and what its checkpoints keep.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..experiment import FINISHED, choose_best
from ..tune.budget import asha_rungs
from .load import CONFIG_PREFIX, STATUSES, STOPPED_EARLY, ParamInfo, SpaceInfo, is_number

MIN_TRIALS = 5  # fewer trials than this: no correlation or importance claim is made
RF_TREES, RF_SEED = 300, 0  # the importance forest; seeded: the same folder, the same table


def swept_params(df: pd.DataFrame, space: SpaceInfo) -> list[ParamInfo]:
    """The swept hyperparameters present in ``df``, in the space's order."""
    return [p for p in space.params.values() if CONFIG_PREFIX + p.name in df]


def scored(df: pd.DataFrame, target: str) -> pd.DataFrame:
    """The trials that reported the target metric (errored-before-epoch-1 trials drop out)."""
    return df[df[target].notna()] if target in df else df.iloc[:0]


def category_table(df: pd.DataFrame, space: SpaceInfo) -> pd.DataFrame:
    """Per value of each categorical hyperparameter: n, mean and best of the target.
    Columns: param, value, n, mean, best; values ordered as declared in the space."""
    target, best = space.target, (max if space.mode == "max" else min)
    d = scored(df, target)
    rows = []
    for p in swept_params(df, space):
        if p.kind != "categorical":
            continue
        col = d[CONFIG_PREFIX + p.name]
        order = list(p.values) + [v for v in col.unique() if v not in p.values]
        for v in order:
            y = d.loc[col.map(lambda x, v=v: _same(x, v)), target]
            rows.append({"param": p.name, "value": v, "n": int(len(y)),
                         "mean": float(y.mean()) if len(y) else math.nan,
                         "best": float(best(y)) if len(y) else math.nan})
    return pd.DataFrame(rows, columns=["param", "value", "n", "mean", "best"])


def _encode(df: pd.DataFrame, params: Sequence[ParamInfo]) -> tuple[np.ndarray, list[str]]:
    """Feature matrix for the forest: numbers as they are (log10 for log params: a tree does
    not care, but it keeps the table readable), booleans 0/1, numeric categories as ordinals,
    other categories one-hot. Returns X and, per column, the hyperparameter it belongs to."""
    cols, owners = [], []
    for p in params:
        s = df[CONFIG_PREFIX + p.name]
        if _numeric_series(s):
            x = s.astype(float).to_numpy()
            cols.append(np.log10(x) if p.log and (x > 0).all() else x)
            owners.append(p.name)
        else:
            labels = s.map(repr)
            for v in sorted(labels.unique()):
                cols.append((labels == v).to_numpy(dtype=float))
                owners.append(p.name)
    return (np.column_stack(cols) if cols else np.empty((len(df), 0))), owners


def importance_table(df: pd.DataFrame, space: SpaceInfo, seed: int = RF_SEED,
                     n_estimators: int = RF_TREES) -> pd.DataFrame:
    """Per swept hyperparameter: kind, n (trials with a score), Spearman rho with the target
    and a random-forest importance, sorted by importance.

    Importance is W&B's "parameter importance": the impurity-based feature importance of a
    random forest (scikit-learn ``RandomForestRegressor``, seeded) fitted to predict the target
    from the configs; one-hot columns of a categorical are summed back into it, so the
    importances add up to 1. Spearman rho (with its two-sided p-value, scipy) needs ordered
    values: it is NaN for categories that are not numbers. All are NaN with fewer than
    MIN_TRIALS scored trials or when every trial scored the same. (Optuna's fANOVA is not
    used: it needs a study with a distribution per parameter, and the forest is what W&B shows.)
    """
    target = space.target
    d = scored(df, target)
    params = swept_params(df, space)
    cols = ["param", "kind", "n", "spearman", "p_value", "importance", "rank"]
    if not params:
        return pd.DataFrame(columns=cols)
    y = d[target].astype(float).to_numpy()
    enough = len(d) >= MIN_TRIALS and np.nanstd(y) > 0
    imp = {p.name: math.nan for p in params}
    if enough:
        from sklearn.ensemble import RandomForestRegressor

        X, owners = _encode(d, params)
        forest = RandomForestRegressor(n_estimators=n_estimators, random_state=seed, n_jobs=1)
        forest.fit(X, y)
        imp = {p.name: 0.0 for p in params}
        for owner, w in zip(owners, forest.feature_importances_):
            imp[owner] += float(w)
    rows = []
    for p in params:
        s = d[CONFIG_PREFIX + p.name]
        rho = pval = math.nan
        if enough and _numeric_series(s) and s.astype(float).nunique() > 1:
            from scipy.stats import spearmanr  # scipy comes with scikit-learn

            r = spearmanr(s.astype(float).to_numpy(), y)
            rho, pval = float(r.statistic), float(r.pvalue)
        rows.append({"param": p.name, "kind": p.kind + (" (log)" if p.log else ""),
                     "n": int(len(d)), "spearman": rho, "p_value": pval, "importance": imp[p.name]})
    out = pd.DataFrame(rows, columns=cols[:-1])
    out = out.sort_values("importance", ascending=False, na_position="last", kind="stable")
    out["rank"] = range(1, len(out) + 1)
    return out.reset_index(drop=True)


def cost_summary(df: pd.DataFrame) -> dict[str, Any]:
    """Trial counts by status, epochs run / planned / saved by early stopping, and the GPU-,
    CPU- and wall-seconds the trials used.

    ``epochs_planned`` sums the config epochs of trials that ended without error (finished or
    stopped early); ``epochs_saved`` sums ``epochs_budget - epochs_run`` over the trials ASHA
    stopped; ``saved_pct`` is saved / planned x 100."""
    counts = {s: int((df["status"] == s).sum()) for s in STATUSES}
    ended = df[df["status"].isin([FINISHED, STOPPED_EARLY])]
    stopped = df[df["status"] == STOPPED_EARLY]
    planned = int(ended["epochs_budget"].sum())
    saved = int((stopped["epochs_budget"] - stopped["epochs_run"]).clip(lower=0).sum())
    return {"trials": int(len(df)), **counts,
            "epochs_run": int(df["epochs_run"].sum()), "epochs_planned": planned,
            "epochs_saved": saved, "saved_pct": 100.0 * saved / planned if planned else 0.0,
            "gpu_seconds": float(df["gpu_seconds"].fillna(0).sum()),
            "cpu_seconds": float(df["cpu_seconds"].fillna(0).sum()),
            "wall_seconds": float(df["wall_seconds"].fillna(0).sum())}


def cost_table(df: pd.DataFrame) -> pd.DataFrame:
    """:func:`cost_summary` as a one-row table."""
    return pd.DataFrame([cost_summary(df)])


def rungs(space: SpaceInfo, max_epochs: int) -> list[float]:
    """ASHA's rungs as the sweep's scheduler placed them (:func:`inat_tune.tune.budget.asha_rungs`:
    min_iter x eta^k below max_epochs), then max_epochs itself. Without early stopping, the
    rungs of min_iter 1 and eta 2, as a scale to read the table against."""
    et = space.early_terminate or {}
    found = asha_rungs(int(et.get("min_iter") or 1), float(et.get("eta") or 2), max_epochs)
    return [int(r) if float(r).is_integer() else r for r in found] + [max_epochs]


def rung_table(df: pd.DataFrame, space: SpaceInfo) -> pd.DataFrame:
    """How many trials reached each ASHA rung (ran at least that many epochs)."""
    top = int(max(df["epochs_budget"].max() if len(df) else 0, space.epochs or 0, 1))
    rs = rungs(space, top)
    return pd.DataFrame({"rung_epochs": rs,
                         "trials_reached": [int((df["epochs_run"] >= r).sum()) for r in rs]})


def best_trial(df: pd.DataFrame, space: SpaceInfo, prefer: str | None = None) -> pd.Series | None:
    """The row of the best trial by the target, chosen by :func:`inat_tune.experiment.choose_best`,
    the rule ``inat-tune evaluate`` chooses by: finished trials only (stopped early by ASHA
    counts as finished; errored and unfinished never), ties to the first created (``df`` is
    in creation order). Of tied trials ``prefer`` (a trial id: the one test_metrics.json
    names) wins. None when no finished trial reported the target."""
    if space.target not in df or df.empty:
        return None
    status = df["status"].replace(STOPPED_EARLY, FINISHED)
    ids = df["trial_id"].tolist()
    i = choose_best(zip(range(len(df)), status, df[space.target]), space.mode,
                    prefer=ids.index(prefer) if prefer in ids else None)
    return None if i is None else df.iloc[i]


def epochs_to_fraction(history: pd.DataFrame, trial_id: str, fraction: float = 0.9,
                       metric: str = "val_acc") -> int | None:
    """The first epoch at which a trial's ``metric`` reached ``fraction`` of its best value."""
    h = history[history["trial_id"] == trial_id].dropna(subset=[metric])
    if h.empty:
        return None
    hit = h[h[metric] >= fraction * h[metric].max()]
    return int(hit["epoch"].min())


def comparison_table(results: Sequence[pd.DataFrame], histories: Sequence[pd.DataFrame],
                     spaces: Sequence[SpaceInfo], labels: Sequence[str],
                     tests: Sequence[Mapping[str, Any] | None] = ()) -> pd.DataFrame:
    """One row per experiment (scratch vs fine-tuning): best val accuracy, test accuracy when
    evaluated, trainable parameters of the best trial, total GPU-/CPU-seconds, and the epochs
    the best trial needed to reach 90 % of its best val accuracy."""
    rows = []
    tests = list(tests) + [None] * (len(labels) - len(tests))
    for df, hist, space, label, test in zip(results, histories, spaces, labels, tests):
        vspace = SpaceInfo(metric="val_acc", mode="max", params=space.params,
                           early_terminate=space.early_terminate, epochs=space.epochs)
        b = best_trial(df, vspace, prefer=(test or {}).get("trial_id"))
        cost = cost_summary(df)
        rows.append({
            "experiment": label, "model": first_value(df, CONFIG_PREFIX + "model"),
            "trials": int(len(df)),
            "best_val_acc": float(b["best_val_acc"]) if b is not None else math.nan,
            "test_acc": float(test["test_acc"]) if test and is_number(test.get("test_acc")) else math.nan,
            "best_trial": b["trial_id"] if b is not None else None,
            "trainable_params": b["trainable_params"] if b is not None else pd.NA,
            "gpu_seconds": cost["gpu_seconds"], "cpu_seconds": cost["cpu_seconds"],
            "epochs_to_90pct": (epochs_to_fraction(hist[hist["experiment"] == label], b["trial_id"])
                                if b is not None else None),
        })
    return pd.DataFrame(rows)


def first_value(df: pd.DataFrame, col: str) -> Any:
    """The first non-missing value of ``col``; None when there is none (or no such column)."""
    if col not in df or df[col].dropna().empty:
        return None
    return df[col].dropna().iloc[0]


def _same(a: Any, b: Any) -> bool:
    if is_number(a) and is_number(b):
        return float(a) == float(b)
    return a == b and type(a) is type(b) or repr(a) == repr(b)


def _numeric_series(s: pd.Series) -> bool:
    """Numbers (bools count, as 0/1) that can be ordered; NaN-free."""
    vals = s.tolist()
    return bool(vals) and all(is_number(v) or isinstance(v, (bool, np.bool_)) for v in vals)
