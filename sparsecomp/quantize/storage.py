"""Deep-Compression storage of a clustered layer: Huffman-coded cluster indices of the nonzeros, Huffman-coded
gaps between nonzero positions, the codebook and the bias; with a byte count per part.

Layer blob (first version; the pipeline's save_compressed may wrap it)::

    header   varint out, in, bits, cap, zero_code, per_channel, bias dtype code (0 none, 1 fp16, 2 fp32)
    gaps     Huffman stream over [0, cap]: symbol g < cap = skip g positions then a stored weight; g = cap = skip
             cap positions, no weight (a filler: gaps of any length cost a few symbols). Row-major positions.
             Absent (empty stream) for a dense layer without zero_code: every position holds a weight.
    indices  Huffman stream of the stored weights' cluster indices, in position order
    codebook float32 entries (code 0 omitted under zero_code: it is 0.0)
    bias     float16 or float32
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .huffman import _read_varint, _varint, huffman_decode, huffman_encode

_BIAS_DTYPES = {0: None, 1: torch.float16, 2: torch.float32}


@dataclass(frozen=True)
class LayerSize:
    header: int
    gaps: int
    indices: int
    codebook: int
    bias: int

    @property
    def total(self) -> int:
        return self.header + self.gaps + self.indices + self.codebook + self.bias


def _gaps(positions: np.ndarray, cap: int) -> np.ndarray:
    gaps = np.diff(np.concatenate([[-1], positions])) - 1
    fillers = gaps // cap  # each filler skips `cap` positions
    out = np.full(int(fillers.sum() + gaps.size), cap, dtype=np.int64)
    ends = np.cumsum(fillers + 1) - 1  # the real symbol comes after its fillers
    out[ends] = gaps - fillers * cap
    return out


def _positions(symbols: np.ndarray, cap: int) -> np.ndarray:
    step = symbols + 1
    step[symbols == cap] = cap  # a filler advances cap positions and stores nothing
    ends = np.cumsum(step) - 1
    return ends[symbols != cap]


def encode_layer(layer, bias_dtype: torch.dtype | None = torch.float16, caps=(7, 15, 31, 63, 255)):
    """Blob and :class:`LayerSize` of a CodebookLinear; the gap cap is the one (of ``caps``) that codes smallest."""
    idx = layer.indices().cpu().reshape(-1).numpy()
    cb = layer.codebook.detach().float().cpu()
    stored = np.flatnonzero(idx != 0) if layer.zero_code else np.arange(idx.size)
    if layer.zero_code:
        gap_stream, cap = min(((huffman_encode(_gaps(stored, c)), c) for c in caps), key=lambda t: len(t[0]))
        cb = cb[..., 1:]
    else:
        gap_stream, cap = huffman_encode([]), 0
    index_stream = huffman_encode(idx[stored])
    codebook = cb.numpy().astype("<f4").tobytes()
    bias_code = 0 if layer.bias is None or bias_dtype is None else {torch.float16: 1, torch.float32: 2}[bias_dtype]
    bias = b"" if not bias_code else layer.bias.detach().cpu().to(_BIAS_DTYPES[bias_code]).numpy().tobytes()
    header = b"".join(_varint(v) for v in (layer.out_features, layer.in_features, layer.bits, cap,
                                           int(layer.zero_code), int(layer.per_channel), bias_code))
    header += _varint(len(gap_stream)) + _varint(len(index_stream))
    size = LayerSize(len(header), len(gap_stream), len(index_stream), len(codebook), len(bias))
    return header + gap_stream + index_stream + codebook + bias, size


def decode_layer(blob: bytes):
    """Inverse of :func:`encode_layer`: a CodebookLinear (eval mode)."""
    from ..formats.codebook import pack_indices
    from ..nn.codebook_linear import CodebookLinear

    vals, pos = [], 0
    for _ in range(9):
        v, pos = _read_varint(blob, pos)
        vals.append(v)
    out_f, in_f, bits, cap, zero_code, per_channel, bias_code, n_gaps, n_idx = vals
    gaps = huffman_decode(blob[pos:pos + n_gaps])
    pos += n_gaps
    stored_idx = huffman_decode(blob[pos:pos + n_idx])
    pos += n_idx
    idx = np.zeros(out_f * in_f, dtype=np.int64)
    where = _positions(gaps, cap) if zero_code else np.arange(out_f * in_f)
    if where.size != stored_idx.size or (where.size and where[-1] >= idx.size):
        raise ValueError("corrupt layer blob: positions and indices disagree")
    idx[where] = stored_idx
    entries = (1 << bits) - (1 if zero_code else 0)
    n_cb = entries * (out_f if per_channel else 1)
    cb = torch.from_numpy(np.frombuffer(blob, dtype="<f4", count=n_cb, offset=pos).copy())
    pos += 4 * n_cb
    cb = cb.reshape(out_f, entries) if per_channel else cb
    if zero_code:
        cb = torch.cat([torch.zeros(*cb.shape[:-1], 1), cb], dim=-1)
    layer = CodebookLinear(in_f, out_f, bits=bits, per_channel=bool(per_channel), bias=bias_code != 0,
                           zero_code=bool(zero_code))
    with torch.no_grad():
        layer.codebook.copy_(cb)
        layer.packed_indices.copy_(pack_indices(torch.from_numpy(idx).reshape(out_f, in_f), bits))
        if bias_code:
            dt = _BIAS_DTYPES[bias_code]
            raw = np.frombuffer(blob, dtype=np.float16 if dt == torch.float16 else np.float32, count=out_f, offset=pos)
            layer.bias.copy_(torch.from_numpy(raw.astype(np.float32)))
    return layer.eval()
