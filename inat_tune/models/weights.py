"""Weights for a backbone (``RunConfig.weights``), loaded strictly or not at all.

``imagenet`` loads torchvision's file from the torch hub cache
(``torch.hub.get_dir()/checkpoints/<file>``), downloading it there once if it is missing;
offline, one :class:`WeightsError` says which file to put where. ``/path/file.pth`` loads a
local state dict with torchvision's key names: every backbone key must be there with its shape
(the old head's keys are ignored). ``none`` is random initialisation. Nothing ever falls back
to random weights silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .backbones import Backbone, get_backbone, weights_file_name


class WeightsError(RuntimeError):
    """Pretrained weights that cannot be had or do not fit; the message names the file."""


def hub_checkpoint_path(backbone: str) -> Path:
    """Where torchvision keeps (and looks for) the ImageNet file of ``backbone``."""
    w = get_backbone(backbone).weights_enum()
    return Path(torch.hub.get_dir()) / "checkpoints" / weights_file_name(w)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - junk bytes, truncated file, foreign pickle
        # Never repeat torch's advice to retry with weights_only=False: that runs the file's code.
        raise WeightsError(f"weights file {path} is not a state dict (torch.load with "
                           f"weights_only=True: {type(e).__name__}); save one with "
                           "torch.save(model.state_dict(), path)") from None
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        kind = type(state).__name__
        hint = ""
        if isinstance(state, Mapping) and any(k in state for k in ("state_dict", "model")):
            hint = " (it looks like a training checkpoint: save its model's state_dict alone)"
        raise WeightsError(f"weights file {path} is not a state dict (a mapping of parameter name "
                           f"-> tensor, as torch.save(model.state_dict(), path) writes); got {kind}{hint}")
    return dict(state)


def _imagenet_state_dict(spec: Backbone) -> tuple[dict[str, torch.Tensor], Path]:
    """torchvision's ImageNet file: from the hub cache, else downloaded there once."""
    w = spec.weights_enum()
    path = hub_checkpoint_path(spec.name)
    if path.is_file():  # no network at all when the file is already there
        return _read_state_dict(path), path
    path.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(str(path) + ".lock"):  # trials of a sweep download it once
        if not path.is_file():
            try:
                torch.hub.load_state_dict_from_url(w.url, model_dir=str(path.parent), map_location="cpu",
                                                   progress=False, check_hash=True, file_name=path.name)
            except Exception as e:  # noqa: BLE001 - offline, proxy, HTTP error, bad hash
                raise WeightsError(
                    f"cannot get the ImageNet weights of {spec.name} ({spec.weights}): download of "
                    f"{w.url} failed ({type(e).__name__}: {e}). torchvision expects the file "
                    f"{path.name} at {path}: download it on a machine with internet access and "
                    f"copy it there, or set weights=/path/to/state_dict.pth (a torch.save'd state "
                    f"dict of torchvision's {spec.builder}). Random weights are never used instead."
                ) from None
    return _read_state_dict(path), path


def _adapt_vit(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """ViT at another input size: resample the position embedding (torchvision's helper)."""
    key = "encoder.pos_embedding"
    if key in state and state[key].shape != net.encoder.pos_embedding.shape and state[key].ndim == 3:
        from torchvision.models.vision_transformer import interpolate_embeddings
        state = dict(interpolate_embeddings(net.image_size, net.patch_size, state))
    return state


def load_backbone_state(net: nn.Module, spec: Backbone, state: Mapping[str, torch.Tensor],
                        source: str | Path) -> None:
    """Load ``state`` into ``net``'s backbone: every backbone key present with its shape.

    Keys of the old head are ignored whatever their shape, as are ``spec.ignore`` prefixes
    (aux classifiers); BatchNorm's ``num_batches_tracked`` may be absent (older files).
    Anything else missing, misshapen or unknown raises WeightsError naming ``source``.
    """
    if spec.name == "vit_b_16":
        state = _adapt_vit(dict(state), net)
    head = spec.head + "."
    own = net.state_dict()

    def skipped(k: str) -> bool:
        return k.startswith(head) or k.startswith(spec.ignore)

    problems = []
    for k, v in own.items():
        if skipped(k):
            continue
        if k not in state:
            if not k.endswith("num_batches_tracked"):
                problems.append(f"missing {k} {tuple(v.shape)}")
        elif tuple(state[k].shape) != tuple(v.shape):
            problems.append(f"{k} has shape {tuple(state[k].shape)}, {spec.name} needs {tuple(v.shape)}")
    problems += [f"unexpected key {k}" for k in state if k not in own and not skipped(k)]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise WeightsError(f"weights file {source} does not fit torchvision's {spec.builder} "
                           f"({len(problems)} problem(s)): {shown}")
    wanted = {k: v for k, v in state.items() if not skipped(k)}
    net.load_state_dict(wanted, strict=False)


def resolve_weights(spec: Backbone, weights: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The state dict ``weights`` names for ``spec`` (None for ``none``) and where it came from."""
    if weights == "none":
        return None, "none"
    if weights == "imagenet":
        state, path = _imagenet_state_dict(spec)
        return state, str(path)
    path = Path(weights).expanduser()
    return _read_state_dict(path), str(path)
