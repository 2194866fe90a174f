"""Whole-model weight clustering: every nn.Linear / nn.Conv2d (and SparseLinear / SparseConv2d) becomes a
CodebookLinear / CodebookConv2d."""
from __future__ import annotations

from torch import nn
from tqdm.auto import tqdm


def cluster_model(model: nn.Module, bits: int = 4, per_channel: bool = False, init: str = "linear",
                  iters: int = 100, seed: int = 0, progress: bool = True, skip=()) -> nn.Module:
    """Replaces, in place, each ``nn.Linear``/``SparseLinear`` and ``nn.Conv2d``/``SparseConv2d`` whose qualified
    name is not in ``skip`` by a :class:`~sparsecomp.nn.CodebookLinear` / :class:`~sparsecomp.nn.CodebookConv2d`
    clustered to ``bits`` bits; returns ``model``.

    Pruned layers (with exact zeros) are clustered over their nonzeros only, the zeros keeping code 0 = 0.0.
    ``progress`` shows a tqdm bar over the layers.
    """
    from ..nn.codebook_conv import CodebookConv2d
    from ..nn.codebook_linear import CodebookLinear
    from ..nn.sparse_conv import SparseConv2d
    from ..nn.sparse_linear import SparseLinear

    kinds = {nn.Linear: CodebookLinear, SparseLinear: CodebookLinear, nn.Conv2d: CodebookConv2d,
             SparseConv2d: CodebookConv2d}
    if type(model) in kinds:
        raise TypeError("cluster_model replaces submodules; wrap a single layer or use Codebook*.from_dense")
    targets = [(name, mod) for name, mod in model.named_modules() if type(mod) in kinds and name not in skip]
    for name, mod in tqdm(targets, desc=f"k-means {bits}-bit", disable=not progress, unit="layer"):
        dense = mod.to_dense() if isinstance(mod, (SparseLinear, SparseConv2d)) else mod
        new = kinds[type(mod)].from_dense(dense, bits=bits, per_channel=per_channel, init=init, iters=iters,
                                          seed=seed)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return model
