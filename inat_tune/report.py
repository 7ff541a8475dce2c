"""``inat-tune report EXP [EXP2 ...]``: tables, figures, insights, ``report.md`` and a
self-contained ``report.html`` (figures embedded as base64), written into the experiment's
folder. Several experiments make a comparison, written to a folder of its own (``--out``,
default ``compare-<A>-vs-<B>`` beside the first), with a side-by-side table first (Part B:
training from scratch vs fine-tuning).

Everything the report states comes from :mod:`inat_tune.analysis`; the figures from
:mod:`inat_tune.plots`. The report is built once as a list of blocks, rendered twice (Markdown
and HTML), so both always say the same thing.

A little over 500 lines on purpose: one document, its two renderers and its sections read
best together; the numbers and figures it shows live in analysis/ and plots.py.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from . import analysis as an
from . import plots
from .experiment import ExperimentError

log = logging.getLogger(__name__)

TOP_K = 5  # learning curves of this many best trials
# Figures ``inat-tune evaluate`` / ``explain`` leave in the experiment folder, in reading order.
EVAL_FIGURES = {
    "prediction_grid.png": "Test images with their true and predicted labels (inat-tune evaluate)",
    "confusion_matrix.png": "Confusion matrix on the test set (inat-tune evaluate)",
    "filters.png": "First-layer convolution filters of the best model (inat-tune explain)",
    "feature_maps.png": "First-layer feature maps of one test image (inat-tune explain)",
    "guided_backprop.png": "Guided backpropagation of CONV5 neurons (inat-tune explain)",
}
FIG_PREFIX = "fig_"  # the report's own figures; any other PNG is shown as evaluate/explain output
SYNTHETIC_MARKER = "SYNTHETIC.txt"  # inat_tune.data.synth writes it into generated datasets
_METHODS = {"bayes": "Optuna TPE (bayes)", "random": "random", "grid": "grid"}  # space.yaml's method


# ---------------------------------------------------------------------------------------------
# Document model: blocks rendered to Markdown and HTML


@dataclass
class _Doc:
    root: Path  # folder the report is written to (image links are relative to it)
    blocks: list[tuple] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def ul(self, items: Sequence[str]) -> None:
        if items:
            self.blocks.append(("ul", list(items)))

    def table(self, df: pd.DataFrame, caption: str | None = None) -> None:
        """``df`` of already formatted strings."""
        if caption:
            self.p(caption)
        self.blocks.append(("table", df.astype(str)))

    def img(self, path: Path, caption: str) -> None:
        if Path(path).is_file():
            self.blocks.append(("img", Path(path), caption))


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _render_md(doc: _Doc) -> str:
    out: list[str] = []
    for b in doc.blocks:
        kind = b[0]
        if kind == "h":
            out.append(f"{'#' * b[1]} {b[2]}\n")
        elif kind == "p":
            out.append(f"{b[1]}\n")
        elif kind == "note":
            out.append(f"> **Note.** {b[1]}\n")
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in b[1]) + "\n")
        elif kind == "table":
            df = b[1]
            lines = ["| " + " | ".join(_md_cell(str(c)) for c in df.columns) + " |",
                     "| " + " | ".join("---" for _ in df.columns) + " |"]
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
            out.append("\n".join(lines) + "\n")
        elif kind == "img":
            rel = Path(os.path.relpath(b[1], doc.root)).as_posix()
            out.append(f"![{b[2]}]({rel})\n\n*{b[2]}*\n")
    return "\n".join(out)


_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 max-width:1100px;margin:2rem auto;padding:0 1.2rem;color:#1f2328;line-height:1.5}
h1{border-bottom:2px solid #d0d7de;padding-bottom:.3rem}
h2{border-bottom:1px solid #d0d7de;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:.88rem;display:block;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:left;white-space:nowrap}
th{background:#f6f8fa}
tr:nth-child(even) td{background:#fbfbfc}
figure{margin:1rem 0 1.6rem}
figure img{max-width:100%;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:.9rem}
.note{background:#fff8c5;border-left:4px solid #d4a72c;padding:.6rem .9rem;margin:1rem 0}
li{margin:.25rem 0}
code{background:#f6f8fa;padding:.1rem .3rem;border-radius:4px}
"""


def _inline_html(text: str) -> str:
    """Escape, then the two Markdown inline forms the report uses: `code` and **bold**."""
    s = html.escape(text)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)


def _render_html(doc: _Doc, title: str) -> str:
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    for b in doc.blocks:
        kind = b[0]
        if kind == "h":
            out.append(f"<h{b[1]}>{_inline_html(b[2])}</h{b[1]}>")
        elif kind == "p":
            out.append(f"<p>{_inline_html(b[1])}</p>")
        elif kind == "note":
            out.append(f"<div class=\"note\"><strong>Note.</strong> {_inline_html(b[1])}</div>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "table":
            df = b[1]
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>"
                           for row in df.itertuples(index=False))
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(b[1].read_bytes()).decode("ascii")
            out.append(f"<figure><img alt=\"{html.escape(b[2])}\" src=\"data:image/png;base64,{data}\">"
                       f"<figcaption>{html.escape(b[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Formatted tables (the same formatters as the insights, so the numbers match)


def _fmt_trials(df: pd.DataFrame, space: an.SpaceInfo) -> pd.DataFrame:
    params = an.swept_params(df, space)
    out = pd.DataFrame({"#": range(1, len(df) + 1), "trial": df["trial_id"].astype(str),
                        "status": df["status"],
                        "epochs": [f"{int(a)}/{int(b)}" for a, b in zip(df["epochs_run"], df["epochs_budget"])]})
    for p in params:
        out[p.name] = df[an.CONFIG_PREFIX + p.name].map(an.fmt_value).to_numpy()
    out["best val acc"] = df["best_val_acc"].map(an.fmt_metric).to_numpy()
    out["best epoch"] = df["best_epoch"].map(lambda v: "-" if pd.isna(v) else str(int(v))).to_numpy()
    out["final val acc"] = df["val_acc"].map(an.fmt_metric).to_numpy()
    out["best val loss"] = df["best_val_loss"].map(an.fmt_metric).to_numpy()
    out["params"] = df["trainable_params"].map(lambda v: "-" if pd.isna(v) else f"{int(v):,}").to_numpy()
    gpu = df["gpu_seconds"].fillna(0).sum() > 0
    out["GPU-s" if gpu else "CPU-s"] = df["gpu_seconds" if gpu else "cpu_seconds"].map(an.fmt_seconds).to_numpy()
    out["wall s"] = df["wall_seconds"].map(an.fmt_seconds).to_numpy()
    if df["error"].notna().any():
        out["error"] = df["error"].fillna("").map(lambda s: s[:80]).to_numpy()
    return out


def _fmt_importance(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"rank": t["rank"].astype(int), "hyperparameter": t["param"], "kind": t["kind"],
                         "n": t["n"].astype(int), "importance (RF)": t["importance"].map(an.fmt_importance),
                         "Spearman rho": t["spearman"].map(an.fmt_rho), "p": t["p_value"].map(an.fmt_p),
                         "strength": [an.strength(r, n) if pd.notna(r) or n < an.MIN_TRIALS else "-"
                                      for r, n in zip(t["spearman"], t["n"])]})


def _fmt_categories(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"hyperparameter": t["param"], "value": t["value"].map(an.fmt_value),
                         "n": t["n"].astype(int), "mean": t["mean"].map(an.fmt_metric),
                         "best": t["best"].map(an.fmt_metric)})


def _fmt_cost(c: dict[str, Any]) -> pd.DataFrame:
    rows = [("trials", c["trials"]), ("finished", c["finished"]), ("stopped early (ASHA)", c["stopped_early"]),
            ("errored", c["errored"]), ("unfinished", c["unfinished"]),
            ("epochs run", c["epochs_run"]), ("epochs planned (finished + stopped)", c["epochs_planned"]),
            ("epochs saved by early stopping", c["epochs_saved"]),
            ("epochs saved, %", an.fmt_pct(c["saved_pct"])),
            ("GPU-seconds", an.fmt_seconds(c["gpu_seconds"])),
            ("CPU-seconds", an.fmt_seconds(c["cpu_seconds"])),
            ("trial wall seconds (sum)", an.fmt_seconds(c["wall_seconds"]))]
    return pd.DataFrame(rows, columns=["quantity", "value"])


def _fmt_comparison(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "experiment": t["experiment"], "model": t["model"].map(lambda v: v or "-"),
        "trials": t["trials"].astype(int),
        "best val acc": t["best_val_acc"].map(an.fmt_metric),
        "test acc": t["test_acc"].map(an.fmt_metric),
        "best trial": t["best_trial"].map(lambda v: v or "-"),
        "trainable params (best)": t["trainable_params"].map(lambda v: "-" if pd.isna(v) else f"{int(v):,}"),
        "GPU-s": t["gpu_seconds"].map(an.fmt_seconds), "CPU-s": t["cpu_seconds"].map(an.fmt_seconds),
        "epochs to 90 % of best": t["epochs_to_90pct"].map(lambda v: "-" if v is None or pd.isna(v) else str(int(v))),
    })


def _kv(d: dict[str, Any], floats=an.fmt_value) -> pd.DataFrame:
    """A key/value table; ``floats`` formats the float values (metrics: 4 decimals)."""
    def cell(v: Any) -> str:
        return v if isinstance(v, str) else floats(v) if isinstance(v, float) else an.fmt_value(v)
    return pd.DataFrame([(k, cell(v)) for k, v in d.items()], columns=["key", "value"])


def _per_class(test: dict[str, Any]) -> pd.DataFrame | None:
    """evaluate's per-class accuracy (+ F1 and count when present) as a table."""
    acc = test.get("per_class_accuracy")
    if not isinstance(acc, dict) or not acc:
        return None
    f1, n = test.get("per_class_f1") or {}, test.get("per_class_n") or {}
    return pd.DataFrame({"class": list(acc), "accuracy": [an.fmt_metric(v) for v in acc.values()],
                         "F1": [an.fmt_metric(f1.get(c)) for c in acc],
                         "n": [str(n.get(c, "-")) for c in acc]})


# ---------------------------------------------------------------------------------------------


@dataclass
class _Exp:
    path: Path
    label: str
    df: pd.DataFrame
    history: pd.DataFrame
    space: an.SpaceInfo
    sweep: dict[str, Any]  # sweep.json
    method: str | None  # space.yaml's search method
    test: dict[str, Any] | None
    importance: pd.DataFrame = field(default_factory=pd.DataFrame)


def _read_json(p: Path) -> dict[str, Any] | None:
    try:
        return json.loads(p.read_text()) if p.is_file() else None
    except (OSError, json.JSONDecodeError):
        log.warning("could not read %s", p)
        return None


def _load(paths: Sequence[str | Path]) -> list[_Exp]:
    read = an.load_experiments(paths)  # each folder is read once, here
    labels = an.experiment_labels([x.path for x in read])
    df_all, hist_all = an.load_results(read), an.load_history(read)
    exps = []
    for x, label in zip(read, labels):
        df = df_all[df_all["experiment"] == label].reset_index(drop=True)
        hist = hist_all[hist_all["experiment"] == label].reset_index(drop=True)
        space = an.experiment_space(x, df)
        exps.append(_Exp(x.path, label, df, hist, space, x.sweep, x.space.get("method"),
                         _read_json(x.path / "test_metrics.json"), an.importance_table(df, space)))
    return exps


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-") or "exp"


def _figures(e: _Exp, out: Path, prefix: str, top_k: int) -> dict[str, Path]:
    imp = e.importance
    f = {
        "created": plots.plot_accuracy_vs_created(e.df, e.space, out / f"{prefix}accuracy_vs_created.png"),
        "parallel": plots.plot_parallel_coordinates(e.df, e.space, out / f"{prefix}parallel_coordinates.png"),
        "importance": plots.plot_importance(imp, e.space, out / f"{prefix}importance.png"),
        "curves": plots.plot_learning_curves(e.df, e.history, e.space, out / f"{prefix}learning_curves.png",
                                             top_k=top_k),
        "asha": plots.plot_asha_rungs(e.df, e.space, out / f"{prefix}asha_rungs.png"),
    }
    return f


def _synthetic_note(e: _Exp) -> str | None:
    data = e.sweep.get("data_dir")
    if data and (Path(data) / SYNTHETIC_MARKER).is_file():
        first = (Path(data) / SYNTHETIC_MARKER).read_text().strip().split("\n\n")[0]
        return first.replace("\n", " ")
    return None


def _experiment_section(doc: _Doc, e: _Exp, figs: dict[str, Path], level: int) -> list[str]:
    """Add one experiment's sections to ``doc``; returns its insights."""
    H = level
    space, df = e.space, e.df
    label = an.metric_label(space)
    tested = (e.test or {}).get("trial_id")
    ins = an.insights(df, space, importance=e.importance, prefer=tested)
    note = _synthetic_note(e)
    meta = [f"experiment folder: `{e.path}`"]
    if e.sweep.get("data_dir"):
        meta.append(f"dataset: `{e.sweep['data_dir']}`")
    model = an.first_value(df, an.CONFIG_PREFIX + "model")
    meta.append(f"model: {model or '-'}; search: {_METHODS.get(e.method, '-')}; metric: {space.metric} "
                f"({'maximise' if space.mode == 'max' else 'minimise'}); trials: {len(df)}")
    if e.sweep.get("gpus_per_trial") is not None:
        meta.append(f"resources per trial: {e.sweep.get('cpus_per_trial', '-')} CPU, "
                    f"{e.sweep.get('gpus_per_trial', 0)} GPU")
    doc.ul(meta)
    if note:
        doc.note(note)

    doc.h(H, "Insights")
    doc.ul(ins + _test_insight(e))
    doc.p(f"Accuracies are each trial's {label} over the epochs it ran; trials stopped early ran "
          "fewer epochs, which lowers their numbers. Correlation strength: weak |rho| < 0.3, "
          "moderate < 0.6, strong otherwise; nothing is claimed from fewer than "
          f"{an.MIN_TRIALS} trials.")

    b = an.best_trial(df, space, prefer=tested)
    if b is not None:
        doc.h(H, "Best configuration")
        cfg = {c[len(an.CONFIG_PREFIX):]: b[c] for c in df.columns
               if c.startswith(an.CONFIG_PREFIX) and not _missing(b[c])}
        doc.table(_kv({"trial": b["trial_id"], "status": b["status"],
                       label: an.fmt_metric(b[space.target]), "best epoch": str(b["best_epoch"]),
                       "epochs run": f"{b['epochs_run']}/{b['epochs_budget']}", **cfg,
                       "trial folder": b["path"] or "-"}))
    if e.test:
        doc.h(H, "Test set")
        doc.table(_kv({k: v for k, v in e.test.items() if not isinstance(v, (dict, list))},
                      floats=an.fmt_metric),
                  "From `test_metrics.json` (written by `inat-tune evaluate`):")
        per_class = _per_class(e.test)
        if per_class is not None:
            doc.table(per_class, "Per class on the test set:")

    doc.h(H, "Search progress")
    doc.img(figs["created"], f"{label} of each trial in creation order, with the best so far")
    doc.h(H, "Hyperparameters")
    doc.img(figs["parallel"], f"Parallel coordinates: one line per trial, coloured by {label}")
    imp = e.importance
    if len(imp):
        doc.table(_fmt_importance(imp),
                  f"Importance and correlation with {label}. Importance: impurity-based feature "
                  f"importance of a random forest (scikit-learn RandomForestRegressor, {an.RF_TREES} "
                  f"trees, seed {an.RF_SEED}) predicting it from the config, one-hot categories summed back, as W&B's "
                  "parameter-importance panel does; Spearman rho only for ordered values.")
        doc.img(figs["importance"], "Random-forest importance and Spearman correlation per hyperparameter")
    cats = an.category_table(df, space)
    if len(cats):
        doc.table(_fmt_categories(cats), f"{label} per value of each categorical hyperparameter:")
    doc.h(H, "Learning curves")
    # no count here: write_report's top_k may differ from TOP_K; the figure's title says how many it drew
    doc.img(figs["curves"], "Validation accuracy per epoch of the best trials (how many: the figure's title)")
    doc.h(H, "Cost and early stopping")
    doc.table(_fmt_cost(an.cost_summary(df)))
    rt = an.rung_table(df, space)
    doc.table(rt.rename(columns={"rung_epochs": "rung (epochs)", "trials_reached": "trials that reached it"}),
              "ASHA rungs (min_iter x eta^k):")
    doc.img(figs["asha"], "Trials reaching each ASHA rung")

    extra = [e.path / n for n in EVAL_FIGURES if (e.path / n).is_file()]
    extra += sorted(p for p in e.path.glob("*.png")
                    if not p.name.startswith(FIG_PREFIX) and p.name not in EVAL_FIGURES)
    if extra:
        doc.h(H, "Evaluation and explanation")
        for p in extra:
            doc.img(p, EVAL_FIGURES.get(p.name, p.stem.replace("_", " ")))

    doc.h(H, "All trials")
    doc.table(_fmt_trials(df, space), "In order of creation:")
    return ins


def _test_insight(e: _Exp) -> list[str]:
    """One sentence on the test set, naming the trial evaluate chose and its val score."""
    if not e.test or not an.finite(e.test.get("test_acc")):
        return []
    tid = e.test.get("trial_id")
    row = e.df[e.df["trial_id"] == tid]
    val = (f" (best val accuracy {an.fmt_metric(row['best_val_acc'].iloc[0])})"
           if len(row) and an.finite(row["best_val_acc"].iloc[0]) else "")
    return [f"Test set (held out, evaluated once by `inat-tune evaluate`) on trial {tid or '-'}{val}: "
            f"test accuracy {an.fmt_metric(e.test['test_acc'])}."]


def _missing(v: Any) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _log_wandb(e: _Exp, figs: dict[str, Path]) -> None:
    """Importance table and parallel-coordinates data as W&B tables in the sweep's group;
    best effort: any failure is a warning."""
    try:
        import wandb

        from .tune.wandb_mirror import wandb_mode

        imp = e.importance
        cols = ["trial_id", "status"] + [an.CONFIG_PREFIX + p.name for p in an.swept_params(e.df, e.space)] \
            + [e.space.target]
        pc = e.df[cols].copy()
        for c in pc.columns:  # W&B tables want plain scalars
            pc[c] = pc[c].map(lambda v: an.fmt_value(v) if isinstance(v, tuple) else v)
        pc.columns = [c.removeprefix(an.CONFIG_PREFIX) for c in pc.columns]
        mode = wandb_mode()
        os.environ.setdefault("WANDB_SILENT", "true")
        run = wandb.init(project=e.sweep.get("wandb_project", "inat-tune"), group=e.sweep.get("name", e.label),
                         job_type="report", mode=mode, dir=str(e.path),
                         name=f"{e.label}-report", reinit="finish_previous")
        try:
            run.log({"report/importance": wandb.Table(dataframe=imp.astype({"kind": str})),
                     "report/parallel_coordinates": wandb.Table(dataframe=pc),
                     **{f"report/figure_{k}": wandb.Image(str(v)) for k, v in figs.items()}})
        finally:
            run.finish()
        if mode == "offline":
            print(f"W&B ran offline (no API key); to upload: wandb sync {e.path}/wandb/offline-run-*")
    except Exception as exc:  # noqa: BLE001 - W&B must never break the report
        log.warning("W&B logging of the report failed (the report is written anyway): %s", exc)


def write_report(experiments: Sequence[str | Path] | str | Path, use_wandb: bool | None = None,
                 top_k: int = TOP_K, out: str | Path | None = None) -> Path:
    """Analyse one or more experiment folders and write ``trials.csv``, ``history.csv``, the
    figures (``fig_*.png``), ``report.md`` and a self-contained ``report.html``. Returns the
    path of ``report.md``.

    One experiment: into its own folder (or ``out``). Several: a comparison, into a folder of
    its own (``out``, default ``compare-<A>-vs-<B>`` beside the first experiment); no
    experiment's own files are touched, and ``out`` may not be one of the experiments.

    With several experiments the report starts with a comparison table (best val accuracy,
    test accuracy when ``test_metrics.json`` exists, trainable parameters of the best trial,
    GPU-/CPU-seconds, epochs the best trial needed to reach 90 % of its best val accuracy) and
    the best learning curve of each; then one section per experiment.

    ``use_wandb``: log each experiment's tables and figures to W&B; None: as each experiment
    did (its sweep.json's ``use_wandb``: off after ``sweep --no-wandb``).
    """
    if isinstance(experiments, (str, Path)):
        experiments = [experiments]
    exps = _load(experiments)
    out = report_folder([e.path for e in exps], [e.label for e in exps], out)
    df_all = pd.concat([e.df for e in exps], ignore_index=True)
    hist_all = pd.concat([e.history for e in exps], ignore_index=True)
    df_all.to_csv(out / "trials.csv", index=False)
    hist_all.to_csv(out / "history.csv", index=False)

    doc = _Doc(out)
    several = len(exps) > 1
    title = (f"Sweep report: {exps[0].label}" if not several
             else "Comparison: " + " vs ".join(e.label for e in exps))
    doc.h(1, title)
    doc.p(f"Generated {datetime.now():%Y-%m-%d %H:%M} by `inat-tune report`. Tables: "
          "`trials.csv` (one row per trial), `history.csv` (one row per trial and epoch).")
    all_figs = []
    if several:
        comp = an.comparison_table([e.df for e in exps], [e.history for e in exps], [e.space for e in exps],
                                   [e.label for e in exps], [e.test for e in exps])
        comp.to_csv(out / "comparison.csv", index=False)
        doc.h(2, "Side by side")
        doc.table(_fmt_comparison(comp),
                  "Best val accuracy and test accuracy of each experiment's best trial (by val "
                  "accuracy); epochs to 90 %: the first epoch at which that trial reached 90 % of "
                  "its best val accuracy; seconds: the whole sweep.")
        cmp_fig = plots.plot_comparison_curves([e.df for e in exps], [e.history for e in exps],
                                               [e.space for e in exps], [e.label for e in exps],
                                               out / f"{FIG_PREFIX}comparison_curves.png")
        doc.img(cmp_fig, "Validation accuracy per epoch of the best trial of each experiment")
    for i, e in enumerate(exps):
        prefix = FIG_PREFIX if i == 0 else f"{FIG_PREFIX}{_slug(e.label)}__"
        figs = _figures(e, out, prefix, top_k)
        all_figs.append(figs)
        if several:
            doc.h(2, f"Experiment {e.label}")
        _experiment_section(doc, e, figs, level=3 if several else 2)
        if use_wandb if use_wandb is not None else bool(e.sweep.get("use_wandb", True)):
            _log_wandb(e, figs)

    md = out / "report.md"
    md.write_text(_render_md(doc))
    (out / "report.html").write_text(_render_html(doc, title))
    print(f"report: {md}\n        {out / 'report.html'} (self-contained)")
    return md


def report_folder(paths: Sequence[Path], labels: Sequence[str], out: str | Path | None) -> Path:
    """Where a report goes (created): see :func:`write_report`."""
    if out is None:
        if len(paths) == 1:
            return paths[0]
        out = paths[0].parent / _slug("compare-" + "-vs-".join(labels))
    out = Path(out).expanduser().resolve()
    if len(paths) > 1 and any(out == Path(p).resolve() for p in paths):
        raise ExperimentError(f"--out {out} is one of the compared experiments; a comparison goes to "
                              "a folder of its own (leave --out out for compare-<A>-vs-<B>)")
    if out.exists() and not out.is_dir():
        raise ExperimentError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


__all__ = ["write_report", "report_folder", "EVAL_FIGURES"]
