"""Importance scores: how much a weight (or a whole neuron/filter) matters. Higher = keep.

- per weight: :func:`magnitude` |w| and :func:`taylor` |w * dL/dw| (first-order loss change if w were zeroed),
- per output neuron/filter (row of the weight): :func:`l1_norm`, :func:`l2_norm`,
- per channel of a module's output: :func:`activation_counts`, the number of times each channel was non-zero
  on a data set (a ReLU neuron that never fires scores 0).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from ._batches import batches, eval_mode
from .targets import prunable_layers


def _weight(w) -> torch.Tensor:
    if isinstance(w, nn.Module):
        w = w.weight
    if not isinstance(w, torch.Tensor) or w.dim() < 1:
        raise TypeError("expected a weight tensor or a layer with a .weight")
    return w.detach()


def magnitude(weight) -> torch.Tensor:
    """|w| per weight (L1 magnitude)."""
    return _weight(weight).abs()


def l1_norm(weight) -> torch.Tensor:
    """Sum of |w| of each output neuron/filter (dim 0 of the weight)."""
    w = _weight(weight)
    return w.abs().reshape(w.shape[0], -1).sum(1)


def l2_norm(weight) -> torch.Tensor:
    """L2 norm of each output neuron/filter (dim 0 of the weight)."""
    w = _weight(weight)
    return w.double().reshape(w.shape[0], -1).norm(dim=1).to(w.dtype)


def taylor(model: nn.Module, loss_fn: Callable, data: Iterable, skip=(), types=None,
           max_batches: int | None = None) -> dict[str, torch.Tensor]:
    """{layer name: sum over batches of |w * dL/dw|} for every prunable layer.

    ``loss_fn(output, target)`` gives the loss of a batch; ``data`` yields (input, target) batches (or is one
    such pair). The model runs in eval mode; existing ``.grad`` values are left untouched.
    """
    layers = prunable_layers(model, skip=skip, types=types)
    names = [n for n, m in layers.items() if m.weight.requires_grad]
    if not names:
        raise ValueError("taylor: no prunable layer with a trainable weight")
    weights = [layers[n].weight for n in names]
    scores = {n: torch.zeros_like(w, dtype=torch.float64) for n, w in zip(names, weights)}
    with eval_mode(model):
        for x, y in batches(data, need_target=True, max_batches=max_batches):
            loss = loss_fn(model(x), y)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError("taylor: loss_fn must return a scalar tensor")
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
            for n, w, g in zip(names, weights, grads):
                if g is not None:
                    scores[n] += (w.detach().double() * g.double()).abs()
    return {n: s.to(layers[n].weight.dtype) for n, s in scores.items()}


def channel_nonzeros(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Number of non-zero entries of each channel of ``x`` (int64, one per index of ``channel_dim``)."""
    x = x.detach().movedim(channel_dim, 0)
    return (x.reshape(x.shape[0], -1) != 0).sum(1)


def activation_counts(model: nn.Module, data: Iterable, modules, channel_dim: int | None = None,
                      max_batches: int | None = None) -> dict[str, torch.Tensor]:
    """{module name: int64 counts}: how many times each channel of the module's output was non-zero on ``data``.

    ``modules``: names of modules of ``model`` whose outputs are counted (typically the activations after
    each layer, e.g. the ``nn.ReLU``). A channel is dim 1 of the output (the last dim of a 2-D output), or
    ``channel_dim`` if given; for conv maps every spatial position counts once. Counted with forward hooks in
    eval mode without gradients.
    """
    named = dict(model.named_modules())
    if isinstance(modules, str):
        modules = [modules]
    modules = list(modules)
    missing = [m for m in modules if m not in named]
    if missing or not modules:
        raise ValueError(f"activation_counts: modules must name submodules of the model; unknown: {missing}")
    counts: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(module, args, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"activation_counts: {name} returned {type(output).__name__}, not a tensor")
            dim = channel_dim if channel_dim is not None else (1 if output.dim() > 2 else -1)
            c = channel_nonzeros(output, dim).cpu()
            counts[name] = c if name not in counts else counts[name] + c
        return hook

    handles = [named[n].register_forward_hook(hook_for(n)) for n in modules]
    try:
        with eval_mode(model), torch.no_grad():
            for x, _ in batches(data, max_batches=max_batches):
                model(x)
    finally:
        for h in handles:
            h.remove()
    never = [n for n in modules if n not in counts]
    if never:
        raise ValueError(f"activation_counts: modules never ran on the data: {never}")
    return counts
