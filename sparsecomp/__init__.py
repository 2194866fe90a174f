"""sparsecomp: compressed neural networks that are actually smaller and faster.

Importing the package loads the native library, which registers the ops under ``torch.ops.sparsecomp``.
"""
import torch  # noqa: F401  (the native library links against it)

from . import _C  # noqa: F401  registers torch.ops.sparsecomp.*
from . import ops  # noqa: F401  fake kernels and autograd for the ops
from . import formats, nn  # noqa: F401
from . import quantize  # noqa: F401
from .info import info
from . import prune  # noqa: F401  (pruning algorithms)
from .convert import convert  # noqa: F401  (sparsecomp.convert is the function from here on)
from . import distill, dynamic  # noqa: F401  (knowledge distillation, early exit)
from . import arch, models  # noqa: F401  (separable / low-rank replacement, MobileNets)
from .io import compressed_size_report, load_compressed, save_compressed  # noqa: F401

__version__ = "0.1.0"
__all__ = ["info", "nn", "formats", "ops", "__version__"]
__all__ += ["prune", "convert"]
__all__ += ["distill", "dynamic", "save_compressed", "load_compressed", "compressed_size_report"]
__all__ += ["quantize"]
__all__ += ["arch", "models"]
