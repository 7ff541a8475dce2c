"""``inat-tune bench --replay TABLE``: search methods replayed over recorded learning curves.

Which search finds the best model for the least compute? A replay answers it without training
anything. TABLE holds the learning curve of every configuration of a full-factorial grid, each
trial run to the same number of epochs: a finished experiment folder, or a CSV of its history
(``load_history(EXP).to_csv(path, index=False)``: one row per (trial, epoch) with ``trial_id``,
``epoch``, ``val_acc``, ``epoch_seconds`` and a ``config/<key>`` column per parameter).

Each method runs through Ray Tune with the project's real searcher and scheduler
(:func:`inat_tune.tune.search.make_search_alg` / :func:`make_scheduler`) over the grid's values;
its trainable looks up the suggested configuration's recorded curve and reports it epoch by
epoch, sleeping the recorded epoch seconds times ``time_scale``, so ASHA sees results in a
realistic order. Per method and searcher seed it records the epochs used, the best ``val_acc``
found, and the epochs it took to first reach random search's final best of the same seed.

Methods (``METHODS``): ``random`` (every trial to full epochs), ``random+asha``, ``tpe``,
``tpe+asha``, ``tpe+asha:complete`` (the ablation where trials that ASHA stopped are told to
Optuna as COMPLETE with their last value, Ray's ``OptunaSearch`` behaviour, instead of PRUNED)
and ``tpe+asha:univariate`` (independent TPE per parameter; the sweep's TPE is multivariate).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .search import epochs_to_reach  # the same rule as bench --search

CONFIG_PREFIX = "config/"
REQUIRED_COLUMNS = ("trial_id", "epoch", "val_acc", "epoch_seconds")


@dataclass(frozen=True)
class Method:
    """A search method: the space's ``method``, ASHA on or off, and how stops reach Optuna."""

    method: str  # bayes | random
    asha: bool
    prune_stopped: bool = True  # ASHA-stopped trials told to Optuna as PRUNED (else COMPLETE)
    multivariate: bool = True  # TPE over the joint distribution (the sweep's default)


METHODS = {
    "random": Method("random", asha=False),
    "random+asha": Method("random", asha=True),
    "tpe": Method("bayes", asha=False),
    "tpe+asha": Method("bayes", asha=True),
    "tpe+asha:complete": Method("bayes", asha=True, prune_stopped=False),
    "tpe+asha:univariate": Method("bayes", asha=True, multivariate=False),
}


class ReplayError(ValueError):
    """A table that cannot be replayed; the message says why."""


@dataclass(frozen=True)
class ReplayTable:
    """The recorded grid: per configuration (a tuple of values in ``keys`` order), its
    validation accuracy and seconds for epochs 1..``epochs``."""

    keys: tuple[str, ...]
    levels: dict[str, tuple[Any, ...]]
    curves: dict[tuple[Any, ...], tuple[float, ...]]
    seconds: dict[tuple[Any, ...], tuple[float, ...]]
    epochs: int
    source: str

    @property
    def best(self) -> float:
        """The best val_acc of any configuration at any epoch: what a search can find."""
        return max(max(c) for c in self.curves.values())


@dataclass(frozen=True)
class ReplayOptions:
    table: str
    seeds: int = 20
    num_samples: int = 30
    methods: tuple[str, ...] = tuple(METHODS)
    grace_period: int = 1  # ASHA's first rung (W&B early_terminate.min_iter)
    eta: float = 3.0  # ASHA's reduction factor
    max_concurrent: int = 4  # trials running at once (as on one GPU at 0.25 per trial)
    time_scale: float = 0.002  # replayed epoch = recorded epoch_seconds x this
    json_path: str | None = None
    figure_path: str | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ReplayError(what)
        need(self.seeds >= 1, f"--seeds {self.seeds}: must be >= 1")
        need(self.num_samples >= 2, f"--num-samples {self.num_samples}: must be >= 2")
        unknown = [m for m in self.methods if m not in METHODS]
        need(not unknown, f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
        need("random" in self.methods, "--methods must include random (the reference)")
        need(self.grace_period >= 1, f"--grace-period {self.grace_period}: must be >= 1")
        need(self.eta > 1, f"--eta {self.eta}: must be > 1")
        need(self.max_concurrent >= 1, f"--max-concurrent {self.max_concurrent}: must be >= 1")
        need(self.time_scale >= 0, f"--time-scale {self.time_scale}: must be >= 0")


# ---------------------------------------------------------------------------------------------
# The table


def _plain(v: Any) -> Any:
    """A hashable value Optuna accepts as a category (lists become their repr)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return v  # keep floats as floats: 1.0 and 1 are different levels only if both occur
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return repr(v)


def _sort_key(v: Any) -> tuple[str, Any]:
    return (type(v).__name__, v)


def load_table(path: str | Path):
    """The history of TABLE (an experiment folder or a CSV) as a DataFrame, checked that
    every trial finished (experiment folders only: a CSV has no statuses)."""
    import pandas as pd

    p = Path(path).expanduser()
    if p.is_dir():
        from ..analysis import load_history, load_results
        trials = load_results(p)
        bad = trials[trials["status"] != "finished"]
        if len(bad):
            counts = bad["status"].value_counts().to_dict()
            raise ReplayError(f"{p}: every trial must have run all its epochs; found "
                              + ", ".join(f"{n} {s}" for s, n in counts.items())
                              + " (a grid run with early stopping or errors cannot be replayed)")
        return load_history(p)
    if not p.is_file():
        raise ReplayError(f"--replay {path}: no such experiment folder or CSV file")
    try:
        return pd.read_csv(p)
    except Exception as e:  # noqa: BLE001 - any parsing error means the same thing
        raise ReplayError(f"--replay {path}: not a readable CSV ({type(e).__name__}: {e})") from None


def table_from_history(df, source: str = "") -> ReplayTable:
    """Check that ``df`` is a full-factorial grid with every trial at the same epochs, and
    index its curves by configuration. Refuses, with the reason, anything else."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ReplayError(f"{source}: missing column(s) {missing}; a replay table has one row per "
                          f"(trial, epoch) with {', '.join(REQUIRED_COLUMNS)} and config/<key> columns")
    config_cols = [c for c in df.columns if c.startswith(CONFIG_PREFIX)]
    if not config_cols:
        raise ReplayError(f"{source}: no config/<key> columns: which configuration a curve "
                          "belongs to is unknown")
    if df["val_acc"].isna().any() or df["epoch_seconds"].isna().any():
        raise ReplayError(f"{source}: val_acc or epoch_seconds is missing in some rows")

    per_trial = {}
    for tid, g in df.groupby("trial_id", sort=False):
        g = g.sort_values("epoch")
        epochs = [int(e) for e in g["epoch"]]
        if epochs != list(range(1, len(epochs) + 1)):
            raise ReplayError(f"{source}: trial {tid} reports epochs {epochs[:5]}...; every trial "
                              "needs each epoch from 1 once")
        cfg = []
        for c in config_cols:
            vals = {_plain(v) for v in g[c]}
            if len(vals) != 1:
                raise ReplayError(f"{source}: trial {tid} has several values of {c}")
            cfg.append(vals.pop())
        per_trial[tid] = (tuple(cfg), tuple(float(v) for v in g["val_acc"]),
                          tuple(float(s) for s in g["epoch_seconds"]))

    lengths = {len(acc) for _, acc, _ in per_trial.values()}
    if len(lengths) != 1:
        short = min(per_trial, key=lambda t: len(per_trial[t][1]))
        raise ReplayError(f"{source}: trials ran unequal epochs ({sorted(lengths)}; e.g. trial "
                          f"{short}: {len(per_trial[short][1])}); stopped trials cannot be replayed: "
                          "record a grid with every trial run to the same epochs")
    epochs = lengths.pop()

    all_levels = {c: sorted({cfg[i] for cfg, _, _ in per_trial.values()}, key=_sort_key)
                  for i, c in enumerate(config_cols)}
    keep = [i for i, c in enumerate(config_cols) if len(all_levels[c]) > 1]  # constants drop out
    if not keep:
        raise ReplayError(f"{source}: every config column is constant: nothing was searched")
    keys = tuple(config_cols[i][len(CONFIG_PREFIX):] for i in keep)
    levels = {k: tuple(all_levels[CONFIG_PREFIX + k]) for k in keys}
    n_trials = len(per_trial)
    for k, vals in levels.items():
        if len(vals) == n_trials and n_trials > 4 and all(isinstance(v, float) for v in vals):
            raise ReplayError(f"{source}: config/{k} takes a different value in every trial: a "
                              "continuous parameter cannot be replayed (record a grid of values)")
    curves, seconds = {}, {}
    for tid, (cfg, acc, secs) in per_trial.items():
        key = tuple(cfg[i] for i in keep)
        if key in curves:
            raise ReplayError(f"{source}: configuration {dict(zip(keys, key))} appears twice "
                              f"(trial {tid}); a replay grid has each configuration once")
        curves[key], seconds[key] = acc, secs
    product = math.prod(len(v) for v in levels.values())
    if len(curves) != product:
        import itertools
        absent = next(c for c in itertools.product(*levels.values()) if c not in curves)
        raise ReplayError(f"{source}: not a full factorial: {len(curves)} configurations of the "
                          f"{product} combinations of {', '.join(f'{k} ({len(v)})' for k, v in levels.items())}; "
                          f"e.g. {dict(zip(keys, absent))} is missing")
    return ReplayTable(keys=keys, levels=levels, curves=curves, seconds=seconds, epochs=epochs,
                       source=source)


# ---------------------------------------------------------------------------------------------
# One replayed search


def replay_spec(table: ReplayTable, method: Method, opts: ReplayOptions):
    """The SweepSpec a user would write for this grid: every key a categorical of its values."""
    from ..tune.space import Param, SweepSpec

    params = {k: Param(name=k, distribution="categorical", values=v) for k, v in table.levels.items()}
    et = ({"type": "hyperband", "min_iter": opts.grace_period, "eta": opts.eta}
          if method.asha else None)
    return SweepSpec(model="scratch_cnn", method=method.method, metric="val_acc", mode="max",
                     parameters=params, early_terminate=et, run_cap=opts.num_samples)


def _draw_random(spec, rng: np.random.RandomState):
    """Random search's next configuration: one independent draw of each Ray domain (what
    BasicVariantGenerator does for a random space)."""
    from ..tune.search import to_tune_param_space

    space = to_tune_param_space(spec)
    return {k: (d.sample(random_state=rng) if hasattr(d, "sample") else d) for k, d in space.items()}


def simulate(table: ReplayTable, name: str, seed: int, opts: ReplayOptions) -> list[tuple[str, int, float]]:
    """One search, replayed on a simulated clock; returns every reported (trial, epoch,
    val_acc) in the order the driver receives them.

    The real searcher and scheduler objects see exactly the calls Ray Tune's TuneController
    makes (``TuneController._process_trial_result`` / ``stop_trial`` in Ray 2.x): on each
    result the scheduler decides; unless it says STOP the searcher gets ``on_trial_result``;
    a trial that stops (ASHA, or its last epoch) gets the scheduler's and then the searcher's
    ``on_trial_complete`` with its last result. ``opts.max_concurrent`` trials run at once and
    each epoch takes its recorded ``epoch_seconds``, so results arrive in the order a real
    sweep on that many workers would deliver them; a free slot asks the searcher at once.
    """
    import heapq
    from types import SimpleNamespace

    from ..tune.search import make_scheduler, make_search_alg, to_tune_param_space

    method = METHODS[name]
    spec = replay_spec(table, method, opts)
    scheduler = make_scheduler(spec, table.epochs)
    searcher, rng = None, None
    if method.method == "bayes":
        searcher = make_search_alg(spec, seed=seed, max_concurrent=opts.max_concurrent,
                                   num_samples=opts.num_samples, prune_stopped=method.prune_stopped,
                                   multivariate=method.multivariate, quiet=True)
        searcher.set_search_properties(None, None, to_tune_param_space(spec))
    else:
        rng = np.random.RandomState(seed)

    events: list[tuple[float, int, str, int]] = []  # (time, tie-break, trial_id, epoch)
    keys: dict[str, tuple[Any, ...]] = {}
    received: list[tuple[str, int, float]] = []
    running: set[str] = set()
    clock, launched, seq = 0.0, 0, 0
    while launched < opts.num_samples or events:
        while len(running) < opts.max_concurrent and launched < opts.num_samples:
            tid = f"{launched:05d}"
            config = searcher.suggest(tid) if searcher is not None else _draw_random(spec, rng)
            launched += 1
            keys[tid] = tuple(config[k] for k in table.keys)
            running.add(tid)
            if scheduler is not None:
                scheduler.on_trial_add(None, SimpleNamespace(trial_id=tid))
            seq += 1
            heapq.heappush(events, (clock + table.seconds[keys[tid]][0], seq, tid, 1))
        clock, _, tid, epoch = heapq.heappop(events)
        acc = table.curves[keys[tid]][epoch - 1]
        result = {"val_acc": acc, "training_iteration": epoch, "epoch": epoch}
        received.append((tid, epoch, acc))
        trial = SimpleNamespace(trial_id=tid)
        stop = scheduler is not None and scheduler.on_trial_result(None, trial, result) == "STOP"
        if not stop and searcher is not None:
            searcher.on_trial_result(tid, result)
        if stop or epoch == table.epochs:
            if scheduler is not None:
                scheduler.on_trial_complete(None, trial, result)
            if searcher is not None:
                searcher.on_trial_complete(tid, result=result)
            running.discard(tid)
        else:
            seq += 1
            heapq.heappush(events, (clock + table.seconds[keys[tid]][epoch], seq, tid, epoch + 1))
    return received


def _replay_trainable(config: dict[str, Any], payload: dict[str, Any]) -> None:
    """Report the recorded curve of ``config``, one epoch per report, paced by its seconds."""
    from ray import tune

    key = tuple(config[k] for k in payload["keys"])
    curve, secs = payload["curves"][key], payload["seconds"][key]
    for epoch, (acc, s) in enumerate(zip(curve, secs), start=1):
        time.sleep(s * payload["time_scale"])
        tune.report({"val_acc": acc, "epoch": epoch})


def replay_through_tune(table: ReplayTable, name: str, seed: int, opts: ReplayOptions,
                        storage: Path) -> list[tuple[str, int, float]]:
    """The same search run by Ray Tune itself (Tuner.fit, a trainable that reports the
    recorded curve, paced by epoch_seconds x time_scale): the check that :func:`simulate`
    makes Tune's calls. About 1-2 s of Tune overhead per trial on 2 cores, so the benchmark
    simulates and the tests compare the two on small runs."""
    from ray import tune

    from ..tune.search import make_scheduler, make_search_alg, to_tune_param_space

    method = METHODS[name]
    spec = replay_spec(table, method, opts)
    searcher = make_search_alg(spec, seed=seed, max_concurrent=opts.max_concurrent,
                               num_samples=opts.num_samples, prune_stopped=method.prune_stopped,
                               multivariate=method.multivariate, quiet=True)
    scheduler = make_scheduler(spec, table.epochs)
    received: list[tuple[str, int, float]] = []

    class _Record(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            received.append((trial.trial_id, int(result["epoch"]), float(result["val_acc"])))

    payload = {"keys": table.keys, "curves": table.curves, "seconds": table.seconds,
               "time_scale": opts.time_scale}
    trainable = tune.with_resources(tune.with_parameters(_replay_trainable, payload=payload),
                                    {"cpu": 1.0 / opts.max_concurrent})
    tuner = tune.Tuner(
        trainable,
        param_space=to_tune_param_space(spec),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=opts.num_samples, reuse_actors=True,
                                    max_concurrent_trials=opts.max_concurrent),
        run_config=tune.RunConfig(name=f"{name.replace(':', '-')}-{seed}", storage_path=str(storage),
                                  callbacks=[_Record()], verbose=0),
    )
    grid = tuner.fit()
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        raise RuntimeError(f"replay {name} seed {seed}: {len(errors)} trial(s) errored: {errors[0]}")
    return received


# ---------------------------------------------------------------------------------------------
# Scoring


def running_best(received: Sequence[tuple[str, int, float]]) -> list[float]:
    """Best val_acc seen after each reported epoch (index i: after i + 1 epochs)."""
    out, best = [], -math.inf
    for _, _, acc in received:
        best = max(best, acc)
        out.append(best)
    return out


def score(curves: dict[str, list[list[float]]]) -> dict[str, dict[str, list]]:
    """Per method and seed: epochs used, best found, epochs to random's final best, and whether
    its best at no more epochs than random used is at least random's final best."""
    ref = curves["random"]
    out: dict[str, dict[str, list]] = {}
    for name, per_seed in curves.items():
        m = {"epochs": [], "best": [], "epochs_to_random_best": [], "beats_random_at_equal_epochs": []}
        for seed, curve in enumerate(per_seed):
            target = ref[seed][-1]
            m["epochs"].append(len(curve))
            m["best"].append(curve[-1])
            m["epochs_to_random_best"].append(epochs_to_reach(curve, target))
            at = curve[min(len(curve), len(ref[seed])) - 1]
            m["beats_random_at_equal_epochs"].append(epochs_to_reach([at], target) is not None)
        out[name] = m
    return out


def summarize(methods: dict[str, dict[str, list]]) -> dict[str, dict[str, Any]]:
    """Medians and rates per method (epochs to random's best: the median over seeds, None
    counted as never, i.e. larger than any number)."""
    ref_epochs = methods["random"]["epochs"]
    out = {}
    for name, m in methods.items():
        n = len(m["epochs"])
        reach = [e if e is not None else math.inf for e in m["epochs_to_random_best"]]
        med_reach = statistics.median(reach)
        ratio = [(e / r if e is not None else math.inf) for e, r in zip(m["epochs_to_random_best"], ref_epochs)]
        med_ratio = statistics.median(ratio)
        out[name] = {
            "seeds": n,
            "median_epochs": statistics.median(m["epochs"]),
            "median_best": statistics.median(m["best"]),
            "reached_random_best": sum(e is not None for e in m["epochs_to_random_best"]) / n,
            "median_epochs_to_random_best": None if math.isinf(med_reach) else med_reach,
            "median_fraction_of_random_epochs": None if math.isinf(med_ratio) else med_ratio,
            "beats_random_at_equal_epochs": sum(m["beats_random_at_equal_epochs"]) / n,
        }
    return out


def format_table(summary: dict[str, dict[str, Any]], table: ReplayTable, opts: ReplayOptions) -> str:
    def f(v: Any, fmt: str) -> str:
        return "never" if v is None else format(v, fmt)

    lines = [f"replay of {table.source}: {len(table.curves)} configurations x {table.epochs} epochs "
             f"(best anywhere {table.best:.4f}); {opts.num_samples} trials per search, "
             f"{opts.seeds} searcher seeds, ASHA grace {opts.grace_period} eta {opts.eta:g}, "
             f"{opts.max_concurrent} at once",
             f"{'method':<20}{'epochs':>8}{'best':>8}{'reach':>7}{'epochs to':>11}{'x random':>10}{'>= rnd':>8}",
             f"{'':<20}{'median':>8}{'median':>8}{'rate':>7}{'rnd best':>11}{'epochs':>10}{'equal':>8}"]
    for name, s in summary.items():
        lines.append(f"{name:<20}{s['median_epochs']:>8.0f}{s['median_best']:>8.4f}"
                     f"{s['reached_random_best']:>7.0%}{f(s['median_epochs_to_random_best'], '.0f'):>11}"
                     f"{f(s['median_fraction_of_random_epochs'], '.2f'):>10}"
                     f"{s['beats_random_at_equal_epochs']:>8.0%}")
    return "\n".join(lines)


def plot_anytime(curves: dict[str, list[list[float]]], path: str | Path, title: str) -> Path:
    """Best val_acc vs cumulative epochs: median and quartiles over seeds, per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for name, per_seed in curves.items():
        x_max = max(len(c) for c in per_seed)
        grid = np.full((len(per_seed), x_max), np.nan)
        for i, c in enumerate(per_seed):
            grid[i, :len(c)] = c
            grid[i, len(c):] = c[-1]  # a search that stopped keeps its best
        x = np.arange(1, x_max + 1)
        q1, med, q3 = np.nanpercentile(grid, [25, 50, 75], axis=0)
        (line,) = ax.plot(x, med, label=name, lw=1.6)
        ax.fill_between(x, q1, q3, color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xlabel("cumulative epochs (all trials)")
    ax.set_ylabel("best val_acc so far")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------


def run_replay(opts: ReplayOptions) -> dict[str, Any]:
    """Replay every method for ``opts.seeds`` seeds; prints the table, writes JSON and figure."""
    import logging

    import optuna

    table = table_from_history(load_table(opts.table), source=str(opts.table))
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "trial finished" line per trial
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    curves: dict[str, list[list[float]]] = {m: [] for m in opts.methods}
    t0 = time.time()
    for seed in range(opts.seeds):
        for name in opts.methods:
            curves[name].append(running_best(simulate(table, name, seed, opts)))
    methods = score(curves)
    summary = summarize(methods)
    out = {"table": str(opts.table), "configurations": len(table.curves), "epochs_per_trial": table.epochs,
           "keys": list(table.keys), "best_in_table": table.best,
           "options": {k: v for k, v in opts.__dict__.items() if k not in ("json_path", "figure_path")},
           "methods": methods, "summary": summary, "wall_s": round(time.time() - t0, 1)}
    print(format_table(summary, table, opts))
    if opts.figure_path:
        title = (f"{len(table.curves)}-config grid x {table.epochs} epochs, {opts.num_samples} trials, "
                 f"{opts.seeds} seeds (median, quartiles)")
        out["figure"] = str(plot_anytime(curves, opts.figure_path, title))
    if opts.json_path:
        Path(opts.json_path).write_text(json.dumps(out, indent=1))
    return out
