"""Typed wrappers of ``torch.ops.sparsecomp.*`` with their fake (meta) kernels and autograd formulas.

The C++ ops are registered by ``sparsecomp._C``; this module teaches torch.compile their output shapes
(``register_fake``), so they work in eager mode, under ``torch.compile(fullgraph=True)`` and in training. The
derivatives of the sparse ops are C++ (csrc/ops/sparse_autograd.cpp); the binary ops register theirs here.
"""
from __future__ import annotations

import torch

from . import _C  # noqa: F401  registers the schemas and kernels
from .formats.sparse import num_col_tiles

_lib = torch.ops.sparsecomp


def sparse_linear(x: torch.Tensor, values: torch.Tensor, col_idx: torch.Tensor, row_ptr: torch.Tensor,
                  bias: torch.Tensor | None, in_features: int) -> torch.Tensor:
    """``x @ W.T + bias`` for a 2-D ``x`` [batch, in_features] and W in tiled-CSR form (formats.sparse)."""
    return _lib.sparse_linear(x, values, col_idx, row_ptr, bias, in_features)


def sparse_matmul(x: torch.Tensor, values: torch.Tensor, col_idx: torch.Tensor, row_ptr: torch.Tensor,
                  bias: torch.Tensor | None, in_features: int) -> torch.Tensor:
    """``W @ x[n] + bias[:, None]`` for a k-major ``x`` [batch, in_features, columns] (im2col of a convolution)."""
    return _lib.sparse_matmul(x, values, col_idx, row_ptr, bias, in_features)


def _rows(row_ptr: torch.Tensor, in_features: int) -> int:
    return (row_ptr.shape[0] - 1) // num_col_tiles(in_features)


@torch.library.register_fake("sparsecomp::sparse_linear")
def _sparse_linear_fake(x, values, col_idx, row_ptr, bias, in_features):
    torch._check(x.dim() == 2, lambda: f"sparse_linear: x must be 2-D, got {x.dim()}-D")
    torch._check(x.shape[1] == in_features, lambda: f"sparse_linear: x must have {in_features} columns")
    return x.new_empty((x.shape[0], _rows(row_ptr, in_features)))


@torch.library.register_fake("sparsecomp::sparse_matmul")
def _sparse_matmul_fake(x, values, col_idx, row_ptr, bias, in_features):
    torch._check(x.dim() == 3, lambda: f"sparse_matmul: x must be 3-D, got {x.dim()}-D")
    torch._check(x.shape[1] == in_features, lambda: f"sparse_matmul: x must have {in_features} rows per sample")
    return x.new_empty((x.shape[0], _rows(row_ptr, in_features), x.shape[2]))


@torch.library.register_fake("sparsecomp::sparse_linear_backward_input")
def _backward_input_fake(grad_out, values, col_idx, row_ptr, in_features):
    return grad_out.new_empty((grad_out.shape[0], in_features))


@torch.library.register_fake("sparsecomp::sparse_linear_backward_values")
def _backward_values_fake(grad_out, x, col_idx, row_ptr, in_features):
    return x.new_empty((col_idx.shape[0],))


# Autograd of sparse_linear / sparse_matmul is registered in C++ (csrc/ops/sparse_autograd.cpp): a Python autograd
# kernel would run on every call outside inference_mode, torch.no_grad() included, and cost as much as the op.


# ---- binary (1-bit) ops: layout and semantics in csrc/sparsecomp.cpp and csrc/cpu/bitpack.h ----

def bitpack(x: torch.Tensor) -> torch.Tensor:
    """Sign bits of ``x`` along its last dim: float [..., C] -> int64 [..., ceil(C/64)], bit set = (x >= 0)."""
    return _lib.bitpack(x)


def bitunpack(packed: torch.Tensor, size: int) -> torch.Tensor:
    """Inverse of :func:`bitpack`: int64 [..., W] -> float32 [..., size] of +1/-1."""
    return _lib.bitunpack(packed, size)


def binary_linear(x: torch.Tensor, weight_bits: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None,
                  in_features: int, binarize_input: bool = True, activation: str = "none") -> torch.Tensor:
    """``act(alpha * (s(x) @ sign(W).T) + bias)`` for a 2-D ``x``; ``s`` = sign (binarize_input) or identity."""
    return _lib.binary_linear(x, weight_bits, alpha, bias, in_features, binarize_input, activation)


def binary_conv2d(x: torch.Tensor, weight_bits: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None,
                  in_channels: int, kernel_size, stride, padding, dilation, groups: int,
                  binarize_input: bool = True, padding_mode: str = "zeros", activation: str = "none"
                  ) -> torch.Tensor:
    """``act(alpha[o] * conv2d(s(x), sign(W)) + bias[o])``; zero padding contributes 0 (``padding_mode='zeros'``)."""
    return _lib.binary_conv2d(x, weight_bits, alpha, bias, in_channels, list(kernel_size), list(stride),
                              list(padding), list(dilation), groups, binarize_input, padding_mode, activation)


def _words(size: int) -> int:
    return (size + 63) // 64


@torch.library.register_fake("sparsecomp::bitpack")
def _bitpack_fake(x):
    torch._check(x.dim() >= 1, lambda: "bitpack: x must have at least one dimension")
    return x.new_empty((*x.shape[:-1], _words(x.shape[-1])), dtype=torch.int64)


@torch.library.register_fake("sparsecomp::bitunpack")
def _bitunpack_fake(packed, size):
    torch._check(packed.dim() >= 1, lambda: "bitunpack: packed must have at least one dimension")
    return packed.new_empty((*packed.shape[:-1], size), dtype=torch.float32)


@torch.library.register_fake("sparsecomp::binary_linear")
def _binary_linear_fake(x, weight_bits, alpha, bias, in_features, binarize_input=True, activation="none"):
    torch._check(x.dim() == 2, lambda: f"binary_linear: x must be 2-D, got {x.dim()}-D")
    torch._check(x.shape[1] == in_features, lambda: f"binary_linear: x must have {in_features} columns")
    return x.new_empty((x.shape[0], weight_bits.shape[0]))


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@torch.library.register_fake("sparsecomp::binary_conv2d")
def _binary_conv2d_fake(x, weight_bits, alpha, bias, in_channels, kernel_size, stride, padding, dilation, groups,
                        binarize_input=True, padding_mode="zeros", activation="none"):
    torch._check(x.dim() == 4, lambda: f"binary_conv2d: x must be 4-D NCHW, got {x.dim()}-D")
    oh = conv_output_size(x.shape[2], kernel_size[0], stride[0], padding[0], dilation[0])
    ow = conv_output_size(x.shape[3], kernel_size[1], stride[1], padding[1], dilation[1])
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((x.shape[0], weight_bits.shape[0], oh, ow), dtype=x.dtype, device=x.device, memory_format=fmt)


# ---- codebook (weight-clustering) ops: layout in csrc/cpu/codebook.h and sparsecomp/formats/codebook.py ----

def codebook_mm(x: torch.Tensor, packed_indices: torch.Tensor, codebook: torch.Tensor, bias: torch.Tensor | None,
                in_features: int, bits: int) -> torch.Tensor:
    """``x @ W.T + bias`` for a 2-D ``x`` with ``W[o, k] = codebook[idx[o, k]]`` (or ``codebook[o, idx[o, k]]``)."""
    return _lib.codebook_mm(x, packed_indices, codebook, bias, in_features, bits)


@torch.library.register_fake("sparsecomp::codebook_mm")
def _codebook_mm_fake(x, packed_indices, codebook, bias, in_features, bits):
    torch._check(1 <= bits <= 8, lambda: f"codebook_mm: bits must be in 1..8, got {bits}")
    torch._check(x.dim() == 2, lambda: f"codebook_mm: x must be 2-D, got {x.dim()}-D")
    torch._check(x.shape[1] == in_features, lambda: f"codebook_mm: x must have {in_features} columns")
    torch._check(codebook.shape[-1] == 1 << bits, lambda: f"codebook_mm: codebook must have {1 << bits} entries")
    return x.new_empty((x.shape[0], packed_indices.shape[0]))


def _codebook_mm_setup_context(ctx, inputs, output):
    x, packed_indices, codebook, bias, in_features, bits = inputs
    ctx.save_for_backward(x, packed_indices, codebook)
    ctx.in_features, ctx.bits, ctx.has_bias = in_features, bits, bias is not None


def _codebook_mm_backward(ctx, grad_out):
    # Reference-speed backward through the dense weight (CodebookLinear trains through dequantize + F.linear).
    from .formats.codebook import dequantize, unpack_indices

    x, packed_indices, codebook = ctx.saved_tensors
    idx = unpack_indices(packed_indices, ctx.in_features, ctx.bits)
    grad_x = grad_cb = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = grad_out @ dequantize(idx, codebook)
    if ctx.needs_input_grad[2]:
        grad_w = grad_out.t() @ x  # [out, in]; each entry's gradient is the sum over its members
        if codebook.dim() == 1:
            grad_cb = torch.zeros_like(codebook).scatter_add_(0, idx.reshape(-1), grad_w.reshape(-1))
        else:
            grad_cb = torch.zeros_like(codebook).scatter_add_(1, idx, grad_w)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = grad_out.sum(0)
    return grad_x, None, grad_cb, grad_bias, None, None


torch.library.register_autograd("sparsecomp::codebook_mm", _codebook_mm_backward,
                                setup_context=_codebook_mm_setup_context)


def _no_derivative(op: str):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"sparsecomp.{op} has no derivative: train binary layers in training mode (latent float weights with "
            "a straight-through estimator, see sparsecomp.nn.BinaryConv2d), or run the op under torch.no_grad()")
    return backward


def _no_context(ctx, inputs, output):
    pass


# The packed ops are inference kernels; without a registration autograd would only warn and return None grads.
for _op in ("binary_linear", "binary_conv2d"):
    torch.library.register_autograd(f"sparsecomp::{_op}", _no_derivative(_op), setup_context=_no_context)


# ---- fused depthwise -> pointwise convolution: semantics in csrc/sparsecomp.cpp, CPU kernel csrc/cpu/dwpw.h ----

DWPW_ACTIVATIONS = ("none", "relu", "relu6", "hardswish")


def dwpw_conv2d(x: torch.Tensor, dw_weight: torch.Tensor, dw_scale: torch.Tensor | None,
                dw_shift: torch.Tensor | None, mid_activation: str, pw_weight: torch.Tensor,
                pw_bias: torch.Tensor | None, activation: str, stride=(1, 1), padding=(0, 0)) -> torch.Tensor:
    """``act(conv1x1(mid_act(conv2d(x, dw_weight, groups=C) * dw_scale + dw_shift), pw_weight) + pw_bias)``.

    One pass: the depthwise result never goes to memory. ``dw_weight`` [C, 1, k, k] (k in 3, 5, 7), ``dw_scale``
    / ``dw_shift`` [C] or None (1 / 0), ``pw_weight`` [O, C, 1, 1] or [O, C], ``pw_bias`` [O] or None,
    activations in :data:`DWPW_ACTIVATIONS`, stride 1 or 2 and padding in [0, k - 1] per dimension. The output
    keeps ``x``'s memory format (NCHW or channels_last). Differentiable in every tensor argument.
    """
    return _lib.dwpw_conv2d(x, dw_weight, dw_scale, dw_shift, mid_activation, pw_weight, pw_bias, activation,
                            _pair(stride), _pair(padding))


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(e) for e in v]


@torch.library.register_fake("sparsecomp::dwpw_conv2d")
def _dwpw_conv2d_fake(x, dw_weight, dw_scale, dw_shift, mid_activation, pw_weight, pw_bias, activation, stride,
                      padding):
    torch._check(x.dim() == 4, lambda: f"dwpw_conv2d: x must be 4-D [N, C, H, W], got {x.dim()}-D")
    torch._check(dw_weight.dim() == 4 and dw_weight.shape[0] == x.shape[1] and dw_weight.shape[1] == 1,
                 lambda: f"dwpw_conv2d: dw_weight must be [C, 1, k, k] with C = {x.shape[1]}")
    torch._check(pw_weight.shape[1] == x.shape[1],
                 lambda: f"dwpw_conv2d: pw_weight must have C = {x.shape[1]} input channels")
    k = dw_weight.shape[2]
    oh = conv_output_size(x.shape[2], k, stride[0], padding[0], 1)
    ow = conv_output_size(x.shape[3], k, stride[1], padding[1], 1)
    # the kernel's rule (csrc/ops/dwpw_checks.h): channels_last iff channels_last-contiguous and not NCHW-contiguous
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((x.shape[0], pw_weight.shape[0], oh, ow), dtype=x.dtype, device=x.device, memory_format=fmt)


def _dwpw_act(name: str, t: torch.Tensor) -> torch.Tensor:
    if name == "relu":
        return torch.relu(t)
    if name == "relu6":
        return torch.nn.functional.relu6(t)
    if name == "hardswish":
        return torch.nn.functional.hardswish(t)
    return t


def _dwpw_act_backward(name: str, grad: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """grad * act'(pre) with torch's conventions at the kinks (relu' = 0 at 0, hardswish' = (2x + 3) / 6 on [-3, 3])."""
    if name == "relu":
        return torch.ops.aten.threshold_backward(grad, pre, 0)
    if name == "relu6":
        return torch.ops.aten.hardtanh_backward(grad, pre, 0.0, 6.0)
    if name == "hardswish":
        return torch.ops.aten.hardswish_backward(grad, pre)
    return grad


def _dwpw_conv2d_setup_context(ctx, inputs, output):
    x, dw_weight, dw_scale, dw_shift, mid_activation, pw_weight, pw_bias, activation, stride, padding = inputs
    ctx.save_for_backward(x, dw_weight, dw_scale, dw_shift, pw_weight, pw_bias)
    ctx.mid_activation, ctx.activation = mid_activation, activation
    ctx.stride, ctx.padding = list(stride), list(padding)


def _dwpw_conv2d_backward(ctx, grad_out):
    # Recomputes the forward with torch ops (depthwise conv, affine, activation, 1x1 conv) and differentiates
    # by hand; training speed is torch's two-conv speed, the fused kernel is the inference path.
    x, dw_weight, dw_scale, dw_shift, pw_weight, pw_bias = ctx.saved_tensors
    needs = ctx.needs_input_grad
    c = x.shape[1]
    per_channel = (1, -1, 1, 1)
    d = torch.nn.functional.conv2d(x, dw_weight, None, ctx.stride, ctx.padding, 1, c)
    z = d if dw_scale is None else d * dw_scale.view(per_channel)
    z = z if dw_shift is None else z + dw_shift.view(per_channel)
    mid = _dwpw_act(ctx.mid_activation, z)
    w2 = pw_weight.reshape(pw_weight.shape[0], c)
    if ctx.activation == "none":
        gy = grad_out
    else:
        y = torch.nn.functional.conv2d(mid, w2[:, :, None, None], pw_bias)
        gy = _dwpw_act_backward(ctx.activation, grad_out, y)
    g_pw = g_pb = g_x = g_dw = g_scale = g_shift = None
    if needs[5]:
        g_pw = torch.einsum("nohw,nchw->oc", gy, mid).reshape(pw_weight.shape)
    if pw_bias is not None and needs[6]:
        g_pb = gy.sum((0, 2, 3))
    if any(needs[i] for i in (0, 1, 2, 3)):
        g_mid = torch.nn.functional.conv2d(gy, w2.t()[:, :, None, None])
        g_z = _dwpw_act_backward(ctx.mid_activation, g_mid, z)
        if dw_shift is not None and needs[3]:
            g_shift = g_z.sum((0, 2, 3))
        if dw_scale is not None and needs[2]:
            g_scale = (g_z * d).sum((0, 2, 3))
        if needs[0] or needs[1]:
            g_d = g_z if dw_scale is None else g_z * dw_scale.view(per_channel)
            g_x, g_dw, _ = torch.ops.aten.convolution_backward(
                g_d, x, dw_weight, None, ctx.stride, ctx.padding, [1, 1], False, [0, 0], c,
                [bool(needs[0]), bool(needs[1]), False])
    return g_x, g_dw, g_scale, g_shift, None, g_pw, g_pb, None, None, None


torch.library.register_autograd("sparsecomp::dwpw_conv2d", _dwpw_conv2d_backward,
                                setup_context=_dwpw_conv2d_setup_context)
