"""Dynamic computation: early exits (BranchyNet-style classifier heads after chosen layers of a backbone).

Easy inputs leave the network at the first head that is confident enough; only the rest pay for the deeper
layers. Training uses the (weighted) sum of all exits' losses; inference uses a confidence threshold, or a
threshold chosen on a calibration set so that the mean compute meets a budget.

    ee = EarlyExit(backbone, exits_after=[1, 3], example_input=x[:1])
    ... train with ee.loss(ee(x), y) ...
    ee.eval(); ee.calibrate(x_cal, budget=0.5)
    result = ee.infer(x_test)          # result.logits, result.exit_index, result.histogram, result.mean_compute
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EarlyExit", "ExitResult", "default_head", "module_macs"]


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
