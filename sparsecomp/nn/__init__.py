"""Drop-in ``torch.nn`` modules running on sparsecomp kernels."""
from .sparse_conv import SparseConv2d
from .sparse_linear import SparseLinear

__all__ = ["SparseConv2d", "SparseLinear"]
