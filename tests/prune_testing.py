"""Small models trained on the digits data set, shared by the pruning and convert tests (fixed seeds)."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from sparsecomp.datasets import digits


@functools.lru_cache(maxsize=None)
def data(images: bool = False):
    return digits(images=images)


def mlp(seed: int = 0, hidden: tuple[int, ...] = (48, 32)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers, width = [], 64
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, 10))


def cnn(seed: int = 0) -> nn.Sequential:
    """Conv-BN-ReLU-Conv-BN-ReLU-pool-flatten-Linear-ReLU-Linear on 1x8x8 digits."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
        nn.Conv2d(12, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))


def train(model: nn.Module, epochs: int = 1, lr: float = 1e-2, seed: int = 0, images: bool = False,
          optimizer: str = "adam", max_steps: int | None = None) -> nn.Module:
    tr, _ = data(images)
    steps = 0
    opt = (torch.optim.Adam(model.parameters(), lr=lr) if optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9))
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for x, y in tr.batches(64, generator=g):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            steps += 1
            if max_steps is not None and steps >= max_steps:
                return model
    return model


def accuracy(model: nn.Module, images: bool = False) -> float:
    _, te = data(images)
    was = model.training
    model.eval()
    with torch.no_grad():
        acc = (model(te.x).argmax(1) == te.y).double().mean().item()
    model.train(was)
    return acc
