"""Dynamic computation: early exits (BranchyNet-style classifier heads after chosen layers of a backbone).

Easy inputs leave the network at the first head that is confident enough; only the rest pay for the deeper
layers. Training uses the (weighted) sum of all exits' losses; inference uses a confidence threshold, or a
threshold chosen on a calibration set so that the mean compute meets a budget.

    ee = EarlyExit(backbone, exits_after=[1, 3], example_input=x[:1])
    ... train with ee.loss(ee(x), y) ...
    ee.eval(); ee.calibrate(x_cal, budget=0.5)
    result = ee.infer(x_test)          # result.logits, result.exit_index, result.histogram, result.mean_compute

Also :class:`Slimmable`, a width multiplier for Linear stacks: one set of weights usable at several widths.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EarlyExit", "ExitResult", "Slimmable", "default_head", "module_macs"]


def default_head(feature_shape: torch.Size, num_classes: int) -> nn.Module:
    """A linear classifier on the features. [C, H, W] features are first average-pooled to at most 4x4:
    cheap for large maps, yet (unlike global pooling) it keeps the coarse layout that early, low-level
    features need to be classifiable. Other features are flattened."""
    if len(feature_shape) == 3:
        c, h, w = feature_shape
        size = (min(h, 4), min(w, 4))
        return nn.Sequential(nn.AdaptiveAvgPool2d(size), nn.Flatten(), nn.Linear(c * size[0] * size[1], num_classes))
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(feature_shape), num_classes))


def module_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-accumulates of one call of a Linear/Conv layer (dense, or sparse counting only the stored
    nonzeros) that produced ``output``; 0 for any other layer. Biases and activations are not counted."""
    from .nn import SparseConv2d, SparseLinear

    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, SparseLinear):
        return (output.numel() // max(module.out_features, 1)) * module.nnz
    if isinstance(module, SparseConv2d):
        return (output.numel() // max(module.out_channels, 1)) * module.nnz
    return 0


def _measure_macs(module: nn.Module, run: Callable[[], torch.Tensor]) -> tuple[int, torch.Tensor]:
    """MACs of every Linear/Conv leaf inside ``module`` during ``run()``, and its result."""
    total = [0]

    def hook(m, inputs, output):
        if isinstance(output, torch.Tensor):
            total[0] += module_macs(m, output)

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        out = run()
    finally:
        for h in handles:
            h.remove()
    return total[0], out


@dataclass
class ExitResult:
    """Outcome of :meth:`EarlyExit.infer`.

    ``exit_index[n]`` is the exit sample n left at (``0 .. num_exits - 1`` the early heads, ``num_exits`` the
    backbone's own output); ``histogram[k]`` counts the samples per exit (sums to N); ``mean_compute`` is the
    mean cost per sample as a fraction of the full backbone (see :class:`EarlyExit` ``cost``).
    """
    logits: torch.Tensor
    exit_index: torch.Tensor
    histogram: list[int]
    mean_compute: float
    threshold: float
    exit_names: list[str]

    def report(self) -> str:
        n = max(sum(self.histogram), 1)
        lines = [f"threshold {self.threshold:.4g}, mean compute {self.mean_compute:.3f} of the full backbone"]
        for name, count in zip(self.exit_names, self.histogram):
            lines.append(f"  exit {name:>12}: {count:6d} samples ({100.0 * count / n:5.1f}%)")
        return "\n".join(lines)

    __str__ = report


class EarlyExit(nn.Module):
    """Adds classifier heads after chosen layers of ``backbone`` (an ``nn.Sequential`` whose output is the
    final [N, classes] logits).

    - ``exits_after``: layer names (keys of the Sequential) or indices; a head reads that layer's output. The
      last layer cannot carry an exit (its output is the final exit).
    - ``example_input``: one small batch, used once to infer feature shapes, the number of classes and costs.
    - ``head_factory(feature_shape, num_classes) -> nn.Module`` builds a head from the per-sample feature shape
      (default :func:`default_head`).
    - ``exit_weights``: loss weights of the heads and of the final output (default all 1).
    - ``cost``: how compute is measured. ``"macs"`` (default): multiply-accumulates of the Linear/Conv layers
      (sparse layers count their nonzeros), measured on ``example_input``, of the backbone layers run *plus*
      the heads evaluated on the way, divided by the MACs of the whole backbone without heads; so a sample that
      reaches the end costs slightly more than 1. ``"layers"``: number of backbone layers run / number of layers
      (heads not counted).

    ``forward(x)`` returns every exit's logits (for training with :meth:`loss`); :meth:`infer` does the
    early-exit inference.
    """

    def __init__(self, backbone: nn.Sequential, exits_after: Sequence[int | str], *, example_input: torch.Tensor,
                 head_factory: Callable[[torch.Size, int], nn.Module] | None = None,
                 exit_weights: Sequence[float] | None = None, cost: str = "macs"):
        super().__init__()
        if not isinstance(backbone, nn.Sequential):
            raise TypeError(f"backbone must be an nn.Sequential, got {type(backbone).__name__}")
        if len(backbone) < 2:
            raise ValueError("backbone must have at least 2 layers to place an exit between them")
        if cost not in ("macs", "layers"):
            raise ValueError(f"cost must be 'macs' or 'layers', got {cost!r}")
        self.backbone = backbone
        self.cost = cost
        self.boundaries = self._resolve(backbone, exits_after)  # exit k reads the output of layer boundaries[k]
        names = list(backbone._modules.keys())
        self.exit_names = [names[i] for i in self.boundaries] + ["final"]
        num_exits = len(self.boundaries) + 1
        weights = [1.0] * num_exits if exit_weights is None else [float(w) for w in exit_weights]
        if len(weights) != num_exits or not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ValueError(f"exit_weights must be {num_exits} non-negative numbers (one per head and one for the "
                             f"final output), got {exit_weights}")
        self.exit_weights = weights
        self.heads = nn.ModuleList(self._build_heads(example_input, head_factory or default_head))
        self.threshold: float | None = None

    @staticmethod
    def _resolve(backbone: nn.Sequential, exits_after) -> list[int]:
        names = list(backbone._modules.keys())
        if isinstance(exits_after, (str, int)) or not exits_after:
            raise ValueError("exits_after must be a non-empty list of layer names or indices")
        out = []
        for e in exits_after:
            if isinstance(e, str):
                if e not in names:
                    raise ValueError(f"exits_after: the backbone has no layer named {e!r} (layers: {names})")
                i = names.index(e)
            elif isinstance(e, int) and not isinstance(e, bool):
                if not -len(names) <= e < len(names):
                    raise ValueError(f"exits_after: index {e} out of range for {len(names)} layers")
                i = e % len(names)
            else:
                raise ValueError(f"exits_after entries must be layer names or indices, got {e!r}")
            if i == len(names) - 1:
                raise ValueError(f"exits_after: {e!r} is the last layer, whose output is already the final exit")
            out.append(i)
        if len(set(out)) != len(out):
            raise ValueError(f"exits_after names a layer twice: {list(exits_after)}")
        return sorted(out)

    def _build_heads(self, example_input, head_factory) -> list[nn.Module]:
        if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1 or example_input.shape[0] < 1:
            raise ValueError("example_input must be a batch tensor with at least one sample")
        n = example_input.shape[0]
        mode = self.backbone.training
        self.backbone.eval()
        layer_macs, feats = [], {}
        try:
            with torch.no_grad():
                h = example_input
                for i, layer in enumerate(self.backbone):
                    macs, h = _measure_macs(layer, lambda: layer(h))
                    layer_macs.append(macs / n)
                    if i in self.boundaries:
                        feats[i] = h
                final = h
                if not isinstance(final, torch.Tensor) or final.dim() != 2:
                    raise ValueError(f"the backbone must return [batch, classes] logits, got "
                                     f"{getattr(final, 'shape', type(final).__name__)}")
                num_classes = final.shape[1]
                heads, head_macs = [], []
                for i in self.boundaries:
                    f = feats[i]
                    head = head_factory(f.shape[1:], num_classes)
                    if not isinstance(head, nn.Module):
                        raise TypeError(f"head_factory must return an nn.Module, got {type(head).__name__}")
                    head = head.to(device=f.device, dtype=f.dtype)
                    head.eval()
                    macs, z = _measure_macs(head, lambda: head(f))
                    if not isinstance(z, torch.Tensor) or tuple(z.shape) != (n, num_classes):
                        raise ValueError(f"the head after layer {i} returned {getattr(z, 'shape', type(z))}, "
                                         f"expected [{n}, {num_classes}]")
                    head.train(mode)
                    heads.append(head)
                    head_macs.append(macs / n)
        finally:
            self.backbone.train(mode)
        self.num_classes = num_classes
        # cost of leaving at exit k, as a fraction of the whole backbone
        if self.cost == "macs":
            total = sum(layer_macs)
            if total == 0:
                raise ValueError("the backbone has no Linear/Conv layers to count MACs on: use cost='layers'")
            ends = [*self.boundaries, len(self.backbone) - 1]
            self.exit_costs = [(sum(layer_macs[:end + 1]) + sum(head_macs[:k + 1])) / total
                               for k, end in enumerate(ends)]
        else:
            self.exit_costs = [(i + 1) / len(self.backbone) for i in self.boundaries] + [1.0]
        return heads

    @property
    def num_exits(self) -> int:
        """Number of early heads (the final output is exit ``num_exits``)."""
        return len(self.boundaries)

    def _segments(self):
        start = 0
        for end in [*self.boundaries, len(self.backbone) - 1]:
            yield range(start, end + 1)
            start = end + 1

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit, the early heads first and the backbone's output last."""
        outs, h = [], x
        for k, seg in enumerate(self._segments()):
            for i in seg:
                h = self.backbone[i](h)
            outs.append(self.heads[k](h) if k < self.num_exits else h)
        return outs

    def loss(self, outputs: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """``sum_k exit_weights[k] * cross_entropy(outputs[k], target)`` over all exits."""
        if len(outputs) != self.num_exits + 1:
            raise ValueError(f"outputs must hold {self.num_exits + 1} exits' logits, got {len(outputs)}")
        return sum(w * F.cross_entropy(z, target) for w, z in zip(self.exit_weights, outputs))

    def _check_threshold(self, threshold) -> float:
        if threshold is None:
            if self.threshold is None:
                raise ValueError("no threshold: pass threshold= or call calibrate(x, budget) first")
            threshold = self.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold):
            raise ValueError(f"threshold must be a number (max softmax probability to exit), got {threshold!r}")
        return float(threshold)

    def infer(self, x: torch.Tensor, threshold: float | None = None) -> ExitResult:
        """Early-exit inference: a sample leaves at the first head whose max softmax probability is
        ``>= threshold``; the others continue as a smaller batch, so deeper layers run only on them.
        ``threshold <= 0`` exits everything at the first head, ``> 1`` runs everything to the end.
        Needs eval mode (batch statistics would depend on which samples remain)."""
        threshold = self._check_threshold(threshold)
        if self.training:
            raise RuntimeError("EarlyExit.infer needs eval mode: call .eval() first")
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise ValueError("x must be a batch tensor")
        n = x.shape[0]
        exit_index = torch.full((n,), -1, dtype=torch.int64, device=x.device)
        logits = None
        active = torch.arange(n, device=x.device)  # original positions of the samples still running
        h = x
        with torch.no_grad():
            for k, seg in enumerate(self._segments()):
                if active.numel() == 0:
                    break
                for i in seg:
                    h = self.backbone[i](h)
                z = self.heads[k](h) if k < self.num_exits else h
                if logits is None:
                    logits = z.new_empty((n, *z.shape[1:]))
                if k < self.num_exits:
                    # compared in float64, like calibrate(), so its midpoint thresholds are not rounded
                    done = torch.softmax(z.float(), dim=1).amax(dim=1).double() >= threshold
                else:
                    done = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
                logits[active[done]] = z[done]
                exit_index[active[done]] = k
                keep = ~done
                active, h = active[keep], h[keep]
        if logits is None:  # empty batch
            logits = torch.empty(0, self.num_classes, device=x.device)
        costs = torch.tensor(self.exit_costs, dtype=torch.float64)
        hist = torch.bincount(exit_index.cpu(), minlength=self.num_exits + 1)
        mean = float((hist.double() * costs).sum() / n) if n else 0.0
        return ExitResult(logits, exit_index, hist.tolist(), mean, threshold, list(self.exit_names))

    def _confidences(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            outs = self(x)
        return torch.stack([torch.softmax(z.float(), 1).amax(1) for z in outs[:-1]]).double().cpu()  # [heads, N]

    def _mean_cost(self, conf: torch.Tensor, threshold: float) -> float:
        passed = conf >= threshold  # [heads, N]
        first = torch.where(passed.any(0), passed.int().argmax(0), torch.tensor(self.num_exits))
        return float(torch.tensor(self.exit_costs, dtype=torch.float64)[first].mean())

    def calibrate(self, x: torch.Tensor, budget: float) -> float:
        """Chooses (and stores as ``self.threshold``) the largest threshold whose mean compute on the
        calibration batch ``x`` is ``<= budget`` (a fraction of the full backbone, see ``cost``), and returns it.

        The mean compute is non-decreasing in the threshold and changes only at the samples' confidences,
        so a binary search over the sorted confidences finds the optimum. The returned value lies halfway
        between two consecutive confidences, so tiny numerical differences at inference (e.g. smaller
        batches) do not move a calibration sample across it. On other data the budget holds on average only.
        """
        if self.training:
            raise RuntimeError("EarlyExit.calibrate needs eval mode: call .eval() first")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
            raise ValueError(f"budget must be a positive fraction of the full backbone's compute, got {budget!r}")
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] == 0:
            raise ValueError("x must be a non-empty calibration batch")
        if budget < self.exit_costs[0]:
            raise ValueError(f"budget {budget} is below the cost of the first exit ({self.exit_costs[0]:.4f}): "
                             f"no threshold can meet it")
        conf = self._confidences(x)
        if self._mean_cost(conf, math.inf) <= budget:
            self.threshold = math.inf
            return self.threshold
        cand = torch.unique(conf.flatten())  # sorted ascending
        # cand[0] (the minimum confidence) exits everything at the first head: feasible by the check above.
        lo, hi = 0, cand.numel() - 1
        while lo < hi:  # largest feasible index
            mid = (lo + hi + 1) // 2
            if self._mean_cost(conf, float(cand[mid])) <= budget:
                lo = mid
            else:
                hi = mid - 1
        below = float(cand[lo - 1]) if lo > 0 else 0.0
        self.threshold = (below + float(cand[lo])) / 2
        return self.threshold

    def extra_repr(self) -> str:
        costs = ", ".join(f"{c:.3f}" for c in self.exit_costs)
        return f"exits_after={self.exit_names[:-1]}, cost={self.cost!r}, exit_costs=[{costs}]"


# ====================================================================================== width multiplier

_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Hardswish,
                nn.Hardtanh, nn.Mish, nn.Softplus, nn.Dropout, nn.Identity)


class Slimmable(nn.Module):
    """Width multiplier for a stack of ``nn.Linear`` layers (Yu et al., "Slimmable Neural Networks"): one set
    of weights that runs at several widths, each hidden layer using only its first ``round(width * units)``
    units. The input and output sizes never change.

    ``model`` is an ``nn.Sequential`` of Linear layers and parameter-free elementwise activations/dropout.
    Train with :meth:`loss` (the sum of the losses at every width; the narrower widths can learn from the full
    width's predictions, "inplace distillation"), pick a width with :meth:`set_width`, and :meth:`export` a
    physically smaller ``nn.Sequential`` for deployment (same outputs at that width, fewer MACs).
    """

    def __init__(self, model: nn.Sequential, widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0)):
        super().__init__()
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"model must be an nn.Sequential, got {type(model).__name__}")
        linears = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
        for i, m in enumerate(model):
            if not isinstance(m, (nn.Linear, *_ELEMENTWISE)):
                raise TypeError(f"layer {i} ({type(m).__name__}) is not a Linear or an elementwise activation; "
                                f"Slimmable supports Linear stacks only")
        if len(linears) < 2:
            raise ValueError("model needs at least 2 Linear layers (a hidden layer to slim)")
        for a, b in zip(linears, linears[1:]):
            if model[a].out_features != model[b].in_features:
                raise ValueError(f"layer {a} has {model[a].out_features} outputs but layer {b} expects "
                                 f"{model[b].in_features} inputs")
        widths = sorted({float(w) for w in widths})
        if not widths or not all(0.0 < w <= 1.0 for w in widths) or widths[-1] != 1.0:
            raise ValueError(f"widths must be fractions in (0, 1] including 1.0, got {widths}")
        self.model, self.widths, self._linears = model, widths, linears
        self.width = 1.0

    def set_width(self, width: float) -> "Slimmable":
        if width not in self.widths:
            raise ValueError(f"width must be one of {self.widths}, got {width!r}")
        self.width = float(width)
        return self

    def _units(self, width: float) -> list[int]:
        """Active outputs of each Linear at ``width`` (the last Linear always keeps all outputs)."""
        last = self._linears[-1]
        return [self.model[i].out_features if i == last else max(1, round(width * self.model[i].out_features))
                for i in self._linears]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        units = dict(zip(self._linears, self._units(self.width)))
        active_in = None  # the first Linear reads every input
        for i, m in enumerate(self.model):
            if isinstance(m, nn.Linear):
                w = m.weight[:units[i]] if active_in is None else m.weight[:units[i], :active_in]
                x = F.linear(x, w, None if m.bias is None else m.bias[:units[i]])
                active_in = units[i]
            else:
                x = m(x)
        return x

    def macs(self, width: float | None = None) -> int:
        """Multiply-accumulates per sample at ``width`` (default: the current one)."""
        units = self._units(self.width if width is None else width)
        ins = [self.model[self._linears[0]].in_features, *units[:-1]]
        return sum(i * o for i, o in zip(ins, units))

    def loss(self, x: torch.Tensor, target: torch.Tensor, distill: bool = True, T: float = 1.0) -> torch.Tensor:
        """Sum over all widths of the loss at that width: cross-entropy at full width; at the narrower widths
        cross-entropy, or (``distill``) :func:`sparsecomp.distill.kd_loss` against the full width's detached
        predictions. Restores the current width."""
        from .distill import kd_loss

        current, total = self.width, None
        try:
            self.width = 1.0
            full = self(x)
            total = F.cross_entropy(full, target)
            for w in self.widths[:-1]:
                self.width = w
                out = self(x)
                total = total + (kd_loss(out, full.detach(), None, T=T, alpha=1.0) if distill
                                 else F.cross_entropy(out, target))
        finally:
            self.width = current
        return total

    def export(self, width: float | None = None) -> nn.Sequential:
        """A plain ``nn.Sequential`` with the Linear layers cut to ``width`` (copies of the weights)."""
        width = self.width if width is None else width
        if width not in self.widths:
            raise ValueError(f"width must be one of {self.widths}, got {width!r}")
        units = dict(zip(self._linears, self._units(width)))
        layers, active_in = [], self.model[self._linears[0]].in_features
        for i, m in enumerate(self.model):
            if isinstance(m, nn.Linear):
                lin = nn.Linear(active_in, units[i], bias=m.bias is not None, device=m.weight.device,
                                dtype=m.weight.dtype)
                with torch.no_grad():
                    lin.weight.copy_(m.weight[:units[i], :active_in])
                    if m.bias is not None:
                        lin.bias.copy_(m.bias[:units[i]])
                layers.append(lin)
                active_in = units[i]
            else:
                layers.append(copy.deepcopy(m))
        return nn.Sequential(*layers)

    def extra_repr(self) -> str:
        return f"widths={self.widths}, width={self.width}"
