"""Read an experiment folder as plain files (no Ray running) and pick its best trial.

This is the one reader of experiment folders, and :func:`choose_best` the one best-trial rule:
:mod:`inat_tune.evaluate` picks the best trial with :func:`best_trial`, and
:mod:`inat_tune.analysis` (so the report too) builds its tables from :func:`load_experiment`
and names the same best trial. An experiment folder is what ``inat-tune sweep`` leaves under
``<storage>/<name>/``::

    sweep.json                the sweep's settings (data_dir, name, gpus_per_trial, ...)
    space.yaml                the resolved search space; metric {name, goal} picks the best
    split_manifest.json       the tuning train/validation split
    <trainable>_<trial_id>/   one folder per Ray Tune trial:
        params.json           the trial's config
        result.json           one JSON line per reported epoch (val_acc, training_iteration, ...)
        checkpoint_00000N/checkpoint.pt   the state after training_iteration N + 1
        error.txt             only when the trial errored
    experiment_state-*.json   Ray's trial table: each trial's status, and trials that have no
                              folder yet (created by Ray, never started)

``load_experiment(path)`` returns an :class:`Experiment` with its trials in creation order and
its space.yaml parsed by :func:`inat_tune.tune.space.load_space` (``Experiment.spec``);
``best_trial(exp)`` returns the finished trial with the best value of the sweep's own metric (a
validation metric: the test set is never used to choose; ties go to the trial created first)
and the checkpoint of its best epoch. Nothing here imports Ray; torch is imported only to read
a checkpoint's saved epoch when checkpoints need checking.

Status of a trial (:attr:`Trial.status`; the analysis adds ``stopped_early`` on top):

- ``errored``: Ray's state says ERROR; without a state file, error.txt exists and the trial
  did not finish. A trial Ray retried after an error and that then completed is finished.
- ``unfinished``: Ray's state says RUNNING, PENDING or PAUSED; or the trial reported nothing;
  or, without a state file, nothing says it ended (still running, or interrupted).
- ``finished``: Ray's state says TERMINATED; without a state file, the last result has
  ``done`` (Ray sets it when ASHA stops a trial too) or all the config's epochs were reported.

A little over 500 lines on purpose: it is the one reader of experiment and run folders, and
the best-trial rule; a second module would be a second reader.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, NamedTuple, TypeVar

import yaml

from .config import RunConfig
from .tune.space import SpaceError, SweepSpec, load_space

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"  # written by tune.runner, which imports SWEEP_FILE and SPACE_FILE from here
SPACE_FILE = "space.yaml"
CHECKPOINT_NAME = "checkpoint.pt"  # inat_tune.train.CHECKPOINT_NAME
RUN_CONFIG = "config.yaml"  # what `inat-tune train --out DIR` writes (inat_tune.run.RUN_FILES) ...
RUN_METRICS, RUN_BEST = "metrics.csv", "best.pt"  # ... with these, when the run has finished
TRIAL_FILES = ("params.json", "result.json", "error.txt")  # a folder with one of them is a trial
_GOALS = {"maximize": "max", "minimize": "min", "max": "max", "min": "min"}
FINISHED, ERRORED, UNFINISHED = "finished", "errored", "unfinished"
_RAY_STATUS = {"TERMINATED": FINISHED, "ERROR": ERRORED, "RUNNING": UNFINISHED,
               "PENDING": UNFINISHED, "PAUSED": UNFINISHED}


class ExperimentError(ValueError):
    """The folder is not a usable experiment; the message names the folder or the trial."""


@dataclass(frozen=True)
class Trial:
    """One trial. ``results`` are result.json's lines in order (one per epoch)."""

    trial_id: str
    path: Path | None  # None: a trial only Ray's state file knows (created, never started)
    config: dict[str, Any]  # params.json (else the results' or Ray's copy)
    results: tuple[dict[str, Any], ...]
    status: str  # FINISHED | ERRORED | UNFINISHED (see the module's docstring)
    epochs: int  # the epochs its config asked for (RunConfig's default when it names none)
    checkpoints: tuple[Path, ...] = ()  # checkpoint_*/checkpoint.pt files, in index order
    error: str | None = None  # the last line of error.txt, for messages
    created: float | None = None  # when it started, in Unix seconds (see _created)

    @property
    def epochs_run(self) -> int:
        return max((epoch_of(r) for r in self.results), default=0)

    def best_result(self, metric: str, mode: str) -> dict[str, Any] | None:
        """The epoch row with the best finite ``metric`` (the earliest on ties), or None."""
        rows = [r for r in self.results if _finite(r.get(metric))]
        if not rows:
            return None
        sign = 1.0 if mode == "max" else -1.0
        return max(rows, key=lambda r: sign * float(r[metric]))  # max() keeps the first of ties


@dataclass(frozen=True)
class Experiment:
    path: Path
    name: str
    sweep: dict[str, Any]  # sweep.json
    space: dict[str, Any]  # space.yaml
    metric: str  # e.g. val_acc
    mode: str  # max | min
    trials: tuple[Trial, ...]  # in creation order
    # space.yaml as load_space validates it; None without one, or when it no longer validates
    # (a file written by an older version): the analysis then infers the swept keys
    spec: SweepSpec | None = None

    @property
    def data_dir(self) -> str | None:
        return self.sweep.get("data_dir")

    def trial(self, trial_id: str) -> Trial:
        for t in self.trials:
            if t.trial_id == trial_id:
                return t
        raise ExperimentError(f"{self.path}: no trial {trial_id!r}")


class BestTrial(NamedTuple):
    trial: Trial
    checkpoint: Path  # .../checkpoint_00000N/checkpoint.pt
    epoch: int | None  # the epoch the checkpoint holds
    value: float  # the metric at that epoch (validation split)
    result: dict[str, Any] | None  # that epoch's result.json row


# ---------------------------------------------------------------------------------------------

def load_experiment(path: str | Path, *, strict: bool = True) -> Experiment:
    """Read ``path`` (an experiment folder); raises ExperimentError if it is not one.

    ``strict=False`` (what the analysis reads) also takes a folder of trials without
    sweep.json or space.yaml, or whose metric could not choose a model (``metric`` is then
    val_acc, maximised).
    """
    if "://" in str(path):
        raise ExperimentError(f"{path}: remote experiments are not read directly; copy the folder "
                              "here first (e.g. `aws s3 sync URI DIR`)")
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise ExperimentError(f"no such experiment folder: {path} (it does not exist)")
    trials = _read_trials(path)
    if not (path / SWEEP_FILE).is_file() and (strict or not trials):
        inner = sorted(p.name for p in path.iterdir() if (p / SWEEP_FILE).is_file())
        hint = f" (experiments inside it: {', '.join(inner)})" if inner else ""
        raise ExperimentError(f"{path} is not an inat-tune experiment folder: no {SWEEP_FILE}"
                              + ("" if trials else " and no trial folders") + hint)
    sweep = _read_json(path / SWEEP_FILE) or {}
    space_file = path / SPACE_FILE
    if strict and not space_file.is_file():
        raise ExperimentError(f"{path}: no {SPACE_FILE}, so the metric that picks the best trial is unknown")
    space, spec = _read_space(space_file)
    try:
        metric, mode = (spec.metric, spec.mode) if spec is not None else _metric(space, space_file)
    except ExperimentError:
        if strict:
            raise
        metric, mode = "val_acc", "max"
    return Experiment(path=path, name=sweep.get("name", path.name), sweep=sweep, space=space,
                      metric=metric, mode=mode, trials=tuple(trials), spec=spec)


def load_model_folder(path: str | Path) -> Experiment:
    """What ``evaluate`` and ``explain`` take: an experiment folder (:func:`load_experiment`),
    or the folder of one ``inat-tune train`` run (:func:`load_run`)."""
    p = Path(path).expanduser()
    if "://" not in str(path) and p.is_dir() and not (p / SWEEP_FILE).is_file():
        if (p / RUN_CONFIG).is_file():
            return load_run(p)
        inner = sorted(q.name for q in p.iterdir() if (q / SWEEP_FILE).is_file())
        hint = f" (experiments inside it: {', '.join(inner)})" if inner else ""
        raise ExperimentError(f"{p.resolve()} is not an inat-tune experiment folder (no {SWEEP_FILE}) "
                              f"nor a training run folder (no {RUN_CONFIG}, as `inat-tune train --out "
                              f"DIR` writes){hint}")
    return load_experiment(path)


def load_run(path: str | Path) -> Experiment:
    """The folder of one finished ``inat-tune train`` run as an experiment of one finished trial
    (its id ``run``) whose checkpoint is ``best.pt``: its metric val_acc (maximised), its
    results ``metrics.csv``, its ``data_dir`` the dataset config.yaml names, W&B off."""
    path = Path(path).expanduser().resolve()
    try:
        raw = yaml.safe_load((path / RUN_CONFIG).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ExperimentError(f"{path / RUN_CONFIG} cannot be read: {type(e).__name__}") from None
    if not isinstance(raw, dict):
        raise ExperimentError(f"{path / RUN_CONFIG}: expected a mapping of key: value")
    config = {k: v for k, v in raw.items() if k != "data"}
    rows = _read_metrics(path / RUN_METRICS)
    if not rows or not (path / RUN_BEST).is_file():
        raise ExperimentError(f"{path}: the training run has not finished (no {RUN_METRICS} or "
                              f"{RUN_BEST}); continue it with `inat-tune train --data DIR --out {path} --resume`")
    epochs = int(config["epochs"]) if _finite(config.get("epochs")) else RunConfig.epochs
    trial = Trial(trial_id="run", path=path, config=config, results=tuple(rows), status=FINISHED,
                  epochs=epochs, checkpoints=(path / RUN_BEST,), created=_created(path, rows))
    return Experiment(path=path, name=path.name,
                      sweep={"name": path.name, "data_dir": raw.get("data"), "use_wandb": False, "run": True},
                      space={"metric": {"name": "val_acc", "goal": "maximize"}}, metric="val_acc",
                      mode="max", trials=(trial,))


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """A run's metrics.csv (one row per epoch), numbers as numbers; [] when missing."""
    import csv

    def cell(v: str) -> Any:
        for cast in (int, float):
            try:
                return cast(v)
            except ValueError:
                pass
        return v

    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: cell(v) for k, v in row.items()} for row in csv.DictReader(f)]


K = TypeVar("K")


def choose_best(trials: Iterable[tuple[K, str, Any]], mode: str, *, include_unfinished: bool = False,
                prefer: K | None = None) -> K | None:
    """The best-trial rule, for trials in any form: ``trials`` are (key, status, value) in
    creation order, value being the trial's best value of the metric over its epochs.

    Among the trials whose status is finished (and unfinished with ``include_unfinished``;
    errored never) and whose value is a finite number: the key of the best by ``mode``
    ("max" or "min"); of tied trials, ``prefer`` when it is one of them, else the one created
    first. None when no trial qualifies.
    """
    allowed = {FINISHED, UNFINISHED} if include_unfinished else {FINISHED}
    scored = [(key, float(v)) for key, status, v in trials if status in allowed and _number(v)]
    if not scored:
        return None
    top = max(v for _, v in scored) if mode == "max" else min(v for _, v in scored)
    tied = [key for key, v in scored if v == top]
    return prefer if prefer is not None and prefer in tied else tied[0]


def best_trial(exp: Experiment, *, include_unfinished: bool = False) -> BestTrial:
    """The finished trial whose best epoch has the best ``exp.metric`` (of tied trials, the one
    created first), and that epoch's checkpoint (of tied epochs, the first one whose checkpoint
    was kept; if none was kept, the kept checkpoint with the best recorded metric, with a
    warning).

    Chosen on the validation split the sweep optimised (space.yaml's metric), never on test
    data. Unfinished trials (interrupted sweeps) count only with ``include_unfinished``;
    errored trials never. Raises ExperimentError when no trial qualifies or the chosen trial
    has no checkpoint.
    """
    trial, row = choose_trial(exp, include_unfinished=include_unfinished)
    return _best_checkpoint(exp, trial, row)


def choose_trial(exp: Experiment, *, include_unfinished: bool = False) -> tuple[Trial, dict[str, Any]]:
    """The trial :func:`best_trial` takes and the result row of its best epoch, by
    :func:`choose_best`; checkpoints are not looked at. Raises ExperimentError as best_trial."""
    if not exp.trials:
        raise ExperimentError(f"{exp.path}: no trial folders (did the sweep start?)")
    allowed = {FINISHED, UNFINISHED} if include_unfinished else {FINISHED}
    if not any(t.status in allowed for t in exp.trials):
        counts = {s: sum(t.status == s for t in exp.trials) for s in (FINISHED, ERRORED, UNFINISHED)}
        errors = [f"{t.trial_id}: {t.error}" for t in exp.trials if t.error][:3]
        raise ExperimentError(
            f"{exp.path}: no finished trial ({len(exp.trials)} trials: {counts[ERRORED]} errored, "
            f"{counts[UNFINISHED]} unfinished)" + (f"; errors: {'; '.join(errors)}" if errors else "")
            + f". Continue it with `inat-tune sweep ... --resume --name {exp.name}`")
    rows = [t.best_result(exp.metric, exp.mode) for t in exp.trials]
    i = choose_best(((i, t.status, r and r[exp.metric]) for i, (t, r) in enumerate(zip(exp.trials, rows))),
                    exp.mode, include_unfinished=include_unfinished)
    if i is None:
        raise ExperimentError(f"{exp.path}: no finished trial reported {exp.metric}")
    return exp.trials[i], rows[i]  # type: ignore[return-value]  # a chosen trial has a best row


def read_spec(path: str | Path) -> SweepSpec | None:
    """The space of an experiment folder (or of its ``space.yaml`` file) as load_space
    validates it; None when there is none or it no longer validates. Reads no trial."""
    path = Path(path)
    return _read_space(path if path.is_file() else path / SPACE_FILE)[1]


def trial_checkpoint(trial: Trial, row: dict[str, Any]) -> Path | None:
    """The checkpoint file saved with result row ``row``, if it was kept.

    Ray names it in the row (``checkpoint_dir_name``); rows without it use Ray's numbering:
    ``checkpoint_00000N`` holds ``training_iteration`` N + 1.
    """
    name = row.get("checkpoint_dir_name")
    if not name and "training_iteration" in row:
        name = f"checkpoint_{int(row['training_iteration']) - 1:06d}"
    if not name or trial.path is None:
        return None
    p = trial.path / name / CHECKPOINT_NAME
    return p if p.is_file() else None


def epoch_of(row: dict[str, Any]) -> int:
    """The epoch a result row reports (``epoch``, else Ray's ``training_iteration``; else 0)."""
    for key in ("epoch", "training_iteration"):
        if _finite(row.get(key)):
            return int(row[key])
    return 0


# ---------------------------------------------------------------------------------------------
# Reading the files

def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number(v: Any) -> bool:
    """A finite number in any numeric type (numpy's, from a table, too); not a bool."""
    if v is None or isinstance(v, (bool, str, bytes)) or type(v).__name__ == "bool_":
        return False
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _metric(space: dict[str, Any], where: Path) -> tuple[str, str]:
    m = space.get("metric") or {}
    name, goal = m.get("name", "val_acc"), m.get("goal", "maximize")
    if goal not in _GOALS:
        raise ExperimentError(f"{where}: metric.goal {goal!r} must be maximize or minimize")
    if str(name).startswith("test"):  # the best model is chosen on validation data only
        raise ExperimentError(f"{where}: metric {name!r} is a test metric; choose on a validation metric")
    return str(name), _GOALS[goal]


def _read_space(path: Path) -> tuple[dict[str, Any], SweepSpec | None]:
    """``space.yaml`` as written ({} when missing) and as load_space validates it (None when
    missing or when it no longer validates, e.g. a file written by an older version)."""
    raw = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    if not raw:
        return {}, None
    try:
        return raw, load_space(raw)
    except SpaceError as e:
        log.info("%s does not validate (%s); its metric is read as written", path, e)
        return raw, None


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file; None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_results(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    for i, line in enumerate(path.read_text(errors="replace").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a killed or running process: keep the rest
            log.warning("%s:%d: unreadable result line skipped", path, i + 1)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _ray_trials(path: Path) -> list[dict[str, Any]]:
    """Ray's trial table, in creation order, from the newest experiment_state-*.json (plain
    JSON: each ``trial_data`` item starts with the trial's JSON); [] if none is readable."""
    files = sorted(path.glob("experiment_state-*.json"), key=lambda p: (p.stat().st_mtime, p.name))
    data = _read_json(files[-1]) if files else None
    out = []
    for item in (data or {}).get("trial_data", []):
        try:
            info = json.loads(item[0]) if isinstance(item[0], str) else item[0]
        except (TypeError, KeyError, IndexError, json.JSONDecodeError):
            continue
        if isinstance(info, dict) and info.get("trial_id"):
            out.append(info)
    return out


def _read_trials(path: Path) -> list[Trial]:
    """The trial folders of ``path`` and the trials only Ray's state names, in creation order:
    by start time (trials without one last), then Ray's order, then folder name."""
    state = _ray_trials(path)
    by_key: dict[str, tuple[int, dict[str, Any]]] = {}  # folder name or trial id -> Ray's entry
    for i, info in enumerate(state):
        for key in (info.get("relative_logdir"), info.get("custom_dirname"), info["trial_id"]):
            if key:
                by_key.setdefault(str(key), (i, info))
    found: list[tuple[int, Trial]] = []
    folders = sorted(p for p in path.iterdir() if p.is_dir() and any((p / f).is_file() for f in TRIAL_FILES))
    for i, d in enumerate(folders):
        results = _read_results(d / "result.json")
        reported = next((str(r["trial_id"]) for r in results if r.get("trial_id")), None)
        guess = reported or d.name.rsplit("_", 1)[-1]  # folders are named <trainable>_<trial_id>
        order, info = by_key.get(d.name) or by_key.get(guess) or (len(state) + i, {})
        config = _read_json(d / "params.json") or (results[-1].get("config") if results else None) \
            or info.get("config") or {}
        found.append((order, _trial(reported or info.get("trial_id") or guess, d, config, results,
                                    info.get("status"))))
    seen = {t.trial_id for _, t in found}
    found += [(i, _trial(str(info["trial_id"]), None, info.get("config") or {}, [], info.get("status")))
              for i, info in enumerate(state) if info["trial_id"] not in seen]
    found.sort(key=lambda ot: (ot[1].created is None, ot[1].created or 0.0, ot[0]))
    return [t for _, t in found]


def _trial(trial_id: str, path: Path | None, config: dict[str, Any], results: list[dict[str, Any]],
           ray_status: str | None) -> Trial:
    error = None
    if path is not None and (path / "error.txt").is_file():
        lines = [ln for ln in (path / "error.txt").read_text(errors="replace").splitlines() if ln.strip()]
        # Ray's error.txt ends with the exception's own line ("RuntimeError: CUDA out of memory")
        error = lines[-1].strip()[:200] if lines else "error.txt is empty"
    epochs = int(config["epochs"]) if _finite(config.get("epochs")) else RunConfig.epochs
    checkpoints = () if path is None else tuple(
        sorted(path.glob(f"checkpoint_*/{CHECKPOINT_NAME}"), key=lambda p: _checkpoint_index(p.parent.name)))
    return Trial(trial_id=trial_id, path=path, config=config, results=tuple(results),
                 status=_status(results, error, ray_status, epochs), epochs=epochs,
                 checkpoints=checkpoints, error=error, created=_created(path, results))


def _status(results: list[dict[str, Any]], error: str | None, ray_status: str | None, epochs: int) -> str:
    """Ray's own status when its state file names the trial, else the trial's files (see the
    module's docstring)."""
    said = _RAY_STATUS.get(ray_status)  # None: no state file, or it does not name the trial
    if said in (ERRORED, UNFINISHED):
        return said
    if results and (said == FINISHED or results[-1].get("done")
                    or (error is None and max(epoch_of(r) for r in results) >= epochs)):
        return FINISHED
    return ERRORED if error is not None and said is None else UNFINISHED


def _created(path: Path | None, results: list[dict[str, Any]]) -> float | None:
    """When the trial started: its first result's timestamp less the time it had run by then
    (Ray's time_total_s); without one, its folder's ctime; None for a trial with no folder."""
    first = results[0] if results else {}
    if _finite(first.get("timestamp")):
        run = first.get("time_total_s")
        return float(first["timestamp"]) - (float(run) if _finite(run) else 0.0)
    return path.stat().st_ctime if path is not None else None


def _checkpoint_index(name: str) -> int:
    try:
        return int(name.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        return -1


# ---------------------------------------------------------------------------------------------
# The best checkpoint of the best trial

def _saved(ckpt: Path, metric: str) -> tuple[int | None, float | None]:
    """(epoch, metric at that epoch) as the checkpoint file itself records them."""
    from .train import load_checkpoint  # only here: reading the experiment's JSON needs no torch

    payload = load_checkpoint(ckpt, map_location="cpu")  # weights_only: a checkpoint runs no code
    epoch = payload.get("epoch")
    value = None
    for h in payload.get("history", []):
        if h.get("epoch") == epoch and _finite(h.get(metric)):
            value = float(h[metric])
    return epoch, value


def _best_checkpoint(exp: Experiment, trial: Trial, row: dict[str, Any]) -> BestTrial:
    if not trial.checkpoints:
        raise ExperimentError(f"trial {trial.trial_id} ({trial.path}) has the best {exp.metric} but no "
                              f"checkpoint (no checkpoint_*/{CHECKPOINT_NAME}); it cannot be evaluated")
    value = float(row[exp.metric])
    # Epochs that tie with the best value are equally good: take the first one whose checkpoint
    # was kept (Ray's num_to_keep may keep only the later of two equal scores).
    ties = [r for r in trial.results if _finite(r.get(exp.metric)) and float(r[exp.metric]) == value]
    for r in ties or [row]:
        ckpt = trial_checkpoint(trial, r)
        if ckpt is None:
            continue
        epoch, _ = _saved(ckpt, exp.metric)
        if epoch is None or r.get("epoch") is None or epoch == r["epoch"]:
            return BestTrial(trial, ckpt, epoch if epoch is not None else r.get("epoch"), value, r)
        log.warning("trial %s: %s holds epoch %s, but its result row is epoch %s; searching the "
                    "trial's checkpoints", trial.trial_id, ckpt.parent.name, epoch, r["epoch"])
    # The best epoch's checkpoint was not kept (or does not match): take the kept checkpoint
    # of that epoch if any, else the one with the best metric it recorded itself.
    sign = 1.0 if exp.mode == "max" else -1.0
    saved = []
    by_epoch = {r.get("epoch"): r for r in trial.results}
    for p in trial.checkpoints:
        epoch, v = _saved(p, exp.metric)
        if v is None and _finite(by_epoch.get(epoch, {}).get(exp.metric)):
            v = float(by_epoch[epoch][exp.metric])
        tied = next((r for r in ties if epoch is not None and r.get("epoch") == epoch), None)
        if tied is not None:
            return BestTrial(trial, p, epoch, value, tied)
        if v is not None:
            saved.append((sign * v, -_checkpoint_index(p.parent.name), p, epoch, v))
    if not saved:
        raise ExperimentError(f"trial {trial.trial_id} ({trial.path}): none of its checkpoints records "
                              f"{exp.metric}, so the best one is unknown")
    _, _, p, epoch, v = max(saved)
    log.warning("trial %s: the checkpoint of its best epoch %s (%s %.4f) was not kept; using %s "
                "(epoch %s, %s %.4f)", trial.trial_id, row.get("epoch"), exp.metric, value,
                p.parent.name, epoch, exp.metric, v)
    return BestTrial(trial, p, epoch, v, by_epoch.get(epoch))
