"""Drop-in ``torch.nn`` modules running on sparsecomp kernels."""
from .binary_conv import BinaryConv2d
from .binary_linear import BinaryLinear
from .codebook_conv import CodebookConv2d
from .codebook_linear import CodebookLinear
from .low_rank import LowRankLinear
from .row_sparse import RowSparseConv2d, RowSparseLinear
from .separable import DepthwiseSeparableConv2d
from .sparse_conv import SparseConv2d
from .sparse_linear import SparseLinear

__all__ = ["BinaryConv2d", "BinaryLinear", "CodebookConv2d", "CodebookLinear", "DepthwiseSeparableConv2d",
           "LowRankLinear", "RowSparseConv2d", "RowSparseLinear", "SparseConv2d", "SparseLinear"]
