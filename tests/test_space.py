"""Search-space files: W&B syntax -> validated SweepSpec -> Ray Tune domains, Optuna, ASHA.

CPU only and fast: Ray Tune domain objects and searchers work without ``ray.init``.
"""

from __future__ import annotations

import logging
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from inat_tune.config import RunConfig
from inat_tune.tune.search import make_scheduler, make_search_alg, to_tune_param_space
from inat_tune.tune.space import (
    SpaceError,
    SweepSpec,
    load_space,
    max_epochs,
    num_grid_trials,
    override,
    spec_to_dict,
    with_split,
)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))
N = 400  # draws per distribution test


def space(method: str = "random", **params) -> dict:
    return {"method": method, "metric": {"name": "val_acc", "goal": "maximize"},
            "parameters": params}


def draws(param: dict, name: str, n: int = N, seed: int = 0, method: str = "random") -> list:
    """n values of one parameter, drawn the way BasicVariantGenerator draws them."""
    domain = to_tune_param_space(load_space(space(method, **{name: param})))[name]
    return list(domain.sample(size=n, random_state=np.random.default_rng(seed)))


def optuna_suggestions(spec: SweepSpec, n: int = 30, seed: int = 0) -> list[dict]:
    searcher = make_search_alg(spec, seed=seed, max_concurrent=None)
    assert searcher.set_search_properties(None, None, to_tune_param_space(spec))
    return [searcher.suggest(f"t{i}") for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Each W&B form, sampled


def test_value_is_a_constant_and_model_is_in_the_param_space():
    spec = load_space({**space(dense={"value": 96}, lr={"values": [1e-3, 3e-3]}),
                       "model": "scratch_cnn"})
    ps = to_tune_param_space(spec)
    assert ps["dense"] == 96 and ps["model"] == "scratch_cnn"


def test_values_draw_every_listed_value_with_its_type():
    got = draws({"values": [16, 32, 64]}, "filters")
    assert set(got) == {16, 32, 64} and all(type(v) is int for v in got)
    got = draws({"distribution": "categorical", "values": ["relu", "gelu"]}, "conv_activation")
    assert set(got) == {"relu", "gelu"}
    assert set(draws({"values": [True, False]}, "batch_norm")) == {True, False}


def test_values_entries_are_coerced_by_runconfig():
    spec = load_space(space(lr={"values": ["1e-3", 3e-3]}, dense={"values": [64.0, 128]}))
    assert spec.parameters["lr"].values == (1e-3, 3e-3)
    assert all(type(v) is int for v in spec.parameters["dense"].values)


def test_a_values_entry_can_be_a_list_of_five():
    got = draws({"values": [3, 5, [7, 5, 5, 3, 3]]}, "kernel_size")
    assert {str(v) for v in got} == {"3", "5", "[7, 5, 5, 3, 3]"}
    for v in got:
        RunConfig.from_dict({"kernel_size": v})


def test_probabilities_set_the_frequencies():
    got = draws({"values": [0.0, 0.2, 0.3], "probabilities": [0.6, 0.3, 0.1]}, "dropout", n=4000)
    freq = [got.count(v) / len(got) for v in (0.0, 0.2, 0.3)]
    assert freq == pytest.approx([0.6, 0.3, 0.1], abs=0.03)


def test_uniform_stays_in_bounds_and_covers_them():
    got = np.array(draws({"distribution": "uniform", "min": 0.1, "max": 0.5}, "dropout"))
    assert got.min() >= 0.1 and got.max() <= 0.5
    assert got.min() < 0.12 and got.max() > 0.48
    assert abs(np.median(got) - 0.3) < 0.05


def test_min_max_without_distribution_are_inferred_like_wandb():
    spec = load_space(space(dense={"min": 32, "max": 64}, dropout={"min": 0.0, "max": 0.5}))
    assert spec.parameters["dense"].distribution == "int_uniform"
    assert spec.parameters["dropout"].distribution == "uniform"


def test_int_uniform_is_ints_with_both_endpoints_reached():
    got = draws({"distribution": "int_uniform", "min": 3, "max": 6}, "dense")
    assert all(isinstance(v, (int, np.integer)) for v in got)
    assert set(int(v) for v in got) == {3, 4, 5, 6}  # W&B's max is inclusive


def test_int_uniform_single_draw_is_a_python_int():
    domain = to_tune_param_space(load_space(space(dense={"min": 3, "max": 6})))["dense"]
    assert type(domain.sample(random_state=np.random.default_rng(0))) is int


def test_q_uniform_draws_multiples_of_q():
    got = draws({"distribution": "q_uniform", "min": 0.0, "max": 0.5, "q": 0.1}, "dropout")
    assert all(0.0 <= v <= 0.5 for v in got)
    assert all(abs(v / 0.1 - round(v / 0.1)) < 1e-6 for v in got)
    assert len({round(v, 6) for v in got}) == 6  # 0.0 .. 0.5 all reached
    ints = draws({"distribution": "q_uniform", "min": 32, "max": 128, "q": 32}, "dense")
    assert {int(v) for v in ints} == {32, 64, 96, 128}
    assert all(isinstance(v, (int, np.integer)) for v in ints)


def _assert_log_uniform(got, lo, hi):
    got = np.array(got, dtype=float)
    assert got.min() >= lo * (1 - 1e-9) and got.max() <= hi * (1 + 1e-9)
    # log-uniform: the median sits at the geometric mean, far below the arithmetic one
    assert abs(np.log(np.median(got)) - np.log(math.sqrt(lo * hi))) < 0.1 * np.log(hi / lo)
    assert np.median(got) < (lo + hi) / 4


def test_log_uniform_values_is_log_distributed():
    got = draws({"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1}, "lr")
    _assert_log_uniform(got, 1e-4, 1e-1)


def test_inv_log_uniform_values_is_log_uniform_on_min_max():
    got = draws({"distribution": "inv_log_uniform_values", "min": 1e-4, "max": 1e-1}, "lr")
    _assert_log_uniform(got, 1e-4, 1e-1)


def test_log_uniform_takes_natural_log_exponents():
    got = draws({"distribution": "log_uniform", "min": -9.2, "max": -2.3}, "lr")
    _assert_log_uniform(got, math.exp(-9.2), math.exp(-2.3))


def test_inv_log_uniform_takes_negated_exponents():
    got = draws({"distribution": "inv_log_uniform", "min": 2.3, "max": 9.2}, "lr")
    _assert_log_uniform(got, math.exp(-9.2), math.exp(-2.3))


def test_q_log_uniform_values_on_an_int_field_gives_int_multiples():
    got = draws({"distribution": "q_log_uniform_values", "min": 16, "max": 256, "q": 16},
                "batch_size")
    assert all(type(v) is int and v % 16 == 0 and 16 <= v <= 256 for v in got)
    assert np.median(got) <= 96  # log-distributed: geometric mean 64


def test_q_log_uniform_values_on_a_float_field():
    got = draws({"distribution": "q_log_uniform_values", "min": 1e-4, "max": 1e-2, "q": 1e-4},
                "lr")
    assert all(isinstance(v, float) and 1e-4 <= v <= 1e-2 for v in got)
    assert all(abs(v / 1e-4 - round(v / 1e-4)) < 1e-6 for v in got)


def test_normal_matches_mu_and_sigma():
    got = np.array(draws({"distribution": "normal", "mu": 0.3, "sigma": 0.02}, "dropout", n=2000))
    assert got.mean() == pytest.approx(0.3, abs=0.003)
    assert got.std() == pytest.approx(0.02, rel=0.1)


def test_log_normal_is_lognormal():
    got = np.array(draws({"distribution": "log_normal", "mu": -7.0, "sigma": 1.0},
                         "weight_decay", n=2000))
    assert (got > 0).all()
    assert np.log(got).mean() == pytest.approx(-7.0, abs=0.1)
    assert np.log(got).std() == pytest.approx(1.0, rel=0.1)


def test_q_normal_on_an_int_field_gives_int_multiples():
    got = draws({"distribution": "q_normal", "mu": 20, "sigma": 2, "q": 2}, "epochs")
    assert all(type(v) is int and v % 2 == 0 for v in got)
    assert np.mean(got) == pytest.approx(20, abs=0.5)


def test_q_log_normal_gives_multiples_of_q():
    got = draws({"distribution": "q_log_normal", "mu": math.log(128), "sigma": 0.3, "q": 8},
                "dense")
    assert all(type(v) is int and v % 8 == 0 and v > 0 for v in got)
    assert np.median(got) == pytest.approx(128, rel=0.1)


def test_random_sampling_is_reproducible_from_the_seed():
    param = {"distribution": "log_normal", "mu": -7.0, "sigma": 1.0}
    assert draws(param, "weight_decay", n=20, seed=3) == draws(param, "weight_decay", n=20, seed=3)
    assert draws(param, "weight_decay", n=20, seed=3) != draws(param, "weight_decay", n=20, seed=4)


# ---------------------------------------------------------------------------------------------
# Grid


def test_grid_builds_grid_search_lists_and_counts_trials():
    spec = load_space(space("grid", filters={"values": [16, 32]}, dense={"min": 64, "max": 66},
                            dropout={"distribution": "q_uniform", "min": 0, "max": 0.2, "q": 0.1},
                            kernel_size={"values": [3, [7, 5, 5, 3, 3]]}, epochs={"value": 3}))
    ps = to_tune_param_space(spec)
    assert ps["filters"] == {"grid_search": [16, 32]}
    assert ps["dense"] == {"grid_search": [64, 65, 66]}
    assert ps["dropout"] == {"grid_search": [0.0, 0.1, 0.2]}
    assert ps["kernel_size"] == {"grid_search": [3, [7, 5, 5, 3, 3]]}
    assert ps["epochs"] == 3
    assert num_grid_trials(spec) == 2 * 3 * 3 * 2


def test_num_grid_trials_needs_grid():
    with pytest.raises(SpaceError, match="method"):
        num_grid_trials(load_space(space("bayes", filters={"values": [16, 32]})))


# ---------------------------------------------------------------------------------------------
# Refusals: every message names the key


BAD = [
    ("unknown hyperparameter", space(lrr={"value": 1e-3}), "parameters.lrr", "did you mean 'lr'"),
    ("unknown top-level key", {**space(lr={"value": 1e-3}), "paramaters": {}}, "paramaters",
     "did you mean 'parameters'"),
    ("min > max", space(lr={"distribution": "uniform", "min": 0.1, "max": 0.01}),
     "parameters.lr.min", "greater"),
    ("log of 0", space(lr={"distribution": "log_uniform_values", "min": 0, "max": 0.1}),
     "parameters.lr.min", "> 0"),
    ("log of < 0", space(lr={"distribution": "q_log_uniform_values", "min": -1, "max": 1}),
     "parameters.lr.min", "> 0"),
    ("grid over a continuous range",
     space("grid", lr={"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}),
     "parameters.lr", "continuous"),
    ("grid over a huge int range", space("grid", dense={"min": 1, "max": 5000}),
     "parameters.dense", "grid"),
    ("metric not reported", {**space(lr={"value": 1e-3}), "metric": {"name": "val_f1"}},
     "metric.name", "val_acc"),
    ("bad goal", {**space(lr={"value": 1e-3}), "metric": {"name": "val_acc", "goal": "max"}},
     "metric.goal", "maximize"),
    ("bad metric key", {**space(lr={"value": 1e-3}), "metric": {"name": "val_acc", "gaol": "x"}},
     "metric.gaol", ""),
    ("bad early_terminate key",
     {**space(lr={"value": 1e-3}), "early_terminate": {"type": "hyperband", "min_iters": 2}},
     "early_terminate.min_iters", "did you mean 'min_iter'"),
    ("bad early_terminate type",
     {**space(lr={"value": 1e-3}), "early_terminate": {"type": "envelope", "min_iter": 2}},
     "early_terminate.type", "hyperband"),
    ("eta <= 1", {**space(lr={"value": 1e-3}),
                  "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 1}},
     "early_terminate.eta", "> 1"),
    ("min_iter beyond the epochs", {**space(epochs={"value": 3}),
                                    "early_terminate": {"type": "hyperband", "min_iter": 5}},
     "early_terminate.min_iter", "epochs"),
    ("value RunConfig refuses", space(filters={"value": 0}), "parameters.filters", ">= 1"),
    ("values entry RunConfig refuses", space(filters={"values": [16, 0]}), "parameters.filters",
     ">= 1"),
    ("values entry of the wrong type", space(dense={"values": [64, "big"]}), "parameters.dense",
     "integer"),
    ("range end RunConfig refuses", space(dropout={"distribution": "uniform", "min": 0, "max": 1}),
     "parameters.dropout.max", "[0, 1)"),
    ("int range point RunConfig refuses", space(kernel_size={"min": 3, "max": 7}),
     "parameters.kernel_size", "odd"),
    ("normal tail RunConfig refuses",
     space(dropout={"distribution": "normal", "mu": 0.1, "sigma": 0.05}), "parameters.dropout",
     "[0, 1)"),
    ("pair RunConfig refuses", space(filters={"values": [8, 32]},
                                     filter_org={"values": ["same", "half"]}),
     "parameters.filters, parameters.filter_org", "half"),
    ("unknown distribution", space(lr={"distribution": "loguniform", "min": 1e-4, "max": 1e-2}),
     "parameters.lr.distribution", "did you mean"),
    ("beta", space(dropout={"distribution": "beta", "a": 2, "b": 2}),
     "parameters.dropout.distribution", "not"),
    ("missing max", space(lr={"distribution": "uniform", "min": 1e-4}), "parameters.lr.max",
     "missing"),
    ("empty values", space(filters={"values": []}), "parameters.filters.values", "empty"),
    ("unknown key in a parameter", space(lr={"distribution": "uniform", "min": 0.1, "max": 0.2,
                                             "step": 0.1}), "parameters.lr.step", "unknown parameter key 'step'"),
    ("key of another form", space(lr={"distribution": "uniform", "min": 0.1, "max": 0.2,
                                      "q": 0.1}), "parameters.lr.q", "it takes min, max"),
    ("misspelt distribution", space(lr={"distribuion": "uniform", "min": 0.1, "max": 0.2}),
     "parameters.lr.distribuion", "did you mean 'distribution'"),
    ("value and values", space(lr={"value": 0.1, "values": [0.1]}), "parameters.lr.values", ""),
    ("probabilities do not sum to 1", space(dropout={"values": [0.0, 0.2],
                                                     "probabilities": [0.5, 0.6]}),
     "parameters.dropout.probabilities", "sum"),
    ("probabilities of the wrong length", space(dropout={"values": [0.0, 0.2],
                                                         "probabilities": [1.0]}),
     "parameters.dropout.probabilities", "one probability per value"),
    ("sigma <= 0", space(weight_decay={"distribution": "log_normal", "mu": -7, "sigma": 0}),
     "parameters.weight_decay.sigma", "> 0"),
    ("q <= 0", space(dropout={"distribution": "q_uniform", "min": 0, "max": 0.5, "q": 0}),
     "parameters.dropout.q", "> 0"),
    ("int_uniform with a float", space(dense={"distribution": "int_uniform", "min": 1.5,
                                              "max": 9}), "parameters.dense.min", "integer"),
    ("continuous draws for an int field", space(dense={"distribution": "uniform", "min": 16,
                                                       "max": 64}),
     "parameters.dense.distribution", "int_uniform"),
    ("fractional q for an int field", space(dense={"distribution": "q_uniform", "min": 16,
                                                   "max": 64, "q": 0.5}),
     "parameters.dense.q", "integer"),
    ("numbers for a string field", space(conv_activation={"distribution": "uniform", "min": 0,
                                                          "max": 1}),
     "parameters.conv_activation.distribution", "values"),
    ("not a mapping", space(lr=0.001), "parameters.lr", "mapping"),
    ("model as a parameter", space(model={"value": "finetune"}), "parameters.model", "top-level"),
    ("unknown model", {**space(lr={"value": 1e-3}), "model": "vit"}, "model", "scratch_cnn"),
    ("unknown method", {**space(lr={"value": 1e-3}), "method": "hyperopt"}, "method", "bayes"),
    ("missing method", {"parameters": {"lr": {"value": 1e-3}}}, "method", "missing"),
    ("bayes with nothing to search", space("bayes", lr={"value": 1e-3}), "parameters",
     "varies"),
    ("duplicate values", space(filters={"values": [16, 16.0]}), "parameters.filters.values",
     "twice"),
    ("fixed values that clash", space(epochs={"value": 2}, warmup_epochs={"value": 3}),
     "parameters", "warmup_epochs"),
    ("run_cap < 1", {**space(lr={"value": 1e-3}), "run_cap": 0}, "run_cap", ">= 1"),
]


@pytest.mark.parametrize("raw, key, detail", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_spaces_are_refused_naming_the_key(raw, key, detail):
    with pytest.raises(SpaceError) as info:
        load_space(raw)
    message = str(info.value)
    assert message.startswith(key), message
    assert detail in message, message
    assert isinstance(info.value, ValueError)


def test_missing_file_and_bad_yaml_are_refused(tmp_path):
    with pytest.raises(SpaceError, match="does not exist"):
        load_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [bayes\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(bad)


# ---------------------------------------------------------------------------------------------
# What a W&B user brings


def test_wandb_launch_keys_are_accepted_and_yaml_number_strings_read(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "program: train.py\nproject: inat\nentity: me\ncommand: [python, train.py]\n"
        "name: s\ndescription: d\nmethod: random\nrun_cap: 5\n"
        "metric: {name: val_loss, goal: minimize, target: 0.1}\n"
        "parameters:\n"
        "  lr: {distribution: log_uniform_values, min: 1e-4, max: 1e-2}\n"  # YAML 1.1: strings
        "  epochs: {value: 27}\n"
        "early_terminate: {type: hyperband, max_iter: 27, s: 2, eta: 3, strict: true}\n")
    spec = load_space(path)
    assert spec.parameters["lr"].min == 1e-4 and spec.parameters["lr"].max == 1e-2
    assert (spec.metric, spec.mode, spec.run_cap, spec.name) == ("val_loss", "min", 5, "s")
    assert spec.early_terminate["min_iter"] == 3  # W&B: brackets at 27 / 3**k, k = 1..s


def test_missing_goal_follows_the_metric():
    assert load_space({**space(lr={"value": 1e-3}), "metric": {"name": "val_loss"}}).mode == "min"
    assert load_space({**space(lr={"value": 1e-3}), "metric": {"name": "val_acc"}}).mode == "max"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_spaces_load_and_convert(path):
    spec = load_space(path)
    assert spec.method == "bayes" and spec.metric == "val_acc" and spec.mode == "max"
    assert spec.model in ("scratch_cnn", "finetune") and spec.early_terminate["type"] == "hyperband"
    ps = to_tune_param_space(spec)
    for config in optuna_suggestions(spec, n=12):
        RunConfig.from_dict({**{k: v for k, v in ps.items() if not hasattr(v, "sample")},
                             **config})
    assert make_scheduler(spec, max_epochs(spec)) is not None


def test_shipped_spaces_cover_what_the_study_asks():
    names = {p.name for p in SHIPPED}
    assert {"scratch_cnn.yaml", "demo.yaml"} <= names
    full = load_space(REPO / "search_spaces" / "scratch_cnn.yaml")
    assert {"filters", "filter_org", "kernel_size", "conv_activation", "dense", "batch_norm",
            "dropout", "augment", "lr", "weight_decay", "batch_size", "epochs",
            "image_size"} <= set(full.parameters)
    assert (7, 5, 5, 3, 3) in full.parameters["kernel_size"].values
    demo = load_space(REPO / "search_spaces" / "demo.yaml")
    # CPU-sized: 32 px, a short budget, and ASHA rungs below it so early stopping shows
    assert demo.parameters["image_size"].value == 32 and max_epochs(demo) <= 8
    assert demo.early_terminate["min_iter"] < max_epochs(demo)
    ft = load_space(REPO / "search_spaces" / "resnet50_finetune.yaml")
    assert ft.model == "finetune" and {"head_only", "full", "gradual", "freeze_until:layer3"} <= set(
        ft.parameters["strategy"].values)


def test_spec_round_trips_through_yaml(tmp_path):
    for path in SHIPPED:
        spec = load_space(path)
        saved = tmp_path / "space.yaml"
        saved.write_text(yaml.safe_dump(spec_to_dict(spec), sort_keys=False))
        assert load_space(saved) == spec


def test_override_fixes_a_parameter():
    spec = load_space(REPO / "search_spaces" / "demo.yaml")
    fixed = override(spec, {"epochs": 2, "lr": 1e-3})
    assert fixed.parameters["lr"].is_constant and fixed.parameters["lr"].value == 1e-3
    assert max_epochs(fixed) == 2
    with pytest.raises(SpaceError, match="parameters.filters"):
        override(spec, {"filters": 0})


# ---------------------------------------------------------------------------------------------
# Searchers and schedulers


def test_bayes_gives_a_seeded_tpe_optuna_search_that_takes_the_space():
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    spec = load_space(REPO / "search_spaces" / "scratch_cnn.yaml")
    searcher = make_search_alg(spec, seed=7, max_concurrent=None)
    assert isinstance(searcher, OptunaSearch)
    assert isinstance(searcher._sampler, optuna.samplers.TPESampler)
    assert (searcher.metric, searcher.mode) == ("val_acc", "max")

    runs = [optuna_suggestions(spec, n=12, seed=s) for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]  # the seed reaches the sampler
    swept = set(spec.sampled())
    for config in runs[0]:
        assert set(config) == swept
        assert 1e-4 <= config["lr"] <= 3e-3
        assert config["filters"] in (16, 32, 64)
        assert config["kernel_size"] in (3, 5, [7, 5, 5, 3, 3])  # labels mapped back

    limited = make_search_alg(spec, seed=7, max_concurrent=2)
    assert isinstance(limited, ConcurrencyLimiter) and isinstance(limited.searcher, OptunaSearch)


def test_bayes_startup_trials_follow_run_cap():
    spec = load_space(REPO / "search_spaces" / "demo.yaml")  # run_cap 6
    assert make_search_alg(spec, seed=0)._sampler._n_startup_trials == 2
    assert make_search_alg(spec, seed=0, n_startup_trials=5)._sampler._n_startup_trials == 5


ALL_FORMS = dict(
    lr={"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
    warmup_epochs={"distribution": "uniform", "min": 0, "max": 1},
    dense={"distribution": "int_uniform", "min": 32, "max": 64},
    dropout={"distribution": "q_uniform", "min": 0, "max": 0.5, "q": 0.1},
    color_jitter={"distribution": "inv_log_uniform_values", "min": 0.01, "max": 0.5},
    momentum={"distribution": "log_uniform", "min": -1, "max": -0.1},
    backbone_lr_factor={"distribution": "inv_log_uniform", "min": 0.1, "max": 3},
    batch_size={"distribution": "q_log_uniform_values", "min": 16, "max": 256, "q": 16},
    weight_decay={"distribution": "log_normal", "mu": -7, "sigma": 1},
    label_smoothing={"distribution": "q_normal", "mu": 0.5, "sigma": 0.05, "q": 0.01},
    image_size={"distribution": "q_log_normal", "mu": math.log(64), "sigma": 0.1, "q": 8},
    filters={"values": [16, 32], "probabilities": [0.9, 0.1]},
    kernel_size={"values": [3, [7, 5, 5, 3, 3]]},
    optimizer={"values": ["adamw", "sgd"]},
    epochs={"value": 6},
)


def test_optuna_takes_every_form_and_trials_get_wandb_values(caplog):
    from ray.tune.search.optuna import OptunaSearch

    spec = load_space(space("bayes", **ALL_FORMS))
    ps = to_tune_param_space(spec)
    OptunaSearch.convert_search_space(ps)  # raises on any domain Optuna cannot take

    with caplog.at_level(logging.WARNING, logger="inat_tune.tune.search"):
        configs = optuna_suggestions(spec, n=25)
    warned = caplog.text
    for key in ("weight_decay", "label_smoothing", "image_size", "batch_size", "filters"):
        assert f"parameters.{key}:" in warned
    for key in ("lr", "dense", "dropout", "kernel_size", "optimizer"):
        assert f"parameters.{key}:" not in warned  # Optuna-native: nothing lost, no noise

    for c in configs:
        RunConfig.from_dict({**c, "epochs": 6})
        assert type(c["batch_size"]) is int and c["batch_size"] % 16 == 0
        assert type(c["image_size"]) is int and c["image_size"] % 8 == 0
        assert c["weight_decay"] > 0 and abs(math.log(c["weight_decay"]) + 7) < 4.8
        assert abs(c["label_smoothing"] / 0.01 - round(c["label_smoothing"] / 0.01)) < 1e-6
        assert 32 <= c["dense"] <= 64 and type(c["dense"]) is int
        assert abs(c["dropout"] / 0.1 - round(c["dropout"] / 0.1)) < 1e-6
        assert 0.01 <= c["color_jitter"] <= 0.5
        assert math.exp(-1) <= c["momentum"] <= math.exp(-0.1)
        assert math.exp(-3) <= c["backbone_lr_factor"] <= math.exp(-0.1)
        assert c["kernel_size"] in (3, [7, 5, 5, 3, 3])


def test_random_and_grid_use_a_seeded_basic_variant_generator():
    from ray.tune.search import BasicVariantGenerator

    for method, params in (("random", {"lr": {"min": 0.001, "max": 0.01}}),
                           ("grid", {"filters": {"values": [16, 32]}})):
        alg = make_search_alg(load_space(space(method, **params)), seed=3, max_concurrent=2)
        assert isinstance(alg, BasicVariantGenerator) and alg.max_concurrent == 2


def test_scheduler_is_asha_from_early_terminate():
    from ray.tune.schedulers import ASHAScheduler

    spec = load_space(REPO / "search_spaces" / "scratch_cnn.yaml")
    sched = make_scheduler(spec, max_epochs(spec))
    assert isinstance(sched, ASHAScheduler)
    assert sched._time_attr == "training_iteration" and sched._max_t == 10
    assert (sched.metric, sched._mode) == ("val_acc", "max")
    bracket = sched._brackets[0]
    assert bracket.rf == 2
    assert sorted(m for m, _ in bracket._rungs) == [2, 4, 8]  # grace period 2, halving
    assert make_scheduler(load_space(space(lr={"value": 1e-3})), 10) is None
    with pytest.raises(SpaceError, match="early_terminate.min_iter"):
        make_scheduler(spec, 1)


def test_max_epochs_reads_the_epochs_parameter():
    assert max_epochs(load_space(space(epochs={"values": [5, 12]}))) == 12
    assert max_epochs(load_space(space(epochs={"min": 2, "max": 9}))) == 9
    assert max_epochs(load_space(space(lr={"value": 1e-3}))) == RunConfig().epochs


def test_loading_does_not_import_ray_or_optuna():
    code = ("import sys; from inat_tune.tune.space import load_space, override, tpe_conversions; "
            f"s = load_space({str(SHIPPED[0])!r}); tpe_conversions(override(s, {{'epochs': 2}})); "
            "bad = [m for m in ('ray', 'optuna') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_pickled_space_and_searcher_name_the_search_module():
    """Ray's experiment checkpoints pickle these objects: their classes must live at the
    stable top-level path --resume imports again."""
    from inat_tune.tune import search

    spec = load_space(space("bayes", **ALL_FORMS))
    ps = to_tune_param_space(spec)
    kinds = {type(ps["weight_decay"]), type(ps["kernel_size"]), type(ps["filters"].sampler),
             type(make_search_alg(spec, seed=0))}
    assert {c.__name__ for c in kinds} == {"MappedFloat", "MappedCategorical", "WeightedChoice",
                                           "WandbOptunaSearch"}
    for cls in kinds:
        assert cls.__module__ == "inat_tune.tune.search" and "." not in cls.__qualname__
        assert getattr(search, cls.__qualname__) is cls
        assert b"inat_tune.tune.search" in pickle.dumps(cls)


def test_weighted_choice_rests_on_rays_uniform_sampler_api():
    """WeightedChoice relies on Ray DeveloperAPI: ray.tune.search.sample.Uniform, which
    OptunaSearch.convert_search_space turns into a categorical, and Domain.sample passing a
    numpy-like random_state with choice(p=...). If Ray changes either, this fails by name."""
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.search.sample import Categorical

    try:
        from ray.tune.search.sample import Uniform
    except ImportError as e:  # pragma: no cover - only on a Ray upgrade
        pytest.fail(f"ray.tune.search.sample.Uniform is gone ({e}): WeightedChoice needs a new base")
    from inat_tune.tune.search import WeightedChoice

    assert issubclass(WeightedChoice, Uniform)
    dom = Categorical(["a", "b", "c"])
    dom.set_sampler(WeightedChoice([0.0, 1.0, 0.0]))
    converted = OptunaSearch.convert_search_space({"x": dom})
    assert list(converted["x"].choices) == ["a", "b", "c"], (
        "OptunaSearch no longer converts a Categorical whose sampler is a "
        "ray.tune.search.sample.Uniform subclass (WeightedChoice)")
    assert dom.sample(size=50, random_state=np.random.default_rng(0)) == ["b"] * 50
    assert dom.sample(random_state=np.random.RandomState(0)) == "b"  # legacy numpy rng
    assert dom.sample() == "b"  # no seed: Ray passes numpy's global rng


def test_param_space_and_searcher_pickles_load_in_a_fresh_process(tmp_path):
    spec = load_space(space("bayes", **ALL_FORMS))
    ps = to_tune_param_space(spec)
    searcher = make_search_alg(spec, seed=0)
    searcher.set_search_properties(None, None, ps)
    searcher.suggest("t0")
    blob = tmp_path / "state.pkl"
    blob.write_bytes(pickle.dumps((ps, searcher)))
    code = ("import pickle, sys, numpy as np; "
            f"ps, s = pickle.loads(open({str(blob)!r}, 'rb').read()); "
            "v = ps['weight_decay'].sample(random_state=np.random.default_rng(0)); "
            "assert v > 0, v; c = s.suggest('t1'); assert c['batch_size'] % 16 == 0, c")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_max_iter_must_be_the_trials_epochs():
    """W&B's max_iter is where the brackets count down from; ASHA's last rung is the epochs."""
    ok = load_space({**space(epochs={"value": 9}), "early_terminate":
                     {"type": "hyperband", "max_iter": 9, "s": 2, "eta": 3}})
    assert ok.early_terminate["min_iter"] == 1
    with pytest.raises(SpaceError, match=r"early_terminate.max_iter: 27, but trials run at most 9 "
                                         r"epochs.*set max_iter: 9 or leave it out"):
        load_space({**space(epochs={"value": 9}), "early_terminate":
                    {"type": "hyperband", "min_iter": 1, "max_iter": 27, "eta": 3}})


@pytest.mark.parametrize("key, form", [("val_fraction", {"values": [0.1, 0.2]}),
                                       ("split_seed", {"distribution": "int_uniform", "min": 0, "max": 3})])
def test_split_cannot_be_searched(key, form):
    with pytest.raises(SpaceError, match=rf"parameters.{key}: the validation split is one per sweep.*"
                                         rf"top level of the space file or pass --{key.replace('_', '-')}"):
        load_space(space(lr={"value": 1e-3}, **{key: form}))


def test_split_is_a_sweep_level_setting():
    spec = load_space({**space(lr={"value": 1e-3}), "val_fraction": 0.25, "split_seed": 3})
    assert (spec.val_fraction, spec.split_seed) == (0.25, 3)
    assert "val_fraction" not in spec.parameters
    assert load_space(spec_to_dict(spec)) == spec  # round trip through space.yaml
    legacy = load_space(space(lr={"value": 1e-3}, val_fraction={"value": 0.3}))
    assert legacy.val_fraction == 0.3 and "val_fraction" not in legacy.parameters
    assert with_split(spec, split_seed=5).split_seed == 5
    with pytest.raises(SpaceError, match="val_fraction"):
        load_space({**space(lr={"value": 1e-3}), "val_fraction": 1.5})
    with pytest.raises(SpaceError, match="give it once"):
        load_space({**space(lr={"value": 1e-3}, split_seed={"value": 1}), "split_seed": 2})
    ps = to_tune_param_space(spec)  # every trial gets the sweep's split
    assert (ps["val_fraction"], ps["split_seed"]) == (0.25, 3)
