"""The activations the fused depthwise-pointwise op knows, by name, and their torch equivalents."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("none", "relu", "relu6", "hardswish")
_MODULES = {nn.Identity: "none", nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish"}
_FUNCTIONS = {"none": lambda t: t, "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish}


def activation_name(act, what: str = "activation") -> str:
    """None / "none" / "relu" / "relu6" / "hardswish" or nn.Identity / ReLU / ReLU6 / Hardswish -> the op's name."""
    if act is None:
        return "none"
    if isinstance(act, str):
        name = act.lower()
        if name in ACTIVATIONS:
            return name
        raise ValueError(f"{what} must be one of {ACTIVATIONS} (or None), got {act!r}")
    if isinstance(act, nn.Module):
        for cls, name in _MODULES.items():
            if type(act) is cls:  # exact type: a subclass may compute something else
                return name
        raise ValueError(f"{what} must be nn.Identity, nn.ReLU, nn.ReLU6 or nn.Hardswish (or a name in "
                         f"{ACTIVATIONS}), got {type(act).__name__}")
    raise TypeError(f"{what} must be None, a string or an nn.Module, got {type(act).__name__}")


def apply_activation(name: str, t: torch.Tensor) -> torch.Tensor:
    return _FUNCTIONS[name](t)


def activation_module(name: str) -> nn.Module:
    return {"none": nn.Identity, "relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish}[name]()
