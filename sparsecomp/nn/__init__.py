"""Drop-in ``torch.nn`` modules running on sparsecomp kernels."""
from .codebook_linear import CodebookLinear
from .sparse_conv import SparseConv2d
from .sparse_linear import SparseLinear

__all__ = ["CodebookLinear", "SparseConv2d", "SparseLinear"]
