"""GPU memory per trial: an estimate of a trial's peak from its config and the dataset size, a
pre-flight that refuses a sweep whose largest trial cannot fit its share of a GPU, and the
allocator cap that makes a GPU fraction hold for the whole process. No Ray, no Optuna.

**Why the context is subtracted.** ``torch.cuda.set_per_process_memory_fraction(f)`` caps only
PyTorch's caching allocator; the CUDA context (driver state, loaded cuBLAS/cuDNN kernels: some
hundreds of MB) comes on top. Four trials at 0.25 each capped at 0.25 of the card would together
need the card plus four contexts. :func:`allocator_fraction` gives the allocator
``(gpu_fraction * total - context) / total``, so allocator + context stay within the fraction.

**The estimate** (:func:`estimate_peak_bytes`) is a pure function of a :class:`RunConfig` and
the dataset's size. The model is built on the ``meta`` device (shapes, no storage), so it costs
no memory and works for a ResNet50 at 224 px on a laptop. What ``fit()`` keeps on the device:

=============  ================================================================================
weights        every parameter and buffer (fp32), the whole model (a frozen prefix included)
grads          one fp32 gradient per trainable parameter (frozen ones get none:
               :mod:`inat_tune.models.freezing`; ``gradual`` counted at its last epoch)
optimizer      AdamW / Adam / NAdam: 2 fp32 tensors per trainable parameter; SGD: 1 with
               momentum, else 0
activations    one training batch: the input batch plus everything alive at the peak of a
               forward + backward pass (tensors saved for backward, gradient buffers), measured
               by running that pass on the meta device and following every tensor's storage
               (:class:`_LiveBytes`); per image x ``batch_size`` (exactly linear)
fixed_saved    what that pass keeps alive whatever the batch size: the bf16/fp16 copies of
               weights autocast makes, normalisation statistics
data           the uint8 train + val images, ``N x S x S x 3`` bytes, moved to the device once
features       ``feature_cache`` without ``augment`` and a frozen prefix: its output for every
               image, ``N x prod(feature shape)`` x 2 bytes in bf16 (as
               :mod:`inat_tune.data.features` stores it), else x 4
feature_pass   computing those features: the frozen prefix in eval mode, no grad, over
               ``FEATURE_BATCH`` images at a time
workspace      cuBLAS/cuDNN workspaces (:data:`WORKSPACE_BYTES`), labels and the loader's
               per-epoch index and augmentation tensors, and the optimizer step's temporaries
               where they exceed the activations (they live after backward freed those)
=============  ================================================================================

``total`` is the sum of the parts. For a cached run that slightly overcounts: the uint8 data and
the feature pass are gone before the first gradient exists (a few % of the total for the
shipped spaces). Precision: fp32, or bf16 / fp16 autocast, which is emulated on the meta device
(:class:`_AutocastEmulation`: CUDA's autocast op lists), so what a pass saves has the dtypes it
has on a GPU. ``precision: auto`` is taken as bf16 (a GPU of the Ampere generation or later)
unless the caller passes the precision the device resolves it to.

Not modelled: ``torch.compile`` (it saves less: the estimate is then high), cuDNN algorithm
workspaces beyond :data:`WORKSPACE_BYTES`, the caching allocator's rounding and fragmentation
(``memory_reserved`` can exceed ``memory_allocated`` by some %), kernels' internal scratch
memory, and, for ViT, flash attention's smaller saved state (the meta pass takes the math
path: high).

About 800 lines on purpose: one question, what a trial's peak GPU memory will be, answered
once for every model family (the meta-device pass, its precision emulation, the corners of a
space, the pre-flight message); splitting it would scatter one estimate over several files.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..config import ConfigError, RunConfig

log = logging.getLogger(__name__)

GB = 1e9  # messages use decimal GB, as GPU makers do ("a 24 GB card")
FRACTIONS = (0.125, 0.25, 0.333, 0.5, 1.0)  # the GPU shares the pre-flight suggests
WORKSPACE_BYTES = 64 * 2**20  # cuBLAS + cuDNN workspaces, allocated through PyTorch's allocator
PROBE_BATCH = 16  # the meta pass runs at this batch and twice it: per-image cost by difference
MAX_CORNERS = 256  # most configurations largest_configs enumerates
CONTEXT_ENV = "INAT_TUNE_CUDA_CONTEXT_BYTES"  # the context the sweep's driver measured
CONTEXT_CAP = 2**30  # a trial's own measurement above this counts its neighbours' memory too
_LOADER_BYTES_PER_IMAGE = 8 + 8 + 8 * 4  # label (int64), epoch order (int64), aug numbers (fp32)


class MemoryPreflightError(ValueError):
    """The largest trial of a sweep cannot fit its GPU fraction; the message has the numbers."""


# ---------------------------------------------------------------------------------------------
# The estimate


@dataclass(frozen=True)
class MemoryEstimate:
    """One trial's peak device memory, in bytes, by part (see the module docstring)."""

    weights: int
    grads: int
    optimizer: int
    activations: int
    fixed_saved: int
    data: int
    features: int
    feature_pass: int
    workspace: int
    batch_size: int
    precision: str  # the precision estimated: fp32 | bf16 | fp16
    activation_bytes_per_image: float  # activations / batch_size
    step_bytes: int = 0  # the optimizer step's temporaries (part of workspace when they exceed
    # the activations)

    PARTS: ClassVar[tuple[str, ...]] = ("weights", "grads", "optimizer", "activations", "fixed_saved",
                                        "data", "features", "feature_pass", "workspace")

    @property
    def total(self) -> int:
        return sum(self.parts().values())

    def parts(self) -> dict[str, int]:
        return {p: getattr(self, p) for p in self.PARTS}

    def at_batch(self, batch_size: int) -> "MemoryEstimate":
        """The same run at another batch size (activations are linear in it)."""
        act = int(round(self.activation_bytes_per_image * batch_size))
        static = self.workspace - max(0, self.step_bytes - self.activations)
        return dataclasses.replace(self, batch_size=batch_size, activations=act,
                                   workspace=static + max(0, self.step_bytes - act))

    def largest_batch(self, allowed: float) -> int:
        """The largest batch size whose total fits in ``allowed`` bytes (0: not even 1)."""
        if self.activation_bytes_per_image <= 0:
            return self.batch_size if self.total <= allowed else 0
        lo, hi = 0, max(1, int(allowed // self.activation_bytes_per_image) + 1)
        while lo < hi:  # total is monotone in the batch size
            mid = (lo + hi + 1) // 2
            if self.at_batch(mid).total <= allowed:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def describe(self) -> str:
        """``7.42 GB = weights 0.10 + ... + workspace 0.07`` (non-zero parts only)."""
        parts = " + ".join(f"{k} {v / GB:.2f}" for k, v in self.parts().items() if v)
        return f"{self.total / GB:.2f} GB = {parts}"


def resolve_precision(cfg: RunConfig, precision: str | None = None, *, auto: str = "bf16") -> str:
    """The precision a run of ``cfg`` trains in: ``precision`` when given (fp32 | bf16 |
    fp16, e.g. ``train.choose_precision`` on the device), else ``cfg.precision`` with ``auto``
    read as ``auto`` (bf16 by default: Ampere and later GPUs)."""
    p = precision if precision is not None else cfg.precision
    if p == "auto":
        p = auto
    if p not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision {p!r}: expected fp32, bf16 or fp16")
    return p


def estimate_peak_bytes(cfg: RunConfig, num_train: int, num_val: int, num_classes: int, *,
                        precision: str | None = None, device: str = "cuda") -> MemoryEstimate:
    """The peak device memory of one ``fit()`` of ``cfg`` on ``num_train`` + ``num_val``
    images of ``num_classes`` classes, by part. ``precision`` (fp32 | bf16 | fp16) overrides
    ``cfg.precision``; ``auto`` counts as bf16. No device memory is used: the model runs on
    the meta device. ``device="cpu"``: a run on the CPU, where the images are views of the
    memory-mapped decode cache (data 0), there are no cuBLAS/cuDNN workspaces and the optimizer
    steps parameter by parameter (no step temporaries to speak of)."""
    prec = resolve_precision(cfg, precision)
    cpu = device == "cpu"
    n = num_train + num_val
    key = _model_key(cfg)
    feature_batch = min(_feature_batch(), max(num_train, num_val, 1)) if dict(key)["cached"] else 0
    prof = _profile(key, num_classes, prec, feature_batch)
    per_image = prof.act_per_image
    act = int(round(per_image * cfg.batch_size))
    features = 0
    if prof.feature_numel:
        features = n * prof.feature_numel * (2 if prec == "bf16" else 4)
    opt = prof.trainable_bytes * _optimizer_states(cfg)
    step = 0 if cpu else prof.trainable_bytes * _step_temporaries(cfg)
    workspace = (0 if cpu else WORKSPACE_BYTES) + n * _LOADER_BYTES_PER_IMAGE + max(0, step - act)
    return MemoryEstimate(weights=prof.weight_bytes, grads=prof.trainable_bytes, optimizer=opt,
                          activations=act, fixed_saved=prof.fixed_saved,
                          data=0 if cpu else n * cfg.image_size * cfg.image_size * 3, features=features,
                          feature_pass=prof.feature_pass, workspace=workspace,
                          batch_size=cfg.batch_size, precision=prec,
                          activation_bytes_per_image=per_image, step_bytes=step)


def _optimizer_states(cfg: RunConfig) -> int:
    """fp32 state tensors per trainable parameter (exp_avg, exp_avg_sq / momentum buffer)."""
    if cfg.optimizer == "sgd":
        return 1 if cfg.momentum > 0 else 0
    return 2  # adam, adamw, nadam (their step counters are scalars on the host)


def _step_temporaries(cfg: RunConfig) -> int:
    """Parameter-sized temporaries of one foreach step on CUDA (the default there): Adam's
    sqrt(exp_avg_sq) and the weight-decayed gradient copy (Adam/NAdam/SGD add the decay to a
    copy of the gradients; AdamW decays the weights in place)."""
    if cfg.optimizer == "sgd":
        return 1
    return 1 if cfg.optimizer == "adamw" else 2


def _feature_batch() -> int:
    from ..data.features import FEATURE_BATCH
    return FEATURE_BATCH


# --- the meta-device pass ------------------------------------------------------------------------

# The RunConfig fields that change the model, what trains, or what it is fed (the rest, such as
# lr or batch_size, change nothing a pass on the meta device measures).
_MODEL_FIELDS = ("model", "image_size", "filters", "filter_org", "kernel_size", "conv_activation",
                 "dense_activation", "dense", "batch_norm", "dropout", "backbone", "strategy",
                 "label_smoothing")


def _model_key(cfg: RunConfig) -> tuple:
    """What the meta pass depends on, with equivalent configs made equal: ``gradual`` is the
    strategy it reaches at its last epoch (it never caches features), ``full`` never caches."""
    values = {k: getattr(cfg, k) for k in _MODEL_FIELDS}
    cached = bool(cfg.feature_cache and not cfg.augment)
    if cfg.model == "scratch_cnn":  # the fine-tuning keys mean nothing to it
        values.update(backbone=None, strategy=None)
        cached = False
    else:
        for k in ("filters", "filter_org", "kernel_size", "conv_activation", "dense_activation",
                  "dense", "batch_norm", "dropout"):
            values[k] = None
        if cfg.strategy == "gradual":
            from ..models.backbones import get_backbone

            stages = get_backbone(cfg.backbone).stages
            n = min((cfg.epochs - 1) // cfg.unfreeze_every, len(stages))
            values["strategy"] = ("full" if n == len(stages) else "head_only" if n == 0
                                  else f"freeze_until:{stages[len(stages) - n - 1]}")
            cached = False
        elif cfg.strategy == "full":
            cached = False
    values["cached"] = cached
    return tuple(sorted(values.items()))


@dataclass(frozen=True)
class _Profile:
    weight_bytes: int
    trainable_bytes: int
    act_per_image: float
    fixed_saved: int
    feature_numel: int  # per image; 0 without a feature cache
    feature_pass: int


@functools.lru_cache(maxsize=512)
def _profile(key: tuple, num_classes: int, precision: str, feature_batch: int) -> _Profile:
    k = dict(key)
    fields = {f: k[f] for f in _MODEL_FIELDS if k[f] is not None}
    cfg = dataclasses.replace(RunConfig(), **fields, weights="none")
    from ..models.registry import create_model

    with torch.device("meta"):
        model = create_model(cfg, num_classes)
    _native_kernels(model)
    weight_bytes = sum(_nbytes(t) for t in itertools.chain(model.parameters(), model.buffers()))
    trainable_bytes = sum(_nbytes(p) for p in model.parameters() if p.requires_grad)
    lowp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    net: nn.Module = model
    in_shape: tuple[int, ...] = (3, cfg.image_size, cfg.image_size)
    in_dtype = torch.float32
    feature_numel = feature_pass = 0
    frozen = model.frozen_prefix() if k["cached"] and hasattr(model, "frozen_prefix") else None
    if frozen is not None:
        # fit(): the prefix runs once over every image (eval, no grad; autocast only in bf16,
        # as data.features.compute_features does), then only the suffix trains, on features
        # stored in bf16 (bf16 runs) or fp32
        pass_dtype = torch.bfloat16 if precision == "bf16" else None
        feats, peak = _inference_pass(frozen.prefix, (feature_batch, *in_shape), pass_dtype)
        x_bytes = feature_batch * math.prod(in_shape) * 4
        # the batch is scaled and normalised first: float copy, (x - mean), / std: 3 batches
        feature_pass = max(3 * x_bytes, x_bytes + peak)
        in_shape, feature_numel = tuple(feats.shape[1:]), math.prod(feats.shape[1:])
        in_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        net = frozen.suffix
    p1 = _training_pass(net, PROBE_BATCH, in_shape, in_dtype, lowp, cfg.label_smoothing, num_classes)
    p2 = _training_pass(net, 2 * PROBE_BATCH, in_shape, in_dtype, lowp, cfg.label_smoothing, num_classes)
    per_image = max(0.0, (p2 - p1) / PROBE_BATCH)
    fixed = max(0, int(round(p1 - per_image * PROBE_BATCH)))
    return _Profile(weight_bytes, trainable_bytes, per_image, fixed, feature_numel, feature_pass)


class _MishFn(torch.autograd.Function):
    """Mish as CUDA runs it: one kernel saving its input (on the meta device the backward is
    torch's decomposition into several full-size temporaries instead)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.empty_like(x)


class _NativeMish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _MishFn.apply(x)


def _native_kernels(model: nn.Module) -> None:
    """Swap in, on the meta model, modules whose memory is that of the fused CUDA kernels."""
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Mish):
            parent, _, last = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, last, _NativeMish())


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _training_pass(net: nn.Module, batch: int, in_shape: tuple[int, ...], in_dtype: torch.dtype,
                   lowp: torch.dtype | None, label_smoothing: float, num_classes: int) -> int:
    """Peak bytes of one forward + backward of ``net`` on the meta device at ``batch``, apart
    from parameters and gradients: the input batch, saved tensors and backward's buffers."""
    net.train()
    for p in net.parameters():
        p.grad = None
    x = torch.empty((batch, *in_shape), dtype=in_dtype, device="meta")
    y = torch.zeros(batch, dtype=torch.long, device="meta")
    external = [*net.parameters(), *net.buffers(), x, y]
    with _LiveBytes(external) as live:
        with _AutocastEmulation(lowp):
            logits = net(x)
            loss = nn.functional.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        loss.backward()
        del logits, loss
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    peak = live.peak(exclude=live.serials(grads))
    for p in net.parameters():
        p.grad = None
    return peak + _nbytes(x)


@torch.no_grad()
def _inference_pass(net: nn.Module, shape: tuple[int, ...], lowp: torch.dtype | None) -> tuple[torch.Tensor, int]:
    """(output, peak bytes apart from parameters and the input) of ``net`` in eval mode, no grad."""
    net.eval()
    x = torch.empty(shape, device="meta")
    with _LiveBytes([*net.parameters(), *net.buffers(), x]) as live:
        with _AutocastEmulation(lowp):
            out = net(x)
    return out, live.peak()


class _LiveBytes:
    """Follows every tensor storage that aten ops create (a TorchDispatchMode): created when an
    op returns a tensor whose storage is new, freed when that storage expires. ``peak()`` is the
    most bytes alive at any op, as a caching allocator's ``max_memory_allocated`` would count
    them (without kernels' internal scratch space). Storages that exist before (``external``:
    parameters, buffers, inputs) are not counted."""

    def __init__(self, external: Iterable[torch.Tensor]) -> None:
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        outer = self
        self._external = {t.untyped_storage()._cdata for t in external}
        self._live: dict[int, tuple[Any, int, int]] = {}  # key -> (weak ref, bytes, serial)
        self._events: list[tuple[int, int]] = []  # (serial, +bytes | -bytes) in time order
        self._serial = 0

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                outer._sweep()
                out = func(*args, **(kwargs or {}))
                for t in tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        s = t.untyped_storage()
                        key = s._cdata
                        if key not in outer._live and key not in outer._external:
                            outer._serial += 1
                            outer._live[key] = (StorageWeakRef(s), s.nbytes(), outer._serial)
                            outer._events.append((outer._serial, s.nbytes()))
                return out

        self._mode = Mode()

    def _sweep(self) -> None:
        dead = [k for k, (ref, _, _) in self._live.items() if ref.expired()]
        for k in dead:
            _, n, serial = self._live.pop(k)
            self._events.append((serial, -n))

    def __enter__(self) -> "_LiveBytes":
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)
        self._sweep()

    def serials(self, tensors: Iterable[torch.Tensor]) -> set[int]:
        """The serials of the storages of ``tensors`` that are still alive (e.g. the grads)."""
        out = set()
        for t in tensors:
            entry = self._live.get(t.untyped_storage()._cdata)
            if entry is not None:
                out.add(entry[2])
        return out

    def peak(self, exclude: set[int] = frozenset()) -> int:
        cur = peak = 0
        for serial, n in self._events:
            if serial in exclude:
                continue
            cur += n
            peak = max(peak, cur)
        return peak


# CUDA autocast's op lists (aten/src/ATen/autocast_mode.cpp), by the Python names the functions
# reach __torch_function__ with.
_LOWP_OPS = frozenset({
    "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "convolution", "_convolution", "prelu", "addmm", "addmv", "addr", "matmul",
    "__matmul__", "__rmatmul__", "einsum", "mm", "mv", "linear", "addbmm", "baddbmm", "bmm",
    "chain_matmul", "linalg_multi_dot", "scaled_dot_product_attention", "lstm_cell", "gru_cell",
    "rnn_tanh_cell", "rnn_relu_cell"})
_FP32_OPS = frozenset({
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p",
    "reciprocal", "rsqrt", "sinh", "tan", "pow", "__pow__", "softplus", "layer_norm", "group_norm",
    "rms_norm", "norm", "frobenius_norm", "nuclear_norm", "cosine_similarity", "poisson_nll_loss",
    "cosine_embedding_loss", "nll_loss", "hinge_embedding_loss", "kl_div", "l1_loss",
    "smooth_l1_loss", "huber_loss", "mse_loss", "margin_ranking_loss", "multilabel_margin_loss",
    "soft_margin_loss", "triplet_margin_loss", "multi_margin_loss",
    "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm", "logsumexp",
    "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "upsample_bilinear2d",
    "upsample_linear1d", "upsample_trilinear3d", "upsample_bicubic2d", "interpolate",
    # run in fp32 when given lower precision (autocast's "fp32_set_opt_dtype" list)
    "prod", "softmax", "log_softmax", "cumprod", "cumsum", "sum", "linalg_vector_norm",
    "linalg_matrix_norm"})
_PROMOTE_OPS = frozenset({"addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "grid_sampler",
                          "index_put", "scatter_add", "tensordot", "cat", "stack", "vdot"})


def _autocastable(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype in (torch.float32, torch.float16, torch.bfloat16)


class _AutocastEmulation:
    """CUDA autocast on any device (meta tensors included, which real autocast ignores): the
    inputs of matmul-like ops are cast to ``dtype``, those of the fp32 list to float32, and the
    promote list's to the widest. A TorchFunctionMode: it acts above autograd, as autocast does,
    so backward saves the cast copies as on a GPU. ``dtype`` None: does nothing."""

    def __init__(self, dtype: torch.dtype | None) -> None:
        from torch.overrides import TorchFunctionMode
        from torch.utils._pytree import tree_leaves, tree_map

        lowp = dtype

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = getattr(func, "__name__", "")
                target = None
                if name in _LOWP_OPS:
                    target = lowp
                elif name in _FP32_OPS:
                    target = torch.float32
                elif name in _PROMOTE_OPS:
                    kinds = {t.dtype for t in tree_leaves((args, kwargs)) if _autocastable(t)}
                    if len(kinds) > 1:
                        target = torch.float32 if torch.float32 in kinds else lowp
                if target is not None:
                    def cast(t: Any) -> Any:
                        return t.to(target) if _autocastable(t) and t.dtype != target else t
                    args, kwargs = tree_map(cast, (tuple(args), kwargs))
                return func(*args, **kwargs)

        self._mode = Mode() if dtype is not None else None

    def __enter__(self) -> "_AutocastEmulation":
        if self._mode is not None:
            self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._mode is not None:
            self._mode.__exit__(*exc)


# ---------------------------------------------------------------------------------------------
# The corners of a search space


# Numeric keys whose largest value needs the most memory, and those whose smallest does.
_UP = ("image_size", "batch_size", "filters", "dense", "kernel_size", "momentum", "epochs",
       "color_jitter")
_DOWN = ("unfreeze_every",)
# Categorical keys that change the estimate, most important first (the order the enumeration
# keeps when it must be capped), each with the values known to need the most memory first.
_ENUM = ("strategy", "backbone", "augment", "feature_cache", "precision", "optimizer",
         "filter_org", "kernel_size", "filters", "conv_activation", "dense_activation",
         "batch_norm", "compile")
_DOMINANT = {"filter_org": ("double",), "batch_norm": (True,), "compile": (False,)}
_IRRELEVANT = {"scratch_cnn": ("backbone", "strategy", "unfreeze_every", "feature_cache", "augment",
                               "weights", "backbone_lr_factor"),
               "finetune": ("filters", "filter_org", "kernel_size", "conv_activation",
                            "dense_activation", "dense", "batch_norm")}


def largest_configs(spec: Any) -> list[RunConfig]:
    """The configurations at the corners of ``spec``'s space (a :class:`SweepSpec`) that can
    need the most memory: numeric parameters at their largest (batch_size, image_size,
    filters, dense, kernel_size...; unfreeze_every at its smallest), every value of the
    categorical ones that change the estimate (strategy, backbone, augment, feature_cache,
    optimizer, activations, kernel lists...; batch_norm on and filter_org double where
    offered, since they dominate), capped at :data:`MAX_CORNERS`; the other parameters at a
    value of their own. Combinations RunConfig refuses are left out."""
    params = dict(spec.parameters)
    skip = set(_IRRELEVANT.get(spec.model, ()))
    base: dict[str, Any] = {"model": spec.model}
    choices: dict[str, list[Any]] = {}
    for name, p in params.items():
        pts = p.points()
        numeric = pts is not None and all(_is_number(v) for v in pts)
        if p.is_constant:
            base[name] = p.value
        elif name in skip:
            base[name] = pts[0] if pts else _extreme(p, up=False)
        elif name in _UP or name in _DOWN:
            up = name in _UP
            if pts is None or numeric:
                base[name] = _extreme(p, up=up)
            else:  # e.g. kernel_size: [3, 5, [7, 5, 5, 3, 3]]: the largest number and every list
                nums = [v for v in pts if _is_number(v)]
                choices[name] = ([max(nums) if up else min(nums)] if nums else []) + \
                    [v for v in pts if not _is_number(v)]
        elif name in _ENUM:
            best = [v for v in _DOMINANT.get(name, ()) if v in pts]
            choices[name] = best[:1] or list(pts)
        else:  # changes nothing the estimate sees (lr, weight_decay, dropout, ...)
            base[name] = pts[0] if pts else _extreme(p, up=False)
    base["val_fraction"], base["split_seed"] = spec.val_fraction, spec.split_seed
    keys = sorted(choices, key=lambda k: _ENUM.index(k) if k in _ENUM else len(_ENUM))
    kept, size = [], 1
    for k in keys:
        if size * len(choices[k]) > MAX_CORNERS:
            log.info("memory pre-flight: %s taken at %r only (more than %d corners)", k,
                     choices[k][0], MAX_CORNERS)
            base[k] = choices[k][0]
            continue
        kept.append(k)
        size *= len(choices[k])
    out: list[RunConfig] = []
    for combo in itertools.product(*(choices[k] for k in kept)):
        try:
            cfg = RunConfig.from_dict({**base, **dict(zip(kept, combo))})
        except ConfigError:
            continue
        if cfg not in out:
            out.append(cfg)
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _extreme(p: Any, up: bool) -> Any:
    lo, hi = p.extremes()
    v = hi if up else lo
    if p.integer:
        v = int(math.floor(v + 1e-9) if up else math.ceil(v - 1e-9))
    return v


def largest_estimate(spec: Any, num_train: int, num_val: int, num_classes: int, *,
                     auto_precision: str = "bf16", device: str = "cuda") -> tuple[RunConfig, MemoryEstimate, list]:
    """(the config of ``spec`` with the largest estimate, that estimate, and every
    (config, estimate) pair of :func:`largest_configs`). ``auto_precision``: what
    ``precision: auto`` resolves to on the trials' ``device`` (fp32 on a CPU)."""
    pairs = []
    for cfg in largest_configs(spec):
        prec = resolve_precision(cfg, auto=auto_precision)
        pairs.append((cfg, estimate_peak_bytes(cfg, num_train, num_val, num_classes, precision=prec,
                                               device=device)))
    if not pairs:
        raise ValueError("the search space has no configuration RunConfig accepts")
    cfg, est = max(pairs, key=lambda ce: ce[1].total)
    return cfg, est, pairs


def describe_config(cfg: RunConfig, est: MemoryEstimate | None = None) -> str:
    """A configuration in the words that matter for memory."""
    if cfg.model == "scratch_cnn":
        ks = cfg.kernel_size if isinstance(cfg.kernel_size, int) else list(cfg.kernel_size)
        parts = [f"scratch_cnn filters {list(cfg.conv_filters())}", f"kernel {ks}",
                 cfg.conv_activation, f"dense {cfg.dense}"] + (["batch_norm"] if cfg.batch_norm else [])
    else:
        parts = [f"finetune {cfg.backbone} {cfg.strategy}", "augment" if cfg.augment else "no augment"]
        if est is not None and est.features:
            parts.append(f"feature cache {est.features / GB:.2f} GB")
    parts += [f"{cfg.image_size} px", f"batch {cfg.batch_size}", cfg.optimizer]
    if est is not None:
        parts.append(est.precision)
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# The pre-flight and the allocator cap


def allowed_bytes(gpu_fraction: float, total_bytes: int, context_bytes: int) -> float:
    """What a trial's tensors may take: its share of the card minus its CUDA context."""
    return gpu_fraction * total_bytes - context_bytes


def allocator_fraction(gpu_fraction: float, total_bytes: int, context_bytes: int) -> float:
    """The fraction for ``torch.cuda.set_per_process_memory_fraction`` that keeps the whole
    process (allocator + CUDA context) within ``gpu_fraction`` of a card of ``total_bytes``:
    ``(gpu_fraction * total - context) / total``, clipped to (0, 1]."""
    if total_bytes <= 0:
        raise ValueError(f"total_bytes={total_bytes}: must be > 0")
    f = allowed_bytes(gpu_fraction, total_bytes, context_bytes) / total_bytes
    return min(1.0, max(f, 1e-6))


def preflight(spec: Any, gpus_per_trial: float, device_total_bytes: int, context_bytes: int,
              num_train: int, num_val: int, num_classes: int, *, auto_precision: str = "bf16") -> None:
    """Refuse (MemoryPreflightError, one line with the numbers) a sweep whose largest trial's
    estimate exceeds ``gpus_per_trial * device_total_bytes - context_bytes``, naming the
    smallest of :data:`FRACTIONS` that fits and the largest batch size that fits at this one."""
    cfg, est, pairs = largest_estimate(spec, num_train, num_val, num_classes, auto_precision=auto_precision)
    allowed = allowed_bytes(gpus_per_trial, device_total_bytes, context_bytes)
    if est.total <= allowed:
        return
    card = device_total_bytes / GB
    over = [(c, e) for c, e in pairs if e.total > allowed]
    ways, notes = [], []
    fits = [f for f in FRACTIONS if est.total <= allowed_bytes(f, device_total_bytes, context_bytes)]
    if fits:
        ways.append(f"--gpus-per-trial {fits[0]:g}")
    else:
        notes.append(f"not even a whole {card:.1f} GB GPU holds it")
    batch = min(e.largest_batch(allowed) for _, e in over)
    bs = spec.parameters.get("batch_size")
    pts = [v for v in (bs.points() or []) if _is_number(v)] if bs is not None else []
    if batch >= 1 and any(v <= batch for v in pts):
        batch = max(v for v in pts if v <= batch)  # a value the space offers
    if batch >= 1:
        ways.append(f"batch_size <= {batch}")
    else:
        notes.append(f"no batch size fits at {gpus_per_trial:g}: all but the activations takes "
                     f"{est.at_batch(0).total / GB:.2f} GB")
    if any(e.features for _, e in over):
        no_cache = [estimate_peak_bytes(c.replace(feature_cache=False), num_train, num_val, num_classes,
                                        precision=e.precision) for c, e in over]
        if all(e.total <= allowed for e in no_cache):
            ways.append("feature_cache: false")
    advice = f"it fits with {' or '.join(ways)}" if ways else "nothing here makes it fit"
    raise MemoryPreflightError(
        f"--gpus-per-trial {gpus_per_trial:g}: the largest trial needs ~{est.total / GB:.2f} GB of GPU "
        f"memory ({describe_config(cfg, est)}: {est.describe()}), more than the "
        f"{max(allowed, 0) / GB:.2f} GB it may use ({gpus_per_trial:g} x {card:.1f} GB - "
        f"{context_bytes / GB:.2f} GB CUDA context); {advice}" + (f" ({'; '.join(notes)})" if notes else ""))


def memory_line(cfg: RunConfig, est: MemoryEstimate, gpus_per_trial: float = 0.0,
                device_total_bytes: int | None = None, context_bytes: int = 0) -> str:
    """The dry run's line: ``peak memory per trial ~X GB (largest config: ...)``."""
    line = f"peak memory per trial ~{est.total / GB:.2f} GB (largest config: {describe_config(cfg, est)}; {est.describe()})"
    if gpus_per_trial and device_total_bytes:
        allowed = allowed_bytes(gpus_per_trial, device_total_bytes, context_bytes)
        line += (f"; {max(allowed, 0) / GB:.2f} GB allowed at --gpus-per-trial {gpus_per_trial:g} "
                 f"({gpus_per_trial:g} x {device_total_bytes / GB:.1f} GB - {context_bytes / GB:.2f} GB "
                 "CUDA context)")
    elif gpus_per_trial:
        line += "; the GPUs' memory is not known here: not checked"
    else:
        line += "; trials run on the CPU (host memory; the images are shared memory maps)"
    return line


# ---------------------------------------------------------------------------------------------
# The CUDA context


def cuda_context_bytes(device: Any = None, *, warm: bool = True) -> int:
    """This process's CUDA context, in bytes; 0 without CUDA or for a non-CUDA ``device``.

    Method: the context's memory cannot be read directly, and reading ``mem_get_info`` before
    the context exists is impossible in-process (the call creates it). So: create the context
    (``torch.cuda.init()`` and a tiny allocation), with ``warm`` also load cuBLAS and cuDNN (a
    small matmul and convolution, in bf16 too where supported: with CUDA's lazy module loading
    their kernels are part of the context once used), then ``used = total - free`` from
    ``torch.cuda.mem_get_info`` minus ``torch.cuda.memory_reserved()`` (what PyTorch's
    allocator holds). ``used`` is the whole device's, so other processes on the GPU are
    counted too: measure where this process is alone on it (:func:`measure_device` runs it in
    a fresh process), or see :func:`trial_context_bytes`.
    """
    if not torch.cuda.is_available():
        return 0
    dev = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    if dev.type != "cuda":
        return 0
    torch.cuda.init()
    x = torch.ones(8, 8, device=dev)
    if warm:
        w = torch.ones(4, 8, 3, 3, device=dev)
        torch.nn.functional.conv2d(x.view(1, 1, 8, 8).expand(1, 8, 8, 8).contiguous(), w, padding=1)
        x @ x
        if torch.cuda.is_bf16_supported():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                x @ x
                torch.nn.functional.conv2d(x.view(1, 1, 8, 8).expand(1, 8, 8, 8).contiguous(), w, padding=1)
    torch.cuda.synchronize(dev)
    free, total = torch.cuda.mem_get_info(dev)
    return max(0, int(total - free - torch.cuda.memory_reserved(dev)))


def trial_context_bytes() -> int:
    """The context a trial subtracts: the sweep driver's measurement (``$INAT_TUNE_CUDA_CONTEXT_BYTES``,
    taken in a fresh process before any trial started) when set, else this process's own
    :func:`cuda_context_bytes`, capped at :data:`CONTEXT_CAP` since trials sharing the GPU
    make it count their memory too."""
    env = os.environ.get(CONTEXT_ENV)
    if env:
        try:
            return max(0, int(env))
        except ValueError:
            pass
    return min(cuda_context_bytes(), CONTEXT_CAP)


def measure_device(python: str | None = None, timeout: float = 120.0) -> dict[str, Any] | None:
    """Device 0's total memory, CUDA context and what ``precision: auto`` picks there, measured
    in a fresh process (the caller keeps no CUDA context for the sweep's duration, and no other
    process of the sweep runs yet); None when it cannot be measured."""
    code = ("import json, torch\n"
            "from inat_tune.tune.memory import cuda_context_bytes\n"
            "from inat_tune.train import choose_precision\n"
            "d = torch.device('cuda', 0)\n"
            "ctx = cuda_context_bytes(d)\n"
            "print(json.dumps({'total': torch.cuda.get_device_properties(0).total_memory, 'context': ctx,"
            " 'auto': choose_precision('auto', d), 'name': torch.cuda.get_device_name(0)}))\n")
    here = str(Path(__file__).resolve().parents[2])  # this checkout, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
    try:
        r = subprocess.run([python or sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=timeout, env=env)
        return json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def split_sizes(labels: Sequence[int], val_fraction: float, split_seed: int) -> tuple[int, int]:
    """(train, val) image counts of the sweep's stratified split of ``train/``."""
    from ..data.split import stratified_split
    s = stratified_split(labels, val_fraction, split_seed)
    return len(s.train), len(s.val)


def sweep_memory(spec: Any, labels: Sequence[int], num_classes: int, gpus_per_trial: float, *,
                 device: Mapping[str, Any] | None = None, check: bool = True) -> str:
    """The dry run's memory line for a sweep over ``train/`` images with ``labels``; with
    ``device`` (:func:`measure_device`'s answer) and ``check``, the pre-flight too (raises
    MemoryPreflightError). Trials on the CPU (``gpus_per_trial`` 0) are estimated in fp32."""
    n_tr, n_va = split_sizes(labels, spec.val_fraction, spec.split_seed)
    auto = (device or {}).get("auto", "bf16") if gpus_per_trial > 0 else "fp32"
    if gpus_per_trial > 0 and device and check:
        preflight(spec, gpus_per_trial, int(device["total"]), int(device["context"]), n_tr, n_va,
                  num_classes, auto_precision=auto)
    cfg, est, _ = largest_estimate(spec, n_tr, n_va, num_classes, auto_precision=auto,
                                   device="cuda" if gpus_per_trial > 0 else "cpu")
    total = int(device["total"]) if device else None
    return memory_line(cfg, est, gpus_per_trial, total, int(device["context"]) if device else 0)


__all__ = ["MemoryEstimate", "MemoryPreflightError", "estimate_peak_bytes", "largest_configs",
           "largest_estimate", "preflight", "allocator_fraction", "cuda_context_bytes",
           "trial_context_bytes", "measure_device", "memory_line", "sweep_memory", "split_sizes",
           "describe_config", "resolve_precision"]
