"""Packed sign bits: the 1-bit weight format of BinaryLinear / BinaryConv2d.

Layout (shared with the C++ ops, see csrc/sparsecomp.cpp): signs along the last dim in int64 words, bit i of
word w = element 64w+i (little-endian), bit 1 = +1 (v >= 0), bit 0 = -1 (v < 0 or NaN), tail bits past the
last element 0. A linear weight [O, K] packs to [O, ceil(K/64)]. A conv weight [O, C/g, kh, kw] is permuted to
[O, kh, kw, C/g] first, so that the channels a kernel tap multiplies are contiguous words, giving
[O, kh, kw, ceil((C/g)/64)].

The scale of output channel o is ``alpha[o] = mean |W[o]|`` over its whole filter (XNOR-Net), so that
``alpha[o] * sign(W[o])`` is the closest +-c approximation of W[o] in the L2 sense.
"""
from __future__ import annotations

import torch

from .. import ops

WORD_BITS = 64


def packed_words(size: int) -> int:
    """int64 words holding ``size`` sign bits."""
    return -(-int(size) // WORD_BITS)


def packed_shape(weight_shape) -> tuple[int, ...]:
    """Shape of the packed form of a float weight of shape [O, K] or [O, C/g, kh, kw]."""
    shape = tuple(int(s) for s in weight_shape)
    if len(shape) == 2:
        return (shape[0], packed_words(shape[1]))
    if len(shape) == 4:
        return (shape[0], shape[2], shape[3], packed_words(shape[1]))
    raise ValueError(f"weight must be 2-D [O, K] or 4-D [O, C/g, kh, kw], got shape {shape}")


def _check_weight(weight: torch.Tensor) -> None:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a tensor, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a floating-point tensor, got {weight.dtype}")
    packed_shape(weight.shape)  # rank check


def pack_signs(weight: torch.Tensor) -> torch.Tensor:
    """Sign bits of a float weight [O, K] or [O, C/g, kh, kw] in the packed layout (int64)."""
    _check_weight(weight)
    w = weight.detach()
    if w.dim() == 4:
        w = w.permute(0, 2, 3, 1)
    # The sign is taken in the weight's own dtype (a tiny negative float64 would round to -0.0 in float32 and
    # flip to +1); the op then sees exact +-1 in float32, the dtype every backend accepts.
    signs = torch.where(w >= 0, 1.0, -1.0).to(torch.float32).contiguous()
    return ops.bitpack(signs)


def binary_alpha(weight: torch.Tensor) -> torch.Tensor:
    """``mean |W[o]|`` over each output channel's whole filter, in the weight's dtype (no gradient)."""
    _check_weight(weight)
    return weight.detach().abs().flatten(1).mean(1)


def unpack_signs(bits: torch.Tensor, weight_shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """+1/-1 float weight of shape ``weight_shape`` (the layout of the float weight) from its packed bits."""
    shape = tuple(int(s) for s in weight_shape)
    validate_packed(bits, shape)
    if len(shape) == 2:
        return ops.bitunpack(bits.contiguous(), shape[1]).to(dtype)
    signs = ops.bitunpack(bits.contiguous(), shape[1])  # [O, kh, kw, C/g]
    return signs.permute(0, 3, 1, 2).contiguous().to(dtype)


def unpack_weight(bits: torch.Tensor, alpha: torch.Tensor, weight_shape) -> torch.Tensor:
    """The effective float weight ``alpha[o] * sign(W[o])`` (alpha may be negative after a BatchNorm fold)."""
    signs = unpack_signs(bits, weight_shape, alpha.dtype)
    return signs * alpha.reshape(-1, *([1] * (signs.dim() - 1)))


def validate_packed(bits, weight_shape, name: str = "weight_bits") -> None:
    """Raises TypeError/ValueError unless ``bits`` is int64 of the packed shape with all tail bits zero.

    Tail bits matter: the kernels count matching bits word by word, so a set bit past the last channel would
    silently add a phantom +1 weight to every output.
    """
    expected = packed_shape(weight_shape)
    if not isinstance(bits, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(bits).__name__}")
    if bits.dtype != torch.int64:
        raise TypeError(f"{name} must be int64 (packed sign bits), got {bits.dtype}")
    if tuple(bits.shape) != expected:
        raise ValueError(f"{name} must have shape {expected} for a weight of shape {tuple(weight_shape)}, "
                         f"got {tuple(bits.shape)}")
    size = int(weight_shape[1])
    used = size % WORD_BITS
    if used and bits.numel():
        # arithmetic shift: the result is 0 iff every bit from `used` to 63 (the sign bit included) is 0
        tail = torch.bitwise_right_shift(bits[..., -1], used)
        if bool((tail != 0).any()):
            raise ValueError(f"{name} has nonzero tail bits past element {size} in its last word (bits "
                             f"{used}..63 must be 0)")
