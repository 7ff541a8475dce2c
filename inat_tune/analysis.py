"""Experiment folders -> pandas, without Ray: one row per trial, one row per epoch, and the
tables a report is made of (per-value accuracy, correlation + importance, cost, ASHA rungs).

The folders are read by :func:`inat_tune.experiment.load_experiment` (params.json,
result.json, error.txt, Ray's experiment_state-*.json, sweep.json); ``space.yaml`` also says
which keys were swept, their kind, the metric and the ASHA rungs.

Status of a trial (column ``status``): experiment's ``finished`` / ``errored`` /
``unfinished`` (see :mod:`inat_tune.experiment`), except that a finished trial that ran fewer
epochs than its config's ``epochs`` (default RunConfig's) is ``stopped_early`` (ASHA stopped it).

Accuracies in the summary tables are each trial's *best* validation value over the epochs it
ran (``best_val_acc``), which is what the sweep optimises and what its checkpoints keep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import pandas as pd

from .experiment import ERRORED, FINISHED, UNFINISHED, Experiment, ExperimentError, Trial, epoch_of, \
    load_experiment

STOPPED_EARLY = "stopped_early"
STATUSES = (FINISHED, STOPPED_EARLY, ERRORED, UNFINISHED)
CONFIG_PREFIX = "config/"
MIN_TRIALS = 5  # fewer trials than this: no correlation or importance claim is made
RF_TREES, RF_SEED = 300, 0  # the importance forest; seeded: the same folder, the same table
LOW_IMPORTANCE = 0.05  # below this, gaps between a categorical's values are called confounded
ROUGH_TRIALS = 20  # fewer than this: the importance ranking is called a rough guide
# Result keys that are Ray bookkeeping, not metrics (kept out of history.csv).
_NOT_METRICS = {"config", "checkpoint_dir_name", "should_checkpoint", "done", "pid", "hostname",
                "date", "time_since_restore", "iterations_since_restore", "experiment_tag"}


# ---------------------------------------------------------------------------------------------
# The search space: which config keys were swept, and how


@dataclass(frozen=True)
class ParamInfo:
    """A swept hyperparameter: categorical (W&B ``values``) or numeric (a distribution)."""

    name: str
    kind: str  # "categorical" | "numeric"
    log: bool = False  # log-distributed: plotted on a log axis
    values: tuple[Any, ...] = ()  # categorical: the declared order


@dataclass(frozen=True)
class SpaceInfo:
    """What the analysis needs from ``space.yaml`` (or, without one, from the configs)."""

    metric: str = "val_acc"
    mode: str = "max"
    params: dict[str, ParamInfo] = field(default_factory=dict)
    early_terminate: dict[str, Any] | None = None
    epochs: int | None = None  # the most epochs a trial may run (ASHA's max_t)

    @property
    def target(self) -> str:
        """The per-trial column the analysis ranks by: ``best_<metric>``."""
        return f"best_{self.metric}" if self.metric in ("val_acc", "val_loss") else "best_val_acc"


def read_space(experiment: str | Path) -> SpaceInfo | None:
    """``space.yaml`` of an experiment as a :class:`SpaceInfo`; None when it has none."""
    p = Path(experiment) / "space.yaml"
    if not p.is_file():
        return None
    import yaml

    return space_from_dict(yaml.safe_load(p.read_text()) or {})


def space_from_dict(raw: Mapping[str, Any]) -> SpaceInfo:
    """A W&B sweep mapping (``space.yaml``) -> :class:`SpaceInfo` (swept keys only)."""
    metric = raw.get("metric") or {}
    goal = metric.get("goal", "maximize")
    params: dict[str, ParamInfo] = {}
    epochs = None
    for name, form in (raw.get("parameters") or {}).items():
        form = form or {}
        if name == "epochs":
            if "value" in form:
                epochs = int(form["value"])
            elif "values" in form:
                epochs = int(max(form["values"]))
            elif "max" in form and "log" not in str(form.get("distribution", "")):
                epochs = int(form["max"])
        if "value" in form:
            continue
        if "values" in form:
            values = tuple(_hashable(v) for v in form["values"])
            if len(values) > 1:
                params[name] = ParamInfo(name, "categorical", values=values)
            continue
        dist = str(form.get("distribution", "uniform"))
        if dist == "categorical":
            continue
        params[name] = ParamInfo(name, "numeric", log="log" in dist)
    et = raw.get("early_terminate")
    return SpaceInfo(metric=metric.get("name", "val_acc"),
                     mode="min" if goal == "minimize" else "max",
                     params=params, early_terminate=dict(et) if et else None, epochs=epochs)


def infer_space(df: pd.DataFrame) -> SpaceInfo:
    """Swept keys guessed from the configs: every ``config/`` column with more than one value.
    Numbers are numeric (log when all positive and spanning more than 50x), the rest categorical."""
    params: dict[str, ParamInfo] = {}
    for col in _config_cols(df):
        name = col[len(CONFIG_PREFIX):]
        vals = df[col].dropna()
        if vals.map(repr).nunique() < 2:
            continue
        if all(_is_number(v) for v in vals):
            x = vals.astype(float)
            params[name] = ParamInfo(name, "numeric", log=bool((x > 0).all() and x.max() / x.min() > 50))
        else:
            params[name] = ParamInfo(name, "categorical",
                                     values=tuple(sorted(vals.unique(), key=repr)))
    epochs = None
    if f"{CONFIG_PREFIX}epochs" in df:
        epochs = int(pd.to_numeric(df[f"{CONFIG_PREFIX}epochs"], errors="coerce").max())
    return SpaceInfo(params=params, epochs=epochs)


def resolve_space(space: SpaceInfo | Mapping[str, Any] | str | Path | None,
                  df: pd.DataFrame) -> SpaceInfo:
    """A SpaceInfo from whatever was given: a SpaceInfo, a W&B mapping, an experiment folder or
    ``space.yaml`` path, or None (read from ``df.attrs['experiments']``, else inferred)."""
    if isinstance(space, SpaceInfo):
        return space
    if isinstance(space, Mapping):
        return space_from_dict(space)
    if isinstance(space, (str, Path)):
        p = Path(space)
        if p.is_file():
            import yaml
            return space_from_dict(yaml.safe_load(p.read_text()) or {})
        found = read_space(p)
        if found is not None:
            return found
        return infer_space(df)
    for exp in df.attrs.get("experiments", [])[:1]:
        found = read_space(exp)
        if found is not None:
            return found
    return infer_space(df)


# ---------------------------------------------------------------------------------------------
# Reading trials (the folders are read by inat_tune.experiment; this turns them into tables)


ExperimentsArg = Union[str, Path, Experiment, Sequence[Union[str, Path, Experiment]]]


def load_experiments(path: ExperimentsArg) -> list[Experiment]:
    """One or several experiment folders, read with ``load_experiment(strict=False)`` (a folder
    of trials without sweep.json or space.yaml is read too); already read ones pass through.
    Raises FileNotFoundError for a folder that is missing or holds neither."""
    paths = [path] if isinstance(path, (str, Path, Experiment)) else list(path)
    if not paths:
        raise ValueError("no experiment folder given")
    try:
        return [p if isinstance(p, Experiment) else load_experiment(p, strict=False) for p in paths]
    except ExperimentError as e:  # a missing or empty folder, as for any file argument
        raise FileNotFoundError(str(e)) from None


def _trial_row(t: Trial, gpus_per_trial: float, cpus_per_trial: float) -> dict[str, Any]:
    res = t.results
    status = STOPPED_EARLY if t.status == FINISHED and t.epochs_run < t.epochs else t.status
    last = res[-1] if res else {}

    def series(key: str) -> list[float]:
        return [float(r[key]) for r in res if _is_number(r.get(key))]

    acc, loss = series("val_acc"), series("val_loss")
    best_i = int(np.argmax(acc)) if acc else None
    wall = float(last["time_total_s"]) if _is_number(last.get("time_total_s")) else math.nan
    gpu = float(last["gpu_seconds"]) if _is_number(last.get("gpu_seconds")) else wall * gpus_per_trial
    cpu = float(last["cpu_seconds"]) if _is_number(last.get("cpu_seconds")) else wall * cpus_per_trial
    row: dict[str, Any] = {
        "trial_id": t.trial_id,
        "status": status,
        "stopped_early": status == STOPPED_EARLY,
        "epochs_run": t.epochs_run,
        "epochs_budget": t.epochs,
        "val_acc": acc[-1] if acc else math.nan,
        "best_val_acc": acc[best_i] if acc else math.nan,
        "best_epoch": ([epoch_of(r) for r in res if _is_number(r.get("val_acc"))][best_i]
                       if acc else pd.NA),
        "val_loss": loss[-1] if loss else math.nan,
        "best_val_loss": min(loss) if loss else math.nan,
        "train_acc": series("train_acc")[-1] if series("train_acc") else math.nan,
        "wall_seconds": wall,
        "gpu_seconds": gpu,
        "cpu_seconds": cpu,
        "trainable_params": int(last["trainable_params"]) if _is_number(last.get("trainable_params")) else pd.NA,
        "created": pd.Timestamp(t.created, unit="s") if t.created is not None else pd.NaT,
        "device": last.get("device"),
        "node_ip": last.get("node_ip"),
        "error": t.error,
        "path": str(t.path) if t.path else None,
    }
    for k, v in _flatten(t.config).items():
        row[CONFIG_PREFIX + k] = _hashable(v)
    return row


def experiment_labels(dirs: Sequence[Path]) -> list[str]:
    """Folder names, made unique (``name``, ``name-2``) when two experiments share one."""
    labels: list[str] = []
    for d in dirs:
        label, k = d.name, 2
        while label in labels:
            label, k = f"{d.name}-{k}", k + 1
        labels.append(label)
    return labels


def load_results(path: ExperimentsArg) -> pd.DataFrame:
    """One row per trial of one or several experiment folders, ordered by creation.

    Columns: ``experiment``, ``trial_id``, ``status`` (finished / stopped_early / errored /
    unfinished), ``stopped_early``, ``epochs_run``, ``epochs_budget`` (the config's epochs),
    ``val_acc`` / ``val_loss`` (last epoch), ``best_val_acc`` / ``best_val_loss`` (over epochs),
    ``best_epoch``, ``train_acc``, ``wall_seconds`` (Ray's time_total_s), ``gpu_seconds``
    (GPU fraction x training time), ``cpu_seconds``, ``trainable_params``, ``created``,
    ``device``, ``node_ip``, ``error`` (last line of error.txt), ``path``, and ``config/<key>``
    for every config key. Metrics are NaN for a trial that reported nothing. Reads files only:
    Ray need not run. ``df.attrs['experiments']`` lists the folders read.
    """
    exps = load_experiments(path)
    frames = []
    for exp, label in zip(exps, experiment_labels([e.path for e in exps])):
        gpus, cpus = float(exp.sweep.get("gpus_per_trial", 0.0)), float(exp.sweep.get("cpus_per_trial", 1.0))
        rows = [_trial_row(t, gpus, cpus) for t in exp.trials]
        df = pd.DataFrame(rows, columns=_BASE_COLUMNS if not rows else None)
        df.insert(0, "experiment", label)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    base = [c for c in out.columns if not c.startswith(CONFIG_PREFIX)]
    first = [CONFIG_PREFIX + k for k in space_from_dict(exps[0].space).params if CONFIG_PREFIX + k in out]
    rest = sorted(c for c in out.columns if c.startswith(CONFIG_PREFIX) and c not in first)
    out = out[base + first + rest]
    out.attrs["experiments"] = [str(e.path) for e in exps]
    return out


_BASE_COLUMNS = ["trial_id", "status", "stopped_early", "epochs_run", "epochs_budget", "val_acc",
                 "best_val_acc", "best_epoch", "val_loss", "best_val_loss", "train_acc",
                 "wall_seconds", "gpu_seconds", "cpu_seconds", "trainable_params", "created",
                 "device", "node_ip", "error", "path"]


def load_history(path: ExperimentsArg) -> pd.DataFrame:
    """Long format: one row per (experiment, trial, epoch) with every scalar metric reported
    (train/val loss and accuracy, lr, epoch_seconds, images_per_s, time_total_s, ...). A
    restored trial that reported an epoch twice keeps its last report."""
    exps = load_experiments(path)
    rows = []
    for exp, label in zip(exps, experiment_labels([e.path for e in exps])):
        for t in exp.trials:
            for r in t.results:
                row = {"experiment": label, "trial_id": t.trial_id, "epoch": epoch_of(r)}
                row.update({k: v for k, v in r.items()
                            if k not in _NOT_METRICS and k not in row and not isinstance(v, (dict, list))})
                rows.append(row)
    if not rows:
        out = pd.DataFrame(columns=["experiment", "trial_id", "epoch"])
    else:
        out = (pd.DataFrame(rows)
               .drop_duplicates(["experiment", "trial_id", "epoch"], keep="last")
               .sort_values(["experiment", "trial_id", "epoch"], kind="stable")
               .reset_index(drop=True))
    out.attrs["experiments"] = [str(e.path) for e in exps]
    return out


# ---------------------------------------------------------------------------------------------
# Tables (every number a report or an insight states comes from one of these)


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


def strength(rho: float, n: int) -> str:
    """An honest word for a Spearman rho: too few trials / weak / moderate / strong."""
    if n < MIN_TRIALS:
        return "too few trials to say"
    if rho is None or not math.isfinite(rho):
        return "no correlation can be computed"
    a = abs(rho)
    return "weak" if a < 0.3 else "moderate" if a < 0.6 else "strong"


def cost_summary(df: pd.DataFrame) -> dict[str, Any]:
    """Trial counts by status, epochs run / planned / saved by early stopping, and the GPU-,
    CPU- and wall-seconds the trials used.

    ``epochs_planned`` sums the config epochs of trials that ended without error (finished or
    stopped early); ``epochs_saved`` sums ``epochs_budget - epochs_run`` over the trials ASHA
    stopped; ``saved_pct`` is saved / planned x 100."""
    counts = {s: int((df["status"] == s).sum()) for s in STATUSES}
    ended = df[df["status"].isin(["finished", "stopped_early"])]
    stopped = df[df["status"] == "stopped_early"]
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


def rungs(space: SpaceInfo, max_epochs: int) -> list[int]:
    """ASHA's milestones: min_iter x eta^k below max_epochs (``make_scheduler``'s grace period
    and reduction factor), then max_epochs itself."""
    et = space.early_terminate or {}
    lo, eta = int(et.get("min_iter", 1) or 1), int(et.get("eta", 2) or 2)
    top = int(et.get("max_iter") or max_epochs)
    out, r = [], max(lo, 1)
    while r < top and eta > 1:
        out.append(r)
        r *= eta
    return out + [top] if top not in out else out


def rung_table(df: pd.DataFrame, space: SpaceInfo) -> pd.DataFrame:
    """How many trials reached each ASHA rung (ran at least that many epochs)."""
    top = int(max(df["epochs_budget"].max() if len(df) else 0, space.epochs or 0, 1))
    rs = rungs(space, top)
    return pd.DataFrame({"rung_epochs": rs,
                         "trials_reached": [int((df["epochs_run"] >= r).sum()) for r in rs]})


def best_trial(df: pd.DataFrame, space: SpaceInfo, prefer: str | None = None) -> pd.Series | None:
    """The row of the best trial by the target (None when no trial reported it).

    Ties go to ``prefer`` when it is among them: the trial :func:`inat_tune.experiment.best_trial`
    chose (``inat-tune evaluate`` names it in test_metrics.json), which may differ because it
    considers finished trials only; else to the first created, experiment.best_trial's own
    rule (``df`` is in creation order)."""
    d = scored(df, space.target)
    if d.empty:
        return None
    top = d[space.target].max() if space.mode == "max" else d[space.target].min()
    tied = d[d[space.target] == top]
    if prefer is not None and (tied["trial_id"] == prefer).any():
        return tied[tied["trial_id"] == prefer].iloc[0]
    return tied.iloc[0]


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
            "experiment": label, "model": _first(df, CONFIG_PREFIX + "model"),
            "trials": int(len(df)),
            "best_val_acc": float(b["best_val_acc"]) if b is not None else math.nan,
            "test_acc": float(test["test_acc"]) if test and _is_number(test.get("test_acc")) else math.nan,
            "best_trial": b["trial_id"] if b is not None else None,
            "trainable_params": b["trainable_params"] if b is not None else pd.NA,
            "gpu_seconds": cost["gpu_seconds"], "cpu_seconds": cost["cpu_seconds"],
            "epochs_to_90pct": (epochs_to_fraction(hist[hist["experiment"] == label], b["trial_id"])
                                if b is not None else None),
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Insights: sentences made only of numbers from the tables above


def fmt_metric(x: float) -> str:
    return "-" if x is None or not _finite(x) else f"{x:.4f}"


def fmt_rho(x: float) -> str:
    return "-" if x is None or not _finite(x) else f"{x:+.2f}"


def fmt_importance(x: float) -> str:
    return "-" if x is None or not _finite(x) else f"{x:.3f}"


def fmt_seconds(x: float) -> str:
    """Whole seconds from 100 s up, tenths below (a tiny CPU trial costs ~1 s)."""
    return "-" if x is None or not _finite(x) else f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}"


def fmt_p(x: float) -> str:
    return "-" if x is None or not _finite(x) else ("<0.001" if x < 0.001 else f"{x:.3f}")


def fmt_pct(x: float) -> str:
    return "-" if x is None or not _finite(x) else f"{x:.1f}"


def fmt_value(v: Any) -> str:
    """A config value as tables and insights print it (floats to 3 significant digits)."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3g}"
    if isinstance(v, tuple):
        return "-".join(fmt_value(x) for x in v)
    return str(v)


def metric_label(space: SpaceInfo) -> str:
    return {"best_val_acc": "best val accuracy", "best_val_loss": "best val loss"}[space.target]


def insights(df: pd.DataFrame, space: SpaceInfo | Mapping[str, Any] | str | Path | None = None,
             importance: pd.DataFrame | None = None, prefer: str | None = None) -> list[str]:
    """Findings of a sweep in plain sentences, each number taken from :func:`category_table`,
    :func:`importance_table` (pass it when already computed), :func:`cost_table`, or the trial
    table (best configuration; ``prefer`` breaks a tie for best as in :func:`best_trial`). Correlations come with a qualifier (weak < 0.3 <= moderate <
    0.6 <= strong |rho|, and "could be chance" when p >= 0.05), and no claim is made from
    fewer than MIN_TRIALS scored trials."""
    space = resolve_space(space, df)
    target, label = space.target, metric_label(space)
    out: list[str] = []
    d = scored(df, target)
    n = len(d)
    b = best_trial(df, space, prefer=prefer)
    if b is None:
        out.append(f"No trial reported {space.metric}: nothing to analyse yet "
                   f"({len(df)} trials, {int((df['status'] == 'errored').sum())} errored).")
    else:
        cfg = ", ".join(f"{p.name}={fmt_value(b[CONFIG_PREFIX + p.name])}" for p in swept_params(df, space))
        out.append(f"Best trial {b['trial_id']} ({b['status']}, {b['epochs_run']} of "
                   f"{b['epochs_budget']} epochs): {label} {fmt_metric(b[target])}"
                   + (f" at epoch {b['best_epoch']}" if target == "best_val_acc" else "")
                   + (f"; {cfg}." if cfg else "."))
    if n and n < MIN_TRIALS:
        out.append(f"Only {n} trials reported {space.metric}: too few trials to say which "
                   "hyperparameters matter.")
    imp = importance_table(df, space) if importance is None else importance
    ranked = imp[imp["importance"].notna()]
    if len(ranked):
        top = ranked.iloc[0]
        tail = (f", then {ranked.iloc[1]['param']} ({fmt_importance(ranked.iloc[1]['importance'])})"
                if len(ranked) > 1 else "")
        rough = (f" With {top['n']} trials this ranking is a rough guide."
                 if top["n"] < ROUGH_TRIALS else "")
        out.append(f"Most important hyperparameter for {label} (random-forest importance, "
                   f"n = {top['n']}): {top['param']} ({fmt_importance(top['importance'])}){tail}."
                   + rough)
    cats = category_table(df, space)
    for p in swept_params(df, space):
        rank = imp.loc[imp["param"] == p.name]
        ranked_p = bool(len(rank)) and _finite(rank["importance"].iloc[0])
        where = (f" (importance {fmt_importance(rank['importance'].iloc[0])}, rank "
                 f"{int(rank['rank'].iloc[0])} of {len(imp)})" if ranked_p else "")
        low = ranked_p and rank["importance"].iloc[0] < LOW_IMPORTANCE
        if p.kind == "categorical":
            t = cats[(cats["param"] == p.name) & (cats["n"] > 0)]
            if t.empty:
                continue
            t = t.sort_values("mean", ascending=space.mode == "min", kind="stable")
            parts = "; ".join(f"{fmt_value(r.value)}: mean {fmt_metric(r.mean)}, best "
                              f"{fmt_metric(r.best)} (n = {r.n})" for r in t.itertuples())
            qual = (" Too few trials to say." if t["n"].sum() < MIN_TRIALS else
                    " Its importance is low: the gaps between values more likely come from the "
                    "other hyperparameters of those trials." if low and len(t) > 1 else "")
            out.append(f"{p.name}{where}, {label} by value: {parts}.{qual}")
        else:
            r = imp.loc[imp["param"] == p.name].iloc[0]
            word = strength(r["spearman"], int(r["n"]))
            if word in ("too few trials to say", "no correlation can be computed"):
                out.append(f"{p.name}: {word} (n = {r['n']}).")
                continue
            sign = "positive" if r["spearman"] > 0 else "negative"
            chance = (" It could be chance (p >= 0.05)." if not r["p_value"] < 0.05 else "")
            out.append(f"{p.name}{where}: {word} {sign} correlation with {label} "
                       f"(Spearman rho = {fmt_rho(r['spearman'])}, p = {fmt_p(r['p_value'])}, "
                       f"n = {r['n']}).{chance}")
    c = cost_summary(df)
    if c["gpu_seconds"] > 0:
        out.append(f"The sweep cost {fmt_seconds(c['gpu_seconds'])} GPU-seconds over "
                   f"{c['trials']} trials ({fmt_seconds(c['wall_seconds'])} s of trial wall time).")
    else:
        out.append(f"The sweep cost {fmt_seconds(c['cpu_seconds'])} CPU-seconds (no GPU) over "
                   f"{c['trials']} trials ({fmt_seconds(c['wall_seconds'])} s of trial wall time).")
    if c["stopped_early"]:
        out.append(f"Early stopping (ASHA) stopped {c['stopped_early']} of {c['trials']} trials, "
                   f"saving {c['epochs_saved']} of {c['epochs_planned']} planned epochs "
                   f"({fmt_pct(c['saved_pct'])} %).")
    else:
        out.append(f"Early stopping stopped none of the {c['trials']} trials: it saved 0 epochs.")
    if c["errored"]:
        ids = ", ".join(df.loc[df["status"] == "errored", "trial_id"].astype(str))
        out.append(f"{c['errored']} of {c['trials']} trials errored ({ids}); see their error.txt.")
    if c["unfinished"]:
        out.append(f"{c['unfinished']} of {c['trials']} trials are unfinished (still running, "
                   "pending or interrupted): the numbers above may change.")
    return out


# ---------------------------------------------------------------------------------------------
# helpers


def _config_cols(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(CONFIG_PREFIX)]


def _first(df: pd.DataFrame, col: str) -> Any:
    if col not in df or df[col].dropna().empty:
        return None
    return df[col].dropna().iloc[0]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _hashable(v: Any) -> Any:
    return tuple(_hashable(x) for x in v) if isinstance(v, (list, tuple)) else v


def _same(a: Any, b: Any) -> bool:
    if _is_number(a) and _is_number(b):
        return float(a) == float(b)
    return a == b and type(a) is type(b) or repr(a) == repr(b)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) \
        and math.isfinite(float(v))


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _numeric_series(s: pd.Series) -> bool:
    """Numbers (bools count, as 0/1) that can be ordered; NaN-free."""
    vals = s.tolist()
    return bool(vals) and all(_is_number(v) or isinstance(v, (bool, np.bool_)) for v in vals)


__all__ = ["ParamInfo", "SpaceInfo", "STATUSES", "load_experiments", "load_results", "load_history", "read_space",
           "infer_space", "resolve_space", "space_from_dict", "category_table", "importance_table",
           "cost_summary", "cost_table", "rung_table", "rungs", "best_trial", "comparison_table",
           "epochs_to_fraction", "insights", "strength", "experiment_labels"]
