"""SparseConv2d: a pruned nn.Conv2d run as im2col + sparse matmul (ops.sparse_matmul)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from .. import ops
from ..formats.sparse import TiledCSR
from ._sparse_weight import SparseWeightMixin


class SparseConv2d(SparseWeightMixin, nn.Module):
    """``conv2d(x, W, b, stride, padding, dilation)`` with only the nonzeros of W stored (groups=1).

    The weight is kept as a [out_channels, in_channels * kh * kw] tiled-CSR matrix and applied to the
    im2col columns of the input. Any ``padding_mode`` of nn.Conv2d and string paddings are accepted.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"padding_mode must be zeros, reflect, replicate or circular, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        # F.pad amounts (left, right, top, bottom), as nn.Conv2d computes them (also for padding="same").
        probe = nn.Conv2d(1, 1, self.kernel_size, stride=self.stride, padding=self.padding, dilation=self.dilation,
                          device="meta")
        self._pad = tuple(probe._reversed_padding_repeated_twice)
        k = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        self._init_sparse_weight(self.out_channels, k, dtype=dtype, device=device)
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.out_channels, dtype=self.values.dtype, device=device))
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, weight: torch.Tensor | None = None) -> "SparseConv2d":
        """Keeps the nonzeros of ``conv.weight`` (or of ``weight``); needs ``groups == 1``."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(f"SparseConv2d supports groups=1 only, got groups={conv.groups}")
        w = (conv.weight if weight is None else weight).detach()
        if tuple(w.shape) != tuple(conv.weight.shape):
            raise ValueError(f"weight must have shape {tuple(conv.weight.shape)}, got {tuple(w.shape)}")
        csr = TiledCSR.from_dense(w.reshape(w.shape[0], -1))  # rejects non-float weights before anything is built
        module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     bias=conv.bias is not None, padding_mode=conv.padding_mode, device=w.device, dtype=w.dtype)
        module._set_sparse_weight(csr)
        if conv.bias is not None:
            module.bias = nn.Parameter(conv.bias.detach().to(w.dtype).clone())
        return module

    def to_dense(self) -> nn.Conv2d:
        """An equivalent ``nn.Conv2d`` (pruned weights as zeros)."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, bias=self.bias is not None, padding_mode=self.padding_mode,
                         device=self.values.device, dtype=self.values.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.weight_matrix().reshape(conv.weight.shape))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SparseConv2d: input must be [N, {self.in_channels}, H, W] or [{self.in_channels}, H, W],"
                             f" got shape {tuple(x.shape)}")
        left, right, top, bottom = self._pad
        if self.padding_mode == "zeros" and left == right and top == bottom:
            padding = (top, left)
        else:
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._pad, mode=mode)
            padding = (0, 0)
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        out_h = (h + 2 * padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        out_w = (w + 2 * padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"SparseConv2d: input {tuple(x.shape)} is smaller than the kernel")
        # unfold gives [n, C*kh*kw, out_h*out_w]: k-major, so W @ cols[n] is the NCHW output with no transposes.
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=padding, stride=self.stride)
        y = ops.sparse_matmul(cols, self.values, self.col_idx, self.row_ptr, self.bias, cols.shape[1])
        y = y.reshape(n, self.out_channels, out_h, out_w)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, "
                f"padding_mode={self.padding_mode}, nnz={self.nnz}, sparsity={self.sparsity:.3f}")
