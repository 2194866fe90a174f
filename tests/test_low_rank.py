"""LowRankLinear: rank chosen by kept energy on matrices with singular values set by construction, exactness at
full rank, the truncated-SVD optimum, reporting and errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsecomp.nn import LowRankLinear
from sparsecomp.nn.low_rank import choose_rank


def with_singular_values(s, out_f, in_f, gen) -> torch.Tensor:
    """A [out_f, in_f] float64 matrix Q1 diag(s) Q2^T with random orthonormal Q1, Q2: its singular values are s."""
    r = len(s)
    q1, _ = torch.linalg.qr(torch.randn(out_f, r, generator=gen, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(in_f, r, generator=gen, dtype=torch.float64))
    return q1 @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ q2.T


def linear_with(w: torch.Tensor, bias: bool = True, gen=None) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        if bias:
            lin.bias.copy_(torch.randn(w.shape[0], generator=gen, dtype=w.dtype))
    return lin


# s = 4, 3, 2, 1: squared 16, 9, 4, 1 of total 30, so rank r keeps 16/30, 25/30, 29/30, 1.
@pytest.mark.parametrize("energy, rank", [(0.1, 1), (16 / 30, 1), (0.54, 2), (25 / 30, 2), (0.85, 3),
                                          (29 / 30, 3), (0.97, 4), (1.0, 4)])
def test_rank_by_energy(energy, rank, gen):
    w = with_singular_values([4.0, 3.0, 2.0, 1.0], 12, 9, gen)
    m = LowRankLinear.from_dense(linear_with(w, gen=gen), energy=energy)
    assert m.rank == rank
    assert m.kept_energy == pytest.approx([16, 25, 29, 30][rank - 1] / 30, rel=1e-12)
    assert choose_rank(torch.tensor([4.0, 3.0, 2.0, 1.0]), energy) == rank


def test_energy_one_keeps_the_true_rank_of_a_rank_deficient_matrix(gen):
    w = with_singular_values([5.0, 2.0, 0.5], 20, 15, gen)  # rank 3, 12 (numerically) zero singular values
    assert LowRankLinear.from_dense(linear_with(w), energy=1.0).rank == 3


@pytest.mark.parametrize("bias", [True, False])
def test_full_rank_is_exact(bias, gen):
    lin = linear_with(torch.randn(7, 11, generator=gen, dtype=torch.float64), bias=bias, gen=gen)
    m = LowRankLinear.from_dense(lin, rank=7)
    x = torch.randn(5, 3, 11, generator=gen, dtype=torch.float64)  # leading dims pass through
    torch.testing.assert_close(m(x), lin(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.to_dense().weight, lin.weight, rtol=1e-12, atol=1e-12)
    assert m.kept_energy == pytest.approx(1.0)


def test_truncation_is_the_eckart_young_optimum(gen):
    s = [6.0, 4.0, 3.0, 1.5, 0.5]
    w = with_singular_values(s, 10, 8, gen)
    m = LowRankLinear.from_dense(linear_with(w, bias=False), rank=2)
    err = torch.linalg.matrix_norm(m.to_dense().weight - w)
    assert err.item() == pytest.approx((3.0 ** 2 + 1.5 ** 2 + 0.5 ** 2) ** 0.5, rel=1e-10)
    # No gradient-descent step from the factors lowers the error (a stationary point) ...
    u, v = m.U.detach().clone().requires_grad_(), m.V.detach().clone().requires_grad_()
    loss = (u @ v - w).square().sum()
    loss.backward()
    assert u.grad.abs().max() < 1e-10 and v.grad.abs().max() < 1e-10
    # ... and random rank-2 factors optimized from scratch do not beat it.
    a = torch.randn(10, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([a, b], lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        lo = (a @ b - w).square().sum()
        lo.backward()
        opt.step()
    assert lo.item() >= err.item() ** 2 * (1 - 1e-6)


def test_forward_is_two_gemms_in_float32(gen):
    lin = nn.Linear(33, 17)
    m = LowRankLinear.from_dense(lin, rank=5)
    x = torch.randn(4, 33, generator=gen)
    want = (x.double() @ m.V.double().T) @ m.U.double().T + m.bias.double()
    torch.testing.assert_close(m(x).double(), want, rtol=1e-5, atol=1e-5)
    assert m(x).dtype == torch.float32


def test_report_and_savings():
    m = LowRankLinear.from_dense(nn.Linear(100, 50), rank=10)
    assert m.num_parameters == 10 * (100 + 50) + 50
    assert m.dense_parameters == 100 * 50 + 50
    assert m.parameter_savings == pytest.approx(1 - 1550 / 5050)
    rep = m.report()
    assert rep["rank"] == 10 and rep["params_before"] == 5050 and rep["params_after"] == 1550
    assert 0 < rep["kept_energy"] < 1
    assert "rank=10" in repr(m) and "1550/5050" in repr(m)
    assert LowRankLinear.from_dense(nn.Linear(10, 10), rank=10).parameter_savings < 0  # full rank costs more


def test_training_updates_factors(gen):
    m = LowRankLinear(12, 6, 3)
    x = torch.randn(8, 12, generator=gen)
    m(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_default_init_scale_matches_nn_linear():
    torch.manual_seed(0)
    w = LowRankLinear(256, 256, 64).to_dense().weight
    ref = nn.Linear(256, 256).weight
    assert w.std().item() == pytest.approx(ref.std().item(), rel=0.1)


def test_state_dict_round_trip(gen):
    a = LowRankLinear.from_dense(nn.Linear(20, 8), rank=3)
    b = LowRankLinear(20, 8, 3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 20, generator=gen)
    assert torch.equal(a(x), b(x))
    with pytest.raises(RuntimeError, match="size mismatch"):
        LowRankLinear(20, 8, 4).load_state_dict(a.state_dict())


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(rank=0), ValueError, "rank must be"),
    (dict(rank=9), ValueError, "rank must be"),
    (dict(rank=2.0), ValueError, "rank must be"),
    (dict(energy=0.0), ValueError, "energy must be"),
    (dict(energy=1.5), ValueError, "energy must be"),
    (dict(energy=float("nan")), ValueError, "energy must be"),
])
def test_from_dense_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        LowRankLinear.from_dense(nn.Linear(20, 8), **kwargs)


def test_other_errors():
    with pytest.raises(TypeError, match="nn.Linear"):
        LowRankLinear.from_dense(nn.Conv2d(2, 2, 1))
    with pytest.raises(ValueError, match="rank must be"):
        LowRankLinear(4, 4, 5)
    with pytest.raises(ValueError, match="in_features"):
        LowRankLinear(0, 4, 1)
    with pytest.raises(ValueError, match="in_features=4"):
        LowRankLinear(4, 4, 2)(torch.randn(3, 5))
