"""CodebookLinear: an nn.Linear whose weight is a small table of shared values plus a b-bit index per weight."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ._codebook_weight import CodebookWeightMixin, cluster


class CodebookLinear(CodebookWeightMixin, nn.Module):
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
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_codebook_weight(self.out_features, self.in_features, bits, per_channel, zero_code, device, dtype)
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.out_features, dtype=self.codebook.dtype, device=device))
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_dense(cls, linear: nn.Linear, bits: int = 4, per_channel: bool = False, init: str = "linear",
                   iters: int = 100, seed: int = 0, zero_code: bool | None = None,
                   weight: torch.Tensor | None = None) -> "CodebookLinear":
        """Clusters ``linear.weight`` (or ``weight``) with :func:`sparsecomp.quantize.kmeans`.

        ``zero_code`` defaults to "the weight has exact zeros" (a pruned layer): the zeros keep code 0 = 0.0 and
        only the nonzeros are clustered.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        w = (linear.weight if weight is None else weight).detach()
        if tuple(w.shape) != (linear.out_features, linear.in_features):
            raise ValueError(f"weight must have shape {(linear.out_features, linear.in_features)}, got "
                             f"{tuple(w.shape)}")
        codebook, indices, zero_code = cluster(w, bits, per_channel, init, iters, seed, zero_code)
        module = cls(linear.in_features, linear.out_features, bits=bits, per_channel=per_channel,
                     bias=linear.bias is not None, zero_code=zero_code, device=w.device)
        module._set_codebook_weight(codebook, indices)
        if linear.bias is not None:
            with torch.no_grad():
                module.bias.copy_(linear.bias.detach().float())
        return module

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
        if not self._use_kernel(x):  # trained quantization, or a device/dtype without a kernel: the dense weight
            return F.linear(x, self._trainable_weight().to(x.dtype), self.bias)
        lead = x.shape[:-1]
        y = ops.codebook_mm(x.reshape(-1, self.in_features), self.packed_indices, self.codebook, self.bias,
                            self.in_features, self.bits)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"per_channel={self.per_channel}, zero_code={self.zero_code}, bias={self.bias is not None}")
