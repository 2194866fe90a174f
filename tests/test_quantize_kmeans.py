"""1-D k-means: Lloyd's fixed point, monotone inertia, cluster usage, zeros kept, determinism, a wide per-channel layer."""
from __future__ import annotations

import pytest
import torch

from sparsecomp.quantize import kmeans
from sparsecomp.quantize.kmeans import INITS


def _assign_ok(w, cb, idx):
    """Every weight sits at a nearest codebook entry (float64 distances, tolerance for midpoint ties)."""
    d = (w.double().unsqueeze(-1) - cb.double()).abs()
    mine = d.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    assert bool((mine <= d.min(-1).values + 1e-6).all())


def _member_means(w, cb, idx):
    for j in range(cb.shape[-1]):
        members = w[idx == j]
        if members.numel():
            torch.testing.assert_close(cb[j].double(), members.double().mean(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_converged_centroids_are_member_means(init, bits, gen):
    w = torch.randn(40, 50, generator=gen) * torch.rand(40, 1, generator=gen)
    cb, idx = kmeans(w, bits, init=init, iters=500, seed=3)
    assert cb.shape == (1 << bits,) and cb.dtype == torch.float32 and idx.shape == w.shape
    _member_means(w, cb, idx)
    _assign_ok(w, cb, idx)
    # all clusters used: 2000 distinct values are plenty
    assert torch.bincount(idx.flatten(), minlength=1 << bits).min() > 0


@pytest.mark.parametrize("init", INITS)
def test_inertia_never_increases(init, gen):
    w = torch.cat([torch.randn(3000, generator=gen), 8 + 0.1 * torch.randn(20, generator=gen)])  # a far outlier clump
    hist: list[float] = []
    kmeans(w, 4, init=init, iters=200, seed=1, history=hist)
    assert len(hist) >= 2
    assert all(b <= a * (1 + 1e-12) + 1e-12 for a, b in zip(hist, hist[1:])), hist


def test_inertia_matches_direct_computation(gen):
    w = torch.randn(500, generator=gen)
    hist: list[float] = []
    cb, idx = kmeans(w, 3, iters=300, history=hist)
    direct = (w.double() - cb.double()[idx]).square().sum().item()
    assert abs(hist[-1] - direct) <= 1e-4 * direct  # float32 codebook vs float64 history


def test_empty_clusters_are_reseeded(gen):
    # Linear init on data with a huge gap leaves most centroids empty at first.
    w = torch.cat([torch.rand(500, generator=gen), 1000 + torch.rand(3, generator=gen)])
    cb, idx = kmeans(w, 3, init="linear", iters=300)
    assert torch.bincount(idx, minlength=8).min() > 0
    _member_means(w, cb, idx)


def test_fewer_distinct_values_than_clusters():
    w = torch.tensor([1.0, 1.0, 2.0, 2.0, 5.0])
    cb, idx = kmeans(w, 3)
    assert torch.equal(cb[idx], w)  # exact representation; unused entries are harmless


@pytest.mark.parametrize("per_channel", [False, True])
def test_zero_code_keeps_zeros_and_clusters_nonzeros(per_channel, gen):
    w = torch.randn(30, 40, generator=gen)
    w[torch.rand(30, 40, generator=gen) < 0.8] = 0
    w[3] = 0  # an all-zero row
    cb, idx = kmeans(w, 3, per_channel=per_channel)
    deq = cb[idx] if not per_channel else cb.gather(1, idx)
    assert torch.equal(deq == 0, w == 0)  # zeros exact, and no nonzero collapses to 0
    assert bool((idx[w == 0] == 0).all()) and bool((cb[..., 0] == 0).all())
    if not per_channel:
        nz = w != 0
        _member_means(torch.where(nz, w, torch.nan)[nz], cb, idx[nz])


def test_one_bit_with_zero_code_is_zero_or_mean(gen):
    w = torch.randn(20, generator=gen)
    w[::3] = 0
    cb, idx = kmeans(w, 1, zero_code=True)
    nz = w != 0
    assert cb[0] == 0 and torch.equal(idx, nz.long())
    torch.testing.assert_close(cb[1].double(), w[nz].double().mean())


def test_per_channel_rows_are_independent(gen):
    w = torch.randn(6, 64, generator=gen) * torch.arange(1, 7).unsqueeze(1)
    cb, idx = kmeans(w, 2, per_channel=True, iters=300)
    assert cb.shape == (6, 4)
    for r in range(6):
        cb_r, idx_r = kmeans(w[r], 2, iters=300)
        torch.testing.assert_close(cb[r], cb_r)
        assert torch.equal(idx[r], idx_r)
        _member_means(w[r], cb[r], idx[r])


def test_deterministic_with_seed(gen):
    w = torch.randn(2000, generator=gen)
    a = kmeans(w, 4, init="random", seed=5, iters=3)
    b = kmeans(w, 4, init="random", seed=5, iters=3)
    c = kmeans(w, 4, init="random", seed=6, iters=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_better_than_uniform_quantization(gen):
    w = torch.randn(5000, generator=gen)
    cb, idx = kmeans(w, 3)
    uni = torch.linspace(float(w.min()), float(w.max()), 8)
    err_uni = (w.unsqueeze(1) - uni).abs().min(1).values.square().sum()
    assert (w - cb[idx]).square().sum() < err_uni


@pytest.mark.parametrize("bad, err", [
    (dict(bits=0), ValueError), (dict(bits=9), ValueError), (dict(init="kmeans++"), ValueError),
    (dict(weight=torch.tensor([1, 2])), TypeError), (dict(weight=torch.tensor([1.0, float("nan")])), ValueError),
    (dict(per_channel=True, weight=torch.randn(5)), ValueError), (dict(iters=0), ValueError),
])
def test_errors(bad, err):
    args = dict(weight=torch.randn(10), bits=2)
    args.update(bad)
    with pytest.raises(err):
        kmeans(**args)


def test_per_channel_large_layer(gen):
    # A wide layer through the vectorized per-row path (its speed is measured in bench/test_bench_kmeans.py, never
    # asserted here): every weight is nearest-assigned within its own row's codebook, and Lloyd's iterations beat
    # the linear initialization they start from on every row.
    w = torch.randn(256, 4096, generator=gen) * torch.rand(256, 1, generator=gen)
    cb, idx = kmeans(w, 4, per_channel=True)
    assert cb.shape == (256, 16) and idx.shape == w.shape
    for row in (0, 97, 255):
        _assign_ok(w[row], cb[row], idx[row])
    start = torch.stack([torch.linspace(float(r.min()), float(r.max()), 16) for r in w]).double()
    start_inertia = (w.double().unsqueeze(-1) - start.unsqueeze(1)).abs().min(-1).values.pow(2).sum(1)
    inertia = (w.double() - cb.double().gather(1, idx)).pow(2).sum(1)
    assert bool((inertia < start_inertia).all())
