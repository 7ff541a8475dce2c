"""The one training loop: ``fit()`` owns epochs, precision, the schedule, evaluation and
checkpoints, and hands each epoch's metrics to a ``report`` callback (the Ray trainables are
thin adapters over it). No Ray imports here.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .config import RunConfig
from .data.features import cached_features
from .data.loader import IMAGENET_MEAN, IMAGENET_STD, Augment, DeviceLoader, to_device
from .data.pipeline import TuningData
from .data.warm import WARM
from .models.registry import create_model

CHECKPOINT_NAME = "checkpoint.pt"
Report = Callable[[dict[str, Any], "TrainState"], None]


def select_device(name: str | None = None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def native_bf16(device: torch.device) -> bool:
    """The CUDA device computes bf16 natively (Ampere and later), not by emulation (a T4 can
    emulate it, slowly). Older torch has no ``including_emulation``: compute capability >= 8."""
    try:
        with torch.cuda.device(device):
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch before the keyword (its answer then may include emulation)
        return torch.cuda.get_device_capability(device)[0] >= 8


def choose_precision(requested: str, device: torch.device) -> str:
    """The precision a run uses: "fp32", "bf16" (autocast) or "fp16" (autocast + GradScaler).

    ``auto``: on CUDA bf16 where native, else fp16 on tensor-core GPUs (compute capability
    >= 7.0, e.g. T4, V100), else fp32; fp32 on CPU and other devices. An explicit value is
    used as asked, except fp16 off CUDA (GradScaler is a CUDA tool here), which is refused.
    """
    if requested == "auto":
        if device.type != "cuda":
            return "fp32"
        if native_bf16(device):
            return "bf16"
        return "fp16" if torch.cuda.get_device_capability(device)[0] >= 7 else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ValueError(f"precision fp16 needs a CUDA device (this run is on {device}); "
                         "use auto, fp32 or bf16")
    if requested not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {requested!r}")
    return requested


def uses_bf16(cfg: RunConfig, device: torch.device) -> bool:
    """Whether ``cfg`` trains with bf16 autocast on ``device`` (see :func:`choose_precision`)."""
    return choose_precision(cfg.precision, device) == "bf16"


def grad_scaler(precision: str, device: torch.device):
    """A GradScaler for fp16, else None."""
    if precision != "fp16":
        return None
    try:
        return torch.amp.GradScaler(device.type)
    except (AttributeError, TypeError):  # torch < 2.3
        return torch.cuda.amp.GradScaler()


def validation_batch_size(cfg: RunConfig) -> int:
    """Validation runs in batches of the training batch size: evaluation holds no activations
    for a backward pass, so a batch that trains fits in eval (a fixed 256 did not, at 224 px
    with wide first layers)."""
    return cfg.batch_size


def set_deterministic(on: bool) -> None:
    """``deterministic: true``: cuDNN picks deterministic algorithms (no benchmark search) and
    torch warns where an op has no deterministic CUDA kernel (e.g. AdaptiveAvgPool2d's
    backward); ``false`` restores torch's defaults. cuBLAS needs CUBLAS_WORKSPACE_CONFIG set
    before CUDA starts: set here if unset (effective when this is the process's first CUDA use).
    """
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(on, warn_only=True)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def norm_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std the model's inputs need (pretrained weights carry their own)."""
    return getattr(model, "mean", IMAGENET_MEAN), getattr(model, "std", IMAGENET_STD)


# ---------------------------------------------------------------------------------------------
# Optimiser and schedule

def build_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Weight decay on weights only (not biases / norm scales), the timm/nanoGPT convention.

    A model may expose ``param_groups(lr)`` (pretrained backbones: a lower backbone rate);
    parameters frozen now are still registered so gradual unfreezing needs no new optimiser
    (AdamW skips parameters whose ``grad`` is None).
    """
    groups = model.param_groups(cfg.lr) if hasattr(model, "param_groups") else [
        {"params": list(model.parameters()), "lr": cfg.lr}]
    split: list[dict] = []
    for g in groups:
        params = g.pop("params")
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        for ps, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
            if ps:
                split.append({**g, "params": ps, "weight_decay": wd, "initial_lr": g["lr"]})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(split, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "nadam": torch.optim.NAdam}[cfg.optimizer]
    return cls(split, lr=cfg.lr)


def lr_factor(cfg: RunConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of each group's peak lr at ``step`` (0-based): linear warm-up, then the schedule."""
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "none":
        return 1.0
    progress = (step - warm) / max(1, total_steps - warm)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    # one-cycle (Smith 2018): warm up over 25 % (or the given warm-up), anneal to ~0
    if warm == 0:
        up = max(1, int(0.25 * total_steps))
        if step < up:
            return 0.04 + 0.96 * step / up  # OneCycleLR's default div_factor = 25
        progress = (step - up) / max(1, total_steps - up)
    return max(0.5 * (1 + math.cos(math.pi * min(progress, 1.0))), 1e-4)


# ---------------------------------------------------------------------------------------------
# Epochs

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _precision(precision: str | bool) -> str:
    """A precision name; True / False (the older bf16 flag) mean "bf16" / "fp32"."""
    if isinstance(precision, bool):
        return "bf16" if precision else "fp32"
    return precision


def _autocast(device: torch.device, precision: str | bool):
    dtype = _AUTOCAST.get(_precision(precision))
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_one_epoch(model: nn.Module, loader: DeviceLoader, optimizer: torch.optim.Optimizer,
                    loss_fn: nn.Module, set_lr: Callable[[], None], precision: str | bool = "fp32",
                    scaler=None) -> dict[str, float]:
    """One pass over ``loader``; ``precision`` "fp32" | "bf16" | "fp16" (True / False: bf16 /
    fp32), ``scaler`` a GradScaler (fp16)."""
    model.train()
    dev = loader.y.device
    total_loss = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev, dtype=torch.long)
    seen = 0
    for xb, yb in loader:
        set_lr()
        with _autocast(dev, precision):
            logits = model(xb)
            loss = loss_fn(logits.float(), yb)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            # GradScaler checks for inf/nan on the host: one sync per step, the price of fp16
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        # accumulate on the device: no host sync per step
        total_loss += loss.detach() * len(yb)
        correct += (logits.argmax(1) == yb).sum()
        seen += len(yb)
    return {"train_loss": total_loss.item() / max(seen, 1), "train_acc": correct.item() / max(seen, 1),
            "images": seen}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, bf16: str | bool = False,
             label_smoothing: float = 0.0, pad_to: int | None = None) -> dict[str, float]:
    """Mean loss and accuracy over ``loader`` (eval mode, no augmentation). ``bf16``: the
    precision ("fp32" | "bf16" | "fp16", or True / False for bf16 / fp32). ``pad_to``: a
    smaller last batch is padded to this many inputs (their outputs dropped) so a compiled model
    sees one batch shape; in eval mode padding changes no other input's output."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing, reduction="sum")
    dev = loader.y.device
    total, correct, n = torch.zeros((), device=dev), torch.zeros((), device=dev, dtype=torch.long), 0
    for xb, yb in loader:
        n_b = xb.shape[0]
        if pad_to is not None and n_b < pad_to:
            xb = torch.cat([xb, xb.new_zeros((pad_to - n_b, *xb.shape[1:]))])
        with _autocast(dev, bf16):
            logits = model(xb)[:n_b]
        total += loss_fn(logits.float(), yb)
        correct += (logits.argmax(1) == yb).sum()
        n += len(yb)
    return {"loss": total.item() / max(n, 1), "acc": correct.item() / max(n, 1)}


@torch.no_grad()
def predict(model: nn.Module, loader: DeviceLoader, bf16: bool = False) -> torch.Tensor:
    """Softmax probabilities (N x classes, float32, on CPU) in loader order."""
    model.eval()
    out = []
    for xb, _ in loader:
        with _autocast(loader.y.device, bf16):
            out.append(model(xb).float().softmax(1).cpu())
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# Checkpoints

def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename): a killed process never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


class CheckpointError(ValueError):
    """A file that cannot be read as an inat-tune checkpoint; the message names the file."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: tensors and plain data only
    (the config is a dict, the classes a list), so a file from a shared bucket cannot run code.
    A file that needs more (an older pickle, or no checkpoint at all) raises CheckpointError."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # Never suggest torch's weights_only=False: that would run the code pickled in the file.
        raise CheckpointError(f"checkpoint {path} was not loaded: it was written by an older inat-tune "
                              "or is not an inat-tune checkpoint, and loading it would need to run "
                              "code pickled inside it") from None
    except EOFError:
        raise CheckpointError(f"checkpoint {path} is truncated (empty or cut short)") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, RunConfig, dict]:
    """Rebuild the model of a checkpoint (no pretrained download: weights come from the file)."""
    ckpt = load_checkpoint(path, map_location=device)
    cfg = RunConfig.from_dict(ckpt["config"])
    if cfg.model == "finetune":
        cfg = cfg.replace(weights="none")  # the checkpoint holds every weight
    model = create_model(cfg, num_classes=len(ckpt["classes"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), RunConfig.from_dict(ckpt["config"]), ckpt


@dataclass
class TrainState:
    """What a checkpoint holds; ``save(dir)`` writes ``dir/checkpoint.pt``."""

    cfg: RunConfig
    classes: tuple[str, ...]
    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int = 0  # epochs completed
    step: int = 0
    best: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    scaler: Any = None  # fp16's GradScaler, saved with the checkpoint

    def payload(self) -> dict[str, Any]:
        model = getattr(self.model, "_orig_mod", self.model)  # unwrap torch.compile
        mean, std = norm_stats(model)
        return {"model": model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "step": self.step, "config": self.cfg.to_dict(),
                "classes": list(self.classes), "best": self.best, "history": self.history,
                "mean": list(mean), "std": list(std),
                **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {})}

    def save(self, directory: str | Path) -> Path:
        return save_checkpoint(Path(directory) / CHECKPOINT_NAME, self.payload())


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best: dict[str, Any]
    state: TrainState


def device_arrays(data: TuningData, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_val, y_val) on ``device``. A device copy is kept warm for the next
    trial in this process (:mod:`inat_tune.data.warm`); on the CPU the images are views of the
    memory-mapped cache, so there is nothing to keep."""
    def load() -> tuple[torch.Tensor, ...]:
        return (*to_device(data.train.images, data.train.labels, device),
                *to_device(data.val.images, data.val.labels, device))

    if device.type == "cpu" or not data.key:
        return load()
    return WARM.get(("device", data.key, str(device)), load, device=device.type,
                    nbytes=lambda ts: sum(t.numel() * t.element_size() for t in ts))


# ---------------------------------------------------------------------------------------------

def fit(cfg: RunConfig, data: TuningData, *, device: str | torch.device | None = None,
        report: Report | None = None, out_dir: str | Path | None = None,
        resume: str | Path | dict | None = None, log: Callable[[str], None] | None = print) -> FitResult:
    """Train ``cfg`` on ``data`` and return the per-epoch history and the best epoch.

    Each epoch's metrics (``epoch, train_loss, train_acc, val_loss, val_acc, lr,
    epoch_seconds, images_per_s, time_total_s, trainable_params``) go to ``report(metrics,
    state)``; with ``out_dir`` the loop also writes ``checkpoint.pt`` (last) and ``best.pt``.
    ``resume`` (a checkpoint path or payload) continues from its epoch with the same batches.
    """
    device = select_device(str(device) if device else None)
    set_deterministic(cfg.deterministic)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg, num_classes=len(data.classes)).to(device)
    optimizer = build_optimizer(cfg, model)
    state = TrainState(cfg=cfg, classes=data.classes, model=model, optimizer=optimizer)
    ckpt: dict[str, Any] = {}
    if resume is not None:
        ckpt = resume if isinstance(resume, dict) else load_checkpoint(resume, map_location=device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state.epoch, state.step = ckpt["epoch"], ckpt["step"]
        state.best, state.history = dict(ckpt.get("best", {})), list(ckpt.get("history", []))

    precision = choose_precision(cfg.precision, device)
    bf16 = precision == "bf16"
    scaler = grad_scaler(precision, device)
    if scaler is not None and resume is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    state.scaler = scaler
    cuda = device.type == "cuda"
    channels_last = cfg.channels_last and cuda
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    mean, std = norm_stats(model)
    x_tr, y_tr, x_va, y_va = device_arrays(data, device)
    net: nn.Module = model
    if cfg.feature_cache and not cfg.augment:
        # A frozen prefix (if the model has one) computed once: the loop then trains only the
        # suffix on its features.
        x_tr, x_va, net = cached_features(model, x_tr, x_va, data=data, mean=mean, std=std, bf16=bf16)
    augment = Augment(color_jitter=cfg.color_jitter) if cfg.augment else None
    train_loader = DeviceLoader(x_tr, y_tr, cfg.batch_size, shuffle=True, augment=augment, mean=mean,
                                std=std, seed=cfg.seed, drop_last=len(y_tr) > cfg.batch_size,
                                channels_last=channels_last)
    val_loader = DeviceLoader(x_va, y_va, validation_batch_size(cfg), mean=mean, std=std,
                              channels_last=channels_last)
    compiled = cfg.compile and cuda
    if compiled:
        # Training batches all have one size (drop_last); the last validation batch is padded
        # to the full size (pad_to below), so the compiled model sees one shape per mode.
        net = torch.compile(net)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * cfg.epochs

    def set_lr() -> None:
        f = lr_factor(cfg, state.step, total_steps, steps_per_epoch)
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f
        state.step += 1

    t_start = time.perf_counter() - (state.history[-1]["time_total_s"] if state.history else 0.0)
    for epoch in range(state.epoch, cfg.epochs):
        if hasattr(model, "on_epoch_start"):
            model.on_epoch_start(epoch)  # e.g. gradual unfreezing
        train_loader.set_epoch(epoch)
        # dropout draws from the global RNG: seed it per epoch so a resumed run matches
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        tr = train_one_epoch(net, train_loader, optimizer, loss_fn, set_lr, precision, scaler)
        if cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        va = evaluate(net, val_loader, precision, cfg.label_smoothing,
                      pad_to=val_loader.batch_size if compiled else None)
        state.epoch = epoch + 1
        metrics = {
            "epoch": state.epoch, "train_loss": tr["train_loss"], "train_acc": tr["train_acc"],
            "val_loss": va["loss"], "val_acc": va["acc"],
            "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": seconds,
            "images_per_s": tr["images"] / max(seconds, 1e-9),
            "time_total_s": time.perf_counter() - t_start,
            "trainable_params": count_trainable(model), "precision": precision,
        }
        state.history.append(metrics)
        if not state.best or metrics["val_acc"] > state.best["val_acc"]:
            state.best = dict(metrics)
        if out_dir is not None:
            state.save(out_dir)
            if state.best["epoch"] == state.epoch:
                save_checkpoint(Path(out_dir) / "best.pt", state.payload())
        if log:
            log(f"epoch {state.epoch:3d}/{cfg.epochs}  train_loss {tr['train_loss']:.4f}  "
                f"train_acc {tr['train_acc']:.3f}  val_loss {va['loss']:.4f}  val_acc {va['acc']:.3f}  "
                f"{metrics['images_per_s']:.0f} img/s")
        if report is not None:
            report(metrics, state)
    return FitResult(history=state.history, best=state.best, state=state)
