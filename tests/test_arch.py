"""arch.separable / arch.low_rank: which layers are replaced, the least-squares fit (checked against its
optimality conditions and against optimization from scratch), and report numbers against hand counts."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsecomp as sc
from sparsecomp.arch import fit_separable
from sparsecomp.nn import DepthwiseSeparableConv2d, LowRankLinear


class MyConv(nn.Conv2d):
    """A user subclass: may compute something else, so it is never replaced."""


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),               # 0: in_channels 3 < min_channels 8 -> kept
        nn.Conv2d(16, 32, 3, padding=1),              # 1: replaced
        nn.ReLU(),
        nn.Conv2d(32, 32, 1),                         # 3: 1x1 -> kept
        nn.Conv2d(32, 32, 3, padding=1, groups=2),    # 4: grouped -> kept
        nn.Conv2d(32, 32, 3, padding=2, dilation=2),  # 5: dilated -> kept
        nn.Conv2d(32, 24, 5, stride=2, padding=2, bias=False),  # 6: replaced (8x8 -> 4x4)
        MyConv(24, 24, 3, padding=1),                 # 7: subclass -> kept
        nn.Conv2d(24, 24, 3, padding="same"),         # 8: in skip -> kept
        nn.Conv2d(24, 24, 4, padding=1),              # 9: kernel 4 -> kept
    )


def test_separable_replaces_the_right_layers():
    model = net()
    x = torch.randn(2, 3, 8, 8)
    new, rep = sc.arch.separable(model, skip=("8",), example_inputs=x, report=False)
    replaced = [n for n, m in new.named_modules() if isinstance(m, DepthwiseSeparableConv2d)]
    assert replaced == ["1", "6"]
    assert type(model[1]) is nn.Conv2d  # the original is untouched (deep copy)
    assert new[6].stride == 2 and new[6].padding == (2, 2) and new[6].pw_bias is None and new[1].pw_bias is not None
    kinds = {r.name: r.kind for r in rep.layers}
    assert kinds["0"].startswith("kept: in_channels=3") and kinds["3"].startswith("kept: kernel 1x1")
    assert kinds["4"] == "kept: groups=2" and kinds["5"].startswith("kept: dilation")
    assert kinds["8"] == "kept: in skip" and kinds["9"].startswith("kept: kernel 4x4") and "7" not in kinds
    assert new(x).shape == model(x).shape
    same, _ = sc.arch.separable(model, inplace=True, report=False)
    assert same is model and isinstance(model[1], DepthwiseSeparableConv2d)


def test_report_numbers_equal_hand_counts(capsys):
    new, rep = sc.arch.separable(net(), skip=("8",), example_inputs=torch.randn(1, 3, 8, 8))
    r1, r6 = (next(r for r in rep.layers if r.name == n) for n in ("1", "6"))
    # layer 1: 16 -> 32, 3x3, bias, 8x8 output. Before 16*32*9 + 32; after 16*9 + 32*16 + 32.
    assert (r1.params_before, r1.params_after) == (4640, 688)
    assert (r1.flops_before, r1.flops_after) == (2 * 32 * 16 * 9 * 64, 2 * (16 * 9 + 32 * 16) * 64)
    # layer 6: 32 -> 24, 5x5, stride 2, no bias, 4x4 output.
    assert (r6.params_before, r6.params_after) == (32 * 24 * 25, 32 * 25 + 24 * 32)
    assert (r6.flops_before, r6.flops_after) == (2 * 24 * 32 * 25 * 16, 2 * (32 * 25 + 24 * 32) * 16)
    assert r6.params_after == sum(p.numel() for p in new[6].parameters())
    t = rep.totals()
    assert t["layers"] == 2 and t["params_before"] == 4640 + 19200 and t["params_after"] == 688 + 1568
    out = capsys.readouterr().out
    assert "conv -> separable" in out and "total (replaced)" in out and "6.74x" in out  # 4640 / 688
    _, rep2 = sc.arch.separable(net(), report=False)
    assert rep2.layers[1].flops_before is None and rep2.totals()["flops_before"] is None


def test_fit_is_the_per_channel_rank1_least_squares_optimum(gen):
    w = torch.randn(6, 4, 3, 3, generator=gen, dtype=torch.float64)
    dw, pw, residual = fit_separable(w)
    assert dw.shape == (4, 1, 3, 3) and pw.shape == (6, 4, 1, 1)
    w_sep = pw * dw.view(1, 4, 3, 3)
    loss = (w_sep - w).square().sum()
    assert residual.item() == pytest.approx(loss.item(), rel=1e-10)
    # Stationary point: the gradient of ||pw (x) dw - W||^2 vanishes at the fit ...
    d, p = dw.clone().requires_grad_(), pw.clone().requires_grad_()
    (p * d.view(1, 4, 3, 3) - w).square().sum().backward()
    assert d.grad.abs().max() < 1e-9 and p.grad.abs().max() < 1e-9
    # ... and it is the global minimum: optimization of random factors from several starts does not beat it.
    for _ in range(3):
        a = torch.randn(6, 4, 1, 1, generator=gen, dtype=torch.float64, requires_grad=True)
        b = torch.randn(4, 1, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([a, b], lr=0.05)
        for _ in range(500):
            opt.zero_grad()
            lo = (a * b.view(1, 4, 3, 3) - w).square().sum()
            lo.backward()
            opt.step()
        assert lo.item() >= loss.item() * (1 - 1e-6)
    # Brute force per channel: the best p for any d is W_c d / |d|^2, so the optimum is the best d on the
    # unit sphere; random directions never do better than the fitted one.
    for c in range(4):
        m = w[:, c].reshape(6, 9)
        dirs = torch.randn(20000, 9, generator=gen, dtype=torch.float64)
        dirs = dirs / dirs.norm(dim=1, keepdim=True)
        best_dir_err = (m.square().sum() - (m @ dirs.T).square().sum(0)).min()
        fit_err = (m - pw[:, c, 0, 0, None] * dw[c].reshape(1, 9)).square().sum()
        assert fit_err <= best_dir_err + 1e-12


def test_fit_recovers_an_exactly_separable_kernel(gen):
    pw = torch.randn(5, 3, 1, 1, generator=gen, dtype=torch.float64)
    dw = torch.randn(3, 1, 5, 5, generator=gen, dtype=torch.float64)
    w = pw * dw.view(1, 3, 5, 5)
    fdw, fpw, residual = fit_separable(w)
    assert residual.item() < 1e-20
    torch.testing.assert_close(fpw * fdw.view(1, 3, 5, 5), w, rtol=1e-12, atol=1e-12)


def test_fit_init_beats_fresh_init(gen):
    model = net().double()
    x = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)
    fit, _ = sc.arch.separable(model, report=False)
    fresh, _ = sc.arch.separable(model, init="fresh", report=False)
    for layer in ("1", "6"):
        w = model[int(layer)].weight
        err = {}
        for name, m in (("fit", fit), ("fresh", fresh)):
            sep = m[int(layer)]
            err[name] = (sep.pw_weight * sep.dw_weight.permute(1, 0, 2, 3) - w).square().sum().item()
        assert err["fit"] < err["fresh"], (layer, err)
    # The fitted layer is exactly the conv with the fitted kernel: same stride, padding and bias.
    sep, conv = fit[1].eval(), model[1]
    w_sep = sep.pw_weight * sep.dw_weight.permute(1, 0, 2, 3)
    h = torch.randn(2, 16, 8, 8, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(sep(h), F.conv2d(h, w_sep, conv.bias, 1, 1), rtol=1e-10, atol=1e-10)
        out = {k: (m(x) - model(x)).square().mean().item() for k, m in (("fit", fit), ("fresh", fresh))}
    assert out["fit"] < out["fresh"]


def test_separable_then_distillation_runs():
    teacher = net()
    student, _ = sc.arch.separable(teacher, report=False)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))
    teacher, student = nn.Sequential(teacher, head), nn.Sequential(student, head)
    opt = torch.optim.Adam(student.parameters(), 1e-3)
    d = sc.distill.Distiller(student, teacher, opt, progress=False)
    x = torch.randn(8, 3, 8, 8)
    stats = d.step(x)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values() if isinstance(v, float))


def test_separable_errors():
    with pytest.raises(ValueError, match="init must be"):
        sc.arch.separable(net(), init="random", report=False)
    with pytest.raises(ValueError, match="skip names modules the model does not have"):
        sc.arch.separable(net(), skip=("nope",), report=False)
    with pytest.raises(ValueError, match="min_channels"):
        sc.arch.separable(net(), min_channels=0, report=False)
    with pytest.raises(TypeError, match="nn.Module"):
        sc.arch.separable("model", report=False)
    with pytest.raises(ValueError, match="weight must be"):
        fit_separable(torch.randn(3, 3, 3, 5))


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 100), nn.ReLU(), nn.Linear(100, 10))


def test_low_rank_replaces_and_reports(capsys):
    model = mlp()
    x = torch.randn(5, 64)
    new, rep = sc.arch.low_rank(model, rank=8, example_inputs=x)
    assert isinstance(new[0], LowRankLinear) and isinstance(new[2], LowRankLinear) and type(new[4]) is nn.Linear
    assert type(model[0]) is nn.Linear
    r0, r2, r4 = rep.layers
    assert (r0.params_before, r0.params_after) == (64 * 128 + 128, 8 * (64 + 128) + 128)
    assert (r0.flops_before, r0.flops_after) == (2 * 5 * 64 * 128, 2 * 5 * 8 * (64 + 128))
    assert (r2.params_before, r2.params_after) == (128 * 100 + 100, 8 * 228 + 100)
    assert r4.kind.startswith("kept: min(in, out)=10")
    assert "linear -> low-rank" in capsys.readouterr().out
    assert new(x).shape == (5, 10)


def test_low_rank_keeps_layers_that_would_not_shrink(gen):
    model = nn.Sequential(nn.Linear(32, 32))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(32, 32, generator=gen))  # energy spread: 0.99 needs a high rank
    new, rep = sc.arch.low_rank(model, energy=0.99, report=False)
    assert type(new[0]) is nn.Linear and "saves nothing" in rep.layers[0].kind
    new, rep = sc.arch.low_rank(model, energy=0.3, report=False)
    assert isinstance(new[0], LowRankLinear) and new[0].kept_energy >= 0.3


def test_low_rank_errors():
    with pytest.raises(ValueError, match="energy must be"):
        sc.arch.low_rank(mlp(), energy=2.0, report=False)
    with pytest.raises(ValueError, match="min_features"):
        sc.arch.low_rank(mlp(), min_features=0, report=False)
    with pytest.raises(ValueError, match="skip names"):
        sc.arch.low_rank(mlp(), skip="9", report=False)
    with pytest.raises(ValueError, match="rank must be"):
        sc.arch.low_rank(mlp(), rank=0, report=False)


def test_low_rank_skips_layers_narrower_than_the_rank():
    new, rep = sc.arch.low_rank(mlp(), rank=10, min_features=1, report=False)
    assert type(new[4]) is nn.Linear and rep.layers[2].kind == "kept: rank 10 >= min(in, out)=10"
    assert isinstance(new[0], LowRankLinear) and new[0].rank == 10
