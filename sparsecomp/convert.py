"""Model-level conversion: swap each pruned Linear / Conv2d for its sparse module only where a measurement at
the real input shape says it pays (faster, or with prefer="size" smaller).

Why measure instead of a sparsity threshold: whether a sparse kernel beats dense BLAS depends on the layer's
shape, the batch, the sparsity and the machine. Each candidate's input is captured by a forward pre-hook
while the example inputs run through the model, then dense and sparse are timed on it alternately (the
median of ``repeats`` per-call times each), so a slower sparse layer is never chosen with prefer="speed".

``cost_model`` widens the choice to dense / sparse / structured (RowSparseLinear / RowSparseConv2d: a smaller
dense layer over the nonzero rows, when whole rows are zero) / 2:4 (CUDA): ``"probe"`` measures every candidate
that applies at the real input; a table (the results.json of ``sparsecomp bench sparse``, see
``sparsecomp.benchmark.cost_model``) predicts instead, and only a layer predicted to change is measured against
dense (``verify``), so the table can save time but never make a layer slower than measured.
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

from .nn import RowSparseConv2d, RowSparseLinear, SparseConv2d, SparseLinear
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
    chosen: str = "dense"            # "dense", "sparse", "structured", "2:4" or "kept" (already compressed)
    chosen_ms: float | None = None
    dense_bytes: int | None = None
    chosen_bytes: int | None = None
    note: str = ""
    measured_ms: dict = field(default_factory=dict)   # every candidate timed: {method: median ms}
    predicted_ms: dict = field(default_factory=dict)  # cost-model predictions: {method: ms}


@dataclass
class ConvertReport:
    """Per-layer decisions of :func:`convert`; ``print(report)`` shows the table."""
    prefer: str
    layers: list[LayerChoice] = field(default_factory=list)
    max_abs_diff: float = 0.0  # largest output difference converted vs original on example_inputs

    @property
    def replaced(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.chosen not in ("dense", "kept")]

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


METHOD_LABEL = {"dense": "dense", "sparse": "sparse", "structured": "structured", "semi_structured_24": "2:4"}


def _zero_row_fraction(weight: torch.Tensor) -> float:
    rows = weight.detach().reshape(weight.shape[0], -1)
    return float((~(rows != 0).any(dim=1)).double().mean()) if rows.numel() else 0.0


def _is_2_4(weight: torch.Tensor) -> bool:
    """Every 4 consecutive weights along a row hold at most 2 nonzeros (what 2:4 kernels need)."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.detach() != 0).reshape(weight.shape[0], -1, 4).sum(-1) <= 2).all())


def _applicable(dense: nn.Module, x: torch.Tensor) -> list[str]:
    """The compressed forms worth trying for this layer and input."""
    w = dense.weight.detach()
    methods = ["sparse"]
    if _zero_row_fraction(w) > 0:
        methods.append("structured")
    if isinstance(dense, nn.Linear) and x.is_cuda and w.dtype in (torch.float16, torch.bfloat16) and _is_2_4(w):
        methods.append("semi_structured_24")
    return methods


def _build(method: str, dense: nn.Module) -> nn.Module:
    linear = isinstance(dense, nn.Linear)
    if method == "sparse":
        return (SparseLinear if linear else SparseConv2d).from_dense(dense)
    if method == "structured":
        return (RowSparseLinear if linear else RowSparseConv2d).from_dense(dense)
    if method == "semi_structured_24":
        module = copy.deepcopy(dense)
        semi = torch.sparse.to_sparse_semi_structured(module.weight.detach())
        module.weight = nn.Parameter(semi, requires_grad=False)
        return module
    raise ValueError(f"unknown method {method!r}")


def _module_bytes(method: str, module: nn.Module, choice: "LayerChoice") -> int:
    if method == "sparse":
        return _sparse_bytes(module)
    if method == "semi_structured_24":  # half the values plus 2-bit metadata per kept value (approximate)
        return choice.dense_bytes * 9 // 16
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _time(modules: dict[str, nn.Module], x: torch.Tensor, timer: Timer, repeats: int) -> dict[str, float]:
    """Median ms per call of each module on x: warmed up, then timed round-robin, the order rotated each repeat
    so slow drift hits all equally."""
    names = list(modules)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.no_grad():
        for _ in range(2):  # warm-up: first-call allocations, caches
            for module in modules.values():
                module(x)
        for r in range(repeats):
            shift = r % len(names)
            for n in names[shift:] + names[:shift]:
                times[n].append(float(timer(modules[n], x)))
    return {n: statistics.median(t) * 1e3 for n, t in times.items()}


def _fastest(ms: dict[str, float], margin: float) -> str:
    """The fastest method, if it beats dense by more than ``margin``; else dense."""
    best = min(ms, key=ms.get)
    return best if best != "dense" and ms[best] < ms["dense"] * (1.0 - margin) else "dense"


def _layer_gemm(dense: nn.Module, x: torch.Tensor):
    """The layer as the GEMM the cost model knows: rows = batch (x output pixels for a conv)."""
    from .benchmark.cost_model import LayerGemm

    w = dense.weight.detach()
    if isinstance(dense, nn.Linear):
        rows = max(1, x.numel() // max(1, dense.in_features))
    else:
        with torch.no_grad():
            out = dense(x)
        rows = max(1, out.numel() // max(1, out.shape[-3] if out.dim() >= 3 else 1))
    sparsity = float((w == 0).double().mean()) if w.numel() else 0.0
    return LayerGemm(w.shape[0], w[0].numel(), rows, sparsity, _zero_row_fraction(w), _is_2_4(w),
                     "cuda" if x.is_cuda else "cpu")


def convert(model: nn.Module, example_inputs, prefer: str = "speed", min_sparsity: float = 0.5,
            verbose: bool = True, repeats: int = 7, margin: float = 0.05, timer: Timer | None = None,
            return_report: bool = False, cost_model=None, verify: bool = True):
    """A copy of ``model`` whose pruned ``nn.Linear`` / ``nn.Conv2d`` (groups=1) layers with at least
    ``min_sparsity`` zeros are replaced by :class:`~sparsecomp.nn.SparseLinear` / ``SparseConv2d`` where that
    pays at the shapes ``model(*example_inputs)`` produces:

    - ``prefer="speed"``: where the sparse layer's median time is below ``(1 - margin)`` x the dense one, so the
      result is never slower than dense per layer as measured;
    - ``prefer="size"``: where the sparse layer stores fewer bytes (even if slower; the table shows it).

    ``cost_model`` (prefer="speed" only): None (default) times dense vs sparse as above; ``"probe"`` also times
    the structured form (:class:`~sparsecomp.nn.RowSparseLinear` / ``RowSparseConv2d``, when whole rows are
    zero) and 2:4 (``to_sparse_semi_structured``: CUDA, fp16/bf16 Linear already in a 2:4 pattern) and keeps the
    fastest; a path to / dict of the results.json of ``sparsecomp bench sparse``, or a
    :class:`~sparsecomp.benchmark.cost_model.TableCostModel`, predicts every layer's candidates instead and
    times only a layer predicted to change, against dense (``verify=False`` trusts the prediction untimed).

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
    if cost_model is not None and prefer != "speed":
        raise ValueError("cost_model chooses for speed: use it with prefer='speed'")
    table = None
    if cost_model is not None and not (isinstance(cost_model, str) and cost_model == "probe"):
        from .benchmark.cost_model import load as load_cost_model

        table = load_cost_model(cost_model)

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
        methods = ["sparse"] if prefer == "size" or cost_model is None else _applicable(dense, x)
        built: dict[str, nn.Module] = {}
        for method in methods:
            try:
                module = _build(method, dense).train(dense.training)
                with torch.no_grad():
                    module(x)  # fails here (not mid-timing) on an unsupported dtype/device
                built[method] = module
            except (TypeError, ValueError, RuntimeError, NotImplementedError) as err:
                if method == "sparse":
                    choice.note = f"no sparse version: {err}"
        if not built:
            choice.note = choice.note or "no compressed version"
            continue
        if prefer == "size":
            use = "sparse" if "sparse" in built and _sparse_bytes(built["sparse"]) < choice.dense_bytes else "dense"
            choice.measured_ms = _time({"dense": dense, **built}, x, timer, repeats)
        elif table is None:
            choice.measured_ms = _time({"dense": dense, **built}, x, timer, repeats)
            use = _fastest(choice.measured_ms, margin)
        else:
            layer = _layer_gemm(dense, x)
            if layer.device != table.device:
                raise ValueError(f"cost_model table was measured on {table.device} but layer {name!r} runs on "
                                 f"{layer.device}: measure one there (sparsecomp bench sparse --device "
                                 f"{layer.device}) or use cost_model='probe'")
            use, choice.predicted_ms = table.choose(layer, margin, allowed=list(built))
            if use != "dense" and verify:  # the table proposes, a measurement at the real input disposes
                choice.measured_ms = _time({"dense": dense, use: built[use]}, x, timer, repeats)
                use = _fastest(choice.measured_ms, margin)
        times = choice.measured_ms or choice.predicted_ms
        choice.dense_ms = times.get("dense")
        choice.sparse_ms = times.get("sparse")
        choice.chosen = METHOD_LABEL[use]
        choice.chosen_ms = times.get(use)
        choice.chosen_bytes = choice.dense_bytes if use == "dense" else _module_bytes(use, built[use], choice)
        if use != "dense":
            for parent, attr in parents.get(id(dense), []):
                setattr(parent, attr, built[use])
            if not choice.measured_ms:
                choice.note = f"predicted by {table.source}"
        elif not choice.note:
            choice.note = ("sparse not smaller" if prefer == "size" else
                           "sparse not faster" if set(built) == {"sparse"} else "no compressed form faster")
            if table is not None and not choice.measured_ms:
                choice.note += f" (predicted by {table.source})"
    after = _outputs(converted, example_inputs)
    diffs = [float((a.double() - b.double()).abs().max()) for a, b in zip(reference, after)
             if isinstance(a, torch.Tensor) and a.is_floating_point() and a.numel()]
    report.max_abs_diff = max(diffs, default=0.0)
    converted.sparsecomp_report = report
    if verbose:
        print(report.table())
    return (converted, report) if return_report else converted
