"""sparsecomp: compressed neural networks that are actually smaller and faster.

Importing the package loads the native library, which registers the ops under ``torch.ops.sparsecomp``.
"""
import torch  # noqa: F401  (the native library links against it)

from . import _C  # noqa: F401  registers torch.ops.sparsecomp.*
from . import ops  # noqa: F401  fake kernels and autograd for the ops
from . import formats, nn  # noqa: F401
from . import quantize  # noqa: F401
from .info import info

__version__ = "0.1.0"
__all__ = ["info", "nn", "formats", "ops", "quantize", "__version__"]
