"""BinaryConv2d: a 2-D convolution with 1-bit (+-alpha) weights, and optionally 1-bit inputs (XNOR-Net)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from .. import ops
from ._binary_ste import sign_input
from ._binary_weight import BinaryWeightMixin, check_activation

PADDING_MODES = ("zeros", "ones")


def _resolve_padding(padding, kernel_size, stride, dilation) -> tuple[int, int]:
    """Symmetric (top/bottom, left/right) padding; 'valid' = 0, 'same' only where it is symmetric."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if padding != "same":
            raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
        if stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1 (as nn.Conv2d), got stride={stride}")
        total = tuple(d * (k - 1) for d, k in zip(dilation, kernel_size))
        if any(t % 2 for t in total):
            raise ValueError(f"padding='same' would be asymmetric for kernel_size={kernel_size}, "
                             f"dilation={dilation}; the binary kernels pad symmetrically: use an odd kernel")
        return (total[0] // 2, total[1] // 2)
    pad = tuple(int(p) for p in _pair(padding))
    if min(pad) < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    return pad


class BinaryConv2d(BinaryWeightMixin, nn.Module):
    """``y = act(alpha[o] * conv2d(s(x), sign(W), stride, padding, dilation, groups) + bias[o])`` with
    ``sign(v) = +1 for v >= 0 else -1``, ``alpha[o] = mean |W[o]|`` over the whole filter, ``s = sign``
    (``binarize_input=True``, XNOR-Net) or the identity (``binarize_input=False``, BinaryConnect) and ``act`` =
    identity or ReLU (``activation='relu'``).

    ``padding_mode='zeros'`` (default): padded taps contribute exactly 0, as torch's zero-padded conv of s(x).
    ``padding_mode='ones'`` (Larq style, binarized inputs only): padded taps count as +1 inputs; cheaper (no
    per-position correction) but a different function near the borders.

    Training mode runs the formula with float ops on the latent weight ``weight`` [O, C/groups, kh, kw]
    (straight-through gradients, alpha treated as a constant, latent weight clamped to [-1, 1] after every
    torch.optim step, see ``clip_``); eval mode runs the packed bits on ``ops.binary_conv2d`` (no autograd).
    Accepts NCHW, channels_last and unbatched [C, H, W] inputs like nn.Conv2d. state_dict: see BinaryLinear.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, binarize_input: bool = True, padding_mode: str = "zeros",
                 activation: str | None = None, keep_latent: bool = False, device=None, dtype=None):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        if self.in_channels < 1 or self.out_channels < 1 or self.groups < 1:
            raise ValueError(f"in_channels, out_channels and groups must be >= 1, got {in_channels}, "
                             f"{out_channels}, {groups}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"in_channels={in_channels} and out_channels={out_channels} must be divisible by "
                             f"groups={groups}")
        for name, value in (("kernel_size", self.kernel_size), ("stride", self.stride),
                            ("dilation", self.dilation)):
            if min(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be 'zeros' or 'ones', got {padding_mode!r}")
        if padding_mode == "ones" and not binarize_input:
            raise ValueError("padding_mode='ones' needs binarize_input=True (a +1 pad only makes sense for signs)")
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self._pad = _resolve_padding(padding, self.kernel_size, self.stride, self.dilation)
        self.padding_mode = padding_mode
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        self._init_binary_weight(shape, bias, binarize_input, activation, keep_latent, device=device, dtype=dtype)
        self.reset_parameters()

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None, activation: str | None = None,
                   binarize_input: bool = True, padding_mode: str = "zeros",
                   keep_latent: bool = False) -> "BinaryConv2d":
        """Binarizes ``conv`` (its weight becomes the latent weight), folding an optional BatchNorm2d that
        follows it (its running statistics, i.e. its eval behaviour) and an optional fused ``'relu'``."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"conv.padding_mode={conv.padding_mode!r} is not supported: binary convs pad with "
                             f"zeros (or +1 with padding_mode='ones')")
        if bn is not None and not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f"bn must be an nn.BatchNorm2d or None, got {type(bn).__name__}")
        w = conv.weight.detach()
        if not w.is_floating_point():
            raise TypeError(f"conv.weight must be floating-point, got {w.dtype}")
        check_activation(activation)
        module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     conv.groups, bias=conv.bias is not None or bn is not None, binarize_input=binarize_input,
                     padding_mode=padding_mode, activation=activation, keep_latent=keep_latent, device=w.device,
                     dtype=w.dtype)
        with torch.no_grad():
            module.weight.copy_(w)
            if conv.bias is not None:
                module.bias.copy_(conv.bias.detach())
            elif module.bias is not None:  # only the BatchNorm brings a bias
                module.bias.zero_()
        module._packed_key = None
        if bn is not None:
            module._fold_batch_norm(bn)
        module._sync_packed()
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"BinaryConv2d: input must be [N, {self.in_channels}, H, W] or "
                             f"[{self.in_channels}, H, W], got shape {tuple(x.shape)}")
        y = self._forward_float(x) if self.training else self._forward_packed(x)
        return y.squeeze(0) if unbatched else y

    def _forward_float(self, x: torch.Tensor) -> torch.Tensor:
        signs, alpha = self._signs_and_alpha_for_training()
        xs = sign_input(x) if self.binarize_input else x
        padding = self._pad
        if self.padding_mode == "ones":
            xs = F.pad(xs, (self._pad[1], self._pad[1], self._pad[0], self._pad[0]), value=1.0)
            padding = (0, 0)
        y = F.conv2d(xs, signs, None, self.stride, padding, self.dilation, self.groups) * alpha.reshape(1, -1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return F.relu(y) if self.activation == "relu" else y

    def _forward_packed(self, x: torch.Tensor) -> torch.Tensor:
        bits, alpha = self._packed_for_eval()
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()
        return ops.binary_conv2d(x, bits, alpha, self.bias, self.in_channels, self.kernel_size, self.stride,
                                 self._pad, self.dilation, self.groups, self.binarize_input, self.padding_mode,
                                 self.activation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}, padding_mode={self.padding_mode}, " + self._binary_repr())
