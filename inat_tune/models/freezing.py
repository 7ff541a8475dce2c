"""Freezing strategies as data (``RunConfig.strategy``), and the one function that applies them.

``head_only``, ``freeze_until:<stage>``, ``full``, ``gradual`` (one more stage from the top
every ``unfreeze_every`` epochs): :func:`trainable_stages` maps a strategy to the set of
stages that train. :func:`freeze` turns such a set into ``requires_grad`` flags on a backbone's
parameters and returns the frozen submodules, which the model keeps in eval mode so their
BatchNorm statistics do not move either. :func:`frozen_prefix_length` says how many leading
pieces stay frozen for a whole run (the part whose output can be computed once as features).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .backbones import HEAD, Piece

STRATEGIES = ("head_only", "freeze_until:<stage>", "full", "gradual")


def trainable_stages(strategy: str, stages: Sequence[str], *, epoch: int = 0,
                     unfreeze_every: int = 1) -> set[str]:
    """The stages (plus :data:`HEAD`) that train under ``strategy`` at ``epoch`` (0-based).

    ``stages`` are ordered bottom (input) to top. ``head_only``: the head; ``freeze_until:S``:
    every stage above S and the head; ``full``: everything; ``gradual``: the head, plus one
    more stage from the top every ``unfreeze_every`` epochs.
    """
    stages = list(stages)
    if strategy == "head_only":
        return {HEAD}
    if strategy == "full":
        return {*stages, HEAD}
    if strategy == "gradual":
        if unfreeze_every < 1:
            raise ValueError(f"unfreeze_every={unfreeze_every}: must be >= 1")
        n = min(epoch // unfreeze_every, len(stages))
        return {*stages[len(stages) - n:], HEAD}
    if strategy.startswith("freeze_until:"):
        stage = strategy.split(":", 1)[1]
        if stage not in stages:
            raise ValueError(f"strategy={strategy!r}: unknown stage {stage!r}; valid stages "
                             f"(bottom to top): {', '.join(stages)}")
        return {*stages[stages.index(stage) + 1:], HEAD}
    raise ValueError(f"strategy={strategy!r}: must be one of {', '.join(STRATEGIES)}")


def stage_parameters(net: nn.Module, pieces: Sequence[Piece]) -> dict[str, list[str]]:
    """Names of ``net``'s parameters owned by each stage (and :data:`HEAD`), in ``net``'s order."""
    names = [n for n, _ in net.named_parameters()]
    out: dict[str, list[str]] = {}
    for piece in pieces:
        if piece.stage is not None:
            out.setdefault(piece.stage, []).extend(
                n for n in names if any(n == p or n.startswith(p + ".") for p in piece.paths))
    return out


def freeze(net: nn.Module, pieces: Sequence[Piece], trainable: set[str]) -> list[nn.Module]:
    """Train exactly the stages in ``trainable`` and :data:`HEAD`: ``requires_grad`` on for
    their parameters, off for every other stage's. Returns the submodules of the frozen stages;
    the caller keeps them in eval mode (BatchNorm running statistics fixed)."""
    stage_names = [p.stage for p in pieces if p.stage not in (None, HEAD)]
    unknown = set(trainable) - {*stage_names, HEAD}
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; valid: {', '.join(dict.fromkeys(stage_names))}")
    trainable = {*trainable, HEAD}
    for stage, names in stage_parameters(net, pieces).items():
        for n in names:
            net.get_parameter(n).requires_grad_(stage in trainable)
    # paths may name bare parameters (ViT's class_token): those have no mode to fix
    return [net.get_submodule(path) for piece in pieces
            if piece.stage is not None and piece.stage not in trainable
            for path in piece.paths if _is_module(net, path)]


def frozen_prefix_length(strategy: str, pieces: Sequence[Piece], stages: Sequence[str]) -> int | None:
    """How many leading ``pieces`` stay frozen (and deterministic, in eval mode) for a whole
    run under ``strategy``, or None when it trains from the first stage or changes over time."""
    if strategy in ("full", "gradual"):
        return None
    trainable = trainable_stages(strategy, stages)
    k = next(i for i, p in enumerate(pieces) if p.stage in trainable)
    return k or None


def _is_module(net: nn.Module, path: str) -> bool:
    try:
        net.get_submodule(path)
        return True
    except AttributeError:
        return False
