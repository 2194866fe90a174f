"""How pruning helpers read the user's data: an iterable of batches, each a tensor (the model input) or a
tuple/list whose first element is the input and second (where needed) the target, as DataLoaders yield."""
from __future__ import annotations

from typing import Iterable, Iterator

import torch


def _split(batch, need_target: bool):
    if isinstance(batch, torch.Tensor):
        if need_target:
            raise ValueError("data: each batch must be an (input, target) pair for a loss, got a lone tensor")
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        if need_target and len(batch) < 2:
            raise ValueError("data: each batch must be an (input, target) pair for a loss")
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise TypeError(f"data: a batch must be a tensor or a (input, target, ...) tuple, got {type(batch).__name__}")


def batches(data: Iterable, need_target: bool = False, max_batches: int | None = None) -> Iterator[tuple]:
    """Yields (input, target) of each batch (target None where absent); raises if ``data`` yields nothing."""
    if isinstance(data, torch.Tensor) or (isinstance(data, tuple) and data and isinstance(data[0], torch.Tensor)):
        data = [data]  # one batch given directly
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    seen = 0
    for batch in data:
        yield _split(batch, need_target)
        seen += 1
        if max_batches is not None and seen >= max_batches:
            break
    if seen == 0:
        raise ValueError("data yielded no batches")


class eval_mode:
    """Context: the model in eval mode (no BN statistics update, no dropout), its own modes restored after."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        for module, training in self.modes:
            module.training = training
        return False
