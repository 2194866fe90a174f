"""Model-level conversion: swap each pruned Linear / Conv2d for its sparse module only where a measurement at
the real input shape says it pays (faster, or with prefer="size" smaller).

Why measure instead of a sparsity threshold: whether a sparse kernel beats dense BLAS depends on the layer's
shape, the batch, the sparsity and the machine. Each candidate's input is captured by a forward pre-hook
while the example inputs run through the model, then dense and sparse are timed on it alternately (the
median of ``repeats`` per-call times each), so a slower sparse layer is never chosen with prefer="speed".
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from .nn import SparseConv2d, SparseLinear
from .prune._batches import eval_mode
from .prune.masks import remove as remove_masks
from .prune.table import format_table

PREFER = ("speed", "size")
Timer = Callable[[nn.Module, torch.Tensor], float]  # (module, input) -> seconds per call


def _is_compressed(module: nn.Module) -> bool:
    return type(module).__module__.startswith("sparsecomp.nn")


def default_timer(min_seconds: float = 1e-3, max_calls: int = 1000) -> Timer:
    """A wall-clock timer: loops enough calls (calibrated once per module) to last ``min_seconds``."""
    calls: dict[int, int] = {}

    def sync(x):
        if x.is_cuda:
            torch.cuda.synchronize(x.device)

    def timer(module: nn.Module, x: torch.Tensor) -> float:
        n = calls.get(id(module))
        if n is None:
            sync(x)
            t0 = time.perf_counter()
            module(x)
            sync(x)
            once = max(time.perf_counter() - t0, 1e-7)
            n = calls[id(module)] = max(1, min(max_calls, math.ceil(min_seconds / once)))
        sync(x)
        t0 = time.perf_counter()
        for _ in range(n):
            module(x)
        sync(x)
        return (time.perf_counter() - t0) / n

    return timer


@dataclass
class LayerChoice:
    name: str
    kind: str
    shape: str
    sparsity: float | None = None
    dense_ms: float | None = None
    sparse_ms: float | None = None
    chosen: str = "dense"            # "sparse", "dense" or "kept" (already a compressed module)
    chosen_ms: float | None = None
    dense_bytes: int | None = None
    chosen_bytes: int | None = None
    note: str = ""


@dataclass
class ConvertReport:
    """Per-layer decisions of :func:`convert`; ``print(report)`` shows the table."""
    prefer: str
    layers: list[LayerChoice] = field(default_factory=list)
    max_abs_diff: float = 0.0  # largest output difference converted vs original on example_inputs

    @property
    def replaced(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.chosen == "sparse"]

    def table(self) -> str:
        cols = [("name", "layer", None), ("kind", "kind", None), ("shape", "shape", None),
                ("sparsity", "sparsity", ".3f"), ("dense_ms", "dense ms", ".4f"), ("sparse_ms", "sparse ms", ".4f"),
                ("chosen", "chosen", None), ("chosen_ms", "chosen ms", ".4f"), ("dense_bytes", "dense B", "d"),
                ("chosen_bytes", "chosen B", "d"), ("note", "note", None)]
        rows = [vars(layer) for layer in self.layers]
        dense = sum(layer.dense_bytes or 0 for layer in self.layers)
        chosen = sum(layer.chosen_bytes or 0 for layer in self.layers)
        text = format_table(rows, cols) if rows else "(no Linear/Conv2d layers)"
        return (f"{text}\nreplaced {len(self.replaced)}/{len(self.layers)} layers (prefer={self.prefer}); "
                f"weight bytes {dense} -> {chosen}; max |output difference| {self.max_abs_diff:.3g}")

    def __str__(self) -> str:
        return self.table()


def _parents(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """id(child) -> every (parent, attribute) holding it (a shared layer is replaced everywhere)."""
    out: dict[int, list] = {}
    for _, parent in model.named_modules(remove_duplicate=False):
        for attr, child in parent._modules.items():  # named_children() would hide the second name
            if child is not None:
                out.setdefault(id(child), []).append((parent, attr))
    return out


def _weight_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in (module.weight, module.bias) if p is not None)


def _sparse_bytes(module: nn.Module) -> int:
    return module.sparse_nbytes() + (module.bias.numel() * module.bias.element_size() if module.bias is not None
                                     else 0)


def _outputs(model: nn.Module, example_inputs: tuple) -> list:
    with eval_mode(model), torch.no_grad():
        flat, _ = tree_flatten(model(*example_inputs))
    return flat


def convert(model: nn.Module, example_inputs, prefer: str = "speed", min_sparsity: float = 0.5,
            verbose: bool = True, repeats: int = 7, margin: float = 0.05, timer: Timer | None = None,
            return_report: bool = False):
    """A copy of ``model`` whose pruned ``nn.Linear`` / ``nn.Conv2d`` (groups=1) layers with at least
    ``min_sparsity`` zeros are replaced by :class:`~sparsecomp.nn.SparseLinear` / ``SparseConv2d`` where that
    pays at the shapes ``model(*example_inputs)`` produces:

    - ``prefer="speed"``: where the sparse layer's median time is below ``(1 - margin)`` x the dense one, so the
      result is never slower than dense per layer as measured;
    - ``prefer="size"``: where the sparse layer stores fewer bytes (even if slower; the table shows it).

    Pruning masks in the copy are made permanent; modules that are already compressed are left as they are;
    ``model`` itself is not modified. ``timer(module, x) -> seconds per call`` replaces the wall-clock timer.
    Prints the per-layer table when ``verbose``. Returns the converted model (its
    :class:`ConvertReport` is also its ``sparsecomp_report`` attribute), or (model, report) if ``return_report``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if prefer not in PREFER:
        raise ValueError(f"prefer must be 'speed' or 'size', got {prefer!r}")
    if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, (int, float)) or not 0 <= min_sparsity <= 1:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if not isinstance(margin, (int, float)) or not 0 <= margin < 1:
        raise ValueError(f"margin must be in [0, 1), got {margin!r}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)):
        raise TypeError("example_inputs must be a tuple of model inputs")
    example_inputs = tuple(example_inputs)
    timer = timer or default_timer()

    converted = remove_masks(copy.deepcopy(model))
    report = ConvertReport(prefer)
    candidates: dict[str, nn.Module] = {}
    compressed_prefixes: list[str] = []
    for name, module in converted.named_modules():
        if any(name.startswith(p + ".") for p in compressed_prefixes):
            continue
        if _is_compressed(module):
            compressed_prefixes.append(name)
            report.layers.append(LayerChoice(name, type(module).__name__, "", chosen="kept",
                                             note="already compressed"))
            continue
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        w = module.weight.detach()
        choice = LayerChoice(name, type(module).__name__, "x".join(map(str, w.shape)),
                             sparsity=float((w == 0).double().mean()) if w.numel() else 0.0,
                             dense_bytes=_weight_bytes(module), chosen_bytes=_weight_bytes(module))
        report.layers.append(choice)
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            choice.note = f"groups={module.groups}: no sparse kernel"
        elif choice.sparsity < min_sparsity:
            choice.note = f"sparsity below min_sparsity={min_sparsity}"
        else:
            candidates[name] = module

    inputs: dict[str, torch.Tensor] = {}

    def capture(name):
        def hook(module, args):
            if name not in inputs and args and isinstance(args[0], torch.Tensor):
                inputs[name] = args[0].detach().clone()
        return hook

    handles = [m.register_forward_pre_hook(capture(n)) for n, m in candidates.items()]
    try:
        reference = _outputs(converted, example_inputs)
    finally:
        for h in handles:
            h.remove()

    by_name = {layer.name: layer for layer in report.layers}
    parents = _parents(converted)
    for name, dense in candidates.items():
        choice = by_name[name]
        if name not in inputs:
            choice.note = "not run by example_inputs"
            continue
        x = inputs[name]
        try:
            cls = SparseLinear if isinstance(dense, nn.Linear) else SparseConv2d
            sparse = cls.from_dense(dense).train(dense.training)
            with torch.no_grad():
                sparse(x)  # fails here (not mid-timing) on an unsupported dtype/device
        except (TypeError, ValueError, RuntimeError, NotImplementedError) as err:
            choice.note = f"no sparse version: {err}"
            continue
        dense_t, sparse_t = [], []
        with torch.no_grad():
            for _ in range(2):  # warm-up: first-call allocations, caches
                dense(x)
                sparse(x)
            for r in range(repeats):  # alternate the order so slow drift hits both equally
                pair = ((dense, dense_t), (sparse, sparse_t)) if r % 2 == 0 else ((sparse, sparse_t), (dense, dense_t))
                for module, times in pair:
                    times.append(float(timer(module, x)))
        choice.dense_ms = statistics.median(dense_t) * 1e3
        choice.sparse_ms = statistics.median(sparse_t) * 1e3
        sparse_bytes = _sparse_bytes(sparse)
        if prefer == "speed":
            use = choice.sparse_ms < choice.dense_ms * (1.0 - margin)
        else:
            use = sparse_bytes < choice.dense_bytes
        choice.chosen = "sparse" if use else "dense"
        choice.chosen_ms = choice.sparse_ms if use else choice.dense_ms
        choice.chosen_bytes = sparse_bytes if use else choice.dense_bytes
        if use:
            for parent, attr in parents.get(id(dense), []):
                setattr(parent, attr, sparse)
        elif not choice.note:
            choice.note = "sparse not faster" if prefer == "speed" else "sparse not smaller"

    after = _outputs(converted, example_inputs)
    diffs = [float((a.double() - b.double()).abs().max()) for a, b in zip(reference, after)
             if isinstance(a, torch.Tensor) and a.is_floating_point() and a.numel()]
    report.max_abs_diff = max(diffs, default=0.0)
    converted.sparsecomp_report = report
    if verbose:
        print(report.table())
    return (converted, report) if return_report else converted
