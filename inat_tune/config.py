"""The one typed configuration of a training run, validated once at the boundary.

Every hyperparameter a sweep can touch is a field of :class:`RunConfig`; the names are the
keys of search-space files, of ``--set key=value`` and of ``config/<key>`` columns in the
results. ``RunConfig.from_dict`` refuses unknown keys, wrong types and impossible values with
a :class:`ConfigError` that names the key, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

ACTIVATIONS = ("relu", "gelu", "silu", "mish", "leaky_relu", "elu", "tanh", "selu")
FILTER_ORGS = ("same", "double", "half")
OPTIMIZERS = ("adam", "adamw", "sgd", "nadam")
SCHEDULES = ("cosine", "onecycle", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MODELS = ("scratch_cnn", "finetune")
MIN_IMAGE_SIZE = 32  # five 2x2 max-pools need at least 2**5 pixels per side


# Names other tools use for our keys (Keras, timm, W&B examples): the hint of an unknown key.
ALIASES = {"learning_rate": "lr", "lr_rate": "lr", "num_epochs": "epochs", "n_epochs": "epochs",
           "max_epochs": "epochs", "batch": "batch_size", "batchsize": "batch_size", "bs": "batch_size",
           "wd": "weight_decay", "num_filters": "filters", "n_filters": "filters",
           "kernel": "kernel_size", "activation": "conv_activation", "bn": "batch_norm",
           "batchnorm": "batch_norm", "dense_size": "dense", "hidden": "dense",
           "hidden_size": "dense", "drop": "dropout", "img_size": "image_size",
           "input_size": "image_size", "resolution": "image_size", "opt": "optimizer",
           "scheduler": "schedule", "lr_schedule": "schedule", "smoothing": "label_smoothing",
           "augmentation": "augment", "data_augmentation": "augment", "model_name": "backbone",
           "arch": "backbone", "freeze": "strategy"}


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key."""


@dataclass(frozen=True)
class RunConfig:
    # --- what is trained -------------------------------------------------------------------
    model: str = "scratch_cnn"  # trainable family: scratch_cnn | finetune
    image_size: int = 64  # pixels per side fed to the network

    # --- Part A: the 5-block CNN -----------------------------------------------------------
    # Defaults from the recorded 48-config grid on real photos (tests/fixtures/README.md):
    # doubling filters + batch norm + dense 256 were the best cells; "same" / no BN underfit.
    filters: int | tuple[int, ...] = 32  # first-layer count (with filter_org) or 5 counts
    filter_org: str = "double"  # same | double | half: how counts change block to block
    kernel_size: int | tuple[int, ...] = 3  # one size for all blocks or 5 sizes
    conv_activation: str = "relu"
    dense_activation: str = "relu"
    dense: int = 256  # units in the one hidden dense layer
    batch_norm: bool = True
    dropout: float = 0.2  # before the output layer

    # --- Part B: a pretrained torchvision backbone ----------------------------------------
    backbone: str = "resnet50"
    weights: str = "imagenet"  # imagenet | none | /path/to/state_dict.pth
    strategy: str = "head_only"  # head_only | freeze_until:<stage> | full | gradual
    backbone_lr_factor: float = 0.1  # backbone lr = lr x this (full, gradual)
    unfreeze_every: int = 1  # gradual: epochs between unfreezing one more stage
    feature_cache: bool = True  # reuse frozen-backbone features when the strategy allows

    # --- data and augmentation ---------------------------------------------------------------
    augment: bool = True  # random resized crop + horizontal flip, on the device
    color_jitter: float = 0.0  # brightness/contrast/saturation strength, 0 = off
    val_fraction: float = 0.2  # stratified share of train/ held out for tuning
    split_seed: int = 0

    # --- optimisation ------------------------------------------------------------------------
    optimizer: str = "adamw"
    lr: float = 1e-3  # peak learning rate for the head / whole CNN
    momentum: float = 0.9  # sgd (nesterov) momentum
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.1
    batch_size: int = 64
    epochs: int = 10
    seed: int = 0
    precision: str = "auto"  # auto: bf16 where CUDA has it natively, else fp16 + GradScaler, CPU fp32
    channels_last: bool = True  # used on CUDA only
    compile: bool = False  # torch.compile the model (CUDA only; not with strategy gradual)
    deterministic: bool = False  # deterministic cuDNN/torch algorithms (slower; see README)

    # ------------------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "RunConfig":
        """Build a validated config; unknown keys and impossible values raise ConfigError."""
        known = cls.keys()
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in known:
                hint = [ALIASES[key]] if key in ALIASES else difflib.get_close_matches(key, known, n=1)
                raise ConfigError(
                    f"unknown config key {key!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; known keys: {', '.join(known)}"
                )
            values[key] = _coerce(key, value, _FIELD_TYPES[key])
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.keys()}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def replace(self, **changes: Any) -> "RunConfig":
        return RunConfig.from_dict({**self.to_dict(), **changes})

    # ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        def need(ok: bool, key: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"{key}={getattr(self, key)!r}: {why}")

        need(self.model in MODELS, "model", f"must be one of {MODELS}")
        need(self.image_size >= MIN_IMAGE_SIZE, "image_size",
             f"must be >= {MIN_IMAGE_SIZE} (five 2x2 max-pools halve it five times)")
        counts = self.filters if isinstance(self.filters, tuple) else (self.filters,)
        need(len(counts) in (1, 5), "filters", "give one first-layer count or a list of 5")
        need(all(c >= 1 for c in counts), "filters", "every filter count must be >= 1")
        if self.filter_org == "half" and len(counts) == 1:
            need(counts[0] >= 16, "filters",
                 "with filter_org=half the first layer needs >= 16 filters (5 halvings)")
        need(self.filter_org in FILTER_ORGS, "filter_org", f"must be one of {FILTER_ORGS}")
        ks = self.kernel_size if isinstance(self.kernel_size, tuple) else (self.kernel_size,)
        need(len(ks) in (1, 5), "kernel_size", "give one size or a list of 5")
        need(all(k >= 1 and k % 2 == 1 for k in ks), "kernel_size",
             "kernel sizes must be odd and >= 1 (same padding keeps the size)")
        need(self.conv_activation in ACTIVATIONS, "conv_activation", f"must be one of {ACTIVATIONS}")
        need(self.dense_activation in ACTIVATIONS, "dense_activation",
             f"must be one of {ACTIVATIONS}")
        need(self.dense >= 1, "dense", "must be >= 1")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        need(self.weights in ("imagenet", "none") or self.weights.endswith((".pth", ".pt")),
             "weights", "must be imagenet, none, or a path to a .pth/.pt state dict")
        need(self.strategy in ("head_only", "full", "gradual")
             or (self.strategy.startswith("freeze_until:") and len(self.strategy) > 13),
             "strategy", "must be head_only, freeze_until:<stage>, full or gradual")
        need(0.0 <= self.backbone_lr_factor <= 10.0, "backbone_lr_factor", "must be in [0, 10]")
        need(self.unfreeze_every >= 1, "unfreeze_every", "must be >= 1")
        need(0.0 <= self.color_jitter <= 1.0, "color_jitter", "must be in [0, 1]")
        need(0.0 < self.val_fraction < 1.0, "val_fraction", "must be in (0, 1)")
        need(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {OPTIMIZERS}")
        need(self.lr > 0 and math.isfinite(self.lr), "lr", "must be a positive number")
        need(0.0 <= self.momentum < 1.0, "momentum", "must be in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.schedule in SCHEDULES, "schedule", f"must be one of {SCHEDULES}")
        need(0 <= self.warmup_epochs < max(self.epochs, 1), "warmup_epochs",
             "must be >= 0 and shorter than epochs")
        need(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.epochs >= 1, "epochs", "must be >= 1")
        need(self.precision in PRECISIONS, "precision", f"must be one of {PRECISIONS}")
        need(not (self.compile and self.strategy == "gradual"), "compile",
             "torch.compile cannot be used with strategy gradual: each unfreezing flips "
             "requires_grad and train/eval of a stage, which forces a recompile, and past dynamo's "
             "recompile limit the model silently runs eagerly; set compile: false for gradual")

    # ------------------------------------------------------------------------------------------
    def conv_filters(self) -> tuple[int, ...]:
        """The five per-block filter counts."""
        if isinstance(self.filters, tuple):
            return self.filters if len(self.filters) == 5 else self.filters * 5
        return filter_counts(self.filters, self.filter_org)

    def kernel_sizes(self) -> tuple[int, ...]:
        ks = self.kernel_size
        if isinstance(ks, tuple):
            return ks if len(ks) == 5 else ks * 5
        return (ks,) * 5


def filter_counts(first: int, org: str, blocks: int = 5) -> tuple[int, ...]:
    """Per-block filter counts from the first block's count and an organisation."""
    factor = {"same": 1.0, "double": 2.0, "half": 0.5}[org]
    return tuple(max(1, int(round(first * factor**i))) for i in range(blocks))


# ----------------------------------------------------------------------------------------------
# Type coercion at the boundary (YAML and --set give strings, floats for ints, lists).

_FIELD_TYPES: dict[str, Any] = {}


def _coerce(key: str, value: Any, kind: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{key}={value!r}: expected {expected}")

    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad("true or false")
    if kind == "int":
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                raise bad("an integer") from None
            if f.is_integer():
                return int(f)
        raise bad("an integer")
    if kind == "float":
        if isinstance(value, bool):
            raise bad("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                pass
        raise bad("a number")
    if kind == "str":
        if isinstance(value, (str, Path)):
            return str(value)
        if value is None:
            return "none"
        raise bad("a string")
    if kind == "int_or_list":
        if isinstance(value, str) and "," in value:
            value = [v for v in value.strip("[]() ").split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(key, v, "int") for v in value)
        return _coerce(key, value, "int")
    raise AssertionError(kind)


def _kind(annotation: str) -> str:
    if "tuple" in annotation:
        return "int_or_list"
    return annotation.strip()


_FIELD_TYPES.update({f.name: _kind(str(f.type)) for f in dataclasses.fields(RunConfig)})


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["lr=1e-3", "filters=[32,64,64,128,128]"]`` -> dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        key, text = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """A YAML file of ``key: value`` (optional) with ``--set`` overrides on top."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise ConfigError(f"config file {p} is not valid YAML{where}: "
                              f"{getattr(e, 'problem', None) or e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: expected a mapping of key: value")
        raw.update(loaded)
    raw.update(parse_overrides(overrides))
    return RunConfig.from_dict(raw)
