"""Codebook weights: bit-packing of cluster indices and dequantization.

Packed layout (shared with the ``codebook_mm`` kernels, csrc/cpu/codebook.h): each output row is a
little-endian bit stream of ``in_features`` indices of ``bits`` bits; index k occupies stream bits
``[k * bits, (k + 1) * bits)``, least significant bit first, and stream bit i is bit ``i % 32`` of int32 word
``i // 32``. Rows are padded to whole words (``row_words = ceil(in_features * bits / 32)``); padding bits are 0
when packed here and ignored when read. The codebook has exactly ``2 ** bits`` float entries, one table per
layer (``[2**bits]``) or one per output row (``[out_features, 2**bits]``).
"""
from __future__ import annotations

import torch

_ROWS_PER_CHUNK = 256  # bounds the temporary [rows, words, 32] bit tensors


def row_words(in_features: int, bits: int) -> int:
    """int32 words per packed row."""
    return (in_features * bits + 31) // 32


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")


def pack_indices(indices: torch.Tensor, bits: int) -> torch.Tensor:
    """int [rows, cols] indices in ``[0, 2**bits)`` -> int32 [rows, row_words(cols, bits)] (layout above)."""
    _check_bits(bits)
    if indices.dim() != 2:
        raise ValueError(f"indices must be 2-D [rows, cols], got shape {tuple(indices.shape)}")
    if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
        raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
    rows, cols = indices.shape
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= 1 << bits):
        raise ValueError(f"index out of range: indices must lie in [0, {1 << bits}) for bits={bits}, got "
                         f"[{int(indices.min())}, {int(indices.max())}]")
    words = row_words(cols, bits)
    out = torch.empty(rows, words, dtype=torch.int32, device=indices.device)
    shifts_b = torch.arange(bits, device=indices.device)
    weights = torch.ones(32, dtype=torch.int64, device=indices.device) << torch.arange(32, device=indices.device)
    for r0 in range(0, rows, _ROWS_PER_CHUNK):
        idx = indices[r0:r0 + _ROWS_PER_CHUNK].to(torch.int64)
        n = idx.shape[0]
        stream = ((idx.unsqueeze(-1) >> shifts_b) & 1).reshape(n, cols * bits)
        stream = torch.nn.functional.pad(stream, (0, words * 32 - cols * bits))
        value = (stream.reshape(n, words, 32) * weights).sum(-1)
        out[r0:r0 + n] = torch.where(value >= 1 << 31, value - (1 << 32), value).to(torch.int32)
    return out


def unpack_indices(packed: torch.Tensor, cols: int, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_indices`: int32 [rows, words] -> int64 [rows, cols]."""
    _check_bits(bits)
    words = row_words(cols, bits)
    if packed.dim() != 2 or packed.shape[1] != words or packed.dtype != torch.int32:
        raise ValueError(f"packed must be int32 [rows, {words}] for cols={cols}, bits={bits}, got "
                         f"{packed.dtype} {tuple(packed.shape)}")
    rows = packed.shape[0]
    out = torch.empty(rows, cols, dtype=torch.int64, device=packed.device)
    bit_pos = torch.arange(32, device=packed.device)
    weights = torch.ones(bits, dtype=torch.int64, device=packed.device) << torch.arange(bits, device=packed.device)
    for r0 in range(0, rows, _ROWS_PER_CHUNK):
        p = packed[r0:r0 + _ROWS_PER_CHUNK].to(torch.int64) & 0xFFFFFFFF
        n = p.shape[0]
        stream = ((p.unsqueeze(-1) >> bit_pos) & 1).reshape(n, words * 32)[:, :cols * bits]
        out[r0:r0 + n] = (stream.reshape(n, cols, bits) * weights).sum(-1)
    return out


def dequantize(indices: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Dense weight ``codebook[indices]`` (1-D codebook) or ``codebook[o, indices[o]]`` (per-row codebook).

    Differentiable in ``codebook``: autograd scatter-adds the weight gradient into the entries, so each entry's
    gradient is the sum of its members' gradients (trained quantization).
    """
    if codebook.dim() == 1:
        return codebook[indices]
    if codebook.dim() == 2 and indices.dim() == 2 and codebook.shape[0] == indices.shape[0]:
        return codebook.gather(1, indices)
    raise ValueError(f"codebook must be 1-D or [rows, entries] matching indices {tuple(indices.shape)}, got "
                     f"{tuple(codebook.shape)}")
