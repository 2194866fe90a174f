"""What CodebookLinear and CodebookConv2d share: a [rows, cols] weight stored as ``codebook[indices]``.

State: ``packed_indices`` (int32 buffer [rows, row_words(cols, bits)], layout in sparsecomp/formats/codebook.py),
``codebook`` (Parameter ``[2**bits]`` or ``[rows, 2**bits]``), the configuration (bits, per_channel, zero_code)
as extra state, checked on load. With ``zero_code`` (pruned layers) entry 0 is pinned to 0.0 so that pruned
weights stay exactly zero while the codebook trains. A conv's rows are its output channels and its cols the
flattened ``in_channels / groups * kh * kw`` filter.
"""
from __future__ import annotations

import torch
from torch import nn

from ..formats.codebook import dequantize, pack_indices, row_words, unpack_indices


def check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")
    return bits


def cluster(weight: torch.Tensor, bits: int, per_channel: bool, init: str, iters: int, seed: int,
            zero_code: bool | None) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """k-means of a weight flattened to [rows, cols]: (codebook, int64 indices [rows, cols], zero_code).

    ``zero_code`` defaults to "the weight has exact zeros" (a pruned layer): the zeros keep code 0 = 0.0 and only
    the nonzeros are clustered.
    """
    from ..quantize.kmeans import kmeans

    w = weight.detach().reshape(weight.shape[0], -1)
    if zero_code is None:
        zero_code = bool((w == 0).any())
    codebook, indices = kmeans(w, check_bits(bits), per_channel=per_channel, init=init, iters=iters, seed=seed,
                               zero_code=zero_code)
    return codebook, indices, bool(zero_code)


class CodebookWeightMixin:
    """Mixed into an nn.Module that calls :meth:`_init_codebook_weight` in ``__init__``."""

    def _init_codebook_weight(self, rows: int, cols: int, bits: int, per_channel: bool, zero_code: bool,
                              device=None, dtype=None) -> None:
        self.bits, self.per_channel, self.zero_code = check_bits(bits), bool(per_channel), bool(zero_code)
        self._rows, self._cols = int(rows), int(cols)
        shape = (self._rows, 1 << bits) if per_channel else (1 << bits,)
        self.codebook = nn.Parameter(torch.zeros(shape, dtype=dtype or torch.float32, device=device))
        self.register_buffer("packed_indices", torch.zeros(self._rows, row_words(self._cols, bits),
                                                           dtype=torch.int32, device=device))
        self._index_cache = None  # (packed version, data_ptr, device, unpacked indices)

    def _set_codebook_weight(self, codebook: torch.Tensor, indices: torch.Tensor) -> None:
        with torch.no_grad():
            self.codebook.copy_(codebook)
            self.packed_indices.copy_(pack_indices(indices.reshape(self._rows, self._cols), self.bits))
        self._index_cache = None

    def indices(self) -> torch.Tensor:
        """The int64 [rows, cols] cluster index of every weight (unpacked, cached while the buffer is unchanged)."""
        p = self.packed_indices
        key = (p._version, p.data_ptr(), p.device)
        if self._index_cache is None or self._index_cache[0] != key:
            self._index_cache = (key, unpack_indices(p, self._cols, self.bits))
        return self._index_cache[1]

    def _effective_codebook(self) -> torch.Tensor:
        if not self.zero_code:
            return self.codebook
        # Multiplying entry 0 by 0 keeps its gradient (and so its value, 0.0) at zero while training.
        keep = torch.ones(1 << self.bits, dtype=self.codebook.dtype, device=self.codebook.device)
        keep[0] = 0
        return self.codebook * keep

    def weight_matrix(self) -> torch.Tensor:
        """The dense [rows, cols] weight ``codebook[indices]`` (detached)."""
        return dequantize(self.indices(), self._effective_codebook().detach())

    def _trainable_weight(self) -> torch.Tensor:
        """``codebook[indices]`` differentiable in the codebook: each entry's gradient is the sum of its members'."""
        return dequantize(self.indices(), self._effective_codebook())

    def _use_kernel(self, x: torch.Tensor) -> bool:
        """The packed kernel runs inference on CPU fp32; training (a learning codebook) and other devices or
        dtypes go through the dense weight."""
        training = self.training and torch.is_grad_enabled() and self.codebook.requires_grad
        return (not training and x.device.type == "cpu" and x.dtype == torch.float32
                and self.codebook.dtype == torch.float32)

    def nbytes(self) -> int:
        """Bytes as held in memory: packed indices + codebook + bias."""
        tensors = [self.packed_indices, self.codebook] + ([self.bias] if self.bias is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def get_extra_state(self):
        return {"bits": self.bits, "per_channel": self.per_channel, "zero_code": self.zero_code}

    def set_extra_state(self, state) -> None:
        want = self.get_extra_state()
        if not isinstance(state, dict) or {k: state.get(k) for k in want} != want:
            raise ValueError(f"{type(self).__name__}: checkpoint configuration {state!r} does not match the "
                             f"module's {want}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # The kernels trust the packed shape and codebook size: check them before anything is copied.
        where = prefix or "module"
        packed = state_dict.get(prefix + "packed_indices")
        codebook = state_dict.get(prefix + "codebook")
        want_packed = (self._rows, row_words(self._cols, self.bits))
        if isinstance(packed, torch.Tensor) and (packed.dtype != torch.int32 or tuple(packed.shape) != want_packed):
            error_msgs.append(f"{where}: packed_indices must be int32 {want_packed}, got {packed.dtype} "
                              f"{tuple(packed.shape)}")
            return
        if isinstance(codebook, torch.Tensor) and (tuple(codebook.shape) != tuple(self.codebook.shape)
                                                   or not codebook.is_floating_point()):
            error_msgs.append(f"{where}: codebook must be floating point of shape {tuple(self.codebook.shape)} "
                              f"(bits={self.bits}, per_channel={self.per_channel}), got {codebook.dtype} "
                              f"{tuple(codebook.shape)}")
            return
        if isinstance(codebook, torch.Tensor) and self.zero_code and bool((codebook[..., 0] != 0).any()):
            error_msgs.append(f"{where}: codebook entry 0 must be 0.0 (zero_code: pruned weights)")
            return
        self._index_cache = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
