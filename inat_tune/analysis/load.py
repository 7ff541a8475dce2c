"""Experiment folders -> pandas: one row per trial (:func:`load_results`), one row per epoch
(:func:`load_history`), and what the space says was swept (:class:`SpaceInfo`).

The folders are read by :func:`inat_tune.experiment.load_experiment` (the one reader), and
``space.yaml`` is parsed by :func:`inat_tune.tune.space.load_space`; this module only turns
what they return into tables. Nothing here imports Ray.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import pandas as pd

from ..experiment import ERRORED, FINISHED, UNFINISHED, Experiment, ExperimentError, Trial, epoch_of, \
    load_experiment, read_spec
from ..tune.space import SweepSpec, load_space, max_epochs

STOPPED_EARLY = "stopped_early"
STATUSES = (FINISHED, STOPPED_EARLY, ERRORED, UNFINISHED)
CONFIG_PREFIX = "config/"
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


def space_info(spec: SweepSpec) -> SpaceInfo:
    """A validated space (:func:`inat_tune.tune.space.load_space`) -> :class:`SpaceInfo`: its
    metric, the keys it sweeps (a ``values`` list of one is not swept), its early stopping
    (as load_space normalised it) and the most epochs a trial may run."""
    params: dict[str, ParamInfo] = {}
    for name, p in spec.sampled().items():
        if p.distribution == "categorical":
            if len(p.values) > 1:
                params[name] = ParamInfo(name, "categorical", values=tuple(hashable(v) for v in p.values))
        else:
            params[name] = ParamInfo(name, "numeric", log="log" in p.distribution)
    et = spec.early_terminate
    return SpaceInfo(metric=spec.metric, mode=spec.mode, params=params,
                     early_terminate=dict(et) if et else None,
                     epochs=max_epochs(spec) if "epochs" in spec.parameters else None)


def read_space(experiment: str | Path) -> SpaceInfo | None:
    """``space.yaml`` of an experiment folder (or that file) as a :class:`SpaceInfo`; None when
    it has none, or one that no longer validates."""
    spec = read_spec(experiment)
    return space_info(spec) if spec is not None else None


def infer_space(df: pd.DataFrame) -> SpaceInfo:
    """Swept keys guessed from the configs: every ``config/`` column with more than one value.
    Numbers are numeric (log when all positive and spanning more than 50x), the rest categorical."""
    params: dict[str, ParamInfo] = {}
    for col in config_cols(df):
        name = col[len(CONFIG_PREFIX):]
        vals = df[col].dropna()
        if vals.map(repr).nunique() < 2:
            continue
        if all(is_number(v) for v in vals):
            x = vals.astype(float)
            params[name] = ParamInfo(name, "numeric", log=bool((x > 0).all() and x.max() / x.min() > 50))
        else:
            params[name] = ParamInfo(name, "categorical",
                                     values=tuple(sorted(vals.unique(), key=repr)))
    epochs = None
    if f"{CONFIG_PREFIX}epochs" in df:
        epochs = int(pd.to_numeric(df[f"{CONFIG_PREFIX}epochs"], errors="coerce").max())
    return SpaceInfo(params=params, epochs=epochs)


def experiment_space(exp: Experiment, df: pd.DataFrame) -> SpaceInfo:
    """The space of a read experiment: its validated space.yaml; without one (or one that no
    longer validates), the swept keys inferred from ``df`` (its trial table) with the
    experiment's own metric."""
    if exp.spec is not None:
        return space_info(exp.spec)
    return dataclasses.replace(infer_space(df), metric=exp.metric, mode=exp.mode)


def resolve_space(space: SpaceInfo | Mapping[str, Any] | str | Path | None,
                  df: pd.DataFrame) -> SpaceInfo:
    """A SpaceInfo from whatever was given: a SpaceInfo, a W&B mapping (validated by
    load_space: SpaceError if it cannot run), an experiment folder or ``space.yaml`` path, or
    None (read from ``df.attrs['experiments']``, else inferred from ``df``)."""
    if isinstance(space, SpaceInfo):
        return space
    if isinstance(space, Mapping):
        return space_info(load_space(space))
    where = [space] if isinstance(space, (str, Path)) else df.attrs.get("experiments", [])[:1]
    for p in where:
        found = read_space(p)
        if found is not None:
            return found
    return infer_space(df)


# ---------------------------------------------------------------------------------------------
# Trial and epoch tables


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
        return [float(r[key]) for r in res if is_number(r.get(key))]

    acc, loss = series("val_acc"), series("val_loss")
    best_i = int(np.argmax(acc)) if acc else None
    wall = float(last["time_total_s"]) if is_number(last.get("time_total_s")) else math.nan
    gpu = float(last["gpu_seconds"]) if is_number(last.get("gpu_seconds")) else wall * gpus_per_trial
    cpu = float(last["cpu_seconds"]) if is_number(last.get("cpu_seconds")) else wall * cpus_per_trial
    row: dict[str, Any] = {
        "trial_id": t.trial_id,
        "status": status,
        "stopped_early": status == STOPPED_EARLY,
        "epochs_run": t.epochs_run,
        "epochs_budget": t.epochs,
        "val_acc": acc[-1] if acc else math.nan,
        "best_val_acc": acc[best_i] if acc else math.nan,
        "best_epoch": ([epoch_of(r) for r in res if is_number(r.get("val_acc"))][best_i]
                       if acc else pd.NA),
        "val_loss": loss[-1] if loss else math.nan,
        "best_val_loss": min(loss) if loss else math.nan,
        "train_acc": series("train_acc")[-1] if series("train_acc") else math.nan,
        "wall_seconds": wall,
        "gpu_seconds": gpu,
        "cpu_seconds": cpu,
        "trainable_params": int(last["trainable_params"]) if is_number(last.get("trainable_params")) else pd.NA,
        "created": pd.Timestamp(t.created, unit="s") if t.created is not None else pd.NaT,
        "device": last.get("device"),
        "node_ip": last.get("node_ip"),
        "error": t.error,
        "path": str(t.path) if t.path else None,
    }
    for k, v in _flatten(t.config).items():
        row[CONFIG_PREFIX + k] = hashable(v)
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
    swept = space_info(exps[0].spec).params if exps[0].spec is not None else {}
    first = [CONFIG_PREFIX + k for k in swept if CONFIG_PREFIX + k in out]
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
    (train/val loss and accuracy, lr, epoch_seconds, images_per_s, time_total_s, ...) and a
    ``config/<key>`` column per swept parameter (the space's non-constant ones; without a
    space, the config keys whose value differs between trials). A restored trial that
    reported an epoch twice keeps its last report. ``load_history(EXP).to_csv(path,
    index=False)`` is the table ``inat-tune bench --replay`` reads."""
    exps = load_experiments(path)
    rows = []
    for exp, label in zip(exps, experiment_labels([e.path for e in exps])):
        swept = _swept_keys(exp)
        for t in exp.trials:
            config = _flatten(t.config)
            tags = {CONFIG_PREFIX + k: hashable(config[k]) for k in swept if k in config}
            for r in t.results:
                row = {"experiment": label, "trial_id": t.trial_id, "epoch": epoch_of(r)}
                row.update({k: v for k, v in r.items()
                            if k not in _NOT_METRICS and k not in row and not isinstance(v, (dict, list))})
                row.update(tags)
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


def _swept_keys(exp: Experiment) -> list[str]:
    """The parameters a sweep varied: its space's sampled ones, else config keys that differ."""
    if exp.spec is not None:
        return list(exp.spec.sampled())
    configs = [_flatten(t.config) for t in exp.trials]
    keys = sorted({k for c in configs for k in c})
    return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


# ---------------------------------------------------------------------------------------------
# Small helpers the other analysis modules share


def config_cols(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(CONFIG_PREFIX)]


def hashable(v: Any) -> Any:
    """Lists (YAML, JSON) as tuples, so config values can be grouped and compared."""
    return tuple(hashable(x) for x in v) if isinstance(v, (list, tuple)) else v


def is_number(v: Any) -> bool:
    """A finite int or float (numpy's too), not a bool."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) \
        and math.isfinite(float(v))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out
