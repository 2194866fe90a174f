"""float64 references of the binary (1-bit) ops, written from the contract only (never from the kernels).

- ``sign_pm1``: +1 where v >= 0 (so +0.0, -0.0 and +Inf give +1), else -1 (negative values, -Inf, NaN of
  either sign: ``NaN >= 0`` is False). torch.sign(0) = 0 is NOT this.
- ``pack_reference`` / ``unpack_reference``: the packed layout in torch integer ops: sign bits along the last
  dim, bit i of int64 word w = element 64w+i, bit 1 = +1, tail bits past the last element 0.
  ``pack_reference_python`` does the same with Python ints one element at a time, to check the torch version.
- ``pack_conv_weight``: float [O, C/g, kh, kw] -> weight_bits [O, kh, kw, ceil((C/g)/64)].
- ``binary_linear_reference`` / ``binary_conv2d_reference``: the ops' outputs in float64, plus the integer
  accumulator (the conv/dot of the +-1 tensors) for exact comparisons.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

WORD_BITS = 64


def words(size: int) -> int:
    return (size + WORD_BITS - 1) // WORD_BITS


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """float64 +1 where x >= 0 else -1 (NaN -> -1, -0.0 -> +1)."""
    x = x.double()
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def pack_reference(x: torch.Tensor) -> torch.Tensor:
    """int64 [..., ceil(C/64)] with bit i of word w set iff x[..., 64w+i] >= 0; tail bits 0."""
    c = x.shape[-1]
    n_words = words(c)
    bits = (x.double() >= 0).to(torch.int64)
    bits = F.pad(bits, (0, n_words * WORD_BITS - c))  # tail bits are 0
    bits = bits.reshape(*x.shape[:-1], n_words, WORD_BITS)
    packed = torch.zeros(*x.shape[:-1], n_words, dtype=torch.int64)
    for i in range(WORD_BITS):  # OR of the shifted bits; 1 << 63 is the int64 sign bit, as in the layout
        packed |= bits[..., i] << i
    return packed


def unpack_reference(packed: torch.Tensor, size: int) -> torch.Tensor:
    """float64 [..., size] of +1 (bit set) / -1 (bit clear), element e read from bit e % 64 of word e // 64."""
    e = torch.arange(size)
    bit = (packed[..., e // WORD_BITS] >> (e % WORD_BITS)) & 1  # arithmetic shift: & 1 keeps only bit e % 64
    return bit.double() * 2 - 1


def pack_reference_python(values: list[float]) -> list[int]:
    """One row packed with Python ints: signed int64 words (as torch stores them)."""
    out = []
    for start in range(0, len(values), WORD_BITS):
        word = 0
        for i, v in enumerate(values[start:start + WORD_BITS]):
            if v >= 0:  # NaN compares False: -1
                word |= 1 << i
        out.append(word - (1 << 64) if word >= 1 << 63 else word)
    return out


def pack_conv_weight(w: torch.Tensor) -> torch.Tensor:
    """Float conv weight [O, C/g, kh, kw] -> weight_bits [O, kh, kw, ceil((C/g)/64)] (channels packed last)."""
    return pack_reference(w.permute(0, 2, 3, 1))


def _finish(acc: torch.Tensor, alpha, bias, activation: str, channel_dim: int) -> torch.Tensor:
    shape = [1] * acc.dim()
    shape[channel_dim] = -1
    y = acc if alpha is None else acc * alpha.double().reshape(shape)
    if bias is not None:
        y = y + bias.double().reshape(shape)
    if activation == "relu":
        y = y.clamp_min(0)
    elif activation != "none":
        raise ValueError(f"unknown activation {activation!r}")
    return y


def binary_linear_accumulator(x: torch.Tensor, w: torch.Tensor, binarize_input: bool = True) -> torch.Tensor:
    """float64 s(x) @ sgn(W).T (integers when binarize_input)."""
    xs = sign_pm1(x) if binarize_input else x.double()
    return xs @ sign_pm1(w).T


def binary_linear_reference(x, w, alpha, bias, binarize_input=True, activation="none") -> torch.Tensor:
    """float64 act(alpha[o] * sum_k s(x[m,k]) sgn(W[o,k]) + bias[o])."""
    return _finish(binary_linear_accumulator(x, w, binarize_input), alpha, bias, activation, 1)


def binary_conv2d_accumulator(x, w, stride, padding, dilation, groups, binarize_input=True,
                              padding_mode="zeros") -> torch.Tensor:
    """float64 conv2d(s(x), sgn(W)); 'zeros': padded taps add 0; 'ones': s(x) padded with +1, then no padding."""
    xs = sign_pm1(x) if binarize_input else x.double()
    ws = sign_pm1(w)
    if padding_mode == "ones":
        ph, pw = padding
        xs = F.pad(xs, (pw, pw, ph, ph), value=1.0)
        padding = (0, 0)
    elif padding_mode != "zeros":
        raise ValueError(f"unknown padding_mode {padding_mode!r}")
    return F.conv2d(xs, ws, None, tuple(stride), tuple(padding), tuple(dilation), groups)


def binary_conv2d_reference(x, w, alpha, bias, stride, padding, dilation, groups, binarize_input=True,
                            padding_mode="zeros", activation="none") -> torch.Tensor:
    acc = binary_conv2d_accumulator(x, w, stride, padding, dilation, groups, binarize_input, padding_mode)
    return _finish(acc, alpha, bias, activation, 1)


def binary_conv2d_l2(x, w, alpha, bias, stride, padding, dilation, groups) -> torch.Tensor:
    """2-norm of the terms alpha*x*sgn(W) (+ bias) of each BinaryConnect conv output (zero padding)."""
    ones = torch.ones_like(w, dtype=torch.float64)
    sq = F.conv2d(x.double().square(), ones, None, tuple(stride), tuple(padding), tuple(dilation), groups)
    sq = sq * alpha.double().square().reshape(1, -1, 1, 1)
    if bias is not None:
        sq = sq + bias.double().square().reshape(1, -1, 1, 1)
    return sq.sqrt()
