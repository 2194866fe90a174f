"""Unstructured pruning: zero the least important individual weights, globally or per layer, under masks
that keep them zero through later training (see masks.py)."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

from . import importance
from .masks import apply_mask, get_mask
from .targets import prunable_layers

SCOPES = ("global", "layer")


def check_amount(amount, name: str = "amount") -> float:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0.0 <= float(amount) <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1], got {amount!r}")
    return float(amount)


def check_scope(scope) -> str:
    if scope not in SCOPES:
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    return scope


def count_to_prune(amount: float, total: int) -> int:
    """round(amount * total), halves rounded up: the exact number of zeros ``amount`` asks for."""
    return min(total, int(math.floor(amount * total + 0.5)))


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k lowest scores (ties: lower index first, so the result is deterministic)."""
    return torch.argsort(scores, stable=True)[:k]


def by_scores(model: nn.Module, scores: dict[str, torch.Tensor], amount: float, scope: str = "global",
              skip=(), types=None) -> nn.Module:
    """Masks the lowest-scoring weights of the layers named in ``scores`` so that a fraction ``amount`` of
    their weights is pruned (of all of them together for scope="global", of each layer for scope="layer").

    Weights already pruned stay pruned and count towards ``amount``; an ``amount`` below the current sparsity
    prunes nothing more. The count is exact: round(amount * n) weights are masked.
    """
    amount, scope = check_amount(amount), check_scope(scope)
    layers = prunable_layers(model, skip=skip, types=types)
    unknown = [n for n in scores if n not in layers]
    if unknown:
        raise ValueError(f"scores name layers that are not prunable (or are skipped): {unknown}")
    if not scores:
        raise ValueError("no layer to prune (check skip and types)")
    flat = {}
    for name, s in scores.items():
        w = layers[name].weight
        if not isinstance(s, torch.Tensor) or tuple(s.shape) != tuple(w.shape):
            raise ValueError(f"scores[{name!r}] must be a tensor of the weight's shape {tuple(w.shape)}")
        s = s.detach().to(device="cpu", dtype=torch.float64).flatten().clone()
        if bool(torch.isnan(s).any()):
            raise ValueError(f"scores[{name!r}] contains NaN")
        old = get_mask(layers[name])
        if old is not None:
            s[old.detach().cpu().flatten() == 0] = -math.inf  # already pruned: first in line, so they stay pruned
        flat[name] = s

    def prune_lowest(s: torch.Tensor) -> torch.Tensor:
        already = int(torch.isneginf(s).sum())
        keep = torch.ones_like(s, dtype=torch.bool)
        keep[_lowest(s, max(count_to_prune(amount, s.numel()), already))] = False
        return keep

    if scope == "layer":
        keeps = {name: prune_lowest(s) for name, s in flat.items()}
    else:
        keep_all = prune_lowest(torch.cat(list(flat.values())))
        keeps, start = {}, 0
        for name, s in flat.items():
            keeps[name] = keep_all[start:start + s.numel()]
            start += s.numel()
    for name, keep in keeps.items():
        apply_mask(layers[name], keep.reshape(layers[name].weight.shape))
    return model


def magnitude(model: nn.Module, amount: float, scope: str = "global", skip=(), types=None) -> nn.Module:
    """Prunes the smallest-|w| weights of the Linear/Conv layers of ``model`` (minus ``skip``) so that a
    fraction ``amount`` of them is zero, for the whole model (scope="global") or in each layer ("layer").

    The zeros are enforced on weights and gradients until :func:`sparsecomp.prune.remove`. Returns ``model``.
    """
    layers = prunable_layers(model, skip=skip, types=types)
    return by_scores(model, {n: importance.magnitude(m) for n, m in layers.items()}, amount, scope, skip, types)


def gradient(model: nn.Module, amount: float, loss_fn: Callable, data: Iterable, scope: str = "global", skip=(),
             types=None, max_batches: int | None = None) -> nn.Module:
    """Like :func:`magnitude` with the importance |w * dL/dw| summed over the (input, target) batches of
    ``data`` (``loss_fn(output, target)`` gives the loss)."""
    scores = importance.taylor(model, loss_fn, data, skip=skip, types=types, max_batches=max_batches)
    return by_scores(model, scores, amount, scope, skip, types)


def random(model: nn.Module, amount: float, scope: str = "global", skip=(), types=None,
           generator: torch.Generator | None = None) -> nn.Module:
    """Prunes weights chosen uniformly at random (a control for importance criteria)."""
    layers = prunable_layers(model, skip=skip, types=types)
    scores = {n: torch.rand(m.weight.shape, generator=generator, dtype=torch.float64) for n, m in layers.items()}
    return by_scores(model, scores, amount, scope, skip, types)


def sparsity(model: nn.Module, skip=(), types=None) -> float:
    """Fraction of exactly-zero weights over all prunable layers (0.0 if there are none)."""
    zeros = total = 0
    for layer in prunable_layers(model, skip=skip, types=types).values():
        zeros += int((layer.weight.detach() == 0).sum())
        total += layer.weight.numel()
    return zeros / total if total else 0.0


def layer_sparsity(model: nn.Module, skip=(), types=None) -> dict[str, float]:
    """{layer name: fraction of exactly-zero weights} of each prunable layer."""
    return {n: float((m.weight.detach() == 0).double().mean())
            for n, m in prunable_layers(model, skip=skip, types=types).items()}
