"""Which layers pruning touches: prunable weight layers of a model, minus the user's skip list."""
from __future__ import annotations

import fnmatch
from typing import Iterable

from torch import nn

# Layers whose ``weight`` pruning masks; dense layers only (compressed sparsecomp modules are left alone).
PRUNABLE_TYPES: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_skip(skip) -> tuple:
    if skip is None:
        return ()
    if isinstance(skip, (str, type)):
        return (skip,)
    skip = tuple(skip)
    for item in skip:
        if not isinstance(item, (str, type)):
            raise TypeError(f"skip must hold module names (str, fnmatch patterns allowed) or module types, "
                            f"got {item!r}")
    return skip


def is_skipped(name: str, module: nn.Module, skip: Iterable) -> bool:
    """True when ``name`` matches a pattern of ``skip`` (exact name or fnmatch) or ``module`` is of a listed type.

    A pattern also skips everything below the named module ("features" skips "features.0").
    """
    for item in skip:
        if isinstance(item, type):
            if isinstance(module, item):
                return True
        elif name == item or fnmatch.fnmatchcase(name, item) or name.startswith(item + "."):
            return True
    return False


def prunable_layers(model: nn.Module, skip=(), types: tuple[type, ...] | None = None) -> dict[str, nn.Module]:
    """{qualified name: layer} of the layers whose ``weight`` can be pruned, in model order.

    ``types`` defaults to Linear and Conv1d/2d/3d. A layer shared under several names appears once, under
    its first name.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    skip = _check_skip(skip)
    types = PRUNABLE_TYPES if types is None else tuple(types)
    if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
        raise TypeError(f"types must be a non-empty tuple of nn.Module subclasses, got {types!r}")
    out: dict[str, nn.Module] = {}
    skipped_parents: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in skipped_parents):
            continue
        if is_skipped(name, module, skip):
            if name == "":  # the model itself is skipped
                return {}
            skipped_parents.append(name)
            continue
        if isinstance(module, types) and isinstance(getattr(module, "weight", None), nn.Parameter):
            out[name] = module
    return out
