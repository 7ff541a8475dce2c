"""Search-space files in W&B sweep syntax -> a validated :class:`SweepSpec` (no Ray, no Optuna).

A W&B user brings the sweep file they already have; ``load_space`` reads it and refuses, with a
:class:`SpaceError` that names the key (``parameters.lr.min``), everything that cannot run:
unknown keys, unknown hyperparameters, impossible ranges, and values :class:`RunConfig`
refuses. It imports neither Ray nor Optuna, so a bad file fails in a fraction of a second;
:mod:`inat_tune.tune.search` turns a spec into Ray Tune domains, the Optuna searcher and ASHA
(its docstring has the table of how each W&B form is searched).

Over 500 lines on purpose: it is one concern, the W&B format, and its checks (syntax, ranges,
RunConfig's rules on single values and on pairs) only make sense read together.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from inat_tune.config import ALIASES, MODELS, ConfigError, RunConfig

logger = logging.getLogger(__name__)

# Metrics the trainer reports each epoch, with the direction that is better.
METRICS = {"val_acc": "max", "train_acc": "max", "val_loss": "min", "train_loss": "min"}
METHODS = ("bayes", "random", "grid")
GOALS = {"maximize": "max", "minimize": "min"}

# W&B's top-level sweep keys plus our `model`. program/command/project/entity are W&B launch
# details: accepted so a W&B file loads unchanged, and ignored.
TOP_LEVEL_KEYS = (
    "program", "method", "metric", "parameters", "early_terminate", "name", "description",
    "project", "entity", "command", "run_cap", "model", "val_fraction", "split_seed",
)
# One validation split per sweep: trials ranked on different validation images cannot be
# compared, so these are sweep-level settings (top-level keys or --val-fraction/--split-seed).
SWEEP_LEVEL_KEYS = ("val_fraction", "split_seed")
IGNORED_KEYS = ("program", "command", "project", "entity")
EARLY_TERMINATE_KEYS = ("type", "min_iter", "max_iter", "s", "eta", "strict")

# Keys each W&B parameter form takes besides `distribution`.
_FORMS: dict[str, tuple[str, ...]] = {
    "constant": ("value",),
    "categorical": ("values", "probabilities"),
    "uniform": ("min", "max"),
    "int_uniform": ("min", "max"),
    "q_uniform": ("min", "max", "q"),
    "log_uniform": ("min", "max"),  # min/max are natural-log exponents
    "log_uniform_values": ("min", "max"),
    "q_log_uniform": ("min", "max", "q"),
    "q_log_uniform_values": ("min", "max", "q"),
    "inv_log_uniform": ("min", "max"),
    "inv_log_uniform_values": ("min", "max"),
    "normal": ("mu", "sigma"),
    "q_normal": ("mu", "sigma", "q"),
    "log_normal": ("mu", "sigma"),  # mu/sigma of ln(X)
    "q_log_normal": ("mu", "sigma", "q"),
}
_UNSUPPORTED = ("beta", "q_beta")  # W&B forms with no inverse CDF here (no scipy)
_RANGE_FORMS = tuple(d for d, keys in _FORMS.items() if "min" in keys)
_NORMAL_FORMS = ("normal", "q_normal", "log_normal", "q_log_normal")
_EXPONENT_FORMS = ("log_uniform", "q_log_uniform", "inv_log_uniform")  # bounds are exponents
_POSITIVE_FORMS = ("log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values")

NORMAL_TAIL = 1e-6  # the normal family is truncated at these quantiles (+-4.75 sigma)
GRID_MAX_POINTS = 100  # most values one int_uniform / q_uniform may add to a grid
_EXHAUSTIVE_CHECK = 64  # integer ranges up to this many values are checked value by value
_MAX_PAIR_CHECKS = 20_000  # RunConfig builds spent on cross-key checks (~30 us each)
_STD_NORMAL = statistics.NormalDist()


class SpaceError(ValueError):
    """A search space that cannot run; the message names the key (``parameters.lr.min``)."""


# ----------------------------------------------------------------------------------------------
# The typed spec


@dataclass(frozen=True)
class Param:
    """One hyperparameter in W&B form, validated; values are already coerced by RunConfig."""

    name: str
    distribution: str  # "constant", "categorical", or one of the W&B distributions
    value: Any = None
    values: tuple[Any, ...] = ()
    probabilities: tuple[float, ...] | None = None
    min: float | None = None
    max: float | None = None
    q: float | None = None
    mu: float | None = None
    sigma: float | None = None
    integer: bool = False  # the RunConfig field takes integers: draws are cast to int

    @property
    def is_constant(self) -> bool:
        return self.distribution == "constant"

    def points(self) -> list[Any] | None:
        """Every value this parameter can take, or None when there are too many to list."""
        if self.distribution == "constant":
            return [self.value]
        if self.distribution == "categorical":
            return list(self.values)
        if self.distribution == "int_uniform":
            return list(range(int(self.min), int(self.max) + 1))
        if self.distribution == "q_uniform":
            lo, hi = (round(self.min / self.q), round(self.max / self.q))
            return [_qpoint(k, self.q, self.integer) for k in range(lo, hi + 1)]
        return None

    def extremes(self) -> tuple[float, float]:
        """The smallest and largest value a numeric form can produce."""
        d = self.distribution
        if d in ("constant", "categorical"):
            pts = self.points()
            return min(pts), max(pts)
        if d in _NORMAL_FORMS:
            z = -_STD_NORMAL.inv_cdf(NORMAL_TAIL)
            lo, hi = self.mu - z * self.sigma, self.mu + z * self.sigma
        elif d == "inv_log_uniform":  # X = e**-U(min, max)
            lo, hi = -self.max, -self.min
        else:
            lo, hi = self.min, self.max
        if d in _EXPONENT_FORMS or d in ("log_normal", "q_log_normal"):
            lo, hi = _exp(lo, self.name), _exp(hi, self.name)
        if self.q is not None:
            lo, hi = _qround(lo, self.q, self.integer), _qround(hi, self.q, self.integer)
        return lo, hi

    def to_dict(self) -> dict[str, Any]:
        """W&B syntax, as it would be written in a sweep file."""
        if self.distribution == "constant":
            return {"value": _plain(self.value)}
        if self.distribution == "categorical":
            out: dict[str, Any] = {"values": [_plain(v) for v in self.values]}
            if self.probabilities is not None:
                out["probabilities"] = list(self.probabilities)
            return out
        out = {"distribution": self.distribution}
        for key in _FORMS[self.distribution]:
            out[key] = getattr(self, key)
        return out


@dataclass(frozen=True)
class SweepSpec:
    """A validated W&B sweep: what ``to_tune_param_space`` and friends turn into Ray objects."""

    model: str = "scratch_cnn"  # the trainable family (inat_tune.config.MODELS)
    method: str = "bayes"  # bayes | random | grid
    metric: str = "val_acc"
    mode: str = "max"  # max | min, from W&B goal maximize | minimize
    parameters: dict[str, Param] = field(default_factory=dict)
    # normalised: {type: hyperband, min_iter, eta} (+ max_iter, s, strict when given)
    early_terminate: dict[str, Any] | None = None
    name: str | None = None
    description: str | None = None
    run_cap: int | None = None  # W&B's cap on runs: a default for --num-samples
    val_fraction: float = RunConfig.val_fraction  # the sweep's one validation split
    split_seed: int = RunConfig.split_seed

    def sampled(self) -> dict[str, Param]:
        """The parameters that vary from trial to trial."""
        return {k: p for k, p in self.parameters.items() if not p.is_constant}


# ----------------------------------------------------------------------------------------------
# Loading and validation (no Ray, no Optuna)


def load_space(path_or_dict: str | Path | Mapping[str, Any]) -> SweepSpec:
    """Read a W&B sweep file (or an already-parsed mapping) and validate it completely.

    Raises SpaceError, naming the key, for anything a trial could not run with. Values are
    checked through ``RunConfig.from_dict`` with the top-level model and the fixed (`value`)
    parameters filled in; every pair of swept parameters is checked too, since RunConfig's
    cross-key rules (filters with filter_org, warmup_epochs with epochs) involve two keys.
    """
    raw = _read(path_or_dict)
    unknown = [k for k in raw if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise SpaceError(_unknown_msg(unknown[0], TOP_LEVEL_KEYS, "top-level key"))
    for key in IGNORED_KEYS:
        if key in raw:
            logger.debug("search space: ignoring W&B launch key %r", key)

    model = raw.get("model", "scratch_cnn")
    if model not in MODELS:
        raise SpaceError(f"model: {model!r} is not a model; choose one of {', '.join(MODELS)}")
    method = raw.get("method")
    if method not in METHODS:
        raise SpaceError(f"method: {method!r} is not a method; choose one of {', '.join(METHODS)}"
                         if method is not None else
                         f"method: missing; choose one of {', '.join(METHODS)}")
    metric, mode = _parse_metric(raw.get("metric"))
    run_cap = raw.get("run_cap")
    if run_cap is not None:
        run_cap = _number("run_cap", run_cap, integer=True)
        if run_cap < 1:
            raise SpaceError(f"run_cap: {run_cap} must be >= 1")
    for key in ("name", "description"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise SpaceError(f"{key}: expected a string, got {raw[key]!r}")

    params_raw = raw.get("parameters") or {}
    if not isinstance(params_raw, Mapping):
        raise SpaceError("parameters: expected a mapping of hyperparameter name -> form")
    known = [k for k in RunConfig.keys() if k != "model"]
    params: dict[str, Param] = {}
    for name, form in params_raw.items():
        if name == "model":
            raise SpaceError("parameters.model: pick the trainable with the top-level `model:` key")
        if name not in known:
            raise SpaceError(_unknown_msg(name, known, "hyperparameter",
                                          where=f"parameters.{name}"))
        params[name] = _parse_param(name, form)

    split = _parse_split(raw, params)
    params = _check_against_runconfig(model, params)
    _check_method(method, params)

    spec = SweepSpec(model=model, method=method, metric=metric, mode=mode, parameters=params,
                     early_terminate=None, name=raw.get("name"),
                     description=raw.get("description"), run_cap=run_cap, **split)
    et = _parse_early_terminate(raw.get("early_terminate"), max_epochs(spec))
    return dataclasses.replace(spec, early_terminate=et)


def override(spec: SweepSpec, fixed: Mapping[str, Any]) -> SweepSpec:
    """The spec with some hyperparameters fixed (``--set key=value``), validated again."""
    raw = spec_to_dict(spec)
    known = [k for k in RunConfig.keys() if k != "model"]
    for key, value in fixed.items():
        if key != "model" and key not in known:
            raise SpaceError(_unknown_msg(key, known, "config key", where=f"--set {key}"))
        if key == "model":
            raw["model"] = value
        else:
            raw["parameters"][key] = {"value": _plain(value)}
    return load_space(raw)


def spec_to_dict(spec: SweepSpec) -> dict[str, Any]:
    """The resolved space in W&B syntax (``load_space(spec_to_dict(s)) == s``), for YAML."""
    goal = {"max": "maximize", "min": "minimize"}[spec.mode]
    out: dict[str, Any] = {"model": spec.model, "method": spec.method,
                           "metric": {"name": spec.metric, "goal": goal}}
    for key in ("name", "description", "run_cap"):
        if getattr(spec, key) is not None:
            out[key] = getattr(spec, key)
    if (spec.val_fraction, spec.split_seed) != (RunConfig.val_fraction, RunConfig.split_seed):
        out["val_fraction"], out["split_seed"] = spec.val_fraction, spec.split_seed
    out["parameters"] = {k: p.to_dict() for k, p in spec.parameters.items()}
    if spec.early_terminate is not None:
        out["early_terminate"] = dict(spec.early_terminate)
    return out


def _parse_split(raw: Mapping[str, Any], params: dict[str, Param]) -> dict[str, Any]:
    """The sweep-level split settings. A constant under ``parameters`` (a W&B file may have
    one) is taken as the sweep's; a searched one is refused: every trial must be ranked on the
    same validation images. Removes them from ``params``."""
    out: dict[str, Any] = {}
    for key in SWEEP_LEVEL_KEYS:
        p = params.pop(key, None)
        if p is not None and not p.is_constant:
            raise SpaceError(f"parameters.{key}: the validation split is one per sweep (trials are "
                             f"ranked against each other on it), so {key} cannot be searched; write "
                             f"`{key}: <value>` at the top level of the space file or pass "
                             f"--{key.replace('_', '-')}")
        top = raw.get(key)
        if p is not None and top is not None and p.value != top:
            raise SpaceError(f"{key}: {top!r} at the top level but {p.value!r} under parameters; "
                             "give it once, at the top level")
        value = top if top is not None else (p.value if p is not None else None)
        if value is not None:
            try:
                out[key] = getattr(RunConfig.from_dict({key: value}), key)
            except ConfigError as e:
                raise SpaceError(f"{key}: {e}") from None
    return out


def with_split(spec: SweepSpec, val_fraction: float | None = None,
               split_seed: int | None = None) -> SweepSpec:
    """The spec with the sweep's split set (``--val-fraction`` / ``--split-seed``), checked."""
    raw = {k: v for k, v in (("val_fraction", val_fraction), ("split_seed", split_seed)) if v is not None}
    if not raw:
        return spec
    return dataclasses.replace(spec, **_parse_split(raw, {}))


def max_epochs(spec: SweepSpec) -> int:
    """The most epochs any trial of this space runs: ASHA's max_t."""
    p = spec.parameters.get("epochs")
    if p is None:
        return RunConfig().epochs
    return int(p.extremes()[1])


def num_grid_trials(spec: SweepSpec) -> int:
    """How many trials a grid sweep runs (the product of every parameter's value count)."""
    if spec.method != "grid":
        raise SpaceError(f"method: num_grid_trials needs method grid, not {spec.method}")
    return math.prod(len(p.points()) for p in spec.parameters.values())


def tpe_conversions(spec: SweepSpec) -> dict[str, str]:
    """Keys whose W&B form Optuna cannot take as is, with what TPE searches instead."""
    out: dict[str, str] = {}
    for name, p in spec.sampled().items():
        d = p.distribution
        if p.probabilities is not None:
            out[name] = ("Optuna takes no category weights: TPE (and its random start-up "
                         "trials) draws the values uniformly; the probabilities are ignored")
        elif d in _NORMAL_FORMS:
            out[name] = (f"Optuna has no {d} distribution: TPE searches the quantile u in "
                         f"[{NORMAL_TAIL:g}, 1 - {NORMAL_TAIL:g}] and the trial gets "
                         f"{'exp(' if 'log' in d else ''}mu + sigma * Phi^-1(u)"
                         f"{')' if 'log' in d else ''}{' rounded to q' if p.q else ''}: the same "
                         "prior, truncated at +-4.75 sigma")
        elif d in ("q_log_uniform_values", "q_log_uniform"):
            out[name] = ("Optuna has no quantized log-uniform distribution: TPE searches the "
                         "unrounded log-uniform value and the trial gets it rounded to q")
    return out


def _read(path_or_dict: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(path_or_dict, Mapping):
        return dict(path_or_dict)
    path = Path(path_or_dict)
    if not path.is_file():
        raise SpaceError(f"search space file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(f"search space file {path} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise SpaceError(f"search space file {path}: expected a mapping of W&B sweep keys")
    return loaded


def _unknown_msg(key: Any, known: Any, what: str, where: str | None = None) -> str:
    # another tool's name for one of our keys (learning_rate -> lr), as RunConfig hints it
    alias = ALIASES.get(str(key))
    hint = [alias] if alias in known else difflib.get_close_matches(str(key), list(known), n=1)
    return (f"{where or key}: unknown {what} {key!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; known: {', '.join(known)}")


def _parse_metric(raw: Any) -> tuple[str, str]:
    if raw is None:
        return "val_acc", "max"
    if not isinstance(raw, Mapping):
        raise SpaceError(f"metric: expected {{name: ..., goal: maximize|minimize}}, got {raw!r}")
    for key in raw:
        if key not in ("name", "goal", "target"):
            raise SpaceError(_unknown_msg(key, ("name", "goal", "target"), "metric key",
                                          where=f"metric.{key}"))
    name = raw.get("name", "val_acc")
    if name not in METRICS:
        raise SpaceError(f"metric.name: {name!r} is not reported by the trainer; "
                         f"choose one of {', '.join(METRICS)}")
    goal = raw.get("goal")
    if goal is None:  # W&B would minimize; the metric's own direction is the sane default
        return name, METRICS[name]
    if goal not in GOALS:
        raise SpaceError(f"metric.goal: {goal!r} must be maximize or minimize")
    if GOALS[goal] != METRICS[name]:
        logger.warning("metric: goal %s for %s optimises it in the unusual direction", goal, name)
    return name, GOALS[goal]


def _number(where: str, value: Any, integer: bool = False) -> int | float:
    """A finite number; YAML 1.1 reads ``1e-3`` as a string, so numeric strings are accepted."""
    out: Any = value
    if isinstance(value, str):
        try:
            out = int(value)
        except ValueError:
            try:
                out = float(value)
            except ValueError:
                raise SpaceError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(out, bool) or not isinstance(out, (int, float)) or not math.isfinite(out):
        raise SpaceError(f"{where}: expected a finite number, got {value!r}")
    if integer:
        if isinstance(out, float) and not out.is_integer():
            raise SpaceError(f"{where}: expected an integer, got {value!r}")
        return int(out)
    return out


def _field_kind(name: str) -> str:
    """int | float | bool | str for a RunConfig field (int also covers 'int or 5 ints')."""
    annotation = str({f.name: f.type for f in dataclasses.fields(RunConfig)}[name])
    for kind in ("bool", "int", "float"):
        if kind in annotation:
            return kind
    return "str"


def _parse_param(name: str, raw: Any) -> Param:
    """Syntax and ranges of one W&B parameter form (RunConfig checks come later)."""
    where = f"parameters.{name}"
    if not isinstance(raw, Mapping):
        raise SpaceError(f"{where}: expected a mapping such as {{value: ...}}, {{values: [...]}} "
                         f"or {{distribution: ..., min: ..., max: ...}}; got {raw!r}")
    dist = raw.get("distribution")
    if dist is None:  # W&B's inference when `distribution` is left out
        if "value" in raw:
            dist = "constant"
        elif "values" in raw:
            dist = "categorical"
        elif "min" in raw and "max" in raw:
            ints = all(isinstance(raw[k], int) and not isinstance(raw[k], bool)
                       for k in ("min", "max"))
            dist = "int_uniform" if ints else "uniform"
        else:
            raise SpaceError(f"{where}: give `value`, `values`, or a `distribution` with its "
                             "parameters (e.g. min and max)")
    if dist in _UNSUPPORTED:
        raise SpaceError(f"{where}.distribution: {dist} is a W&B form this service does not "
                         "support; use uniform or values")
    if not isinstance(dist, str) or dist not in _FORMS:
        raise SpaceError(_unknown_msg(dist, _FORMS, "distribution", where=f"{where}.distribution"))
    allowed = _FORMS[dist]
    every_key = {"distribution", *(k for keys in _FORMS.values() for k in keys)}
    for key in raw:
        if key not in every_key:  # a key of no W&B form: a typo, most likely
            raise SpaceError(_unknown_msg(key, sorted(every_key), "parameter key", where=f"{where}.{key}"))
        if key != "distribution" and key not in allowed:
            raise SpaceError(f"{where}.{key}: not a key of a {dist} parameter "
                             f"(it takes {', '.join(allowed)})")

    kind = _field_kind(name)
    integer = kind == "int"
    if dist == "constant":
        if "value" not in raw:
            raise SpaceError(f"{where}.value: missing")
        return Param(name, dist, value=raw["value"], integer=integer)
    if dist == "categorical":
        return _parse_values(name, raw, integer)

    if kind in ("bool", "str"):
        raise SpaceError(f"{where}.distribution: {dist} draws numbers but {name} is a {kind}; "
                         "list the choices with `values`")
    q = None
    if "q" in allowed:
        q = _number(f"{where}.q", raw.get("q", 1))  # W&B's default q is 1
        if q <= 0:
            raise SpaceError(f"{where}.q: {q} must be > 0")
        if integer and not float(q).is_integer():
            raise SpaceError(f"{where}.q: {q} must be an integer, {name} takes integers")
        if integer:
            q = int(q)
    elif integer and dist != "int_uniform":
        raise SpaceError(f"{where}.distribution: {dist} draws non-integers but {name} takes "
                         "integers; use int_uniform, values, or a q_ form with an integer q")

    if dist in _RANGE_FORMS:
        lo_hi = []
        for key in ("min", "max"):
            if key not in raw:
                raise SpaceError(f"{where}.{key}: missing ({dist} needs min and max)")
            lo_hi.append(_number(f"{where}.{key}", raw[key], integer=dist == "int_uniform"))
        lo, hi = lo_hi
        if lo > hi:
            raise SpaceError(f"{where}.min: {lo} is greater than max {hi}")
        if dist in _POSITIVE_FORMS and lo <= 0:
            raise SpaceError(f"{where}.min: {lo} must be > 0 for {dist} (log of a value <= 0)")
        p = Param(name, dist, min=lo, max=hi, q=q, integer=integer)
    else:
        mu = _number(f"{where}.mu", raw.get("mu", 0.0))  # W&B defaults: mu 0, sigma 1
        sigma = _number(f"{where}.sigma", raw.get("sigma", 1.0))
        if sigma <= 0:
            raise SpaceError(f"{where}.sigma: {sigma} must be > 0")
        p = Param(name, dist, mu=mu, sigma=sigma, q=q, integer=integer)
    p.extremes()  # exp overflow surfaces here, naming the key
    return p


def _parse_values(name: str, raw: Mapping[str, Any], integer: bool) -> Param:
    where = f"parameters.{name}"
    values = raw.get("values")
    if not isinstance(values, list):
        raise SpaceError(f"{where}.values: expected a list, got {values!r}")
    if not values:
        raise SpaceError(f"{where}.values: the list is empty")
    probs = raw.get("probabilities")
    if probs is not None:
        if not isinstance(probs, list) or len(probs) != len(values):
            raise SpaceError(f"{where}.probabilities: give one probability per value "
                             f"({len(values)})")
        probs = tuple(float(_number(f"{where}.probabilities", p)) for p in probs)
        if any(p < 0 for p in probs):
            raise SpaceError(f"{where}.probabilities: must be >= 0")
        if not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise SpaceError(f"{where}.probabilities: sum to {sum(probs):g}, not 1")
    return Param(name, "categorical", values=tuple(values), probabilities=probs, integer=integer)


# --- RunConfig checks --------------------------------------------------------------------------


def _build(base: Mapping[str, Any], **values: Any) -> RunConfig:
    return RunConfig.from_dict({**base, **values})


def _coerced(base: Mapping[str, Any], name: str, value: Any, where: str) -> Any:
    """The value as RunConfig stores it (``"1e-3"`` -> 0.001, ``[7, 5]`` -> (7, 5))."""
    try:
        return getattr(_build(base, **{name: value}), name)
    except ConfigError as exc:
        raise SpaceError(f"{where}: {value!r} is refused by RunConfig: {exc}") from None


def _probes(p: Param) -> list[tuple[Any, str]]:
    """(value, key to blame) pairs that bound what a trial of this parameter can receive."""
    where = f"parameters.{p.name}"
    pts = p.points()
    if pts is not None and (p.distribution in ("constant", "categorical")
                            or len(pts) <= _EXHAUSTIVE_CHECK):
        return [(v, where) for v in pts]
    lo, hi = p.extremes()
    return [(lo, f"{where}.min" if p.min is not None else where),
            (hi, f"{where}.max" if p.max is not None else where)]


def _check_against_runconfig(model: str, params: dict[str, Param]) -> dict[str, Param]:
    base: dict[str, Any] = {"model": model}
    out: dict[str, Param] = {}
    for name, p in params.items():  # fixed values first, each alone, then together
        if p.is_constant:
            value = _coerced(base, name, p.value, f"parameters.{name}")
            out[name] = dataclasses.replace(p, value=value)
    fixed = {k: p.value for k, p in out.items()}
    try:
        _build(base, **fixed)
    except ConfigError as exc:
        raise SpaceError(f"parameters: the fixed values do not work together: {exc}") from None
    base.update(fixed)

    probes: dict[str, list[tuple[Any, str]]] = {}
    for name, p in params.items():
        if p.is_constant:
            continue
        if p.distribution == "categorical":
            values = tuple(_coerced(base, name, v, f"parameters.{name}") for v in p.values)
            dupes = [v for i, v in enumerate(values) if v in values[:i]]
            if dupes:
                raise SpaceError(f"parameters.{name}.values: {_plain(dupes[0])!r} is listed twice")
            p = dataclasses.replace(p, values=values)
        else:
            for value, where in _probes(p):
                reach = f"{p.distribution} reaches {value!r}, which "
                try:
                    _build(base, **{name: value})
                except ConfigError as exc:
                    raise SpaceError(f"{where}: {reach}RunConfig refuses: {exc}") from None
        out[name] = p
        probes[name] = _probes(p)

    # Cross-key rules: every pair of swept parameters, at their values or extremes.
    names = list(probes)
    budget = _MAX_PAIR_CHECKS
    for a, b in itertools.combinations(names, 2):
        budget -= len(probes[a]) * len(probes[b])
        if budget < 0:
            logger.debug("search space: too many combinations; skipped the remaining pair checks")
            break
        for (va, _), (vb, _) in itertools.product(probes[a], probes[b]):
            try:
                _build(base, **{a: va, b: vb})
            except ConfigError as exc:
                raise SpaceError(
                    f"parameters.{a}, parameters.{b}: the combination {a}={_plain(va)!r}, "
                    f"{b}={_plain(vb)!r} is refused by RunConfig: {exc}") from None
    return {k: out[k] for k in params}  # file order


def _check_method(method: str, params: dict[str, Param]) -> None:
    if method == "bayes" and not any(not p.is_constant for p in params.values()):
        raise SpaceError("parameters: method bayes needs at least one parameter that varies")
    if method != "grid":
        return
    for name, p in params.items():
        pts = p.points()
        if pts is None:
            raise SpaceError(f"parameters.{name}: method grid needs discrete parameters (value, "
                             f"values, int_uniform or q_uniform); {p.distribution} is continuous")
        if len(pts) > GRID_MAX_POINTS and p.distribution != "categorical":
            raise SpaceError(f"parameters.{name}: method grid: {p.distribution} spans "
                             f"{len(pts)} values, more than {GRID_MAX_POINTS}; list them with "
                             "values or narrow the range")
        if p.probabilities is not None:
            logger.warning("parameters.%s.probabilities: grid search tries every value; "
                           "ignored", name)


def _parse_early_terminate(raw: Any, epochs_max: int) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SpaceError(f"early_terminate: expected a mapping {{type: hyperband, min_iter, eta}}, "
                         f"got {raw!r}")
    for key in raw:
        if key not in EARLY_TERMINATE_KEYS:
            raise SpaceError(_unknown_msg(key, EARLY_TERMINATE_KEYS, "early_terminate key",
                                          where=f"early_terminate.{key}"))
    if raw.get("type") != "hyperband":
        raise SpaceError(f"early_terminate.type: {raw.get('type')!r}; only hyperband is supported")
    out: dict[str, Any] = {"type": "hyperband"}
    for key in ("min_iter", "max_iter", "s"):
        if raw.get(key) is not None:
            out[key] = _number(f"early_terminate.{key}", raw[key], integer=True)
            if out[key] < 1:
                raise SpaceError(f"early_terminate.{key}: {out[key]} must be >= 1")
    eta = _number("early_terminate.eta", raw.get("eta", 3))  # W&B's default eta is 3
    if eta <= 1:
        raise SpaceError(f"early_terminate.eta: {eta} must be > 1 (the halving rate)")
    out["eta"] = eta
    if "strict" in raw:
        if not isinstance(raw["strict"], bool):
            raise SpaceError("early_terminate.strict: expected true or false")
        out["strict"] = raw["strict"]
        logger.info("early_terminate.strict has no ASHA counterpart; ignored")
    if "min_iter" not in out:
        # W&B: with max_iter and s, the brackets are at max_iter / eta**k for k = 1..s
        if "max_iter" not in out or "s" not in out:
            raise SpaceError("early_terminate.min_iter: missing (or give max_iter and s)")
        out["min_iter"] = max(1, int(out["max_iter"] / eta ** out["s"]))
    if out["min_iter"] > epochs_max:
        raise SpaceError(f"early_terminate.min_iter: {out['min_iter']} exceeds the most epochs a "
                         f"trial runs ({epochs_max}); nothing would ever be stopped early")
    # W&B's max_iter is the iteration count the brackets count down from (max_iter / eta**k).
    # Here ASHA's last rung is the trials' own epochs (max_t), so max_iter works as W&B defines
    # it only when the two agree; anything else would silently mean two different schedules.
    if "max_iter" in out and out["max_iter"] != epochs_max:
        raise SpaceError(f"early_terminate.max_iter: {out['max_iter']}, but trials run at most "
                         f"{epochs_max} epochs (parameters.epochs); ASHA's last rung is the trials' "
                         f"epochs, so set max_iter: {epochs_max} or leave it out (min_iter sets the "
                         "first rung)")
    return out


# ----------------------------------------------------------------------------------------------
# Values and transforms


def _exp(x: float, name: str) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        raise SpaceError(f"parameters.{name}: e**{x} overflows a float") from None


def _clean(x: float) -> float:
    """Drop float noise from k * q (0.30000000000000004 -> 0.3)."""
    return float(f"{x:.12g}")


def _qpoint(k: int, q: float, integer: bool) -> int | float:
    return int(round(k * q)) if integer else _clean(k * q)


def _qround(x: float, q: float, integer: bool) -> int | float:
    """W&B's quantisation: round(x / q) * q (numpy rounds half to even, and so does round)."""
    return _qpoint(round(x / q), q, integer)


def _plain(value: Any) -> Any:
    """Tuples (RunConfig's lists) as lists, for YAML, JSON and trial configs."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value

