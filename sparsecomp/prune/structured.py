"""Structured pruning: remove whole output neurons/filters and shrink every layer that reads them, so the
result is a smaller dense model (no masks, no sparse kernels needed).

Removing channel c of a producer removes row c of its weight and bias, entry c of BatchNorms/depthwise convs
on the way, and the matching input columns of its consumers (see graph.py). A removed channel that still
carried a value at the consumer's input (e.g. BatchNorm's shift of a dead filter) is replaced by its mean
there, folded into the consumer's bias: exact for a channel that was constant on the data (Linear
consumers, and convs without zero padding), the usual mean compensation otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from . import importance as imp
from ._batches import batches, eval_mode
from .graph import Group, find_groups
from .masks import _STATE_ATTR, apply_mask, get_mask, masked_names
from .table import format_table
from .targets import _check_skip, is_skipped
from .unstructured import check_amount, check_scope, count_to_prune

IMPORTANCES = ("l2", "l1", "activation", "gradient")


class _InputStats:
    """Per input column (Linear) / input channel (conv) of a consumer: observations, non-zeros, sum, min, max."""

    def __init__(self, size: int):
        self.count = torch.zeros(size, dtype=torch.float64)
        self.nonzero = torch.zeros(size, dtype=torch.float64)
        self.total = torch.zeros(size, dtype=torch.float64)
        self.low = torch.full((size,), float("inf"), dtype=torch.float64)
        self.high = torch.full((size,), float("-inf"), dtype=torch.float64)

    def add(self, cols: torch.Tensor) -> None:  # cols: [size, observations]
        if cols.shape[1] == 0:
            return
        cols = cols.detach().double().cpu()
        self.count += cols.shape[1]
        self.nonzero += (cols != 0).sum(1)
        self.total += cols.sum(1)
        self.low = torch.minimum(self.low, cols.amin(1))
        self.high = torch.maximum(self.high, cols.amax(1))


def _columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return x.reshape(-1, module.in_features).T
    if x.dim() == module.weight.dim() - 1:  # unbatched conv input
        x = x.unsqueeze(0)
    return x.movedim(1, 0).reshape(module.in_channels, -1)


def _input_stats(model: nn.Module, consumers: dict[str, nn.Module], example_inputs: tuple, data,
                 max_batches) -> dict[str, _InputStats]:
    stats = {n: _InputStats(m.in_features if isinstance(m, nn.Linear) else m.in_channels)
             for n, m in consumers.items()}

    def hook_for(name):
        def hook(module, args):
            stats[name].add(_columns(module, args[0]))
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in consumers.items()]
    try:
        with eval_mode(model), torch.no_grad():
            if data is None:
                model(*example_inputs)
            else:
                for x, _ in batches(data, max_batches=max_batches):
                    model(x)
    finally:
        for h in handles:
            h.remove()
    return stats


def _per_channel(t: torch.Tensor, block: int) -> torch.Tensor:
    return t.reshape(-1, block).sum(1)


def _scores(groups: dict[str, Group], importance, stats, model, loss_fn, data, max_batches):
    if isinstance(importance, dict):
        out = {}
        for name, g in groups.items():
            if name in importance:
                s = torch.as_tensor(importance[name], dtype=torch.float64).flatten()
                if s.numel() != g.channels:
                    raise ValueError(f"importance[{name!r}] must have {g.channels} entries, got {s.numel()}")
                out[name] = s
        return out
    if importance in ("l2", "l1"):
        fn = imp.l2_norm if importance == "l2" else imp.l1_norm
        return {name: fn(g.module.weight).double().cpu() for name, g in groups.items()}
    if importance == "activation":
        out = {}
        for name, g in groups.items():
            freqs = [_per_channel(stats[c.name].nonzero, c.block) / _per_channel(stats[c.name].count, c.block)
                     .clamp_min(1) for c in g.consumers]
            out[name] = torch.stack(freqs).amax(0)  # alive if any consumer sees it non-zero
        return out
    if importance == "gradient":
        if loss_fn is None or data is None:
            raise ValueError("importance='gradient' needs loss_fn and data")
        taylor = imp.taylor(model, loss_fn, data, max_batches=max_batches)
        return {name: taylor[name].double().reshape(g.channels, -1).sum(1).cpu()
                for name, g in groups.items() if name in taylor}
    raise ValueError(f"importance must be one of {IMPORTANCES} or a dict of per-channel scores, got {importance!r}")


def _select(scores: dict[str, torch.Tensor], amount: float, scope: str, min_keep: int,
            normalize: bool) -> dict[str, torch.Tensor]:
    """{producer: sorted indices of the channels to remove}."""
    removable = {n: max(0, s.numel() - min_keep) for n, s in scores.items()}
    if scope == "layer":
        return {n: torch.argsort(s, stable=True)[:min(count_to_prune(amount, s.numel()), removable[n])].sort()[0]
                for n, s in scores.items()}
    names = list(scores)
    flat = []
    for n in names:
        s = scores[n]
        mean = float(s.mean()) if s.numel() else 0.0
        flat.append(s / mean if normalize and mean > 0 else s)  # layers' norms live on different scales
    allscores = torch.cat(flat)
    owner = torch.cat([torch.full((scores[n].numel(),), i) for i, n in enumerate(names)])
    offset = torch.cumsum(torch.tensor([0] + [scores[n].numel() for n in names]), 0)
    wanted = count_to_prune(amount, allscores.numel())
    taken = {n: [] for n in names}
    for idx in torch.argsort(allscores, stable=True).tolist():
        if wanted == 0:
            break
        n = names[int(owner[idx])]
        if len(taken[n]) < removable[n]:
            taken[n].append(idx - int(offset[int(owner[idx])]))
            wanted -= 1
    return {n: torch.tensor(sorted(t), dtype=torch.long) for n, t in taken.items()}


def _keep(size: int, removed: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    keep[removed] = False
    return keep.nonzero().flatten()


def _blocks(channels: torch.Tensor, block: int) -> torch.Tensor:
    return (channels[:, None] * block + torch.arange(block)).flatten()


def _zero_padded(module: nn.Module) -> bool:
    return module.padding_mode == "zeros" and any(p != 0 for p in module._reversed_padding_repeated_twice)


@dataclass
class _Edit:
    out: torch.Tensor | None = None       # rows (dim 0) kept
    inp: torch.Tensor | None = None       # input columns / channels (dim 1) kept
    delta: torch.Tensor | None = None     # added to the bias (before rows are dropped)
    entries: torch.Tensor | None = None   # kept entries of a follower


def _plan(groups, removed, stats, compensate):
    edits: dict[str, _Edit] = {}
    modules: dict[str, nn.Module] = {}
    exact: dict[str, bool] = {}
    for name, g in groups.items():
        r = removed.get(name)
        if r is None or r.numel() == 0:
            continue
        keep = _keep(g.channels, r)
        modules[name] = g.module
        edits.setdefault(name, _Edit()).out = keep
        for f in g.followers:
            modules[f.name] = f.module
            edits.setdefault(f.name, _Edit()).entries = _blocks(keep, f.block)
        is_exact = True
        for c in g.consumers:
            modules[c.name] = c.module
            edit = edits.setdefault(c.name, _Edit())
            edit.inp = _blocks(keep, c.block)
            cols = _blocks(r, c.block)
            s = stats[c.name]
            if bool((s.count[cols] == 0).any()):
                raise RuntimeError(f"{c.name} never ran on the data: cannot check what removing inputs does")
            zero = bool(((s.low[cols] == 0) & (s.high[cols] == 0)).all())
            constant = bool((s.low[cols] == s.high[cols]).all())
            if zero:
                continue
            if not compensate:
                is_exact = False
                continue
            mean = s.total[cols] / s.count[cols]
            w = c.module.weight.detach().double()
            if isinstance(c.module, nn.Linear):
                delta = w[:, cols].cpu() @ mean
            else:
                delta = (w[:, cols].cpu().reshape(w.shape[0], cols.numel(), -1).sum(2) * mean).sum(1)
                constant = constant and not _zero_padded(c.module)
            edit.delta = delta if edit.delta is None else edit.delta + delta
            is_exact = is_exact and constant
        exact[name] = is_exact
    return edits, modules, exact


def _snapshot(module: nn.Module) -> dict:
    attrs = {a: getattr(module, a) for a in ("in_features", "out_features", "in_channels", "out_channels", "groups",
                                             "num_features") if hasattr(module, a)}
    return {"params": dict(module._parameters), "buffers": dict(module._buffers),
            "nonpersistent": set(module._non_persistent_buffers_set),
            "masked": dict(getattr(module, _STATE_ATTR, {})) if hasattr(module, _STATE_ATTR) else None,
            "attrs": attrs}


def _restore(module: nn.Module, snap: dict) -> None:
    module._parameters.clear()
    module._parameters.update(snap["params"])
    module._buffers.clear()
    module._buffers.update(snap["buffers"])
    module._non_persistent_buffers_set.clear()
    module._non_persistent_buffers_set.update(snap["nonpersistent"])
    if snap["masked"] is not None:
        setattr(module, _STATE_ATTR, snap["masked"])
    for a, v in snap["attrs"].items():
        setattr(module, a, v)


def _slice(t: torch.Tensor, out, inp) -> torch.Tensor:
    if out is not None:
        t = t.index_select(0, out.to(t.device))
    if inp is not None and t.dim() > 1:
        t = t.index_select(1, inp.to(t.device))
    return t


def _apply(module: nn.Module, edit: _Edit) -> None:
    masks = {n: get_mask(module, n) for n in masked_names(module)}

    def new_param(old: nn.Parameter, value: torch.Tensor) -> nn.Parameter:
        return nn.Parameter(value.detach().clone().contiguous(), requires_grad=old.requires_grad)

    if edit.entries is not None:  # follower: BatchNorm or depthwise conv
        k = edit.entries
        for pname in ("weight", "bias"):
            p = getattr(module, pname, None)
            if isinstance(p, nn.Parameter):
                setattr(module, pname, new_param(p, _slice(p.detach(), k, None)))
        for bname in ("running_mean", "running_var"):
            b = getattr(module, bname, None)
            if isinstance(b, torch.Tensor):
                setattr(module, bname, _slice(b, k, None).clone())
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.num_features = k.numel()
        else:
            module.in_channels = module.out_channels = module.groups = k.numel()
        masks = {n: (_slice(m, k, None) if m is not None else None) for n, m in masks.items()}
    else:
        w = module.weight
        if edit.delta is not None:
            delta = edit.delta.to(device=w.device, dtype=w.dtype)
            if module.bias is None:
                module.bias = nn.Parameter(torch.zeros(w.shape[0], device=w.device, dtype=w.dtype),
                                           requires_grad=w.requires_grad)
            with torch.no_grad():
                bias = module.bias.detach() + delta
            module.bias = new_param(module.bias, bias)
        module.weight = new_param(w, _slice(w.detach(), edit.out, edit.inp))
        if module.bias is not None and edit.out is not None:
            module.bias = new_param(module.bias, _slice(module.bias.detach(), edit.out, None))
        rows, cols = module.weight.shape[0], module.weight.shape[1]
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = rows, cols
        else:
            module.out_channels, module.in_channels = rows, cols
        masks = {n: (_slice(m, edit.out, edit.inp if n == "weight" else None) if m is not None else None)
                 for n, m in masks.items()}
    for n, m in masks.items():
        apply_mask(module, m, n)


@dataclass
class ShrinkReport:
    """What :func:`neurons` removed: one row per pruned producer, plus the layers it could not prune and why."""
    rows: list[dict] = field(default_factory=list)
    unprunable: dict[str, str] = field(default_factory=dict)
    max_abs_diff: float = 0.0  # largest output change on example_inputs

    def table(self) -> str:
        cols = [("layer", "layer", None), ("before", "before", "d"), ("after", "after", "d"),
                ("shrunk", "also shrunk", None), ("exact", "exact", None)]
        text = format_table(self.rows, cols)
        for name, why in self.unprunable.items():
            text += f"\nnot pruned: {name}: {why}"
        return text

    def __str__(self) -> str:
        return self.table()


def neurons(model: nn.Module, amount: float, example_inputs, importance="l2", scope: str = "layer",
            data: Iterable | None = None, loss_fn: Callable | None = None, skip=(), min_keep: int = 1,
            compensate: bool = True, max_batches: int | None = None) -> ShrinkReport:
    """Removes a fraction ``amount`` of the output neurons/filters of each prunable layer (scope="layer") or
    of all of them together (scope="global", scores normalized by each layer's mean), shrinking ``model``
    in place: producers lose rows, BatchNorms/depthwise convs after them lose entries, consumers lose input
    columns. Optimizers built before must be rebuilt (the parameters are new tensors).

    importance: "l2" / "l1" (norm of the neuron's weights), "activation" (fraction of the time the neuron is
    non-zero at its consumers' input, on ``data`` or ``example_inputs``), "gradient" (sum of |w * dL/dw| of
    its weights; needs ``loss_fn(output, target)`` and (input, target) ``data``), or {layer: per-channel scores}.
    ``example_inputs``: a tuple of model inputs, used to trace the model and to check the result.
    ``skip``: names/types of producers to leave whole (their consumers may still lose inputs). At least
    ``min_keep`` neurons stay per layer. Returns a :class:`ShrinkReport`; layers whose outputs go anywhere but
    per-channel ops into other layers (model outputs, residual adds, concat...) are left alone and listed.
    """
    amount, scope = check_amount(amount), check_scope(scope)
    skip = _check_skip(skip)
    if isinstance(min_keep, bool) or not isinstance(min_keep, int) or min_keep < 1:
        raise ValueError(f"min_keep must be an int >= 1, got {min_keep!r}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)):
        raise TypeError("example_inputs must be a tuple of model inputs")
    example_inputs = tuple(example_inputs)
    if data is not None and not isinstance(data, (torch.Tensor, tuple)) and iter(data) is data:
        data = list(data)  # a one-shot iterator (e.g. a generator) is read twice: statistics, then gradients
    with eval_mode(model), torch.no_grad():
        before = model(*example_inputs)
    groups, unprunable = find_groups(model, example_inputs)
    for name in [n for n, g in groups.items() if is_skipped(n, g.module, skip)]:
        del groups[name]
    report = ShrinkReport(unprunable={n: r for n, r in unprunable.items() if not is_skipped(n, None, skip)})
    if not groups:
        return report
    consumers = {c.name: c.module for g in groups.values() for c in g.consumers}
    stats = _input_stats(model, consumers, example_inputs, data, max_batches)
    scores = _scores(groups, importance, stats, model, loss_fn, data, max_batches)
    removed = _select(scores, amount, scope, min_keep, normalize=importance != "activation")
    edits, modules, exact = _plan(groups, removed, stats, compensate)
    snaps = {n: _snapshot(m) for n, m in modules.items()}
    try:
        for name, edit in edits.items():
            _apply(modules[name], edit)
        with eval_mode(model), torch.no_grad():
            after = model(*example_inputs)
        flat_before, spec_before = tree_flatten(before)
        flat_after, spec_after = tree_flatten(after)
        if spec_before != spec_after or any(
                isinstance(a, torch.Tensor) and a.shape != b.shape for a, b in zip(flat_before, flat_after)):
            raise RuntimeError("the model's output structure or shape changed")
    except Exception as err:
        for name, snap in snaps.items():
            _restore(modules[name], snap)
        raise RuntimeError(f"structured pruning failed and was rolled back: {err}") from err
    diffs = [float((a.double() - b.double()).abs().max()) for a, b in zip(flat_before, flat_after)
             if isinstance(a, torch.Tensor) and a.numel() and a.is_floating_point()]
    report.max_abs_diff = max(diffs, default=0.0)
    for name, g in groups.items():
        r = removed.get(name)
        if r is None or r.numel() == 0:
            continue
        also = [f.name for f in g.followers] + [c.name for c in g.consumers]
        report.rows.append({"layer": name, "before": g.channels, "after": g.channels - r.numel(),
                            "removed": r.tolist(), "shrunk": ", ".join(also), "exact": exact[name]})
    return report
