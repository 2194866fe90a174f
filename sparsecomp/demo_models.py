"""The two models of ``sparsecomp demo`` and their training / evaluation on the built-in digits data.

Kept apart from the pipeline (demo.py) so that the same builders give the fresh dense skeleton a compressed
file is loaded into: same constructor, same module names, whatever the seed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .datasets import Split


def mlp(seed: int = 0) -> nn.Sequential:
    """64-300-100-10 with ReLU (LeNet-300-100's shape on 8x8 inputs): ~50k weights."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


def cnn(seed: int = 0) -> nn.Sequential:
    """conv 1->16, BN, ReLU, conv 16->32, BN, ReLU, 2x2 max-pool, linear 512->64, ReLU, linear 64->10 on 1x8x8."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


BUILDERS = {"mlp": (mlp, False), "cnn": (cnn, True)}  # name -> (builder, takes [N, 1, 8, 8] images)


def train(model: nn.Module, data: Split, epochs: int, lr: float, seed: int, batch_size: int = 64,
          progress: bool = True, desc: str = "train") -> None:
    """Adam on cross-entropy for ``epochs`` passes (a fresh seeded shuffle each pass)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        total, n = 0.0, 0
        for x, y in data.batches(batch_size, generator=gen):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            total, n = total + loss.item() * x.shape[0], n + x.shape[0]
        bar.set_postfix(loss=f"{total / n:.4f}", refresh=False)
    bar.close()
    model.eval()


@torch.no_grad()
def logits(model: nn.Module, data: Split) -> torch.Tensor:
    """The model's outputs on the whole split in eval mode (the model's own mode is restored)."""
    was = model.training
    model.eval()
    try:
        return model(data.x)
    finally:
        model.train(was)


def accuracy(model: nn.Module, data: Split) -> float:
    return (logits(model, data).argmax(1) == data.y).double().mean().item()
