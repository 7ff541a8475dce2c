"""``inat-tune evaluate``: the best trial of an experiment, once, on the held-out test set.

The trial is chosen on validation data (:func:`inat_tune.experiment.best_trial`); its best
checkpoint is rebuilt with :func:`inat_tune.train.load_model` (scratch CNN or fine-tuned
backbone alike) and run once over ``DATA/val`` with the checkpoint's own normalisation.
Written into the experiment folder:

    test_metrics.json      test_acc, test_loss, macro_f1, per-class accuracy, n_test, the trial,
                           its config, checkpoint and validation metric
    predictions.csv        file, true, predicted, probability (of the prediction); one row per image
    confusion_matrix.csv   counts, rows = true class, columns = predicted class
    confusion_matrix.png
    prediction_grid.png    up to 3 seeded test images per class with true/predicted label, confidence
                           and top-3 probabilities; green frame = right, red = wrong

and mirrored to W&B (offline without an API key) when asked.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .experiment import BestTrial, Experiment, ExperimentError, best_trial, load_model_folder

log = logging.getLogger(__name__)

GREEN, RED, GREY = "#1a9641", "#d7191c", "#9e9e9e"
FILES = {"metrics": "test_metrics.json", "predictions": "predictions.csv",
         "confusion_csv": "confusion_matrix.csv", "confusion_png": "confusion_matrix.png",
         "prediction_grid": "prediction_grid.png"}


@dataclass
class BestModel:
    """The best trial's model in eval mode and the test split it is measured on."""

    experiment: Experiment
    best: BestTrial
    model: Any  # torch.nn.Module
    config: Any  # inat_tune.config.RunConfig
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    data_dir: Path
    test: Any  # inat_tune.data.pipeline.ArraySplit: uint8 N x S x S x 3, labels, files
    device: Any  # torch.device


def load_best(experiment: str | Path | Experiment, data: str | Path | None = None, *,
              device: str | None = None, cache_dir: str | Path | None = None,
              progress: bool = False) -> BestModel:
    """Best trial -> its model (from the checkpoint) and the test split of ``data``.

    ``experiment``: an experiment folder, or a ``train`` run folder (its best.pt).
    ``data`` defaults to the sweep's (or the run's) data_dir. The test folder's classes must be the model's
    (DatasetError otherwise).
    """
    from .data.pipeline import load_test_data
    from .train import load_model, select_device

    exp = experiment if isinstance(experiment, Experiment) else load_model_folder(experiment)
    best = best_trial(exp)
    root = data or exp.data_dir
    if not root:
        named_in = "config.yaml names no dataset (data:)" if exp.sweep.get("run") else "sweep.json names no data_dir"
        raise ExperimentError(f"{exp.path}/{named_in}; pass --data DIR")
    dev = select_device(device)
    model, cfg, ckpt = load_model(best.checkpoint, device=dev)
    classes = tuple(ckpt["classes"])
    _, test = load_test_data(root, cfg.image_size, classes=classes, cache_dir=cache_dir, progress=progress)
    return BestModel(experiment=exp, best=best, model=model, config=cfg, classes=classes,
                     mean=tuple(ckpt["mean"]), std=tuple(ckpt["std"]), data_dir=Path(root),
                     test=test, device=dev)


def predict_probs(bm: BestModel, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities over the test split (N x classes, float32), fp32 on any device."""
    from .data.loader import DeviceLoader, to_device
    from .train import predict

    x, y = to_device(bm.test.images, bm.test.labels, bm.device)
    loader = DeviceLoader(x, y, batch_size, mean=bm.mean, std=bm.std)
    return predict(bm.model, loader, bf16=False).numpy()


# ---------------------------------------------------------------------------------------------
# Metrics

def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class; a row and a column for every
    class, present in the test set or not."""
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    return sk_confusion_matrix(y_true, y_pred, labels=np.arange(num_classes)).astype(np.int64)


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, mean cross-entropy, macro F1 and per-class accuracy (recall) and F1.

    Recall, precision and F1 are scikit-learn's, over every class (``labels``: a class with
    no test image still counts in the macro mean); F1 of a class with no true and no predicted
    image is 0 (``zero_division=0``).
    """
    from sklearn.metrics import precision_recall_fscore_support

    y_true = np.asarray(y_true)
    y_pred = probs.argmax(1)
    labels = np.arange(len(classes))
    cm = confusion_matrix(y_true, y_pred, len(classes))
    _, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None,
                                                             zero_division=0)
    p_true = probs[np.arange(len(y_true)), y_true]
    return {
        "n_test": int(len(y_true)),
        "test_acc": float((y_pred == y_true).mean()) if len(y_true) else float("nan"),
        "test_loss": float(-np.log(np.clip(p_true, 1e-12, None)).mean()),
        "macro_f1": float(f1.mean()),
        "per_class_accuracy": {c: float(a) for c, a in zip(classes, recall)},
        "per_class_f1": {c: float(v) for c, v in zip(classes, f1)},
        "per_class_n": {c: int(n) for c, n in zip(classes, support)},
        "confusion_matrix": cm.tolist(),
    }


def write_predictions(path: Path, files: Sequence[str], y_true: np.ndarray, probs: np.ndarray,
                      classes: Sequence[str]) -> Path:
    y_pred = probs.argmax(1)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "true", "predicted", "probability"])
        for name, t, p, pr in zip(files, y_true, y_pred, probs):
            w.writerow([name, classes[t], classes[p], f"{pr[p]:.6f}"])
    return path


def write_confusion_csv(path: Path, cm: np.ndarray, classes: Sequence[str]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *classes])
        for c, row in zip(classes, cm):
            w.writerow([c, *map(int, row)])
    return path


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib's object API: no pyplot state, no display needed)

def _figure(width: float, height: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout=None)


def plot_confusion_matrix(cm: np.ndarray, classes: Sequence[str], path: str | Path,
                          title: str = "") -> tuple[int, int]:
    """Colour = share of the true class (row-normalised), text = count. Returns (rows, cols)."""
    n = len(classes)
    side = max(5.0, 0.55 * n + 2.5)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot(1, 1, 1)
    rows = cm.sum(1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8 if n > 12 else 9,
                        color="white" if share[i, j] > 0.55 else "black")
    ax.set_xticks(range(n), [_short(c, 16) for c in classes], rotation=45, ha="right", fontsize=9)
    ax.set_yticks(range(n), [_short(c, 16) for c in classes], fontsize=9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return cm.shape


def wrap_title(text: str, width_in: float, fontsize: float) -> str:
    """``text`` with each line wrapped to fit ``width_in`` inches at ``fontsize`` points (DejaVu
    Sans averages about 0.6 em a character): a long title is not clipped at the figure's edges."""
    import textwrap

    chars = max(20, int(width_in * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) if line else line for line in text.split("\n"))


def _short(name: str, n: int) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def choose_per_class(labels: np.ndarray, num_classes: int, per_class: int, seed: int) -> list[list[int]]:
    """Up to ``per_class`` indices of each class, a seeded draw, in file order."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else idx
        out.append(sorted(int(i) for i in pick))
    return out


def shown_per_class(chosen: Sequence[Sequence[int]], classes: Sequence[str]) -> str:
    """What a prediction grid of ``chosen`` shows, in words: "3 per class", "1-3 per class
    (fewer where a class has fewer test images)"."""
    counts = [len(c) for c in chosen if len(c)]
    if not counts:
        return "no test image"
    lo, hi = min(counts), max(counts)
    text = f"{hi} per class" if lo == hi else f"{lo}-{hi} per class (fewer where a class has fewer test images)"
    return text


def _no_test_image(chosen: Sequence[Sequence[int]], classes: Sequence[str]) -> str:
    empty = [_short(c, 16) for c, ch in zip(classes, chosen) if not len(ch)]
    return f"; no test image (no row): {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}" if empty else ""


def plot_prediction_grid(images: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                         classes: Sequence[str], path: str | Path, per_class: int = 3, seed: int = 0,
                         title: str = "", note: str = "") -> tuple[int, int]:
    """One row per class with a test image, up to ``per_class`` of its test images, with the
    true and predicted labels, the confidence and the top-3 probabilities; frame green when
    right, red when wrong.

    The figure title is ``title`` (e.g. experiment and trial), then what is shown, counted from
    the images actually drawn ("2 per class" when no class has 3), then ``note``. The figure's
    size follows the rows and columns drawn: no empty column when every class has fewer images
    than ``per_class``, no row for a class without a test image (the title names it).

    ``images`` are uint8 N x S x S x 3. Returns the grid shape drawn (rows, columns).
    """
    chosen = choose_per_class(labels, len(classes), per_class, seed)
    rows_drawn = [r for r in range(len(classes)) if len(chosen[r])]
    n_rows = max(1, len(rows_drawn))
    n_cols = max([len(chosen[r]) for r in rows_drawn] or [1])
    cell_w, cell_h = 3.5, 1.95  # inches: one (image, bars) cell
    width = cell_w * n_cols + 0.2
    head = (f"{title}: " if title else "") + f"test predictions, {shown_per_class(chosen, classes)} " \
        "(green = right, red = wrong; bars: top-3 probabilities)" + _no_test_image(chosen, classes) \
        + (f"\n{note}" if note else "")
    head = wrap_title(head, width - 0.2, 12)
    top_in = 0.45 + 0.22 * (head.count("\n") + 1)  # the title band, and the first row's captions
    height = cell_h * n_rows + top_in
    fig = _figure(width, height)
    outer = fig.add_gridspec(n_rows, n_cols, left=0.015, right=0.985, bottom=0.1 / height,
                             top=1 - top_in / height, wspace=0.1, hspace=0.42)
    for row, r in enumerate(rows_drawn):
        for c in range(n_cols):
            inner = outer[row, c].subgridspec(1, 2, width_ratios=[1.0, 0.95], wspace=0.06)
            ax_img, ax_bar = fig.add_subplot(inner[0]), fig.add_subplot(inner[1])
            if c >= len(chosen[r]):  # this class has fewer images than the widest row
                ax_img.axis("off")
                ax_bar.axis("off")
                continue
            i = chosen[r][c]
            _draw_prediction(ax_img, ax_bar, images[i], int(labels[i]), probs[i], classes)
    fig.suptitle(head, fontsize=12, y=1 - 0.12 / height, va="top")
    fig.savefig(path, dpi=90)
    return len(rows_drawn), n_cols


def _draw_prediction(ax_img, ax_bar, image: np.ndarray, true: int, p: np.ndarray,
                     classes: Sequence[str]) -> None:
    pred = int(p.argmax())
    colour = GREEN if pred == true else RED
    ax_img.imshow(image)
    ax_img.set_xticks([])
    ax_img.set_yticks([])
    for s in ax_img.spines.values():
        s.set_edgecolor(colour)
        s.set_linewidth(4)
    ax_img.set_title(f"true: {_short(classes[true], 24)}\npred: {_short(classes[pred], 24)} "
                     f"({p[pred]:.0%})", fontsize=8.5, color=colour, loc="left", pad=3)
    top = np.argsort(-p)[:3]
    y = np.arange(len(top))[::-1]  # the most probable on top
    bar_colours = [GREEN if k == true else (RED if k == pred else GREY) for k in top]
    # light bars with the label on top of them at a fixed place: readable at any length
    ax_bar.barh(y, p[top], color=bar_colours, height=0.62, alpha=0.5)
    for yy, k in zip(y, top):
        ax_bar.text(0.03, yy, f"{_short(classes[k], 16)} {p[k]:.0%}", va="center", ha="left",
                    fontsize=7.5, color="black")
    ax_bar.set_xlim(0, 1)
    ax_bar.set_ylim(-0.5, 2.5)
    ax_bar.set_xticks([])
    ax_bar.set_yticks([])
    for s in ("top", "right"):
        ax_bar.spines[s].set_visible(False)
    for s in ("left", "bottom"):
        ax_bar.spines[s].set_color("#bbbbbb")


# ---------------------------------------------------------------------------------------------

def evaluate_experiment(path: str | Path, data: str | Path | None = None, use_wandb: bool | None = None, *,
                        device: str | None = None, seed: int = 0, cache_dir: str | Path | None = None
                        ) -> dict[str, Any]:
    """Evaluate the best trial of experiment ``path`` once on the test set; returns test_metrics.

    Writes test_metrics.json, predictions.csv, confusion_matrix.csv/.png and
    prediction_grid.png into the experiment folder (``result["files"]`` lists them), prints
    a short summary, and mirrors it to W&B when ``use_wandb`` (W&B failures only warn); None:
    as the experiment did (its sweep.json's ``use_wandb``: off after ``sweep --no-wandb``, and
    off for a train run folder).
    """
    bm = load_best(path, data, device=device, cache_dir=cache_dir, progress=True)
    exp, best = bm.experiment, bm.best
    probs = predict_probs(bm)
    y = np.asarray(bm.test.labels)
    metrics = classification_metrics(y, probs, bm.classes)
    out = exp.path
    files = {k: out / v for k, v in FILES.items()}
    write_predictions(files["predictions"], bm.test.files, y, probs, bm.classes)
    cm = np.asarray(metrics["confusion_matrix"])
    write_confusion_csv(files["confusion_csv"], cm, bm.classes)
    head = f"{exp.name}: trial {best.trial.trial_id}"
    plot_confusion_matrix(cm, bm.classes, files["confusion_png"],
                          title=f"{head} on the test set: accuracy {metrics['test_acc']:.3f} "
                                f"(n={metrics['n_test']})")
    plot_prediction_grid(bm.test.images, y, probs, bm.classes, files["prediction_grid"], seed=seed,
                         title=head, note=f"{metrics['test_acc']:.1%} of all {metrics['n_test']} "
                                          "test images are right")
    result = {
        "experiment": exp.name,
        "experiment_path": str(exp.path),
        "trial_id": best.trial.trial_id,
        "config": bm.config.to_dict(),
        "swept_config": best.trial.config,
        "checkpoint": str(best.checkpoint),
        "checkpoint_epoch": best.epoch,
        "val_metric": {"name": exp.metric, "mode": exp.mode, "value": best.value},
        "data_dir": str(bm.data_dir),
        "classes": list(bm.classes),
        **metrics,
        "device": str(bm.device),
        "evaluated": datetime.now().isoformat(timespec="seconds"),
        "files": {k: str(v) for k, v in files.items()},
    }
    files["metrics"].write_text(json.dumps(result, indent=1))
    _print_summary(result)
    if use_wandb if use_wandb is not None else bool(exp.sweep.get("use_wandb", True)):
        mirror_to_wandb(exp, result, files, predictions=(bm.test.files, y, probs))
    return result


def _print_summary(r: dict[str, Any]) -> None:
    v = r["val_metric"]
    print(f"evaluate {r['experiment']}: best trial {r['trial_id']} by {v['name']} = {v['value']:.4f} "
          f"(validation, epoch {r['checkpoint_epoch']})")
    print(f"checkpoint: {r['checkpoint']}")
    print(f"test set: {r['n_test']} images in {r['data_dir']}/val")
    print(f"test_acc {r['test_acc']:.4f}   macro_f1 {r['macro_f1']:.4f}   test_loss {r['test_loss']:.4f}")
    per = "  ".join(f"{c} {a:.2f}" for c, a in r["per_class_accuracy"].items())
    print(f"per-class accuracy: {per}")
    print(f"wrote: {', '.join(Path(p).name for p in r['files'].values())} in {r['experiment_path']}")


def mirror_to_wandb(exp: Experiment, result: dict[str, Any], files: dict[str, Path],
                    predictions: tuple | None = None) -> str | None:
    """Log the summary, per-class accuracy and figures as a W&B run (job_type=evaluate) in the
    sweep's group; offline without an API key. Returns the run folder, or None on failure."""
    try:
        import wandb

        from .tune.wandb_mirror import wandb_mode

        mode = wandb_mode()
        run = wandb.init(project=exp.sweep.get("wandb_project") or "inat-tune", group=exp.name,
                         job_type="evaluate", name=f"{exp.name}-evaluate", dir=str(exp.path),
                         mode=mode, reinit="create_new", settings=wandb.Settings(silent=True),
                         config={"trial_id": result["trial_id"], **result["config"]})
        try:
            summary = {"test/acc": result["test_acc"], "test/loss": result["test_loss"],
                       "test/macro_f1": result["macro_f1"], "test/n": result["n_test"],
                       f"val/{exp.metric}": result["val_metric"]["value"]}
            summary.update({f"test/acc/{c}": a for c, a in result["per_class_accuracy"].items()})
            logged: dict[str, Any] = {
                "test/confusion_matrix": wandb.Image(str(files["confusion_png"])),
                "test/prediction_grid": wandb.Image(str(files["prediction_grid"])),
            }
            if predictions is not None:
                names, y, probs = predictions
                classes = result["classes"]
                logged["test/predictions"] = wandb.Table(
                    columns=["file", "true", "predicted", "probability"],
                    data=[[f, classes[t], classes[int(p.argmax())], float(p.max())]
                          for f, t, p in zip(names, y, probs)])
            run.log(logged)
            run.summary.update(summary)
            run_dir = Path(run.dir).parent
            url = run.url if mode != "offline" else None
        finally:
            run.finish()
        if mode == "offline":
            print(f"W&B ran offline; upload with: wandb sync {run_dir}")
        else:
            print(f"W&B: {url}")
        return str(run_dir)
    except Exception as e:  # noqa: BLE001 - W&B is a mirror: never fail the evaluation
        log.warning("W&B mirror of the evaluation failed: %s", e)
        return None
