"""SparseLinear: an nn.Linear whose pruned weight is stored and multiplied as tiled CSR."""
from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..formats.sparse import TiledCSR
from ._sparse_weight import SparseWeightMixin


class SparseLinear(SparseWeightMixin, nn.Module):
    """``y = x @ W.T + b`` with only the nonzeros of W stored; same semantics as ``nn.Linear``.

    Build it from a pruned layer with :meth:`from_dense`. Inputs may have any leading dims. Backward gives
    gradients for the input, the stored nonzeros (``values``) and the bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self._init_sparse_weight(self.out_features, self.in_features, dtype=dtype, device=device)
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.out_features, dtype=self.values.dtype, device=device))
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_dense(cls, linear: nn.Linear, weight: torch.Tensor | None = None) -> "SparseLinear":
        """Keeps the nonzeros of ``linear.weight`` (or of ``weight``, e.g. a pruning mask applied)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        w = (linear.weight if weight is None else weight).detach()
        if tuple(w.shape) != (linear.out_features, linear.in_features):
            raise ValueError(f"weight must have shape {(linear.out_features, linear.in_features)}, "
                             f"got {tuple(w.shape)}")
        csr = TiledCSR.from_dense(w)  # rejects non-float weights before anything is built
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=w.device,
                     dtype=w.dtype)
        module._set_sparse_weight(csr)
        if linear.bias is not None:
            module.bias = nn.Parameter(linear.bias.detach().to(w.dtype).clone())
        return module

    def to_dense(self) -> nn.Linear:
        """An equivalent ``nn.Linear`` (pruned weights as zeros)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.values.device, dtype=self.values.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight_matrix())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"SparseLinear: input must end with in_features={self.in_features}, got shape "
                             f"{tuple(x.shape)}")
        lead = x.shape[:-1]
        y = ops.sparse_linear(x.reshape(-1, self.in_features), self.values, self.col_idx, self.row_ptr, self.bias,
                              self.in_features)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"nnz={self.nnz}, sparsity={self.sparsity:.3f}")
