"""Deep-Compression storage of a clustered layer: Huffman-coded cluster indices of the nonzeros, Huffman-coded
gaps between nonzero positions, the codebook and the bias; with a byte count per part.

The index streams (:func:`encode_indices` / :func:`decode_indices`) are also what sparsecomp/io.py stores for a
codebook layer's ``packed_indices`` (its ``huffman`` encoding); the blob below is this module's stand-alone
per-layer form (fp16 bias, code 0 omitted from the codebook), used by the Deep-Compression example::

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


CAPS = (7, 15, 31, 63, 255)  # gap caps tried; the one that codes smallest is kept


def encode_indices(idx: np.ndarray, zero_code: bool, caps=CAPS) -> tuple[bytes, int, bytes]:
    """(gap stream, cap, index stream) of a flat cluster-index array, row-major.

    With ``zero_code`` only the nonzero codes are stored (code 0 is the pruned zero), at positions given by the
    Huffman-coded gaps (the cap of ``caps`` that codes smallest); without, the gap stream is empty, ``cap`` 0 and
    every index is stored. Shared by :func:`encode_layer` and the model file format (sparsecomp/io.py).
    """
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    if zero_code:
        stored = np.flatnonzero(idx)
        gap_stream, cap = min(((huffman_encode(_gaps(stored, c)), c) for c in caps), key=lambda t: len(t[0]))
        return gap_stream, cap, huffman_encode(idx[stored])
    return huffman_encode([]), 0, huffman_encode(idx)


def _declared_count(stream: bytes, limit: int, what: str) -> None:
    """Refuses a stream that declares more than ``limit`` symbols before anything that size is allocated."""
    if len(stream) < 2:
        raise ValueError(f"corrupt {what} stream: truncated header")
    n, _ = _read_varint(stream, 1)
    if n > limit:
        raise ValueError(f"corrupt {what} stream: {n} symbols declared, at most {limit} possible")


def decode_indices(gap_stream: bytes, index_stream: bytes, numel: int, cap: int, bits: int) -> np.ndarray:
    """Inverse of :func:`encode_indices`: the int64 flat index array of ``numel`` entries, validated (positions
    inside the matrix, one index per position, indices in ``[0, 2**bits)``, stored codes nonzero when gaps are
    used). Raises ValueError on a corrupt stream."""
    _declared_count(gap_stream, 2 * numel + 1, "gap")
    _declared_count(index_stream, numel, "index")
    gaps, stored = huffman_decode(gap_stream), huffman_decode(index_stream)
    if cap:
        if gaps.size and (gaps.max() > cap):
            raise ValueError(f"corrupt gap stream: a gap symbol exceeds the cap {cap}")
        where = _positions(gaps, cap)
        if stored.size and stored.min() == 0:
            raise ValueError("corrupt index stream: code 0 stored at a listed position (it is the implicit zero)")
    else:
        if gaps.size:
            raise ValueError("corrupt gap stream: gaps given for a layer storing every index")
        where = np.arange(numel)
    if where.size != stored.size or (where.size and where[-1] >= numel):
        raise ValueError(f"corrupt layer: {where.size} positions (last {where[-1] if where.size else None}) for "
                         f"{stored.size} indices in {numel} weights")
    if stored.size and stored.max() >= 1 << bits:
        raise ValueError(f"corrupt index stream: index {int(stored.max())} out of range for bits={bits}")
    idx = np.zeros(numel, dtype=np.int64)
    idx[where] = stored
    return idx


def encode_layer(layer, bias_dtype: torch.dtype | None = torch.float16, caps=CAPS):
    """Blob and :class:`LayerSize` of a CodebookLinear; the gap cap is the one (of ``caps``) that codes smallest."""
    idx = layer.indices().cpu().reshape(-1).numpy()
    cb = layer.codebook.detach().float().cpu()
    gap_stream, cap, index_stream = encode_indices(idx, layer.zero_code, caps)
    if layer.zero_code:
        cb = cb[..., 1:]
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
    if not 1 <= bits <= 8 or bool(cap) != bool(zero_code) or bias_code not in _BIAS_DTYPES:
        raise ValueError("corrupt layer blob: bad header")
    idx = decode_indices(blob[pos:pos + n_gaps], blob[pos + n_gaps:pos + n_gaps + n_idx], out_f * in_f, cap, bits)
    pos += n_gaps + n_idx
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
