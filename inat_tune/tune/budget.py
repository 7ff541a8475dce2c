"""What a sweep will cost and how its search behaves, as pure arithmetic (no Ray, no Optuna).

``inat-tune sweep SPACE --dry-run`` prints these numbers; the searcher and scheduler that run
the sweep use the same functions, so the preview and the run cannot disagree.

ASHA (Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning", alg. 2) as Ray
Tune implements it (``ray.tune.schedulers.AsyncHyperBandScheduler``, one bracket): rungs at
``grace * eta**k`` epochs for ``k = 0 .. int(log(max_t / grace) / log(eta))``; a trial reaching
a rung goes on only if its metric is in the top ``1/eta`` of what earlier trials recorded at
that rung (the first trial at a rung always goes on). The last rung is ``max_t`` itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .space import max_epochs, num_grid_trials

if TYPE_CHECKING:  # types only: the runner imports this module
    from .runner import SweepOptions
    from .space import SweepSpec

# Optuna's TPESampler default: random trials before TPE models anything.
OPTUNA_DEFAULT_STARTUP = 10


def asha_rungs(grace: int, eta: float, max_t: int) -> list[float]:
    """Epochs at which ASHA compares trials, ascending, without ``max_t`` (where every trial
    ends anyway). Same formula as Ray's ``_Bracket`` (``MAX_RUNGS``)."""
    if grace < 1 or eta <= 1 or max_t < 1:
        raise ValueError(f"grace {grace} >= 1, eta {eta} > 1 and max_t {max_t} >= 1 are needed")
    n = int(math.log(max_t / grace) / math.log(eta) + 1)
    rungs = sorted(grace * eta ** k for k in range(n))
    return [r for r in rungs if r < max_t]


def expected_epochs_per_trial(grace: int, eta: float, max_t: int) -> float:
    """Epochs one trial runs when ASHA keeps exactly ``1/eta`` of the trials at each rung: all
    reach the first rung, ``eta**-i`` of them go beyond rung ``i``. (ASHA keeps more than that
    early in a sweep, while rungs hold few results; this is the long-run figure.)"""
    points = [*asha_rungs(grace, eta, max_t), max_t]
    total, prev = 0.0, 0.0
    for i, r in enumerate(points):
        total += (min(r, max_t) - prev) * eta ** -i
        prev = r
    return total


def startup_trials(num_samples: int) -> int:
    """Random trials before TPE models anything: a third of the budget, at least 2 (TPE needs
    a better and a worse group) and at most Optuna's default of 10."""
    return max(2, min(OPTUNA_DEFAULT_STARTUP, num_samples // 3))


def constant_liar(max_concurrent: int | None) -> bool:
    """Optuna's constant liar makes concurrent suggestions see the running trials (as if they
    had scored badly), so they spread out instead of landing on one point. Only a strictly
    sequential sweep does without it."""
    return max_concurrent != 1


@dataclass(frozen=True)
class Budget:
    """Epochs a sweep of ``num_samples`` trials runs: worst case (ASHA stops nobody) and the
    long-run expectation under ASHA."""

    num_samples: int
    max_epochs: int
    rungs: tuple[float, ...]  # empty without ASHA
    eta: float | None
    worst: int
    expected: float

    def describe_rungs(self) -> str:
        if not self.rungs:
            return f"no early stopping: every trial runs {self.max_epochs} epochs"
        rungs = ", ".join(f"{r:g}" for r in self.rungs)
        return (f"rungs at epochs {rungs} of max {self.max_epochs}; keeps 1/{self.eta:g} at each "
                "(the top of what earlier trials reached there)")


def sweep_budget(num_samples: int, max_epochs: int, grace: int | None = None,
                 eta: float | None = None) -> Budget:
    """The epoch budget of a sweep; ``grace``/``eta`` None means no ASHA."""
    if grace is None:
        return Budget(num_samples, max_epochs, (), None, num_samples * max_epochs,
                      float(num_samples * max_epochs))
    rungs = tuple(asha_rungs(grace, eta, max_epochs))
    per_trial = expected_epochs_per_trial(grace, eta, max_epochs)
    return Budget(num_samples, max_epochs, rungs, eta, num_samples * max_epochs,
                  num_samples * per_trial)


# ---------------------------------------------------------------------------------------------
# A sweep in words (every sweep prints the search lines; --dry-run prints everything)


def num_trials(opts: SweepOptions, spec: SweepSpec) -> int:
    """Trials the sweep runs: the grid's size for a grid, else num_samples."""
    return num_grid_trials(spec) if spec.method == "grid" else opts.num_samples


def search_lines(opts: SweepOptions, spec: SweepSpec) -> list[str]:
    """The searcher and the scheduler in words (printed by every sweep and by --dry-run)."""
    n = num_trials(opts, spec)
    if spec.method == "bayes":
        k = startup_trials(n)
        liar = "on" if constant_liar(opts.max_concurrent) else "off (one trial at a time)"
        searcher = (f"searcher: Optuna TPE (seed {opts.seed}): {min(k, n)} random start-up trials of {n}, "
                    f"then TPE; constant liar {liar}; ASHA-stopped trials reach Optuna as PRUNED")
    elif spec.method == "random":
        searcher = f"searcher: random (seed {opts.seed}), {n} trials"
    else:
        searcher = f"searcher: grid, {n} configurations, each once"
    et = spec.early_terminate
    b = sweep_budget(n, max_epochs(spec), et["min_iter"] if et else None, et["eta"] if et else None)
    sched = f"scheduler: ASHA, {b.describe_rungs()}" if et else f"scheduler: none, {b.describe_rungs()}"
    return [searcher, sched]


def describe(opts: SweepOptions, spec: SweepSpec) -> str:
    """Everything ``--dry-run`` prints, as text."""
    n = num_trials(opts, spec)
    et = spec.early_terminate
    b = sweep_budget(n, max_epochs(spec), et["min_iter"] if et else None, et["eta"] if et else None)
    lines = [f"sweep {opts.name} (dry run: nothing started, nothing written)",
             f"model {spec.model}, method {spec.method}, {spec.metric} ({'max' if spec.mode == 'max' else 'min'}imised)",
             f"data {opts.data_dir}: validation split {spec.val_fraction:g} of train/ (split_seed "
             f"{spec.split_seed}), the same for every trial",
             f"experiment folder {opts.experiment_path}",
             "parameters:"]
    for name, p in spec.parameters.items():
        form = p.to_dict()
        text = (f"= {form['value']!r}" if "value" in form else
                f"one of {form['values']!r}" if "values" in form else
                ", ".join(f"{k} {v!r}" for k, v in form.items()))
        lines.append(f"  {name:<18} {text}")
    lines += search_lines(opts, spec)
    if et:
        lines.append(f"budget: {n} trials x up to {b.max_epochs} epochs: worst case {b.worst} epochs "
                     f"(ASHA stops nobody), expected {b.expected:.0f} (ASHA keeps 1/{et['eta']:g} "
                     f"at each rung; early in a sweep it keeps more)")
    else:
        lines.append(f"budget: {n} trials x {b.max_epochs} epochs = {b.worst} epochs")
    gpu = f" + {opts.gpus_per_trial:g} GPU" if opts.gpus_per_trial else ""
    lines.append(f"resources: {opts.cpus_per_trial:g} CPU{gpu} per trial"
                 + (f", at most {opts.max_concurrent} at once" if opts.max_concurrent else ""))
    return "\n".join(lines)
