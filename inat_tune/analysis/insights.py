"""Findings of a sweep as plain sentences, each number taken from a table of
:mod:`inat_tune.analysis.tables`, and the formatters the report prints those tables with (so a
number reads the same in a sentence and in a table)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from .load import CONFIG_PREFIX, SpaceInfo, resolve_space
from .tables import MIN_TRIALS, best_trial, category_table, cost_summary, importance_table, scored, \
    swept_params

LOW_IMPORTANCE = 0.05  # below this, gaps between a categorical's values are called confounded
ROUGH_TRIALS = 20  # fewer than this: the importance ranking is called a rough guide


def finite(x: Any) -> bool:
    """``x`` converts to a finite float (a number, numpy's, or a numeric string)."""
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt_metric(x: float) -> str:
    return "-" if x is None or not finite(x) else f"{x:.4f}"


def fmt_rho(x: float) -> str:
    return "-" if x is None or not finite(x) else f"{x:+.2f}"


def fmt_importance(x: float) -> str:
    return "-" if x is None or not finite(x) else f"{x:.3f}"


def fmt_seconds(x: float) -> str:
    """Whole seconds from 100 s up, tenths below (a tiny CPU trial costs ~1 s)."""
    return "-" if x is None or not finite(x) else f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}"


def fmt_p(x: float) -> str:
    return "-" if x is None or not finite(x) else ("<0.001" if x < 0.001 else f"{x:.3f}")


def fmt_pct(x: float) -> str:
    return "-" if x is None or not finite(x) else f"{x:.1f}"


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


def strength(rho: float, n: int) -> str:
    """An honest word for a Spearman rho: too few trials / weak / moderate / strong."""
    if n < MIN_TRIALS:
        return "too few trials to say"
    if rho is None or not math.isfinite(rho):
        return "no correlation can be computed"
    a = abs(rho)
    return "weak" if a < 0.3 else "moderate" if a < 0.6 else "strong"


def insights(df: pd.DataFrame, space: SpaceInfo | Mapping[str, Any] | str | Path | None = None,
             importance: pd.DataFrame | None = None, prefer: str | None = None) -> list[str]:
    """Findings of a sweep in plain sentences, each number taken from :func:`category_table`,
    :func:`importance_table` (pass it when already computed), :func:`cost_table`, or the trial
    table (best configuration: :func:`best_trial`, finished trials only; ``prefer`` breaks a
    tie as there). Correlations come with a qualifier (weak < 0.3 <= moderate < 0.6 <= strong
    |rho|, and "could be chance" when p >= 0.05), and no claim is made from fewer than
    MIN_TRIALS scored trials."""
    space = resolve_space(space, df)
    target, label = space.target, metric_label(space)
    out: list[str] = []
    d = scored(df, target)
    n = len(d)
    b = best_trial(df, space, prefer=prefer)
    if b is not None:
        cfg = ", ".join(f"{p.name}={fmt_value(b[CONFIG_PREFIX + p.name])}" for p in swept_params(df, space))
        out.append(f"Best trial {b['trial_id']} ({b['status']}, {b['epochs_run']} of "
                   f"{b['epochs_budget']} epochs): {label} {fmt_metric(b[target])}"
                   + (f" at epoch {b['best_epoch']}" if target == "best_val_acc" else "")
                   + (f"; {cfg}." if cfg else "."))
    elif n:  # trials reported, none finished: the best trial is only named once one has
        out.append(f"No trial has finished yet: {n} of {len(df)} trials reported {space.metric}, "
                   "none of them finished, so no best trial is named.")
    else:
        out.append(f"No trial reported {space.metric}: nothing to analyse yet "
                   f"({len(df)} trials, {int((df['status'] == 'errored').sum())} errored).")
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
        ranked_p = bool(len(rank)) and finite(rank["importance"].iloc[0])
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
