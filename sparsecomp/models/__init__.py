"""Small reference architectures built from sparsecomp modules (no torchvision needed)."""
from .mobilenet import (InvertedResidual, mobilenet_v1, mobilenet_v1_digits, mobilenet_v2, mobilenet_v2_digits,
                        to_torch)

__all__ = ["InvertedResidual", "mobilenet_v1", "mobilenet_v1_digits", "mobilenet_v2", "mobilenet_v2_digits",
           "to_torch"]
