"""`sparsecomp demo`: prune a model built here, convert it to sparse layers, show that outputs match and
what it gains per layer (measured time, stored bytes)."""
from __future__ import annotations

import time

import torch
from torch import nn

from .nn import SparseLinear


def ffn_model(width: int = 1024, hidden: int = 4096, seed: int = 0) -> nn.Sequential:
    """A transformer feed-forward block stack (the layer shapes where LLM/BERT weights live)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width), nn.ReLU(),
                         nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))


def prune_by_magnitude_(model: nn.Module, sparsity: float) -> None:
    """Zeroes the smallest-magnitude fraction of each Linear weight in place (per-layer magnitude pruning)."""
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                k = int(round(sparsity * layer.weight.numel()))
                if k:
                    threshold = layer.weight.abs().flatten().kthvalue(k).values
                    layer.weight[layer.weight.abs() <= threshold] = 0.0


def median_ms(fn, x, repeats: int = 30) -> float:
    with torch.no_grad():
        for _ in range(3):
            fn(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def to_sparse(model: nn.Sequential) -> nn.Sequential:
    return nn.Sequential(*[SparseLinear.from_dense(m) if isinstance(m, nn.Linear) else m for m in model])


def run(sparsity: float = 0.9, batch: int = 1, repeats: int = 30) -> dict:
    dense = ffn_model().eval()
    prune_by_magnitude_(dense, sparsity)
    sparse = to_sparse(dense).eval()
    x = torch.randn(batch, dense[0].in_features)
    with torch.no_grad():
        ref, out = dense(x), sparse(x)
    err = (out - ref).abs().max().item()
    match = torch.allclose(out, ref, rtol=1e-4, atol=1e-4)
    print(f"sparsecomp demo: {len(dense)}-layer FFN stack pruned to {sparsity:.0%} per layer, batch {batch}, "
          f"{torch.get_num_threads()} threads")
    print(f"outputs match dense: {match} (max abs diff {err:.2e})\n")
    header = f"{'layer':<6}{'shape':>12}{'sparsity':>10}{'dense ms':>10}{'sparse ms':>11}{'speedup':>9}" \
             f"{'dense KiB':>11}{'sparse KiB':>12}{'saved':>8}"
    print(header)
    print("-" * len(header))
    rows, h = [], x
    total_dense_ms = total_sparse_ms = 0.0
    for i, (d, s) in enumerate(zip(dense, sparse)):
        if isinstance(d, nn.Linear):
            dense_ms, sparse_ms = median_ms(d, h, repeats), median_ms(s, h, repeats)
            dense_bytes = d.weight.numel() * d.weight.element_size()
            sparse_bytes = s.sparse_nbytes()
            total_dense_ms += dense_ms
            total_sparse_ms += sparse_ms
            rows.append(dict(layer=i, shape=tuple(d.weight.shape), sparsity=s.sparsity, dense_ms=dense_ms,
                             sparse_ms=sparse_ms, dense_bytes=dense_bytes, sparse_bytes=sparse_bytes))
            print(f"{i:<6}{'x'.join(map(str, d.weight.shape)):>12}{s.sparsity:>10.1%}{dense_ms:>10.3f}"
                  f"{sparse_ms:>11.3f}{dense_ms / sparse_ms:>8.2f}x{dense_bytes / 1024:>11.0f}"
                  f"{sparse_bytes / 1024:>12.0f}{1 - sparse_bytes / dense_bytes:>8.0%}")
        with torch.no_grad():
            h = d(h)
    print(f"\nall layers: dense {total_dense_ms:.3f} ms, sparse {total_sparse_ms:.3f} ms, "
          f"speedup {total_dense_ms / total_sparse_ms:.2f}x")
    return dict(match=match, max_abs_diff=err, layers=rows)
