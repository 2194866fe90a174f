"""Drop-in ``torch.nn`` modules running on sparsecomp kernels."""
from .binary_conv import BinaryConv2d
from .binary_linear import BinaryLinear
from .codebook_linear import CodebookLinear
from .low_rank import LowRankLinear
from .separable import DepthwiseSeparableConv2d
from .sparse_conv import SparseConv2d
from .sparse_linear import SparseLinear

__all__ = ["BinaryConv2d", "BinaryLinear", "CodebookLinear", "SparseConv2d", "SparseLinear"]
__all__ += ["DepthwiseSeparableConv2d", "LowRankLinear"]
