"""Pruning: find which weights or neurons a model can do without.

Unstructured (masks that keep zeros zero through later training, until :func:`remove`)::

    sparsecomp.prune.magnitude(model, amount=0.9)                 # global |w| ranking
    sparsecomp.prune.gradient(model, 0.9, loss_fn, batches)       # |w * dL/dw|
    sparsecomp.prune.remove(model)                                # masks made permanent: a plain model

Structured (whole neurons/filters removed, layers physically smaller)::

    report = sparsecomp.prune.neurons(model, 0.5, example_inputs=(x,), importance="activation", data=batches)

Schedules: :func:`iterative` (prune -> fine-tune -> evaluate until a target or a metric-drop limit) and
:func:`lottery` / :class:`Lottery` (lottery tickets with rewinding). Scores: :mod:`.importance`.
"""
from . import importance
from .history import History, print_history
from .lottery import CRITERIA, REINITS, Lottery, criterion_scores, lottery
from .masks import apply_mask, freeze_zeros, get_mask, get_masks, remove, set_masks
from .schedule import iterative, sparsity_levels
from .structured import ShrinkReport, neurons
from .targets import PRUNABLE_TYPES, prunable_layers
from .unstructured import by_scores, gradient, layer_sparsity, magnitude, random, sparsity

__all__ = [
    "importance", "History", "print_history", "CRITERIA", "REINITS", "Lottery", "criterion_scores", "lottery",
    "apply_mask", "freeze_zeros", "get_mask", "get_masks", "remove", "set_masks", "iterative", "sparsity_levels",
    "ShrinkReport", "neurons", "PRUNABLE_TYPES", "prunable_layers", "by_scores", "gradient", "layer_sparsity",
    "magnitude", "random", "sparsity",
]
