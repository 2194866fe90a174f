"""Architecture compression: swap layers of a trained model for cheaper factored ones, then distill.

* :func:`separable` replaces k x k ``nn.Conv2d`` layers by :class:`~sparsecomp.nn.DepthwiseSeparableConv2d`
  (depthwise k x k + pointwise 1x1), either freshly initialized or least-squares fitted to the original kernel;
* :func:`low_rank` replaces ``nn.Linear`` layers by :class:`~sparsecomp.nn.LowRankLinear` (truncated SVD).

Both return ``(new_model, report)``; the report lists parameters and FLOPs per layer before/after. The factored
model computes a different function, so recover accuracy by distilling from the original::

    student, rep = sc.arch.separable(teacher, example_inputs=(x,))
    sc.distill.Distiller(student, teacher, torch.optim.Adam(student.parameters(), 1e-3)).fit(batches, epochs=5)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from .nn.low_rank import LowRankLinear
from .nn.separable import DepthwiseSeparableConv2d

__all__ = ["separable", "low_rank", "fit_separable", "Report", "LayerReport"]

SEPARABLE_KERNEL_SIZES = (3, 5, 7)


@dataclass
class LayerReport:
    name: str
    kind: str  # "conv -> separable", "linear -> low-rank", or "kept: <why>"
    params_before: int
    params_after: int
    flops_before: int | None  # 2 * multiply-adds for one forward of example_inputs (bias adds not counted)
    flops_after: int | None
    note: str = ""

    @property
    def replaced(self) -> bool:
        return not self.kind.startswith("kept")


@dataclass
class Report:
    layers: list[LayerReport] = field(default_factory=list)

    @property
    def replaced(self) -> list[LayerReport]:
        return [r for r in self.layers if r.replaced]

    def totals(self) -> dict:
        """Sums over the replaced layers (FLOPs None when no example input was given)."""
        rs = self.replaced
        flops = all(r.flops_before is not None for r in rs)
        return {"layers": len(rs), "params_before": sum(r.params_before for r in rs),
                "params_after": sum(r.params_after for r in rs),
                "flops_before": sum(r.flops_before for r in rs) if flops else None,
                "flops_after": sum(r.flops_after for r in rs) if flops else None}

    def table(self) -> str:
        def num(v):
            return "-" if v is None else f"{v:,}"

        def ratio(a, b):
            return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"

        rows = [("layer", "change", "params before", "params after", "saving", "FLOPs before", "FLOPs after",
                 "saving", "note")]
        for r in self.layers:
            rows.append((r.name, r.kind, num(r.params_before), num(r.params_after),
                         ratio(r.params_before, r.params_after), num(r.flops_before), num(r.flops_after),
                         ratio(r.flops_before, r.flops_after), r.note))
        t = self.totals()
        rows.append(("total (replaced)", f"{t['layers']} layers", num(t["params_before"]), num(t["params_after"]),
                     ratio(t["params_before"], t["params_after"]), num(t["flops_before"]), num(t["flops_after"]),
                     ratio(t["flops_before"], t["flops_after"]), ""))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# ============================================================================================ helpers
def _prepare(model: nn.Module, inplace: bool) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return model if inplace else copy.deepcopy(model)


def _check_skip(model: nn.Module, skip) -> set:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(skip, str):
        skip = (skip,)
    skip = set(skip)
    names = {n for n, _ in model.named_modules()}
    unknown = sorted(skip - names)
    if unknown:
        raise ValueError(f"skip names modules the model does not have: {unknown}")
    return skip


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _output_sizes(model: nn.Module, example_inputs, types) -> dict[str, torch.Size]:
    """Output shape of every module of ``types`` for one forward of ``example_inputs`` (model mode kept)."""
    if example_inputs is None:
        return {}
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    sizes, hooks = {}, []

    def record(name):
        def hook(module, inputs, output):  # returns None: the output is left as it is
            sizes.setdefault(name, output.shape)
        return hook

    for name, m in model.named_modules():
        if type(m) in types:
            hooks.append(m.register_forward_hook(record(name)))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return sizes


def _n(t) -> int:
    return 0 if t is None else t.numel()


# ============================================================================================ separable
def fit_separable(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares depthwise/pointwise factors of a conv weight W [O, I, k, k].

    Returns (dw [I, 1, k, k], pw [O, I, 1, 1], residual) minimizing ||W - W_sep||_F with
    W_sep[o, c] = pw[o, c] * dw[c]. Why per-channel SVD is the exact optimum: the error splits into independent
    sums over input channels, sum_c ||M_c - p_c d_c^T||_F^2 with M_c = W[:, c] as an O x k^2 matrix and p_c
    (length O), d_c (length k^2) used by channel c only; so each term is minimized on its own, and the best
    rank-1 approximation of M_c is sigma_1 u_1 v_1^T (Eckart-Young). sqrt(sigma_1) goes to each factor so both
    start at the same scale for fine-tuning; the sign makes the depthwise kernel sum non-negative (a convention).
    ``residual`` is ||W - W_sep||_F^2 = sum_c sum_{i>1} sigma_i(M_c)^2.
    """
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"weight must be [O, I, k, k], got shape {tuple(weight.shape)}")
    o, i, k, _ = weight.shape
    m = weight.detach().double().permute(1, 0, 2, 3).reshape(i, o, k * k)  # M_c for every c, batched
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    root = s[:, 0].sqrt()
    p = u[:, :, 0] * root.unsqueeze(1)  # [I, O]
    d = vh[:, 0, :] * root.unsqueeze(1)  # [I, k*k]
    flip = torch.where(d.sum(1) < 0, -1.0, 1.0).to(d.dtype)
    p, d = p * flip.unsqueeze(1), d * flip.unsqueeze(1)
    residual = s[:, 1:].square().sum()
    dw = d.reshape(i, 1, k, k).to(weight.dtype)
    pw = p.t().reshape(o, i, 1, 1).to(weight.dtype)
    return dw, pw, residual


def _separable_reason(conv: nn.Conv2d, min_channels: int) -> str | None:
    """Why ``conv`` cannot be replaced, or None if it can."""
    k = conv.kernel_size
    if conv.groups != 1:
        return f"groups={conv.groups}"
    if k[0] != k[1] or k[0] not in SEPARABLE_KERNEL_SIZES:
        return f"kernel {k[0]}x{k[1]} (needs square 3, 5 or 7)"
    if tuple(conv.dilation) != (1, 1):
        return f"dilation {tuple(conv.dilation)}"
    if conv.stride[0] != conv.stride[1] or conv.stride[0] not in (1, 2):
        return f"stride {tuple(conv.stride)}"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode}"
    if isinstance(conv.padding, str) and conv.padding == "same" and conv.stride[0] != 1:
        return "padding='same' with stride 2"
    if not isinstance(conv.padding, str) and conv.padding[0] != conv.padding[1]:
        return f"asymmetric padding {tuple(conv.padding)}"
    if conv.in_channels < min_channels:
        return f"in_channels={conv.in_channels} < min_channels={min_channels}"
    if conv.out_channels < 2:
        return "out_channels=1 (nothing to save)"
    return None


def separable(model: nn.Module, *, init: str = "fit", min_channels: int = 8, skip=(), example_inputs=None,
              fused="auto", inplace: bool = False, report: bool = True) -> tuple[nn.Module, Report]:
    """Replaces every eligible ``nn.Conv2d`` (exact type; groups 1, square kernel 3/5/7, dilation 1, stride 1 or
    2, zero padding, ``in_channels >= min_channels``, qualified name not in ``skip``) by a
    :class:`DepthwiseSeparableConv2d` with the same stride/padding/bias and no BN or activation (BN and
    activations around the conv stay where they are).

    ``init="fit"``: the least-squares factors of the original kernel (:func:`fit_separable`), bias copied;
    ``init="fresh"``: default initialization. ``example_inputs`` (a tensor or tuple for one forward) adds FLOPs
    to the report. Returns (model, report): a deep copy unless ``inplace``; the report is printed if ``report``.
    """
    if init not in ("fit", "fresh"):
        raise ValueError(f"init must be 'fit' or 'fresh', got {init!r}")
    if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
        raise ValueError(f"min_channels must be a positive int, got {min_channels!r}")
    skip = _check_skip(model, skip)
    sizes = _output_sizes(model, example_inputs, (nn.Conv2d,))
    model = _prepare(model, inplace)
    rep = Report()
    for name, conv in list(model.named_modules()):
        if type(conv) is not nn.Conv2d:
            continue
        hw = sizes[name][-2] * sizes[name][-1] if name in sizes else None
        o, i, k = conv.out_channels, conv.in_channels, conv.kernel_size[0]
        before = _n(conv.weight) + _n(conv.bias)
        flops_before = None if hw is None else 2 * o * (i // conv.groups) * conv.kernel_size[0] * \
            conv.kernel_size[1] * hw
        why = "in skip" if name in skip else _separable_reason(conv, min_channels)
        if why is not None:
            rep.layers.append(LayerReport(name, f"kept: {why}", before, before, flops_before, flops_before))
            continue
        w = conv.weight
        new = DepthwiseSeparableConv2d(i, o, k, conv.stride[0], conv.padding, bias=conv.bias is not None,
                                       fused=fused, device=w.device, dtype=w.dtype)
        note = ""
        if init == "fit":
            dw, pw, residual = fit_separable(w)
            with torch.no_grad():
                new.dw_weight.copy_(dw)
                new.pw_weight.copy_(pw)
                if conv.bias is not None:
                    new.pw_bias.copy_(conv.bias)
            total = float(w.detach().double().square().sum())
            note = f"fit keeps {1 - float(residual) / total:.1%} of ||W||^2" if total > 0 else ""
        new.train(conv.training)
        _set_module(model, name, new)
        after = sum(p.numel() for p in new.parameters())
        flops_after = None if hw is None else 2 * (i * k * k + o * i) * hw
        rep.layers.append(LayerReport(name, "conv -> separable", before, after, flops_before, flops_after, note))
    if report:
        print(rep.table())
    return model, rep


# ============================================================================================ low rank
def low_rank(model: nn.Module, *, energy: float = 0.9, rank: int | None = None, min_features: int = 16, skip=(),
             example_inputs=None, inplace: bool = False, report: bool = True) -> tuple[nn.Module, Report]:
    """Replaces ``nn.Linear`` layers (exact type, both dims >= ``min_features``, name not in ``skip``) by
    :meth:`LowRankLinear.from_dense` (rank by kept ``energy``, or ``rank`` for every layer) where the factors
    have fewer parameters than the dense weight; other layers are kept and the report says why.
    FLOPs need ``example_inputs`` (they scale with the rows of the input). Returns (model, report)."""
    if isinstance(min_features, bool) or not isinstance(min_features, int) or min_features < 1:
        raise ValueError(f"min_features must be a positive int, got {min_features!r}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive int or None, got {rank!r}")
    skip = _check_skip(model, skip)
    sizes = _output_sizes(model, example_inputs, (nn.Linear,))
    model = _prepare(model, inplace)
    rep = Report()
    for name, lin in list(model.named_modules()):
        if type(lin) is not nn.Linear:
            continue
        rows = sizes[name][:-1].numel() if name in sizes else None
        before = _n(lin.weight) + _n(lin.bias)
        fl_before = None if rows is None else 2 * rows * lin.in_features * lin.out_features
        if name in skip:
            why = "in skip"
        elif min(lin.in_features, lin.out_features) < min_features:
            why = f"min(in, out)={min(lin.in_features, lin.out_features)} < min_features={min_features}"
        elif rank is not None and rank >= min(lin.in_features, lin.out_features):
            why = f"rank {rank} >= min(in, out)={min(lin.in_features, lin.out_features)}"
        else:
            why = None
        new = None
        if why is None:
            new = LowRankLinear.from_dense(lin, rank=rank, energy=energy)
            if new.num_parameters >= before:
                why = f"rank {new.rank} saves nothing ({new.num_parameters} >= {before} params)"
        if why is not None:
            rep.layers.append(LayerReport(name, f"kept: {why}", before, before, fl_before, fl_before))
            continue
        new.train(lin.training)
        _set_module(model, name, new)
        fl_after = None if rows is None else 2 * rows * new.rank * (lin.in_features + lin.out_features)
        rep.layers.append(LayerReport(name, "linear -> low-rank", before, new.num_parameters, fl_before, fl_after,
                                      f"rank {new.rank}, keeps {new.kept_energy:.1%} energy"))
    if report:
        print(rep.table())
    return model, rep
