"""Iterative pruning: prune a step -> the user's fine-tuning -> evaluate, until a target sparsity or until the
metric has dropped too far (then the last acceptable model is restored)."""
from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .history import History
from .masks import get_masks, set_masks
from .unstructured import check_amount, check_scope, magnitude, sparsity

SCHEDULES = ("linear", "geometric")


def sparsity_levels(start: float, step: float, target: float, schedule: str = "linear") -> list[float]:
    """The sparsity after each round: +step per round ("linear") or a fraction ``step`` of the remaining weights
    per round ("geometric"), the last one clipped to ``target``. Empty if ``start >= target``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be 'linear' or 'geometric', got {schedule!r}")
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0.0 < step <= 1.0:
        raise ValueError(f"step must be in (0, 1], got {step!r}")
    levels, s = [], start
    while s < target - 1e-12:
        s = s + step if schedule == "linear" else 1.0 - (1.0 - s) * (1.0 - step)
        s = min(target, s)
        if target - s < 1e-9:  # float drift: 0.1 * 9 is 0.8999999...
            s = target
        levels.append(s)
    return levels


def _restore(model: nn.Module, saved: nn.Module) -> None:
    """Puts ``saved``'s parameters, buffers and masks back into ``model`` (in place where shapes still match, so
    optimizers keep working; whole tensors where a structured step changed them)."""
    for (_, cur), (_, old) in zip(model.named_modules(), saved.named_modules()):
        for store in ("_parameters", "_buffers"):
            mine, theirs = getattr(cur, store), getattr(old, store)
            for key, value in theirs.items():
                here = mine.get(key)
                if here is not None and value is not None and here.shape == value.shape:
                    with torch.no_grad():
                        here.copy_(value)
                else:
                    mine[key] = value
        for attr in ("in_features", "out_features", "in_channels", "out_channels", "groups", "num_features"):
            if hasattr(old, attr):
                setattr(cur, attr, getattr(old, attr))
    set_masks(model, get_masks(saved))


def iterative(model: nn.Module, train_fn: Callable[[nn.Module], object], eval_fn: Callable[[nn.Module], float],
              step: float = 0.1, target: float = 0.9, max_drop: float | None = None, schedule: str = "linear",
              prune_fn: Callable[[nn.Module, float], object] | None = None, scope: str = "global", skip=(),
              types=None, restore: bool = True, progress: bool = True) -> History:
    """Prunes ``model`` in rounds until ``target`` sparsity, fine-tuning and evaluating after each.

    Each round: ``prune_fn(model, level)`` (default: :func:`magnitude` to that sparsity with ``scope``,
    ``skip``, ``types``), then ``train_fn(model)``, then ``metric = eval_fn(model)`` (higher is better, e.g.
    accuracy). Stops at the target, or as soon as ``baseline - metric > max_drop``; with ``restore`` the model
    then goes back to the end of the previous round (that round is marked ``kept=False``).
    Returns a :class:`History`: round 0 is the unpruned baseline; columns round, target, sparsity (measured
    fraction of zero weights), metric, drop, kept, seconds.
    """
    target, scope = check_amount(target, "target"), check_scope(scope)
    if max_drop is not None and (isinstance(max_drop, bool) or not isinstance(max_drop, (int, float))
                                 or not max_drop >= 0):
        raise ValueError(f"max_drop must be a number >= 0 or None, got {max_drop!r}")
    if not callable(train_fn) or not callable(eval_fn):
        raise TypeError("train_fn and eval_fn must be callables taking the model")
    if prune_fn is None:
        def prune_fn(m, level):
            magnitude(m, level, scope=scope, skip=skip, types=types)
    start = sparsity(model, skip=skip, types=types)
    levels = sparsity_levels(start, step, target, schedule)
    baseline = float(eval_fn(model))
    if not math.isfinite(baseline):
        raise ValueError(f"eval_fn returned {baseline}, not a finite number")
    history = History([{"round": 0, "target": start, "sparsity": start, "metric": baseline, "drop": 0.0,
                        "kept": True, "seconds": 0.0}])
    bar = tqdm(total=len(levels), desc="prune", unit="round", disable=not progress)
    try:
        for k, level in enumerate(levels, 1):
            t0 = time.perf_counter()
            saved = copy.deepcopy(model) if (restore and max_drop is not None) else None
            prune_fn(model, level)
            train_fn(model)
            metric = float(eval_fn(model))
            drop = baseline - metric
            ok = max_drop is None or drop <= max_drop
            row = {"round": k, "target": level, "sparsity": sparsity(model, skip=skip, types=types),
                   "metric": metric, "drop": drop, "kept": ok or not restore, "seconds": time.perf_counter() - t0}
            history.append(row)
            bar.update(1)
            bar.set_postfix(sparsity=f"{row['sparsity']:.3f}", metric=f"{metric:.4f}")
            if not ok:
                if saved is not None:
                    _restore(model, saved)
                break
    finally:
        bar.close()
    return history
