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
