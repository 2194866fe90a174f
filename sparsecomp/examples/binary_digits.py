"""A binary CNN on the scikit-learn digits (8x8), next to the same network in float.

The first conv and the classifier stay in float (as in XNOR-Net / Bi-Real: binarizing the raw pixels and the
logits costs the most accuracy for the least saving); the two middle convs are BinaryConv2d (1-bit weights and
1-bit activations), each followed by BatchNorm. Both models train with Adam for a fixed number of epochs; the
binary model is then evaluated in eval mode, i.e. on the packed bits and the popcount kernels.

    python -m sparsecomp.examples.binary_digits [--epochs N] [--seed S]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..datasets import Split, digits
from ..nn import BinaryConv2d


def build_model(binary: bool) -> nn.Sequential:
    """float conv 1->32, [binary] conv 32->64 + BN, pool, [binary] conv 64->64 + BN, pool, float linear."""
    def conv(cin: int, cout: int) -> nn.Module:
        if binary:
            return BinaryConv2d(cin, cout, 3, padding=1, bias=False)
        return nn.Conv2d(cin, cout, 3, padding=1, bias=False)

    # The binary convs binarize their own input (sign), which is their nonlinearity; the float twin uses ReLU.
    act = nn.Identity if binary else nn.ReLU
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), act(),
        conv(32, 64), nn.BatchNorm2d(64), act(), nn.MaxPool2d(2),  # 8x8 -> 4x4
        conv(64, 64), nn.BatchNorm2d(64), act(), nn.MaxPool2d(2),  # 4x4 -> 2x2
        nn.Flatten(), nn.Linear(64 * 2 * 2, 10),
    )


def train(model: nn.Module, data: Split, epochs: int, lr: float, seed: int, batch_size: int = 64) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)  # latent binary weights are clipped by a step hook
    model.train()
    for _ in range(epochs):
        for x, y in data.batches(batch_size, generator=gen):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()


@torch.no_grad()
def accuracy(model: nn.Module, data: Split) -> float:
    model.eval()  # binary layers: packed bits + popcount kernels from here on
    return (model(data.x).argmax(1) == data.y).float().mean().item()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights as stored for inference (packed bits + alpha for binary layers)."""
    total = 0
    for m in model.modules():
        if isinstance(m, BinaryConv2d):
            total += m.weight_memory_bytes()
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            total += m.weight.numel() * m.weight.element_size()
    return total


def run(epochs: int = 6, seed: int = 0, lr: float = 3e-3, threads: int | None = 1, verbose: bool = False) -> dict:
    """Trains both models from the same seed; returns their test accuracies, weight bytes and times.

    ``threads=1`` by default: with 64-sample batches of 8x8 images every op is tiny, and on a busy machine the
    synchronisation of several threads costs far more than it saves (measured: ~3x slower with 2 threads on a
    loaded 2-core box). ``None`` keeps torch's setting.
    """
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        train_split, test_split = digits(images=True)
        results = {}
        for kind in ("float", "binary"):
            torch.manual_seed(seed)
            model = build_model(binary=kind == "binary")
            start = time.perf_counter()
            train(model, train_split, epochs, lr, seed)
            seconds = time.perf_counter() - start
            results[kind] = dict(accuracy=accuracy(model, test_split), weight_bytes=weight_bytes(model),
                                 train_seconds=seconds)
            if verbose:
                r = results[kind]
                print(f"{kind:>6}: test accuracy {r['accuracy']:.3f}, conv/linear weights {r['weight_bytes']} B, "
                      f"trained {epochs} epochs in {seconds:.1f} s")
    finally:
        torch.set_num_threads(previous_threads)
    return {"binary_accuracy": results["binary"]["accuracy"], "float_accuracy": results["float"]["accuracy"],
            "details": results}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    out = run(epochs=args.epochs, seed=args.seed, verbose=True)
    print(f"binary accuracy {out['binary_accuracy']:.3f} vs float {out['float_accuracy']:.3f} "
          f"(gap {100 * (out['float_accuracy'] - out['binary_accuracy']):.1f} points)")
    return out


if __name__ == "__main__":
    main()
