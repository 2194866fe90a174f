"""CodebookLinear: an nn.Linear whose weight is a small table of shared values plus a b-bit index per weight."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..formats.codebook import dequantize, pack_indices, row_words, unpack_indices


class CodebookLinear(nn.Module):
    """``y = F.linear(x, codebook[indices], b)``; ``bits`` in 1..8, one codebook per layer or per output row.

    Build it with :meth:`from_dense` (k-means clustering of a trained layer). State: ``packed_indices`` (int32
    buffer, layout in sparsecomp/formats/codebook.py), ``codebook`` (Parameter, ``[2**bits]`` or
    ``[out_features, 2**bits]``) and ``bias``. In eval mode (or without grad) the forward runs the
    ``codebook_mm`` kernel on the packed indices. In training mode it runs trained quantization: the indices
    stay fixed and the codebook learns, each entry's gradient being the sum of its members' gradients. With
    ``zero_code`` (pruned layers) entry 0 is pinned to 0.0 so pruned weights stay exactly zero.
    """

    def __init__(self, in_features: int, out_features: int, bits: int = 4, per_channel: bool = False,
                 bias: bool = True, zero_code: bool = False, device=None, dtype=None):
        super().__init__()
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.bits, self.per_channel, self.zero_code = bits, bool(per_channel), bool(zero_code)
        entries = 1 << bits
        shape = (self.out_features, entries) if per_channel else (entries,)
        self.codebook = nn.Parameter(torch.zeros(shape, dtype=dtype or torch.float32, device=device))
        self.register_buffer("packed_indices", torch.zeros(self.out_features, row_words(self.in_features, bits),
                                                           dtype=torch.int32, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.out_features, dtype=self.codebook.dtype, device=device))
        else:
            self.register_parameter("bias", None)
        self._index_cache = None  # (packed version, data_ptr, unpacked indices) for training and to_dense

    @classmethod
    def from_dense(cls, linear: nn.Linear, bits: int = 4, per_channel: bool = False, init: str = "linear",
                   iters: int = 100, seed: int = 0, zero_code: bool | None = None,
                   weight: torch.Tensor | None = None) -> "CodebookLinear":
        """Clusters ``linear.weight`` (or ``weight``) with :func:`sparsecomp.quantize.kmeans`.

        ``zero_code`` defaults to "the weight has exact zeros" (a pruned layer): the zeros keep code 0 = 0.0 and
        only the nonzeros are clustered.
        """
        from ..quantize.kmeans import kmeans

        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        w = (linear.weight if weight is None else weight).detach()
        if tuple(w.shape) != (linear.out_features, linear.in_features):
            raise ValueError(f"weight must have shape {(linear.out_features, linear.in_features)}, got "
                             f"{tuple(w.shape)}")
        if zero_code is None:
            zero_code = bool((w == 0).any())
        codebook, indices = kmeans(w, bits, per_channel=per_channel, init=init, iters=iters, seed=seed,
                                   zero_code=zero_code)
        module = cls(linear.in_features, linear.out_features, bits=bits, per_channel=per_channel,
                     bias=linear.bias is not None, zero_code=zero_code, device=w.device)
        with torch.no_grad():
            module.codebook.copy_(codebook)
            module.packed_indices.copy_(pack_indices(indices, bits))
            if linear.bias is not None:
                module.bias.copy_(linear.bias.detach().float())
        return module

    def indices(self) -> torch.Tensor:
        """The int64 [out_features, in_features] cluster index of every weight (unpacked, cached)."""
        p = self.packed_indices
        key = (p._version, p.data_ptr(), p.device)
        if self._index_cache is None or self._index_cache[0] != key:
            self._index_cache = (key, unpack_indices(p, self.in_features, self.bits))
        return self._index_cache[1]

    def _effective_codebook(self) -> torch.Tensor:
        if not self.zero_code:
            return self.codebook
        # Multiplying entry 0 by 0 keeps its gradient (and so its value, 0.0) at zero while training.
        keep = torch.ones(1 << self.bits, dtype=self.codebook.dtype, device=self.codebook.device)
        keep[0] = 0
        return self.codebook * keep

    def weight_matrix(self) -> torch.Tensor:
        """The dense [out_features, in_features] weight ``codebook[indices]``."""
        return dequantize(self.indices(), self._effective_codebook().detach())

    def to_dense(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.codebook.device, dtype=self.codebook.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight_matrix())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"CodebookLinear: input must end with in_features={self.in_features}, got shape "
                             f"{tuple(x.shape)}")
        training = self.training and torch.is_grad_enabled() and self.codebook.requires_grad
        fast = (not training and x.device.type == "cpu" and x.dtype == torch.float32
                and self.codebook.dtype == torch.float32)
        if not fast:  # trained quantization, or a device/dtype without a kernel: the dense weight
            return F.linear(x, dequantize(self.indices(), self._effective_codebook()).to(x.dtype), self.bias)
        lead = x.shape[:-1]
        y = ops.codebook_mm(x.reshape(-1, self.in_features), self.packed_indices, self.codebook, self.bias,
                            self.in_features, self.bits)
        return y.reshape(*lead, self.out_features)

    def nbytes(self) -> int:
        """Bytes as stored: packed indices + codebook + bias."""
        tensors = [self.packed_indices, self.codebook] + ([self.bias] if self.bias is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def get_extra_state(self):
        return {"bits": self.bits, "per_channel": self.per_channel, "zero_code": self.zero_code}

    def set_extra_state(self, state) -> None:
        want = self.get_extra_state()
        if not isinstance(state, dict) or {k: state.get(k) for k in want} != want:
            raise ValueError(f"CodebookLinear: checkpoint configuration {state!r} does not match the module's {want}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # The kernels trust the packed shape and codebook size: check them before anything is copied.
        where = prefix or "module"
        packed = state_dict.get(prefix + "packed_indices")
        codebook = state_dict.get(prefix + "codebook")
        want_packed = (self.out_features, row_words(self.in_features, self.bits))
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
        if isinstance(codebook, torch.Tensor) and self.zero_code:
            zero = codebook[..., 0]
            if bool((zero != 0).any()):
                error_msgs.append(f"{where}: codebook entry 0 must be 0.0 (zero_code: pruned weights)")
                return
        self._index_cache = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"per_channel={self.per_channel}, zero_code={self.zero_code}, bias={self.bias is not None}")
