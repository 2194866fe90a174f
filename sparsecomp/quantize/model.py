"""Whole-model weight clustering: every nn.Linear (and SparseLinear) becomes a CodebookLinear."""
from __future__ import annotations

from torch import nn
from tqdm.auto import tqdm


def cluster_model(model: nn.Module, bits: int = 4, per_channel: bool = False, init: str = "linear",
                  iters: int = 100, seed: int = 0, progress: bool = True, skip=()) -> nn.Module:
    """Replaces, in place, each ``nn.Linear``/``SparseLinear`` whose qualified name is not in ``skip`` by a
    :class:`~sparsecomp.nn.CodebookLinear` clustered to ``bits`` bits; returns ``model``.

    Pruned layers (with exact zeros) are clustered over their nonzeros only, the zeros keeping code 0 = 0.0.
    ``progress`` shows a tqdm bar over the layers.
    """
    from ..nn.codebook_linear import CodebookLinear
    from ..nn.sparse_linear import SparseLinear

    targets = [(name, mod) for name, mod in model.named_modules()
               if isinstance(mod, (nn.Linear, SparseLinear)) and name not in skip]
    if isinstance(model, (nn.Linear, SparseLinear)):
        raise TypeError("cluster_model replaces submodules; wrap a single layer or use CodebookLinear.from_dense")
    for name, mod in tqdm(targets, desc=f"k-means {bits}-bit", disable=not progress, unit="layer"):
        dense = mod.to_dense() if isinstance(mod, SparseLinear) else mod
        new = CodebookLinear.from_dense(dense, bits=bits, per_channel=per_channel, init=init, iters=iters, seed=seed)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return model
