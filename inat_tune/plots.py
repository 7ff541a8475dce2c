"""Figures of a sweep (PNG, matplotlib's Agg canvas, no pyplot state): accuracy vs creation
order, parallel coordinates, correlation + importance, top-k learning curves, ASHA rungs, and
the best learning curve of each experiment side by side.

Every function takes the tables of :mod:`inat_tune.analysis`, writes one PNG and returns its
path; none reads an experiment folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .analysis import CONFIG_PREFIX, SpaceInfo, best_trial, cost_summary, fmt_value, metric_label, \
    rung_table, scored, swept_params

DPI = 130
_STATUS_STYLE = {  # marker, colour, legend label
    "finished": ("o", "tab:blue", "finished"),
    "stopped_early": ("v", "tab:orange", "stopped early (ASHA)"),
    "unfinished": ("s", "tab:gray", "unfinished"),
    "errored": ("X", "tab:red", "errored after a result"),
}


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)  # Agg explicitly: no display, no global backend switch
    return fig


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    fig.savefig(out, bbox_inches="tight")
    return out


def _empty(out: str | Path, title: str, message: str) -> Path:
    fig = _figure(6, 2.5)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="0.3")
    return _save(fig, out)


# ---------------------------------------------------------------------------------------------


def plot_accuracy_vs_created(df: pd.DataFrame, space: SpaceInfo, out: str | Path) -> Path:
    """Each trial's best metric against its creation order, with the best-so-far line
    (W&B's "accuracy vs created"). Errored trials are marked on the x axis."""
    target, label = space.target, metric_label(space)
    title = f"{label} of each trial, in creation order"
    if scored(df, target).empty:
        return _empty(out, title, "no trial has reported a result yet")
    x = np.arange(1, len(df) + 1)
    y = df[target].to_numpy(dtype=float)
    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot()
    for status, (marker, colour, name) in _STATUS_STYLE.items():
        m = (df["status"] == status).to_numpy() & np.isfinite(y)
        if m.any():
            ax.scatter(x[m], y[m], marker=marker, color=colour, s=42, zorder=3,
                       label=f"{name} ({int(m.sum())})", edgecolor="white", linewidth=0.6)
    finite = np.isfinite(y)
    other = finite & ~df["status"].isin(list(_STATUS_STYLE)).to_numpy()
    if other.any():  # any other status with a result is drawn too: no trial is left out
        ax.scatter(x[other], y[other], marker="D", color="tab:purple", s=36, zorder=3,
                   label=f"other status ({int(other.sum())})", edgecolor="white", linewidth=0.6)
    lo, hi = float(np.min(y[finite])), float(np.max(y[finite]))
    pad = max((hi - lo) * 0.08, 0.01)
    err = (df["status"] == "errored").to_numpy() & ~finite
    if err.any():
        ax.scatter(x[err], np.full(err.sum(), lo - pad * 0.5), marker="x", color="tab:red", s=45,
                   zorder=3, label=f"errored, no result ({int(err.sum())})")
    best = pd.Series(np.where(finite, y, np.nan))
    best = (best.cummax() if space.mode == "max" else best.cummin()).to_numpy()
    ax.step(x, best, where="post", color="black", lw=1.8, label="best so far", zorder=2)
    b = best_trial(df, space)
    if b is not None:  # None: trials reported, none finished yet
        i = int(np.flatnonzero(df["trial_id"].to_numpy() == b["trial_id"])[0])
        right = x[i] > (len(df) + 1) / 2  # keep the label inside the axes
        ax.annotate(f"best: {b['trial_id']} ({b[target]:.4f})", (x[i], y[i]), xytext=(-8 if right else 8, 9),
                    textcoords="offset points", fontsize=8.5, ha="right" if right else "left")
    ax.set_xlabel("trial, in order of creation")
    ax.set_ylabel(label)
    ax.set_ylim(lo - pad, hi + pad * 2)  # every point (and the errored marks at lo - pad / 2) inside
    ax.set_xlim(0.3, len(df) + 0.7)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    # below the axes, not inside them: a legend in the corner hid the trials under it
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, frameon=False)
    ax.set_title(title)
    return _save(fig, out)


def _constant(lo: float, hi: float) -> bool:
    """True when [lo, hi] is one value up to float noise (relative 1e-9): an axis over it
    would only show an offset label such as "1e-10+1e-1"."""
    return hi - lo <= 1e-9 * max(1.0, abs(lo), abs(hi))


def _axis(values: pd.Series, kind: str, log: bool, order: Sequence[Any] = ()) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Values -> positions in [0, 1] and (position, label) ticks for one parallel axis."""
    numeric = kind == "numeric" and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                                        for v in values)
    if not numeric:  # categories: evenly spaced, in the space's order
        keys = [repr(v) for v in values]
        cats = [repr(v) for v in order if repr(v) in keys]
        cats += [k for k in dict.fromkeys(keys) if k not in cats]
        label = {repr(v): fmt_value(v) for v in list(order) + list(values)}
        pos = {k: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, k in enumerate(cats)}
        return np.array([pos[k] for k in keys]), [(pos[k], label[k]) for k in cats]
    from matplotlib.ticker import LogLocator, MaxNLocator

    v = values.to_numpy(dtype=float)
    log = log and bool((v > 0).all())
    t = np.log10(v) if log else v
    lo, hi = float(t.min()), float(t.max())
    if _constant(lo, hi):  # one value (up to float noise): one label, the value itself
        return np.full(len(v), 0.5), [(0.5, fmt_value(float(v[0])))]
    if log:
        ticks = LogLocator(subs=(1.0, 2.0, 5.0)).tick_values(10 ** lo, 10 ** hi)
        ticks = [np.log10(k) for k in ticks if lo - 1e-9 <= np.log10(k) <= hi + 1e-9]
        if len(ticks) > 6:
            ticks = ticks[:: math.ceil(len(ticks) / 6)]
    else:
        ticks = [k for k in MaxNLocator(5).tick_values(lo, hi) if lo - 1e-9 <= k <= hi + 1e-9]
    # the range's ends are labelled too, unless a round tick is already close (8 % of the axis)
    ticks = sorted(set(ticks) | {end for end in (lo, hi)
                                 if all(abs(end - k) > 0.08 * (hi - lo) for k in ticks)})
    scale = lambda a: (np.asarray(a) - lo) / (hi - lo)  # noqa: E731
    return scale(t), [(float(scale(k)), fmt_value(float(10 ** k if log else k))) for k in ticks]


def plot_parallel_coordinates(df: pd.DataFrame, space: SpaceInfo, out: str | Path) -> Path:
    """One vertical axis per swept hyperparameter, then the metric; one line per trial
    coloured by the metric (colourbar). Categorical axes: evenly spaced labelled values;
    numeric axes: min-max scaled, log10 for log-distributed parameters."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.ticker import ScalarFormatter

    target, label = space.target, metric_label(space)
    params = swept_params(df, space)
    d = scored(df, target)
    title = "parallel coordinates of the swept hyperparameters"
    if d.empty or not params:
        return _empty(out, title, "no swept hyperparameter" if not params else "no result yet")
    d = d.sort_values(target, ascending=space.mode == "max", kind="stable")  # best drawn last
    names = [p.name for p in params] + [label]
    cols = []
    for p in params:
        cols.append(_axis(d[CONFIG_PREFIX + p.name], p.kind, p.log, p.values))
    cols.append(_axis(d[target].astype(float), "numeric", False))
    n = len(names)
    fig = _figure(max(6.5, 1.9 * n + 1.5), 4.8)
    ax = fig.add_subplot()
    y = d[target].to_numpy(dtype=float)
    const = _constant(float(y.min()), float(y.max()))
    # a constant metric gets a range around its value, so the colourbar is not a 1e-9 sliver
    half = max(abs(float(y.min())) * 0.05, 0.01) if const else 0.0
    norm = Normalize(vmin=float(y.min()) - half, vmax=float(y.max()) + half)
    cmap = colormaps["viridis" if space.mode == "max" else "viridis_r"]
    xs = np.arange(n)
    stack = np.column_stack([c[0] for c in cols])
    for row, val in zip(stack, y):
        ax.plot(xs, row, color=cmap(norm(val)), lw=1.6, alpha=0.85, zorder=2)
    for i, (_, ticks) in enumerate(cols):
        ax.plot([i, i], [0, 1], color="0.2", lw=1.0, zorder=1)
        side = 1 if i == n - 1 else -1  # the metric axis is labelled on its right, away from the lines
        for pos, text in ticks:
            ax.plot([i + 0.025 * side, i], [pos, pos], color="0.2", lw=1.0, zorder=1)
            ax.text(i + 0.04 * side, pos, text, ha="left" if side > 0 else "right", va="center",
                    fontsize=8, zorder=4,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    axis_names = [f"{p.name}{' (log)' if p.log else ''}" for p in params] + [label]
    ax.set_xticks(xs, axis_names, fontsize=9.5)
    ax.xaxis.tick_top()
    ax.tick_params(axis="x", length=0, pad=8)
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_xlim(-0.45, n - 1 + 0.45)
    ax.set_ylim(-0.04, 1.04)
    cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=label, pad=0.02, fraction=0.04)
    if const:  # its single value, as the metric axis shows it
        cb.set_ticks([float(y[0])], labels=[fmt_value(float(y[0]))])
    else:
        cb.formatter = ScalarFormatter(useOffset=False)  # plain values, never "1e-10+1e-1"
        cb.update_ticks()
    missing = len(df) - len(d)
    ax.set_title(f"{title} ({len(d)} trials"
                 + (f"; {missing} without a result not shown" if missing else "") + ")",
                 fontsize=10.5, pad=28)
    return _save(fig, out)


def plot_importance(table: pd.DataFrame, space: SpaceInfo, out: str | Path) -> Path:
    """Random-forest importance and Spearman rho of each hyperparameter, side by side."""
    label = metric_label(space)
    title = f"what drives {label}"
    if table.empty or table["importance"].isna().all():
        return _empty(out, title, "too few trials (or no variation) to estimate importance")
    t = table.iloc[::-1]  # most important on top
    fig = _figure(8.5, 0.55 * len(t) + 1.6)
    a1, a2 = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1, 1], "wspace": 0.08})
    yy = np.arange(len(t))
    a1.barh(yy, t["importance"].fillna(0), color="tab:purple", height=0.6)
    for y_, v in zip(yy, t["importance"]):
        a1.text(v + 0.01, y_, f"{v:.3f}", va="center", fontsize=8.5)
    a1.set_xlim(0, max(0.25, float(t["importance"].max()) * 1.18))  # room for the labels
    a1.set_yticks(yy, t["param"], fontsize=9.5)
    a1.set_xlabel("random-forest importance (sums to 1)")
    rho = t["spearman"].to_numpy(dtype=float)
    a2.barh(yy, np.nan_to_num(rho), color=["tab:green" if r > 0 else "tab:red" for r in np.nan_to_num(rho)],
            height=0.6)
    for y_, r in zip(yy, rho):
        if np.isfinite(r):
            a2.text(r + (0.03 if r >= 0 else -0.03), y_, f"{r:+.2f}", va="center",
                    ha="left" if r >= 0 else "right", fontsize=8.5)
        else:
            a2.text(0.03, y_, "n/a (unordered)", va="center", fontsize=8, color="0.4")
    a2.axvline(0, color="0.3", lw=0.8)
    a2.set_xlim(-1.15, 1.15)
    a2.set_xlabel(f"Spearman rho with {label}")
    for a in (a1, a2):
        a.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{title} (n = {int(t['n'].iloc[0])} trials)", fontsize=11)
    return _save(fig, out)


def plot_learning_curves(df: pd.DataFrame, history: pd.DataFrame, space: SpaceInfo,
                         out: str | Path, top_k: int = 5) -> Path:
    """val_acc per epoch of the top-k trials (by the target); the others in light grey.

    The title counts the trials actually drawn ("top 3 of 8", "all 3 trials"). Each top trial
    has its own line style and marker, markers shrinking with rank, so a curve identical to a
    better one still shows under it; the legend names the curves that are identical."""
    target = space.target
    d = scored(df, target)
    if d.empty or history.empty or "val_acc" not in history:
        return _empty(out, "validation accuracy per epoch", "no epoch has been reported yet")
    top = d.sort_values(target, ascending=space.mode == "min", kind="stable").head(top_k)
    title = (f"validation accuracy per epoch, all {len(top)} trial{'s' if len(top) != 1 else ''}"
             if len(top) == len(d) else f"validation accuracy per epoch, top {len(top)} of {len(d)} trials")
    fig = _figure(7.5, 4.4)
    ax = fig.add_subplot()
    others = set(d["trial_id"]) - set(top["trial_id"])
    for tid in others:
        h = history[history["trial_id"] == tid]
        ax.plot(h["epoch"], h["val_acc"], color="0.75", lw=1, marker="o", ms=2.5, zorder=1)
    if others:
        ax.plot([], [], color="0.75", lw=1, marker="o", ms=2.5, label=f"other trials ({len(others)})")
    params = swept_params(df, space)
    curves: dict[tuple, int] = {}  # (epochs, values) -> rank of the first trial with that curve
    counts: dict[tuple, int] = {}
    styles, markers = ("-", "--", "-.", ":"), ("o", "s", "^", "D", "v", "P", "X", "*")
    for rank, (_, r) in enumerate(top.iterrows(), start=1):
        h = history[history["trial_id"] == r["trial_id"]]
        cfg = ", ".join(f"{p.name}={fmt_value(r[CONFIG_PREFIX + p.name])}" for p in params[:4])
        stop = " (stopped early)" if r["status"] == "stopped_early" else ""
        key = (tuple(h["epoch"]), tuple(np.round(h["val_acc"].to_numpy(dtype=float), 9)))
        same = f" [curve identical to #{curves[key]}]" if key in curves else ""
        curves.setdefault(key, rank)
        ax.plot(h["epoch"], h["val_acc"], marker=markers[(rank - 1) % len(markers)],
                ms=max(7.5 - 1.2 * (rank - 1), 2.5), mfc="none" if same else None, mew=1.3,
                ls=styles[(rank - 1) % len(styles)], lw=max(2.6 - 0.4 * (rank - 1), 1.0), zorder=2 + rank,
                label=f"#{rank} {r['trial_id']}{stop}: {cfg}{same}")
        counts[key] = counts.get(key, 0) + 1
    n_same = sum(c for c in counts.values() if c > 1)
    if n_same:
        title += f"; {n_same} curves identical"
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    ax.set_title(title)
    return _save(fig, out)


def plot_asha_rungs(df: pd.DataFrame, space: SpaceInfo, out: str | Path) -> Path:
    """How many trials reached each ASHA rung (epochs 1, 2, 4, ... up to the maximum), and the
    epochs early stopping saved."""
    rt = rung_table(df, space)
    c = cost_summary(df)
    fig = _figure(6.5, 3.8)
    ax = fig.add_subplot()
    xs = np.arange(len(rt))
    ax.bar(xs, rt["trials_reached"], color="tab:cyan", width=0.6)
    for x_, v in zip(xs, rt["trials_reached"]):
        ax.text(x_, v, str(int(v)), ha="center", va="bottom", fontsize=9)
    ax.set_xticks(xs, [f"{int(r)}" for r in rt["rung_epochs"]])
    ax.set_xlabel("rung: epochs run")
    ax.set_ylabel("trials that reached it")
    ax.set_ylim(0, max(1, int(rt["trials_reached"].max())) * 1.18)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.grid(axis="y", alpha=0.3)
    how = "ASHA" if space.early_terminate else "no early stopping configured"
    ax.set_title(f"{how}: {c['stopped_early']} of {c['trials']} trials stopped early; "
                 f"{c['epochs_saved']} of {c['epochs_planned']} planned epochs saved "
                 f"({c['saved_pct']:.1f} %)", fontsize=9.5)
    return _save(fig, out)


def plot_comparison_curves(results: Sequence[pd.DataFrame], histories: Sequence[pd.DataFrame],
                           spaces: Sequence[SpaceInfo], labels: Sequence[str],
                           out: str | Path) -> Path:
    """val_acc per epoch of the best trial of each experiment (e.g. scratch vs fine-tuning)."""
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot()
    drawn = 0
    for df, hist, space, label in zip(results, histories, spaces, labels):
        vspace = SpaceInfo(metric="val_acc", mode="max", params=space.params)
        b = best_trial(df, vspace)
        if b is None:
            continue
        h = hist[(hist["experiment"] == label) & (hist["trial_id"] == b["trial_id"])]
        ax.plot(h["epoch"], h["val_acc"], marker="o", ms=3.5, lw=1.8,
                label=f"{label}: trial {b['trial_id']} (best {b['best_val_acc']:.4f})")
        drawn += 1
    if not drawn:
        return _empty(out, "best trial of each experiment", "no experiment has a result yet")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("best trial of each experiment")
    return _save(fig, out)


__all__ = ["plot_accuracy_vs_created", "plot_parallel_coordinates", "plot_importance",
           "plot_learning_curves", "plot_asha_rungs", "plot_comparison_curves"]
