"""CodebookConv2d: an nn.Conv2d whose weight is a small table of shared values plus a b-bit index per weight,
run as im2col + ``codebook_mm``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from .. import ops
from ._codebook_weight import CodebookWeightMixin, cluster

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class CodebookConv2d(CodebookWeightMixin, nn.Module):
    """``conv2d(x, codebook[indices].reshape(W.shape), b, stride, padding, dilation, groups)``.

    The weight [out_channels, in_channels / groups, kh, kw] is stored as one b-bit index per weight (rows = output
    channels, cols = the flattened filter, same packed layout as CodebookLinear) and a codebook per layer or per
    output channel. Build it with :meth:`from_dense`. Eval (or no-grad) forward on CPU fp32: im2col (``F.unfold``,
    or a plain reshape for a 1x1 stride-1 unpadded conv) then ``codebook_mm`` per group, the rows of a group being
    a slice of the packed rows. Training mode: ``F.conv2d`` with the dequantized weight, indices fixed and the
    codebook learning (each entry's gradient is the sum of its members' gradients); ``zero_code`` keeps pruned
    weights exactly zero. Accepts NCHW, channels_last and unbatched [C, H, W] input; every ``padding_mode`` of
    nn.Conv2d and string paddings.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", bits: int = 4,
                 per_channel: bool = False, zero_code: bool = False, device=None, dtype=None):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        if min(self.in_channels, self.out_channels, self.groups) < 1:
            raise ValueError(f"in_channels, out_channels and groups must be >= 1, got {in_channels}, {out_channels}, "
                             f"{groups}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"in_channels={in_channels} and out_channels={out_channels} must be divisible by "
                             f"groups={groups}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        # F.pad amounts (left, right, top, bottom) exactly as nn.Conv2d computes them (also for padding="same");
        # the probe also validates kernel_size / stride / dilation / padding.
        probe = nn.Conv2d(self.groups, self.groups, self.kernel_size, stride=self.stride, padding=self.padding,
                          dilation=self.dilation, groups=self.groups, device="meta")
        self._pad = tuple(probe._reversed_padding_repeated_twice)
        left, right, top, bottom = self._pad
        # Symmetric zero padding is done by unfold itself (no padded copy of x); otherwise F.pad runs first.
        self._unfold_padding = (top, left) if left == right and top == bottom and padding_mode == "zeros" else None
        self._pointwise = self.kernel_size == (1, 1) and self.stride == (1, 1) and not any(self._pad)
        cols = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        self._init_codebook_weight(self.out_channels, cols, bits, per_channel, zero_code, device, dtype)
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.out_channels, dtype=self.codebook.dtype, device=device))
        else:
            self.register_parameter("bias", None)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, bits: int = 4, per_channel: bool = False, init: str = "linear",
                   iters: int = 100, seed: int = 0, zero_code: bool | None = None,
                   weight: torch.Tensor | None = None) -> "CodebookConv2d":
        """Clusters ``conv.weight`` (or ``weight``) with :func:`sparsecomp.quantize.kmeans`; ``per_channel``: one
        codebook per output channel. ``zero_code`` defaults to "the weight has exact zeros" (a pruned layer): the
        zeros keep code 0 = 0.0 and only the nonzeros are clustered."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        w = (conv.weight if weight is None else weight).detach()
        if tuple(w.shape) != tuple(conv.weight.shape):
            raise ValueError(f"weight must have shape {tuple(conv.weight.shape)}, got {tuple(w.shape)}")
        codebook, indices, zero_code = cluster(w, bits, per_channel, init, iters, seed, zero_code)
        module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     conv.groups, conv.bias is not None, conv.padding_mode, bits=bits, per_channel=per_channel,
                     zero_code=zero_code, device=w.device)
        module._set_codebook_weight(codebook, indices)
        if conv.bias is not None:
            with torch.no_grad():
                module.bias.copy_(conv.bias.detach().float())
        return module

    def to_dense(self) -> nn.Conv2d:
        """An equivalent ``nn.Conv2d`` with the dequantized weight."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, bias=self.bias is not None, padding_mode=self.padding_mode,
                         device=self.codebook.device, dtype=self.codebook.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.weight_matrix().reshape(self.weight_shape))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"CodebookConv2d: input must be [N, {self.in_channels}, H, W] or "
                             f"[{self.in_channels}, H, W], got shape {tuple(x.shape)}")
        if not self._use_kernel(x):
            y = self._dense_forward(x)
        else:
            y = self._kernel_forward(x)
        return y.squeeze(0) if unbatched else y

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self._pad, mode="constant" if self.padding_mode == "zeros" else self.padding_mode)

    def _dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._trainable_weight().reshape(self.weight_shape).to(x.dtype)
        if self.padding_mode != "zeros" or self._unfold_padding is None:
            return F.conv2d(self._padded(x), w, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, self.bias, self.stride, self._unfold_padding, self.dilation, self.groups)

    def _kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        left, right, top, bottom = self._pad
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        out_h = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
        out_w = (w + left + right - dw * (kw - 1) - 1) // sw + 1
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"CodebookConv2d: input {(h, w)} (padded) is smaller than the kernel")
        channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if self._pointwise:
            # [N*H*W, C] rows: a view of a channels_last input, one copy of an NCHW one
            rows = x.permute(0, 2, 3, 1).reshape(n * h * w, self.in_channels)
        else:
            if self._unfold_padding is None:
                cols = F.unfold(self._padded(x), self.kernel_size, self.dilation, 0, self.stride)
            else:
                cols = F.unfold(x, self.kernel_size, self.dilation, self._unfold_padding, self.stride)
            # cols [N, C*kh*kw, L] (channel-major, so a group's columns are a contiguous slice) -> [N*L, C*kh*kw]
            rows = cols.transpose(1, 2).reshape(n * out_h * out_w, self.groups * self._cols)
        y = self._grouped_mm(rows)  # [N*L, out_channels]
        # [N, oh, ow, O] viewed as NCHW is channels_last memory: kept for channels_last input, made NCHW otherwise
        y = y.view(n, out_h, out_w, self.out_channels).permute(0, 3, 1, 2)
        return y if channels_last else y.contiguous()

    def _grouped_mm(self, rows: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:
            return ops.codebook_mm(rows, self.packed_indices, self.codebook, self.bias, self._cols, self.bits)
        og, k = self.out_channels // self.groups, self._cols
        outs = []
        for g in range(self.groups):  # one GEMM per group on its slice of columns and of packed rows
            sl = slice(g * og, (g + 1) * og)
            codebook = self.codebook[sl] if self.per_channel else self.codebook
            bias = None if self.bias is None else self.bias[sl]
            outs.append(ops.codebook_mm(rows[:, g * k:(g + 1) * k].contiguous(), self.packed_indices[sl],
                                        codebook, bias, k, self.bits))
        return torch.cat(outs, dim=1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}, padding_mode={self.padding_mode}, bits={self.bits}, "
                f"per_channel={self.per_channel}, zero_code={self.zero_code}")
