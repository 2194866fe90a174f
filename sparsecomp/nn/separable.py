"""DepthwiseSeparableConv2d: depthwise kxk conv -> [BN] -> activation -> pointwise 1x1 conv -> [BN] -> activation,
run at inference as one fused op (``torch.ops.sparsecomp.dwpw_conv2d``) with the BNs folded into it."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from .. import ops  # noqa: F401  registers torch.ops.sparsecomp and its fake kernels / autograd
from ._activation import activation_module, activation_name, apply_activation
from ._separable_policy import should_fuse

FUSED_KERNEL_SIZES = (3, 5, 7)
FUSED_STRIDES = (1, 2)
_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _has_kernel(dispatch_key: str) -> bool:
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key("sparsecomp::dwpw_conv2d", dispatch_key))
    except RuntimeError:  # the op is not registered at all (an extension built without it)
        return False


# Decided once at import: the answer cannot change while the process runs, and torch.compile cannot trace the query.
_KERNEL_ON = {"cpu": _has_kernel("CPU"), "cuda": _has_kernel("CUDA")}


def _square(v, what: str) -> int:
    a, b = _pair(v)
    if a != b:
        raise ValueError(f"{what} must be square (one int or two equal ints), got {v!r}")
    if isinstance(a, bool) or not isinstance(a, int) or a < 1:
        raise ValueError(f"{what} must be a positive int, got {v!r}")
    return int(a)


def _padding(padding, k: int, stride: int) -> tuple[int, int]:
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        if stride != 1 or k % 2 == 0:
            raise ValueError(f"padding='same' needs stride 1 and an odd kernel size, got stride={stride}, "
                             f"kernel_size={k}")
        return (k // 2, k // 2)
    p = _pair(padding)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in p):
        raise ValueError(f"padding must be a non-negative int, a pair of them, 'same' or 'valid', got {padding!r}")
    return (int(p[0]), int(p[1]))


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) with bn(z) == z * s + t per channel, from the running statistics (what BN computes at eval)."""
    s = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        s = bn.weight * s
    t = -bn.running_mean * s
    if bn.bias is not None:
        t = t + bn.bias
    return s, t


def _check_bn(bn, channels: int, what: str) -> None:
    if not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"{what} must be an nn.BatchNorm2d (or None), got {type(bn).__name__}")
    if bn.num_features != channels:
        raise ValueError(f"{what} has num_features={bn.num_features}, expected {channels}")
    if not bn.track_running_stats or bn.running_mean is None:
        raise ValueError(f"{what} must track running statistics (track_running_stats=True) so it can be folded at "
                         f"eval")


class DepthwiseSeparableConv2d(nn.Module):
    """``act(pw_bn(pw(mid_act(bn(dw(x))))))``: a depthwise ``kernel_size`` conv (groups = in_channels), an optional
    BatchNorm ``bn``, ``mid_activation``, a pointwise 1x1 conv to ``out_channels``, an optional BatchNorm ``pw_bn``
    and ``activation`` (each None / "relu" / "relu6" / "hardswish" or the matching nn module).

    Parameters: ``dw_weight`` [C, 1, k, k], ``dw_bias`` [C] (``dw_bias=True``), ``pw_weight`` [O, C, 1, 1],
    ``pw_bias`` [O] (``bias=True``); submodules ``bn`` / ``pw_bn`` (``bn=True`` / ``pw_bn=True``).

    Which computation runs (``fused``):

    * while training, or whenever autograd needs gradients (``fused="auto"``), the torch ops
      ``conv2d(groups=C) -> bn -> act -> conv2d(1x1) -> pw_bn -> act``: trains on any device and dtype;
    * at inference with ``fused="auto"``: the fused op with both BNs folded into per-channel scale/shift and into
      the pointwise weight/bias, where the device/dtype has a kernel (CPU: float32/float64) and
      ``sparsecomp.nn._separable_policy.should_fuse`` measured that fusion wins for this shape; the torch ops
      otherwise (so it is never slower than them). CUDA takes the torch path under "auto" (no measured policy);
    * ``fused=True``: always the fused op (it has autograd), except while a BN uses batch statistics (training),
      which no folding can express;
    * ``fused=False``: always the torch ops (the reference).

    :meth:`path_for` says which one a given input takes and why.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True,
                 mid_activation=None, activation=None, fused="auto", *, dw_bias: bool = False, bn: bool = False,
                 pw_bn: bool = False, device=None, dtype=None):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if fused not in ("auto", True, False):
            raise ValueError(f"fused must be 'auto', True or False, got {fused!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        k = _square(kernel_size, "kernel_size")
        s = _square(stride, "stride")
        self.kernel_size, self.stride, self.padding = k, s, _padding(padding, k, s)
        self.mid_activation = activation_name(mid_activation, "mid_activation")
        self.activation = activation_name(activation, "activation")
        if fused is True and (k not in FUSED_KERNEL_SIZES or s not in FUSED_STRIDES or max(self.padding) >= k):
            raise ValueError(f"fused=True needs kernel_size in {FUSED_KERNEL_SIZES}, stride in {FUSED_STRIDES} and "
                             f"padding < kernel_size, got kernel_size={k}, stride={s}, padding={self.padding} (use "
                             f"fused='auto' or False)")
        self.fused = fused
        fk = {"device": device, "dtype": dtype}
        self.dw_weight = nn.Parameter(torch.empty(in_channels, 1, k, k, **fk))
        self.register_parameter("dw_bias", nn.Parameter(torch.empty(in_channels, **fk)) if dw_bias else None)
        self.pw_weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1, **fk))
        self.register_parameter("pw_bias", nn.Parameter(torch.empty(out_channels, **fk)) if bias else None)
        self.register_module("bn", nn.BatchNorm2d(in_channels, **fk) if bn else None)
        self.register_module("pw_bn", nn.BatchNorm2d(out_channels, **fk) if pw_bn else None)
        self._fold_cache = None  # (key, folded tensors) at inference, rebuilt when any source tensor changes
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv2d's default initialization for each of the two convs."""
        for w, b in ((self.dw_weight, self.dw_bias), (self.pw_weight, self.pw_bias)):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            if b is not None:
                bound = 1.0 / math.sqrt(w[0].numel())
                nn.init.uniform_(b, -bound, bound)
        for bn in (self.bn, self.pw_bn):
            if bn is not None:
                bn.reset_parameters()

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_modules(cls, dw_conv: nn.Conv2d, pw_conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None, act=None,
                     pw_bn: nn.BatchNorm2d | None = None, out_act=None, fused="auto") -> "DepthwiseSeparableConv2d":
        """The module computing ``out_act(pw_bn(pw_conv(act(bn(dw_conv(x))))))``, weights and BN state copied.

        ``dw_conv`` must be depthwise (groups == in_channels == out_channels, zero padding, dilation 1),
        ``pw_conv`` a 1x1 conv with groups 1, stride 1, no padding, reading dw_conv's channels.
        """
        for name, conv in (("dw_conv", dw_conv), ("pw_conv", pw_conv)):
            if not isinstance(conv, nn.Conv2d):
                raise TypeError(f"{name} must be an nn.Conv2d, got {type(conv).__name__}")
            if conv.padding_mode != "zeros":
                raise ValueError(f"{name} must use padding_mode='zeros', got {conv.padding_mode!r}")
            if tuple(conv.dilation) != (1, 1):
                raise ValueError(f"{name} must have dilation 1, got {tuple(conv.dilation)}")
        c = dw_conv.in_channels
        if not (dw_conv.groups == c == dw_conv.out_channels):
            raise ValueError(f"dw_conv must be depthwise (groups == in_channels == out_channels), got in_channels="
                             f"{c}, out_channels={dw_conv.out_channels}, groups={dw_conv.groups}")
        if tuple(pw_conv.kernel_size) != (1, 1) or pw_conv.groups != 1:
            raise ValueError(f"pw_conv must be a 1x1 conv with groups=1, got kernel_size={tuple(pw_conv.kernel_size)}"
                             f", groups={pw_conv.groups}")
        if tuple(pw_conv.stride) != (1, 1) or (not isinstance(pw_conv.padding, str)
                                               and tuple(pw_conv.padding) != (0, 0)):
            raise ValueError(f"pw_conv must have stride 1 and no padding, got stride={tuple(pw_conv.stride)}, "
                             f"padding={pw_conv.padding}")
        if pw_conv.in_channels != c:
            raise ValueError(f"pw_conv.in_channels={pw_conv.in_channels} must equal dw_conv's channels {c}")
        if bn is not None:
            _check_bn(bn, c, "bn")
        if pw_bn is not None:
            _check_bn(pw_bn, pw_conv.out_channels, "pw_bn")
        w = dw_conv.weight
        module = cls(c, pw_conv.out_channels, tuple(dw_conv.kernel_size), tuple(dw_conv.stride), dw_conv.padding,
                     bias=pw_conv.bias is not None, mid_activation=act, activation=out_act, fused=fused,
                     dw_bias=dw_conv.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            module.dw_weight.copy_(dw_conv.weight)
            module.pw_weight.copy_(pw_conv.weight)
            if dw_conv.bias is not None:
                module.dw_bias.copy_(dw_conv.bias)
            if pw_conv.bias is not None:
                module.pw_bias.copy_(pw_conv.bias)
        module.bn = copy.deepcopy(bn)
        module.pw_bn = copy.deepcopy(pw_bn)
        module.train(dw_conv.training)
        return module

    def to_modules(self) -> nn.Sequential:
        """Plain torch modules computing the same function: Sequential(dw, bn, mid_act, pw, pw_bn, act) (Identity
        where a piece is absent), weights and BN state copied."""
        fk = {"device": self.dw_weight.device, "dtype": self.dw_weight.dtype}
        dw = nn.Conv2d(self.in_channels, self.in_channels, self.kernel_size, self.stride, self.padding,
                       groups=self.in_channels, bias=self.dw_bias is not None, **fk)
        pw = nn.Conv2d(self.in_channels, self.out_channels, 1, bias=self.pw_bias is not None, **fk)
        with torch.no_grad():
            dw.weight.copy_(self.dw_weight)
            pw.weight.copy_(self.pw_weight)
            if self.dw_bias is not None:
                dw.bias.copy_(self.dw_bias)
            if self.pw_bias is not None:
                pw.bias.copy_(self.pw_bias)
        seq = nn.Sequential(dw, copy.deepcopy(self.bn) if self.bn is not None else nn.Identity(),
                            activation_module(self.mid_activation), pw,
                            copy.deepcopy(self.pw_bn) if self.pw_bn is not None else nn.Identity(),
                            activation_module(self.activation))
        return seq.train(self.training)

    def to_dense_conv(self) -> nn.Module:
        """One kxk ``nn.Conv2d`` (followed by the output activation, if any) equal to this module at eval.

        Only a linear middle composes into one conv: needs ``mid_activation`` none. BNs are folded with their
        running statistics: W[o, c] = pw[o, c] * s[c] * dw[c], b[o] = sum_c pw[o, c] * t[c] + pw_bias[o].
        """
        if self.mid_activation != "none":
            raise ValueError(f"to_dense_conv needs mid_activation='none' (a {self.mid_activation} between the convs "
                             f"does not compose into one conv); use to_modules()")
        with torch.no_grad():
            scale, shift, pw_w, pw_b = self._folded()
            dw = self.dw_weight if scale is None else self.dw_weight * scale.view(-1, 1, 1, 1)
            weight = pw_w.view(self.out_channels, self.in_channels, 1, 1) * dw.view(1, self.in_channels,
                                                                                     self.kernel_size, self.kernel_size)
            bias = pw_b
            if shift is not None:
                extra = pw_w.view(self.out_channels, self.in_channels) @ shift
                bias = extra if bias is None else bias + extra
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         bias=bias is not None, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(weight)
            if bias is not None:
                conv.bias.copy_(bias)
        return conv if self.activation == "none" else nn.Sequential(conv, activation_module(self.activation))

    # ------------------------------------------------------------------------------------------ folding
    def _fold_sources(self) -> list[torch.Tensor]:
        # Straight from the registries: nn.Module.__getattr__ on a dozen names costs more than the fused op of a
        # small layer.
        ts = [t for t in self._parameters.values() if t is not None]
        for name in ("bn", "pw_bn"):
            bn = self._modules.get(name)
            if bn is not None:
                ts += [t for t in bn._parameters.values() if t is not None]
                ts += [bn._buffers["running_mean"], bn._buffers["running_var"]]
        return ts

    def _compute_folded(self):
        """(dw_scale | None, dw_shift | None, pw_weight [O, C], pw_bias | None) of the op, BNs at running stats."""
        scale, shift = None, self.dw_bias
        if self.bn is not None:
            scale, shift = _bn_scale_shift(self.bn)
            if self.dw_bias is not None:
                shift = shift + self.dw_bias * scale
        pw_w, pw_b = self.pw_weight.view(self.out_channels, self.in_channels), self.pw_bias
        if self.pw_bn is not None:
            s, t = _bn_scale_shift(self.pw_bn)
            pw_w = pw_w * s.unsqueeze(1)
            pw_b = t if pw_b is None else pw_b * s + t
        return scale, shift, pw_w, pw_b

    def _folded(self):
        if torch.compiler.is_compiling():  # the compiled graph computes (and fuses) the folding itself
            return self._compute_folded()
        # Cached between calls: the folding is ~10 small ops, comparable to a small layer's fused op.
        srcs = self._fold_sources()
        key = tuple((t._version, t.data_ptr(), t.dtype) for t in srcs) + (srcs[0].device,)
        key += tuple(bn.eps for bn in (self.bn, self.pw_bn) if bn is not None)
        if self._fold_cache is None or self._fold_cache[0] != key:
            with torch.no_grad():
                self._fold_cache = (key, self._compute_folded())
        return self._fold_cache[1]

    # ------------------------------------------------------------------------------------------ forward
    def _bn_training(self) -> bool:
        return any(bn is not None and bn.training for bn in (self.bn, self.pw_bn))

    def _needs_grad(self, x: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))

    def path_for(self, x: torch.Tensor) -> tuple[str, str]:
        """("fused" | "torch", why) for input ``x`` in the module's current mode and grad state."""
        return self._decide(x, self._needs_grad(x))

    def _decide(self, x: torch.Tensor, needs_grad: bool) -> tuple[str, str]:
        if self.fused is False:
            return "torch", "fused=False"
        if self._bn_training():
            return "torch", "BatchNorm uses batch statistics while training (cannot be folded)"
        if self.fused is True:
            return "fused", "fused=True"
        if self.training or needs_grad:
            return "torch", "training / gradients needed (fused='auto' fuses at inference only)"
        if self.kernel_size not in FUSED_KERNEL_SIZES or self.stride not in FUSED_STRIDES:
            return "torch", f"no fused kernel for kernel_size={self.kernel_size}, stride={self.stride}"
        if max(self.padding) >= self.kernel_size:
            return "torch", f"no fused kernel for padding {self.padding} >= kernel_size={self.kernel_size}"
        dev = x.device.type
        if dev == "cuda":
            return "torch", "CUDA: no measured fusion policy (fused=True forces the CUDA kernel)"
        if dev != "cpu" or not _KERNEL_ON["cpu"] or x.dtype not in _CPU_DTYPES or x.dtype != self.dw_weight.dtype:
            return "torch", f"no fused kernel for {x.dtype} on {x.device} (with {self.dw_weight.dtype} weights)"
        if x.dim() != 4:
            return "torch", "input is not 4-D"
        n, c, h, w = x.shape
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        if not should_fuse(n, c, self.out_channels, h, w, self.kernel_size, self.stride, channels_last):
            return "torch", "the measured policy says fusion loses for this shape"
        return "fused", "inference on a shape where fusion wins"

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"DepthwiseSeparableConv2d: input must be [N, {self.in_channels}, H, W], got shape "
                             f"{tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        needs_grad = self._needs_grad(x)
        if self._decide(x, needs_grad)[0] == "fused":
            return self._forward_fused(x, needs_grad)
        return self._forward_torch(x)

    def _forward_fused(self, x: torch.Tensor, needs_grad: bool) -> torch.Tensor:
        # With autograd the folding must be part of the graph (grads reach the BN parameters); without, cached.
        scale, shift, pw_w, pw_b = self._compute_folded() if needs_grad else self._folded()
        return torch.ops.sparsecomp.dwpw_conv2d(x, self.dw_weight, scale, shift, self.mid_activation, pw_w, pw_b,
                                                self.activation, [self.stride, self.stride], list(self.padding))

    def _forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.dw_weight, self.dw_bias, self.stride, self.padding, 1, self.in_channels)
        if self.bn is not None:
            y = self.bn(y)
        y = apply_activation(self.mid_activation, y)
        y = F.conv2d(y, self.pw_weight, self.pw_bias)
        if self.pw_bn is not None:
            y = self.pw_bn(y)
        return apply_activation(self.activation, y)

    # ------------------------------------------------------------------------------------------ reporting
    def extra_repr(self) -> str:
        parts = [f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}",
                 f"padding={self.padding}"]
        if self.pw_bias is None:
            parts.append("bias=False")
        if self.dw_bias is not None:
            parts.append("dw_bias=True")
        if self.mid_activation != "none":
            parts.append(f"mid_activation={self.mid_activation}")
        if self.activation != "none":
            parts.append(f"activation={self.activation}")
        if self.fused is False:
            parts.append("fused=False (torch convs always)")
        elif self.fused is True:
            parts.append("fused=True (fused op always, BN folded; torch convs only while BN trains)")
        elif (self.kernel_size not in FUSED_KERNEL_SIZES or self.stride not in FUSED_STRIDES
              or max(self.padding) >= self.kernel_size):
            parts.append(f"fused=auto (torch convs: no fused kernel for kernel_size={self.kernel_size}, "
                         f"stride={self.stride}, padding={self.padding})")
        else:
            parts.append("fused=auto (fused op at inference where the measured policy says fusion wins, torch convs "
                         "while training and where fusion loses)")
        return ", ".join(parts)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._fold_cache = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
