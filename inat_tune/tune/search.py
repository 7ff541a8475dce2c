"""A validated :class:`SweepSpec` -> Ray Tune param space, Optuna searcher and ASHA scheduler.

Imported only when a sweep runs (it imports Ray and Optuna; :mod:`inat_tune.tune.space` does
not). The classes below are pickled by Ray Tune into its experiment checkpoints (the param
space in ``tuner.pkl``, the searcher in ``searcher-state-*.pkl``), so they are defined at the
top level of this module and must keep this import path: ``--resume`` unpickles them.

How each W&B form reaches Ray Tune and Optuna (``to_tune_param_space`` / ``make_search_alg``):

=========================  ===========================================  ==========================
W&B form                   Ray Tune domain (random search)              what Optuna TPE searches
=========================  ===========================================  ==========================
value                      the constant                                 (not searched)
values                     tune.choice                                  categorical
values + probabilities     choice drawn with the probabilities          categorical, *unweighted*
uniform                    tune.uniform(min, max)                       float
int_uniform                tune.randint(min, max + 1)  (W&B max is      int [min, max]
                           inclusive, randint's upper is exclusive)
q_uniform                  tune.quniform / tune.qrandint on the         float / int with step q
                           multiples of q nearest min and max
log_uniform_values         tune.loguniform(min, max)                    float, log
inv_log_uniform_values     tune.loguniform(min, max)  (1/X log-uniform  float, log
                           on [1/max, 1/min] *is* X log-uniform on
                           [min, max])
log_uniform                tune.loguniform(e**min, e**max)              float, log
inv_log_uniform            tune.loguniform(e**-max, e**-min)            float, log
q_log_uniform(_values)     log-uniform draw rounded to a multiple of q  float, log; rounded after
normal / log_normal        mu + sigma * Phi^-1(u) (then exp for log_),  float u in [eps, 1 - eps];
q_normal / q_log_normal    rounded to q for q_; u ~ U[eps, 1 - eps]     mapped after
=========================  ===========================================  ==========================

Forms Optuna has no distribution for (the normal family, quantized log-uniform, category
weights, list-valued categories) are given to it as a *latent* Ray domain it can convert, and
the searcher from ``make_search_alg`` maps each suggestion back (``WandbOptunaSearch``); the
same mapped domains sample exact W&B values under random search. Only category weights are
lost under TPE (Optuna takes no prior weights); ``make_search_alg`` logs a warning naming every
key that goes through such a conversion (``tpe_conversions``). The normal family is truncated
at the ``NORMAL_TAIL`` quantiles (+-4.75 sigma, 2e-6 of the mass), which is what lets
``load_space`` check its extremes against ``RunConfig`` before any trial starts.

Ray APIs relied on beyond ``ray.tune``'s functions: the domain classes ``Float`` and
``Categorical`` and the sampler base ``Uniform`` of ``ray.tune.search.sample`` (Ray
DeveloperAPI). OptunaSearch converts a categorical whose sampler is a ``Uniform``, which is why
``WeightedChoice`` is one; tests/test_space.py fails naming the API if that changes.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.sample import Categorical, Float, Uniform

from .space import (
    _NORMAL_FORMS,
    _STD_NORMAL,
    NORMAL_TAIL,
    Param,
    SpaceError,
    SweepSpec,
    _plain,
    _qround,
    max_epochs,
    tpe_conversions,
)
from .budget import constant_liar, startup_trials

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Transform:
    """Maps a latent draw to the W&B value: lookup | (normal quantile -> exp -> round to q)."""

    normal: tuple[float, float] | None = None  # latent is a quantile u: x = mu + sigma Phi^-1(u)
    exp: bool = False
    q: float | None = None
    integer: bool = False
    lookup: tuple[tuple[str, Any], ...] | None = None  # label -> category (lists for Optuna)

    def __call__(self, x: Any) -> Any:
        if self.lookup is not None:
            return _plain(dict(self.lookup)[x])
        x = float(x)
        if self.normal is not None:
            mu, sigma = self.normal
            x = mu + sigma * _STD_NORMAL.inv_cdf(min(max(x, NORMAL_TAIL), 1 - NORMAL_TAIL))
        if self.exp:
            x = math.exp(x)
        if self.q is not None:
            return _qround(x, self.q, self.integer)
        return int(round(x)) if self.integer else x


# ----------------------------------------------------------------------------------------------
# Ray domains and the searcher


class _Mapped:
    """A Ray domain whose draws go through ``self.transform``; searchers that convert domains
    (Optuna) see the plain latent domain."""

    transform: Transform

    def sample(self, config=None, size=1, random_state=None):
        drawn = super().sample(config, size=size, random_state=random_state)
        if size == 1:
            return self.transform(drawn)
        return [self.transform(x) for x in drawn]

    def is_valid(self, value):
        return True

    @property
    def domain_str(self):
        return f"{self.transform} of {super().domain_str}"


class MappedFloat(_Mapped, Float):
    def __init__(self, lower, upper, transform):
        super().__init__(lower, upper)
        self.transform = transform


class MappedCategorical(_Mapped, Categorical):
    def __init__(self, categories, transform):
        super().__init__(categories)
        self.transform = transform


class WeightedChoice(Uniform):
    """Categories drawn with W&B's probabilities.

    Ray has no weighted choice (``tune.choice`` is uniform; ``tune.sample_from`` is a function
    domain OptunaSearch refuses). A ``Uniform`` sampler, so OptunaSearch still converts the
    domain, to an unweighted categorical (Optuna takes no prior weights).
    """

    def __init__(self, probabilities):
        total = sum(probabilities)
        self.probabilities = tuple(p / total for p in probabilities)

    def sample(self, domain, config=None, size=1, random_state=None):
        # Domain.sample wraps random_state in Ray's numpy-rng shim before calling us; a direct
        # call may pass a Generator, a RandomState or None.
        rng = np.random if random_state is None else random_state
        idx = rng.choice(len(domain.categories), size=size, p=self.probabilities)
        items = [domain.categories[int(i)] for i in idx]
        return items if len(items) > 1 else domain.cast(items[0])


class WandbOptunaSearch(OptunaSearch):
    """OptunaSearch that maps W&B forms back and tells Optuna how each trial really ended.

    Suggestions of a mapped domain are mapped back to their W&B value (Optuna records the
    latent value: the quantile, the unrounded draw, the label; the trial's config gets the W&B
    value; points_to_evaluate would be read as latent values).

    Multi-fidelity wiring (Ray's OptunaSearch tells every ended trial COMPLETE with its last
    value, so a 1-epoch accuracy that ASHA cut enters TPE as if it were final; and Tune hands a
    trial's stopping result only to ``on_trial_complete``, so a trial cut at its first rung had no
    intermediate value at all):

    - every epoch is reported to the Optuna trial as an intermediate value (step = epoch);
    - a trial that ran all its epochs (``epochs`` of its config, else ``max_epochs``) is
      COMPLETE with its best epoch's value, the value the sweep's best-trial rule and its
      checkpoints use;
    - a trial that ended earlier (ASHA stopped it) is PRUNED: Optuna's TPE then ranks it by its
      last step and value, below the completed trials (``prune_stopped=False`` restores Ray's
      behaviour, for the replay benchmark's ablation);
    - an errored trial is FAIL.
    """

    def __init__(self, space=None, *, max_epochs: int | None = None, prune_stopped: bool = True,
                 **kwargs):
        self._transforms = _transforms_of(space) if isinstance(space, dict) else {}
        self._max_epochs = max_epochs
        self._prune_stopped = prune_stopped
        self._epochs: dict[str, int] = {}  # trial_id -> the epochs its config asks for
        self._reported: dict[str, dict[int, float]] = {}  # trial_id -> {step: value}
        super().__init__(space=space, **kwargs)

    def set_search_properties(self, metric, mode, config, **spec):
        accepted = super().set_search_properties(metric, mode, config, **spec)
        if accepted:
            self._transforms = _transforms_of(config)
            if self._max_epochs is None and isinstance(config.get("epochs"), int):
                self._max_epochs = config["epochs"]
        return accepted

    def suggest(self, trial_id):
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            for key, transform in self._transforms.items():
                if key in config:
                    config[key] = transform(config[key])
            if isinstance(config.get("epochs"), (int, float)):
                self._epochs[trial_id] = int(config["epochs"])
        return config

    def on_trial_result(self, trial_id, result):
        value, step = result.get(self.metric), result.get("training_iteration")
        if trial_id in self._ot_trials and _finite(value) and step is not None \
                and trial_id not in self._completed_trials:
            self._report(trial_id, int(step), float(value))

    def _report(self, trial_id: str, step: int, value: float) -> None:
        seen = self._reported.setdefault(trial_id, {})
        if step not in seen:  # Optuna refuses a second value for one step
            self._ot_trials[trial_id].report(value, step)
            seen[step] = value

    def on_trial_complete(self, trial_id, result=None, error=False):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result=result, error=error)
        ot_trial = self._ot_trials[trial_id]
        value = (result or {}).get(self.metric)
        step = (result or {}).get("training_iteration")
        if _finite(value) and step is not None:
            self._report(trial_id, int(step), float(value))  # the stopping result, if unseen
        reported = self._reported.get(trial_id, {})
        if error or not reported:
            state, val = optuna.trial.TrialState.FAIL, None
        else:
            epochs = self._epochs.get(trial_id, self._max_epochs)
            ran = max(reported)
            stopped = epochs is not None and ran < epochs
            if stopped and self._prune_stopped:
                state, val = optuna.trial.TrialState.PRUNED, None  # Optuna takes the last step's value
            else:
                best = max if self._mode == "max" else min
                state = optuna.trial.TrialState.COMPLETE
                val = best(reported.values()) if self._prune_stopped else reported[ran]
        try:
            self._ot_study.tell(ot_trial, val, state=state)
        except Exception as exc:  # noqa: BLE001 - Optuna refuses e.g. NaN; the sweep goes on
            logger.warning("optuna: trial %s not recorded: %s", trial_id, exc)
        self._completed_trials.add(trial_id)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _transforms_of(space: Mapping[str, Any]) -> dict[str, Transform]:
    return {k: v.transform for k, v in space.items()
            if isinstance(getattr(v, "transform", None), Transform)}


# ----------------------------------------------------------------------------------------------
# What the Tuner takes


def to_tune_param_space(spec: SweepSpec) -> dict[str, Any]:
    """The Tuner's ``param_space``: constants, Ray domains, or grid_search lists.

    Includes ``model``, so ``RunConfig.from_dict(config)`` rebuilds a trial's config. Under
    bayes, pass the searcher from ``make_search_alg(spec, ...)``: a plain OptunaSearch would
    hand trials the latent values of the mapped domains (see the module docstring).
    """
    space: dict[str, Any] = {"model": spec.model, "val_fraction": spec.val_fraction,
                             "split_seed": spec.split_seed}  # one validation split per sweep
    for name, p in spec.parameters.items():
        space[name] = _to_domain(p, spec.method)
    return space


def _is_primitive(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _to_domain(p: Param, method: str) -> Any:
    d = p.distribution
    if d == "constant":
        return _plain(p.value)
    if method == "grid":
        return tune.grid_search([_plain(v) for v in p.points()])
    if d == "categorical":
        entries = list(p.values)
        if all(_is_primitive(v) for v in entries):
            dom = Categorical(entries)
        else:  # Optuna's storages take only scalar categories: labels, mapped back per draw
            labels = [repr(_plain(v)) for v in entries]
            dom = MappedCategorical(labels, Transform(lookup=tuple(zip(labels, entries))))
        if p.probabilities is not None:
            dom.set_sampler(WeightedChoice(p.probabilities))
            return dom
        return dom.uniform()
    if d == "int_uniform":
        return tune.randint(int(p.min), int(p.max) + 1)  # W&B max inclusive, randint exclusive
    if d == "q_uniform":
        lo, hi = p.extremes()
        if p.integer:
            return tune.randint(lo, hi + 1) if p.q == 1 else tune.qrandint(lo, hi, p.q)
        return tune.quniform(lo, hi, p.q)
    if d == "uniform":
        return tune.uniform(p.min, p.max)
    if d in ("log_uniform_values", "inv_log_uniform_values"):
        return tune.loguniform(p.min, p.max)
    if d in ("log_uniform", "inv_log_uniform"):
        lo, hi = p.extremes()
        return tune.loguniform(lo, hi)
    if d in ("q_log_uniform_values", "q_log_uniform"):
        lo, hi = (p.min, p.max) if d.endswith("_values") else (math.exp(p.min), math.exp(p.max))
        return MappedFloat(lo, hi, Transform(q=p.q, integer=p.integer)).loguniform()
    if d in _NORMAL_FORMS:
        transform = Transform(normal=(p.mu, p.sigma), exp="log" in d, q=p.q, integer=p.integer)
        return MappedFloat(NORMAL_TAIL, 1 - NORMAL_TAIL, transform).uniform()
    raise AssertionError(d)


def make_search_alg(spec: SweepSpec, seed: int, max_concurrent: int | None = None, *,
                    num_samples: int | None = None, n_startup_trials: int | None = None,
                    prune_stopped: bool = True, multivariate: bool = True, storage: Any = None,
                    study_name: str | None = None, quiet: bool = False) -> Any:
    """The searcher for ``TuneConfig(search_alg=...)``.

    bayes: WandbOptunaSearch (an OptunaSearch) with a seeded TPESampler, wrapped in a
    ConcurrencyLimiter when max_concurrent is given; random and grid: a seeded
    BasicVariantGenerator. metric and mode are set here: leave them out of TuneConfig.

    TPE's random start-up trials follow the budget (``budget.startup_trials(num_samples)``,
    num_samples defaulting to run_cap, else 30) unless ``n_startup_trials`` is given; the
    constant liar is on unless trials run one at a time (``budget.constant_liar``).
    ``storage``/``study_name``: an Optuna storage (the sweep's journal file) holding the study.
    ``multivariate``: TPE models the parameters jointly (Optuna's ``multivariate=True``); on by
    default because the replay benchmark (results/BENCHMARKS.md) found it at least as good as
    independent TPE in each of 7 settings, with fewer epochs.
    """
    if spec.method != "bayes":
        return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent or 0)
    if n_startup_trials is None:
        n_startup_trials = startup_trials(num_samples or spec.run_cap or 30)
    if not quiet:
        for name, why in tpe_conversions(spec).items():
            logger.warning("parameters.%s: %s", name, why)
    with warnings.catch_warnings():  # multivariate is "experimental" in Optuna's words
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials,
                                             constant_liar=constant_liar(max_concurrent),
                                             multivariate=multivariate)
    searcher = WandbOptunaSearch(metric=spec.metric, mode=spec.mode, sampler=sampler,
                                 max_epochs=max_epochs(spec), prune_stopped=prune_stopped,
                                 storage=storage, study_name=study_name)
    if max_concurrent:
        return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    return searcher


def make_scheduler(spec: SweepSpec, max_epochs: int) -> ASHAScheduler | None:
    """ASHA from ``early_terminate: {type: hyperband, min_iter, eta}``, or None without it.

    One training_iteration is one epoch; max_t is the most epochs a trial runs
    (``max_epochs(spec)``). metric and mode are set here: leave them out of TuneConfig.
    """
    if spec.early_terminate is None:
        return None
    grace = spec.early_terminate["min_iter"]
    if grace > max_epochs:
        raise SpaceError(f"early_terminate.min_iter: {grace} exceeds max_epochs {max_epochs}")
    return ASHAScheduler(time_attr="training_iteration", metric=spec.metric, mode=spec.mode,
                         max_t=max_epochs, grace_period=grace,
                         reduction_factor=spec.early_terminate["eta"])
