"""SparseLinear: an nn.Linear whose pruned weight is stored and multiplied as tiled CSR."""
from __future__ import annotations

import torch
from torch import nn

from .. import ops  # noqa: F401  registers torch.ops.sparsecomp and its fake kernels
from ..formats.sparse import TiledCSR
from ._sparse_weight import SparseWeightMixin

# The OpOverload itself (registered by the ops import): one Python call less per forward than ops.sparse_linear.
_sparse_linear = torch.ops.sparsecomp.sparse_linear.default


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
        in_features = self.in_features
        shape = x.shape
        if len(shape) == 2 and shape[1] == in_features:  # the common case: no reshapes (the op checks the rest)
            values, col_idx, row_ptr, bias = self._operands()
            return _sparse_linear(x, values, col_idx, row_ptr, bias, in_features)
        if len(shape) == 0 or shape[-1] != in_features:
            raise ValueError(f"SparseLinear: input must end with in_features={in_features}, got shape "
                             f"{tuple(shape)}")
        values, col_idx, row_ptr, bias = self._operands()
        y = _sparse_linear(x.reshape(-1, in_features), values, col_idx, row_ptr, bias, in_features)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"nnz={self.nnz}, sparsity={self.sparsity:.3f}")
