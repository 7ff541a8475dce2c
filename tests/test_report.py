"""``write_report``: files written, links that resolve, self-contained HTML, numbers that come
from the tables, the two-experiment comparison, W&B as best effort, and a real tiny sweep."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import re
from pathlib import Path

import pandas as pd
import pytest

from inat_tune.experiment import ExperimentError

from helpers_sweep import N_TRIALS
from inat_tune import analysis as an
from inat_tune.report import write_report
from test_analysis import PLANTED, make_experiment, make_unfinished_leaders  # noqa: E402 - tests/ is on sys.path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MD_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")
# a number standing alone (not part of a hex trial id or a word): 0.7338, -0.03, 29, 13.4
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?![\w])")


def _png(path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [0, 1])
    fig.savefig(path)
    return path


def _section(md: str, title: str) -> str:
    start = md.index(f"## {title}")
    nxt = md.find("\n## ", start + 3)
    return md[start: nxt if nxt > 0 else None]


def _html_images(text: str) -> list[bytes]:
    srcs = re.findall(r"<img[^>]*\ssrc=\"([^\"]+)\"", text)
    out = []
    for s in srcs:
        assert s.startswith("data:image/png;base64,"), s[:60]
        out.append(base64.b64decode(s.split(",", 1)[1], validate=True))
    return out


@pytest.fixture
def exp(tmp_path) -> Path:
    return make_experiment(tmp_path, "scratch")


def test_report_writes_tables_figures_and_links_that_exist(exp):
    (exp / "test_metrics.json").write_text(json.dumps({"test_acc": 0.6543, "trial_id": "00000016",
                                                       "test_loss": 1.1, "per_class": {"a": 1}}))
    _png(exp / "prediction_grid.png")
    _png(exp / "guided_backprop.png")
    md_path = write_report([exp], use_wandb=False)
    assert md_path == exp / "report.md"
    md = md_path.read_text()
    for name in ("trials.csv", "history.csv", "report.html"):
        assert (exp / name).is_file()
    trials = pd.read_csv(exp / "trials.csv")
    assert len(trials) == 30 and set(trials["status"]) == {"finished", "stopped_early", "errored"}
    assert len(pd.read_csv(exp / "history.csv")) == int(trials["epochs_run"].sum())

    links = MD_IMAGE.findall(md)
    assert links, md
    for link in links:
        assert (exp / link).is_file(), link
    names = {Path(link).name for link in links}
    assert {"fig_accuracy_vs_created.png", "fig_parallel_coordinates.png", "fig_importance.png",
            "fig_learning_curves.png", "fig_asha_rungs.png", "prediction_grid.png",
            "guided_backprop.png"} <= names
    # evaluate's output is in the report
    assert "## Test set" in md and "0.6543" in md
    assert "## Evaluation and explanation" in md
    # the HTML is self-contained: every image embedded, each a PNG, the same images as the .md
    html = (exp / "report.html").read_text()
    images = _html_images(html)
    assert len(images) == len(links)
    assert all(b.startswith(PNG_MAGIC) for b in images)
    assert "<table>" in html and 'src="http' not in html and "<link" not in html
    # the planted hyperparameter leads the importance table
    imp = _section(md, "Hyperparameters")
    first_row = next(line for line in imp.splitlines() if line.startswith("| 1 |"))
    assert PLANTED in first_row


def test_every_number_in_the_insights_is_in_the_tables(exp):
    best = an.best_trial(an.load_results(exp), an.read_space(exp))["trial_id"]
    (exp / "test_metrics.json").write_text(json.dumps({
        "trial_id": best, "test_acc": 0.61234, "test_loss": 1.2, "config": {"lr": 0.1},
        "per_class_accuracy": {"a": 0.5, "b": 0.75}, "per_class_n": {"a": 10, "b": 12}}))
    md = write_report(exp, use_wandb=False).read_text()
    assert "test accuracy 0.6123" in md and "| a | 0.5000 |" in md
    insights = _section(md, "Insights").split("\n\n")[1]  # the bullet list only
    bullets = [line for line in insights.splitlines() if line.startswith("- ")]
    assert len(bullets) >= 8
    tables = "\n".join(line for line in md.splitlines() if line.startswith("|"))
    cells = {c.strip() for line in tables.splitlines() for c in line.strip("|").split("|")}
    cells |= {c.replace(",", "") for c in cells}  # 1,000 -> 1000
    tokens = {"0.05"}  # the significance level named in "could be chance (p >= 0.05)": a threshold
    for c in cells:
        tokens |= set(c.split("/")) | set(NUMBER.findall(c))  # "4/4" epochs, "<0.001"
    for bullet in bullets:
        for number in NUMBER.findall(bullet):
            assert number in tokens or number.lstrip("+") in tokens, (number, bullet)


def test_report_reruns_without_listing_its_own_figures_twice(exp):
    first = MD_IMAGE.findall(write_report(exp, use_wandb=False).read_text())
    second = MD_IMAGE.findall(write_report(exp, use_wandb=False).read_text())
    assert first == second


def test_comparison_of_two_experiments(tmp_path):
    a = make_experiment(tmp_path, "scratch", n=12, stopped=3)
    b = make_experiment(tmp_path, "finetune", n=8, seed=1, stopped=0, errored_empty=0, errored_late=0,
                        gpu_frac=0.5)
    (b / "test_metrics.json").write_text(json.dumps({"test_acc": 0.8123, "trial_id": "x"}))
    own = {p: sorted(f.name for f in p.iterdir()) for p in (a, b)}
    md_path = write_report([a, b], use_wandb=False)
    out = tmp_path / "compare-scratch-vs-finetune"  # a folder of its own, beside the first
    assert md_path == out / "report.md"
    assert {p: sorted(f.name for f in p.iterdir()) for p in (a, b)} == own  # neither touched
    md = md_path.read_text()
    comp = pd.read_csv(out / "comparison.csv")
    assert comp["experiment"].tolist() == ["scratch", "finetune"]
    assert comp["test_acc"].isna().tolist() == [True, False]
    assert comp.loc[1, "test_acc"] == pytest.approx(0.8123)
    for df, row in ((an.load_results(a), comp.iloc[0]), (an.load_results(b), comp.iloc[1])):
        assert row["best_val_acc"] == pytest.approx(df["best_val_acc"].max())
        assert row["trainable_params"] == df.loc[df["best_val_acc"].idxmax(), "trainable_params"]
        assert 1 <= row["epochs_to_90pct"] <= 4
    assert comp.loc[1, "gpu_seconds"] > 0 and comp.loc[0, "gpu_seconds"] == 0
    side = _section(md, "Side by side")
    rows = [line for line in side.splitlines() if line.startswith("| scratch") or line.startswith("| finetune")]
    assert len(rows) == 2 and "0.8123" in rows[1]
    assert "## Experiment scratch" in md and "## Experiment finetune" in md
    for link in MD_IMAGE.findall(md):
        assert (out / link).is_file(), link
    assert (out / "fig_comparison_curves.png").is_file()
    assert (out / "fig_finetune__parallel_coordinates.png").is_file()
    trials = pd.read_csv(out / "trials.csv")
    assert trials["experiment"].value_counts().to_dict() == {"scratch": 12, "finetune": 8}


def test_comparison_never_writes_into_an_experiment(tmp_path):
    a = make_experiment(tmp_path, "a", n=6, stopped=0)
    b = make_experiment(tmp_path, "b", n=6, seed=1, stopped=0)
    before = sorted(f.name for f in a.iterdir())
    with pytest.raises(ExperimentError, match="one of the compared experiments"):
        write_report([a, b], use_wandb=False, out=a)
    assert sorted(f.name for f in a.iterdir()) == before
    md = write_report([a, b], use_wandb=False, out=tmp_path / "cmp")
    assert md == (tmp_path / "cmp" / "report.md").resolve() and md.is_file()


def test_report_on_an_experiment_without_results(tmp_path):
    exp = make_experiment(tmp_path, n=3, stopped=0, errored_empty=3, errored_late=0)
    md = write_report(exp, use_wandb=False).read_text()
    assert "No trial reported val_acc" in md
    for link in MD_IMAGE.findall(md):
        assert (exp / link).is_file()


def test_wandb_failure_only_warns(exp, monkeypatch, caplog):
    import wandb

    def broken(*a, **k):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken)
    with caplog.at_level(logging.WARNING, logger="inat_tune.report"):
        md = write_report(exp, use_wandb=True)
    assert md.is_file()
    assert any("W&B" in r.message and "no network" in r.message for r in caplog.records)


@pytest.mark.slow
def test_wandb_offline_run_in_the_experiment_folder(exp, monkeypatch):
    monkeypatch.delenv("WANDB_DIR", raising=False)
    write_report(exp, use_wandb=True)
    runs = list((exp / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    tables = {p.name.split("_0_")[0] for p in runs[0].rglob("*.table.json")}
    assert tables == {"importance", "parallel_coordinates"}


def test_cli_report(exp):
    from inat_tune.cli import main

    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["report", str(exp), "--no-wandb"]) == 0
    assert str(exp / "report.md") in out.getvalue()
    assert main(["report", str(exp / "nope"), "--no-wandb"]) == 2


@pytest.mark.slow
def test_report_on_a_real_tiny_sweep(experiment_copy):
    exp = experiment_copy  # conftest's real TPE + ASHA sweep; the report writes into its folder
    md = write_report([exp], use_wandb=False).read_text()
    trials = pd.read_csv(exp / "trials.csv")
    assert len(trials) == N_TRIALS
    assert set(trials["status"]) <= {"finished", "stopped_early"}
    assert (trials["epochs_run"] >= 1).all() and trials["best_val_acc"].notna().all()
    assert len(pd.read_csv(exp / "history.csv")) == int(trials["epochs_run"].sum())
    assert "SYNTHETIC DATA" in md  # the dataset's marker reaches the report
    for link in MD_IMAGE.findall(md):
        assert (exp / link).is_file()


def test_report_names_the_finished_trial_evaluate_takes_when_the_leader_errored(tmp_path):
    exp, expected = make_unfinished_leaders(tmp_path)
    md = write_report(exp, use_wandb=False).read_text()
    assert f"Best trial {expected} " in _section(md, "Insights")
    assert f"| trial | {expected} |" in _section(md, "Best configuration")


def test_report_when_no_trial_has_finished(tmp_path):
    exp = make_experiment(tmp_path, n=3, stopped=0, errored_empty=0, errored_late=0,
                          state={f"{i:08d}": "RUNNING" for i in range(3)})
    md = write_report(exp, use_wandb=False).read_text()
    assert "No trial has finished yet" in md and "## Best configuration" not in md
    assert (exp / "fig_accuracy_vs_created.png").is_file()  # drawn, without a best trial to mark


# ---------------------------------------------------------------------------------------------
# The report's figures, drawn from small frames and checked on matplotlib's objects (issue 14)

def _trials(acc, status=None, lr=None, filters=None) -> pd.DataFrame:
    n = len(acc)
    return pd.DataFrame({"trial_id": [f"t{i:02d}" for i in range(n)],
                         "status": status or ["finished"] * n,
                         "best_val_acc": acc,
                         an.CONFIG_PREFIX + "lr": lr or [10 ** -(2 + i / n) for i in range(n)],
                         an.CONFIG_PREFIX + "filters": filters or [8 * (1 + i % 2) for i in range(n)]})


_SPACE = an.SpaceInfo(metric="val_acc", mode="max",
                      params={"lr": an.ParamInfo("lr", "numeric", log=True),
                              "filters": an.ParamInfo("filters", "categorical", values=(8, 16))})


def test_parallel_coordinates_of_a_constant_metric_shows_its_value_and_no_offset(tmp_path, drawn):
    from inat_tune import plots

    df = _trials([0.1] * 4, lr=[3e-4] * 4)  # the metric and one hyperparameter are constant
    plots.plot_parallel_coordinates(df, _SPACE, tmp_path / "p.png")
    fig = drawn[-1]
    ax, cbar = fig.axes
    offset = cbar.yaxis.get_offset_text().get_text()
    assert offset == "", offset  # was "1e-10+1e-1"
    assert [t.get_text() for t in cbar.get_yticklabels() if t.get_text()] == ["0.1"]
    texts = [t.get_text() for t in ax.texts]
    assert "0.0003" in texts and "0.1" in texts  # each constant axis: its single value
    assert not any("e-1" in t or "+" in t for t in texts + [offset])


def test_parallel_coordinates_colourbar_never_has_an_offset(tmp_path, drawn):
    from inat_tune import plots

    plots.plot_parallel_coordinates(_trials([0.70001, 0.70003, 0.70002, 0.70004]), _SPACE, tmp_path / "p.png")
    cbar = drawn[-1].axes[1]
    assert cbar.yaxis.get_offset_text().get_text() == ""
    assert all(t.get_text().startswith("0.7") for t in cbar.get_yticklabels() if t.get_text())


def _history(curves: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"trial_id": t, "epoch": e, "val_acc": v}
                         for t, vals in curves.items() for e, v in enumerate(vals, start=1)])


def test_learning_curves_title_counts_the_trials_drawn_and_identical_curves_stay_visible(tmp_path, drawn):
    from inat_tune import plots

    df = _trials([0.6, 0.6, 0.4])
    same = [0.2, 0.4, 0.6]
    hist = _history({"t00": same, "t01": same, "t02": [0.1, 0.3, 0.4]})
    plots.plot_learning_curves(df, hist, _SPACE, tmp_path / "c.png", top_k=5)
    ax = drawn[-1].axes[0]
    title = ax.get_title()
    assert "all 3 trials" in title and "top 5" not in title, title
    assert "2 curves identical" in title
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata())]
    assert len(lines) == 3
    # the two identical curves are drawn differently: a style and a marker of their own
    styles = {(ln.get_linestyle(), ln.get_marker()) for ln in lines}
    assert len(styles) == 3
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("identical to #1" in s for s in labels), labels

    plots.plot_learning_curves(_trials([0.5, 0.4, 0.3, 0.2]), _history({f"t0{i}": [0.1 * i] for i in range(4)}),
                               _SPACE, tmp_path / "c2.png", top_k=2)
    assert "top 2 of 4 trials" in drawn[-1].axes[0].get_title()


def test_search_progress_shows_every_trial_inside_the_axes_and_clear_of_the_legend(tmp_path, drawn):
    import numpy as np

    from inat_tune import plots

    # an errored trial with a result, far below the others, and trials in the lower right corner
    acc = [0.6, 0.7, 0.02, 0.65, 0.1, 0.1, 0.1, 0.1]
    status = ["finished", "finished", "errored", "finished", "stopped_early", "stopped_early",
              "stopped_early", "stopped_early"]
    df = _trials(acc, status=status)
    plots.plot_accuracy_vs_created(df, _SPACE, tmp_path / "a.png")
    fig = drawn[-1]
    ax = fig.axes[0]
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    lo, hi = ax.get_ylim()
    for x, y in zip(range(1, len(acc) + 1), acc):  # every trial has its point, inside the axes
        assert any(abs(px - x) < 1e-9 and abs(py - y) < 1e-9 for px, py in points), (x, y)
        assert lo < y < hi
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    for px, py in ax.transData.transform(points):
        assert not legend.contains(px, py), "a trial's point is under the legend"
