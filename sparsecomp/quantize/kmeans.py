"""Exact 1-D k-means (Lloyd) for weight clustering.

Why sorting makes it cheap: in one dimension the nearest-centroid partition of sorted data is a set of
contiguous ranges split at the midpoints between sorted centroids. With the data sorted once and its prefix
sums taken (float64), one Lloyd iteration is a ``searchsorted`` of the k-1 midpoints (O(k log n)) plus k
gathers of prefix sums for the new means, instead of O(n k) distances. The final assignment of the weights in
their original order is one more ``searchsorted`` of every weight among the midpoints (O(n log k)).

Ties go right: a value exactly on a midpoint joins the upper cluster, both while iterating and in the final
assignment, so the returned indices are exactly the partition whose means the codebook holds.
"""
from __future__ import annotations

from typing import Callable

import torch

INITS = ("linear", "density", "random")
_CHUNK_ELEMS = 1 << 21  # per-channel rows are clustered in chunks of about this many float64 values


def kmeans(weight: torch.Tensor, bits: int, per_channel: bool = False, init: str = "linear", iters: int = 100,
           seed: int = 0, zero_code: bool | None = None, history: list[float] | None = None,
           progress: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clusters ``weight`` into ``2**bits`` values; returns ``(codebook, indices)``.

    ``codebook`` is float32 ``[2**bits]`` (one table for the tensor) or ``[rows, 2**bits]`` with
    ``per_channel`` (one table per output row = first dim; the other dims are flattened). ``indices`` is int64
    with ``weight``'s shape and ``codebook[indices]`` (or ``codebook.gather(1, indices)``) is the clustered weight.

    ``init``: ``"linear"`` (centroids evenly spaced between min and max; Deep Compression found it best, since it
    keeps the rare large weights), ``"density"`` (evenly spaced in the CDF) or ``"random"`` (data points drawn
    with ``seed``). ``zero_code`` (default: whether ``weight`` has exact zeros) reserves code 0 for the value
    0.0 and clusters only the nonzeros into the other ``2**bits - 1`` codes, so pruned weights stay exactly zero.
    Empty clusters are re-seeded on the point farthest from its centroid, so all clusters are used whenever the
    data has enough distinct values. Iteration stops when the partition no longer changes (the centroids are
    then the means of their members) or after ``iters`` iterations. ``history``, if given, receives the inertia
    (sum of squared distances to the assigned centroid, over all rows) before each update; it never increases.
    ``progress`` (e.g. ``tqdm``) wraps the iteration over row chunks of a per-channel clustering.
    """
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError(f"weight must be a floating-point tensor, got {getattr(weight, 'dtype', type(weight))}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if weight.dim() == 0 or (per_channel and weight.dim() < 2):
        raise ValueError(f"weight must be at least {'2' if per_channel else '1'}-D, got shape {tuple(weight.shape)}")
    w = weight.detach()
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weight has NaN or Inf entries; k-means needs finite values")
    if zero_code is None:
        zero_code = bool((w == 0).any())
    k = (1 << bits) - (1 if zero_code else 0)
    rows = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
    gen = torch.Generator().manual_seed(seed)
    # Rows are clustered in chunks to bound memory; with `history` in one go, so that it is one inertia sequence.
    step = rows.shape[0] if history is not None else max(1, _CHUNK_ELEMS // max(1, rows.shape[1]))
    starts = range(0, rows.shape[0], step)
    if progress is not None:
        starts = progress(starts)
    books, idxs = [], []
    for r0 in starts:
        cent, idx = _cluster_rows(rows[r0:r0 + step].to(torch.float64).cpu(), k, zero_code, init, iters, gen, history)
        books.append(cent)
        idxs.append(idx)
    codebook = torch.cat(books).to(torch.float32)
    indices = torch.cat(idxs)
    if zero_code:
        codebook = torch.cat([torch.zeros(codebook.shape[0], 1), codebook], dim=1)
    codebook = codebook.to(weight.device)
    indices = indices.reshape(weight.shape).to(weight.device)
    return (codebook if per_channel else codebook[0]), indices


def _cluster_rows(data: torch.Tensor, k: int, zero_code: bool, init: str, iters: int, gen: torch.Generator,
                  history: list[float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clusters each row of float64 ``data`` [R, n] on its own; returns (centroids [R, k], indices [R, n])."""
    valid = data != 0 if zero_code else torch.ones_like(data, dtype=torch.bool)
    counts = valid.sum(1)
    # Invalid entries (zeros under zero_code) sort to the end as +inf and are cut off by `counts`.
    srt = torch.where(valid, data, torch.full_like(data, float("inf"))).sort(dim=1).values
    finite = torch.where(valid.sum(1, keepdim=True) > torch.arange(data.shape[1]), srt, torch.zeros_like(srt))
    zero_col = torch.zeros(data.shape[0], 1, dtype=torch.float64)
    s1 = torch.cat([zero_col, finite.cumsum(1)], 1)
    s2 = torch.cat([zero_col, finite.square().cumsum(1)], 1) if history is not None else None
    cent = _init(srt, counts, k, init, gen)
    prev_edges = None
    for _ in range(iters):
        edges = _edges(srt, counts, cent)
        lo, hi = edges[:, :-1], edges[:, 1:]
        n = (hi - lo).to(torch.float64)
        sums = s1.gather(1, hi) - s1.gather(1, lo)
        if s2 is not None:
            sq = s2.gather(1, hi) - s2.gather(1, lo)
            history.append(float((sq - 2 * cent * sums + n * cent.square()).sum()))
        if prev_edges is not None and torch.equal(edges, prev_edges):
            break  # partition unchanged: cent are already the means of their members
        cent = torch.where(n > 0, sums / n.clamp_min(1), cent)
        cent = _reseed_empty(srt, counts, cent, lo, hi, n).sort(dim=1).values
        prev_edges = edges
    bounds = (cent[:, 1:] + cent[:, :-1]) / 2
    idx = torch.searchsorted(bounds.contiguous(), data.contiguous(), right=True)
    if zero_code:
        idx = torch.where(valid, idx + 1, torch.zeros_like(idx))
    return cent, idx


def _edges(srt: torch.Tensor, counts: torch.Tensor, cent: torch.Tensor) -> torch.Tensor:
    """[R, k+1] range boundaries of the nearest-centroid partition (ties go to the upper cluster)."""
    bounds = ((cent[:, 1:] + cent[:, :-1]) / 2).contiguous()
    split = torch.searchsorted(srt, bounds, right=False)  # values < bound stay left
    split = torch.minimum(split, counts.unsqueeze(1))
    return torch.cat([torch.zeros_like(counts).unsqueeze(1), split, counts.unsqueeze(1)], 1)


def _init(srt: torch.Tensor, counts: torch.Tensor, k: int, init: str, gen: torch.Generator) -> torch.Tensor:
    rows = srt.shape[0]
    last = (counts - 1).clamp_min(0).unsqueeze(1)
    has = (counts > 0).unsqueeze(1)
    lo = torch.where(has, srt[:, :1], torch.zeros(rows, 1, dtype=torch.float64))
    hi = torch.where(has, srt.gather(1, last), torch.zeros(rows, 1, dtype=torch.float64))
    if init == "linear":
        cent = lo + (hi - lo) * torch.linspace(0, 1, k, dtype=torch.float64)
    elif init == "density":  # evenly spaced ranks = evenly spaced in the empirical CDF
        ranks = (torch.linspace(0, 1, k, dtype=torch.float64) * last.to(torch.float64)).round().long()
        cent = torch.where(has, srt.gather(1, ranks), torch.zeros(rows, k, dtype=torch.float64))
    else:  # random data points (Forgy)
        pick = (torch.rand(rows, k, generator=gen, dtype=torch.float64) * counts.unsqueeze(1)).long()
        pick = torch.minimum(pick, last)
        cent = torch.where(has, srt.gather(1, pick), torch.zeros(rows, k, dtype=torch.float64))
    return cent.sort(dim=1).values


def _reseed_empty(srt, counts, cent, lo, hi, n) -> torch.Tensor:
    """Moves one empty cluster per row onto the point farthest from its centroid (if that distance is > 0).

    The farthest member of a contiguous range is one of its two end points. Inertia cannot grow: that point
    now sits on a centroid and every other point keeps its own.
    """
    empty = n == 0
    rows_with = empty.any(1) & (counts > 0)
    if not bool(rows_with.any()):
        return cent
    r = rows_with.nonzero().squeeze(1)
    s, c, l, h, nn = srt[r], cent[r], lo[r], hi[r], n[r]
    first = s.gather(1, l.clamp_max(s.shape[1] - 1))
    lastv = s.gather(1, (h - 1).clamp_min(0))
    err = torch.stack([(first - c).square(), (lastv - c).square()], 2)  # [r, k, 2]
    err = torch.where((nn > 0).unsqueeze(2), err, torch.full_like(err, -1.0))
    best = err.reshape(len(r), -1).argmax(1)
    best_err = err.reshape(len(r), -1).gather(1, best.unsqueeze(1)).squeeze(1)
    cluster, end = best // 2, best % 2
    pick = cluster.unsqueeze(1)
    value = torch.where(end.unsqueeze(1) == 0, first.gather(1, pick), lastv.gather(1, pick))
    target = empty[r].to(torch.int64).argmax(1)  # first empty cluster
    ok = best_err > 0
    c = c.clone()
    c[ok, target[ok]] = value.squeeze(1)[ok]
    out = cent.clone()
    out[r] = c
    return out
