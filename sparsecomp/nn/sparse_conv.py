"""SparseConv2d: a pruned nn.Conv2d run as im2col + sparse matmul (ops.sparse_matmul)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from .. import ops  # noqa: F401  registers torch.ops.sparsecomp and its fake kernels
from ..formats.sparse import TiledCSR
from ._sparse_weight import SparseWeightMixin

# The OpOverload itself (registered by the ops import): one Python call less per forward than ops.sparse_matmul.
_sparse_matmul = torch.ops.sparsecomp.sparse_matmul.default
# Below this many im2col elements F.unfold is cheaper than pad + strided view + copy (fixed cost ~8 us; measured
# crossover 4-8K elements on an AVX-512 Xeon).
_STRIDED_MIN_ELEMENTS = 4096


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
        left, right, top, bottom = self._pad
        # Symmetric zero padding is done by unfold itself (no padded copy of x); otherwise F.pad runs first.
        self._unfold_padding = (top, left) if left == right and top == bottom else None
        self._any_pad = any(self._pad)  # the strided im2col needs an explicitly padded input
        self._cols = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        self._init_sparse_weight(self.out_channels, self._cols, dtype=dtype, device=device)
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
        shape = x.shape
        unbatched = len(shape) == 3
        if unbatched:
            x = x.unsqueeze(0)
            shape = x.shape
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise ValueError(f"SparseConv2d: input must be [N, {self.in_channels}, H, W] or [{self.in_channels}, H, W],"
                             f" got shape {tuple(x.shape)}")
        n, _, h, w = shape
        left, right, top, bottom = self._pad
        out_h, out_w = self._out_size(h + top + bottom, w + left + right)
        # cols: [n, C*kh*kw, out_h*out_w], k-major, so W @ cols[n] is the NCHW output with no transposes.
        if (x.requires_grad and torch.is_grad_enabled()) or n * self._cols * out_h * out_w < _STRIDED_MIN_ELEMENTS:
            cols = self._unfold(x)
        else:
            cols = self._strided_im2col(x, out_h, out_w)
        values, col_idx, row_ptr, bias = self._operands()
        y = _sparse_matmul(cols, values, col_idx, row_ptr, bias, self._cols)
        if unbatched:
            return y.view(self.out_channels, out_h, out_w)
        return y.view(n, self.out_channels, out_h, out_w)

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        """Output size for a padded input of h x w."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        out_h = (h - dh * (kh - 1) - 1) // sh + 1
        out_w = (w - dw * (kw - 1) - 1) // sw + 1
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"SparseConv2d: input {(h, w)} (padded) is smaller than the kernel")
        return out_h, out_w

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self._pad, mode="constant" if self.padding_mode == "zeros" else self.padding_mode)

    def _unfold(self, x: torch.Tensor) -> torch.Tensor:
        """im2col by F.unfold: its backward (fold) is the efficient gradient, and it is cheaper on tiny inputs."""
        padding = self._unfold_padding
        if padding is None or self.padding_mode != "zeros":  # unfold pads with zeros on both sides only
            x = self._padded(x)
            padding = (0, 0)
        return F.unfold(x, self.kernel_size, dilation=self.dilation, padding=padding, stride=self.stride)

    def _strided_im2col(self, x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
        """im2col as one copy of a strided view of the padded input: 4-5x faster than F.unfold at 64 channels
        32x32 3x3 (measured), but its gradient would go through as_strided's generic backward instead of fold."""
        if self._any_pad:
            x = self._padded(x)
        n, c = x.shape[:2]
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        s0, s1, s2, s3 = x.stride()
        # (as_strided keeps x's storage offset)
        windows = x.as_strided((n, c, kh, kw, out_h, out_w), (s0, s1, dh * s2, dw * s3, sh * s2, sw * s3))
        return windows.reshape(n, self._cols, out_h * out_w)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, "
                f"padding_mode={self.padding_mode}, nnz={self.nnz}, sparsity={self.sparsity:.3f}")
