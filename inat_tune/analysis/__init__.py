"""Experiment folders -> pandas, without Ray: one row per trial, one row per epoch, and the
tables a report is made of (per-value accuracy, correlation + importance, cost, ASHA rungs).

In three modules, by concern: :mod:`.load` reads experiments into tables (through
:mod:`inat_tune.experiment`, the one reader of the folders, and ``load_space`` for
``space.yaml``), :mod:`.tables` computes the summary tables, :mod:`.insights` words them. The
public names are all importable from here (``from inat_tune.analysis import load_results``).

Status of a trial (column ``status``): experiment's ``finished`` / ``errored`` /
``unfinished`` (see :mod:`inat_tune.experiment`), except that a finished trial that ran fewer
epochs than its config's ``epochs`` (default RunConfig's) is ``stopped_early`` (ASHA stopped it).

The best trial (:func:`best_trial`) is the one ``inat-tune evaluate`` takes: the rule is
:func:`inat_tune.experiment.choose_best` (finished trials only, ties to the first created).
"""

from .insights import LOW_IMPORTANCE, ROUGH_TRIALS, finite, fmt_importance, fmt_metric, fmt_p, fmt_pct, \
    fmt_rho, fmt_seconds, fmt_value, insights, metric_label, strength
from .load import CONFIG_PREFIX, STATUSES, STOPPED_EARLY, ExperimentsArg, ParamInfo, SpaceInfo, \
    experiment_labels, experiment_space, infer_space, is_number, load_experiments, load_history, \
    load_results, read_space, resolve_space, space_info
from .tables import MIN_TRIALS, RF_SEED, RF_TREES, best_trial, category_table, comparison_table, \
    cost_summary, cost_table, epochs_to_fraction, first_value, importance_table, rung_table, rungs, \
    scored, swept_params

__all__ = ["ParamInfo", "SpaceInfo", "STATUSES", "STOPPED_EARLY", "CONFIG_PREFIX", "ExperimentsArg",
           "MIN_TRIALS", "RF_TREES", "RF_SEED", "LOW_IMPORTANCE", "ROUGH_TRIALS",
           "load_experiments", "load_results", "load_history", "read_space", "infer_space",
           "resolve_space", "space_info", "experiment_space", "experiment_labels",
           "swept_params", "scored", "category_table", "importance_table", "cost_summary",
           "cost_table", "rung_table", "rungs", "best_trial", "comparison_table",
           "epochs_to_fraction", "first_value", "insights", "strength", "metric_label",
           "fmt_metric", "fmt_rho", "fmt_importance", "fmt_seconds", "fmt_p", "fmt_pct",
           "fmt_value", "finite", "is_number"]
