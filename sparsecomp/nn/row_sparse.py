"""RowSparseLinear / RowSparseConv2d: a pruned layer whose all-zero output rows (neurons, filters) are dropped.

Exact, not an approximation: the kept rows run as a smaller dense layer (BLAS / oneDNN at full speed) and their
outputs are scattered into the full-width output, where a dropped row's output is its bias (its weights are all
zero). The architecture stays the same (unlike ``sparsecomp.prune.neurons``, which removes the channels and edits
the next layer), so it is a drop-in replacement that ``sparsecomp.convert`` can choose per layer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _kept_rows(weight: torch.Tensor) -> torch.Tensor:
    return (weight.detach().reshape(weight.shape[0], -1) != 0).any(dim=1).nonzero().flatten()


class RowSparseLinear(nn.Module):
    """``F.linear(x, W, b)`` computed as ``F.linear(x, W[rows], b[rows])`` scattered into the output."""

    def __init__(self, in_features: int, out_features: int, rows: torch.Tensor, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        rows = torch.as_tensor(rows, dtype=torch.long, device=device).flatten()
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= out_features):
            raise ValueError(f"rows must be in [0, out_features={out_features})")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.register_buffer("rows", rows)
        self.weight = nn.Parameter(torch.zeros(rows.numel(), self.in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(self.out_features, device=device, dtype=dtype)) if bias else None

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> "RowSparseLinear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach()
        rows = _kept_rows(w)
        module = cls(linear.in_features, linear.out_features, rows, bias=linear.bias is not None, device=w.device,
                     dtype=w.dtype)
        with torch.no_grad():
            module.weight.copy_(w[rows])
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        return module

    def to_dense(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.zero_()
            linear.weight[self.rows] = self.weight
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept = F.linear(x, self.weight, None if self.bias is None else self.bias[self.rows])
        shape = (*x.shape[:-1], self.out_features)
        out = x.new_zeros(shape) if self.bias is None else self.bias.expand(shape).clone()
        return out.index_copy(-1, self.rows, kept)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, kept_rows={self.rows.numel()}, "
                f"bias={self.bias is not None}")


class RowSparseConv2d(nn.Module):
    """``conv2d(x, W, b)`` (groups=1) computed over the filters with a nonzero weight, scattered into the output."""

    def __init__(self, conv: nn.Conv2d, rows: torch.Tensor):
        super().__init__()
        if conv.groups != 1:
            raise ValueError(f"RowSparseConv2d supports groups=1 only, got groups={conv.groups}")
        w = conv.weight.detach()
        self.out_channels = conv.out_channels
        self.register_buffer("rows", torch.as_tensor(rows, dtype=torch.long, device=w.device).flatten())
        # the kept filters as an ordinary conv: every padding mode / stride / dilation is nn.Conv2d's own
        self.conv = nn.Conv2d(conv.in_channels, self.rows.numel(), conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, bias=False, padding_mode=conv.padding_mode, device=w.device,
                              dtype=w.dtype)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        with torch.no_grad():
            self.conv.weight.copy_(w[self.rows])

    @classmethod
    def from_dense(cls, conv: nn.Conv2d) -> "RowSparseConv2d":
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        return cls(conv, _kept_rows(conv.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept = self.conv(x)
        if self.bias is not None:
            kept = kept + self.bias[self.rows].reshape(1, -1, 1, 1)
        shape = (kept.shape[0], self.out_channels, *kept.shape[2:])
        if self.bias is None:
            out = kept.new_zeros(shape)
        else:
            out = self.bias.reshape(1, -1, 1, 1).expand(shape).clone()
        return out.index_copy(1, self.rows, kept)

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, kept_rows={self.rows.numel()}, bias={self.bias is not None}"
