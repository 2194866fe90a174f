"""sparsecomp.nn.BinaryLinear / BinaryConv2d (and formats.packed_bits) against the float64 XNOR-Net formula.

Reference: ``y = act(alpha[o] * conv2d(s(x), sgn(W)) + b[o])`` computed in float64 with torch's own conv on
+-1 tensors, ``sgn(v) = +1 for v >= 0 else -1`` (so sign(0) = sign(-0.0) = +1), ``alpha[o] = mean|W[o]|`` of
the latent weight in float64, ``s = sgn`` or the identity (BinaryConnect). Inputs and weights contain exact
zeros. Both paths are checked: training mode (float ops + straight-through estimators) and eval mode (packed
bits on the C++ kernels).
"""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsecomp.ops
from sparsecomp.formats.packed_bits import (binary_alpha, pack_signs, packed_shape, unpack_signs, unpack_weight,
                                            validate_packed)
from sparsecomp.nn import BinaryConv2d, BinaryLinear
from sparsecomp.nn._binary_ste import clip_latent_, sign_input, sign_weight

REL = 1e-5  # float outputs within 1e-5 relative of the float64 reference (scaled by the sum of |terms|)


def sgn64(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0).to(torch.float64)


def with_zeros(t: torch.Tensor, gen: torch.Generator, frac: float = 0.15) -> torch.Tensor:
    """``t`` with a fraction of its entries set to exactly 0 and as many to -0.0 (both mean +1)."""
    r = torch.rand(t.shape, generator=gen)
    t = torch.where(r < frac, torch.zeros_like(t), t)
    return torch.where(r > 1 - frac, torch.full_like(t, -0.0), t)


def assert_matches(y: torch.Tensor, ref: torch.Tensor, mag: torch.Tensor, what: str = "output") -> None:
    """|y - ref| <= REL * mag elementwise, mag = |alpha| * sum|terms| + |b| (the size of what was summed)."""
    assert y.shape == ref.shape, f"{what}: shape {tuple(y.shape)} != reference {tuple(ref.shape)}"
    assert bool(torch.isfinite(y).all()), f"{what}: non-finite values"
    err = (y.double() - ref).abs()
    tol = REL * mag + 1e-30
    bad = err > tol
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())}/{bad.numel()} elements off; first at {idx}: got "
                             f"{y[idx].item()!r}, expected {ref[idx].item()!r}")


def ref_conv(x, w, bias, stride, padding, dilation, groups, binarize_input=True, padding_mode="zeros",
             activation="none", alpha=None):
    """(float64 reference output, magnitude for the tolerance)."""
    alpha = w.double().abs().flatten(1).mean(1) if alpha is None else alpha.double()
    xs = sgn64(x) if binarize_input else x.double()
    if padding_mode == "ones":
        xs = F.pad(xs, (padding[1], padding[1], padding[0], padding[0]), value=1.0)
        padding = (0, 0)
    conv = F.conv2d(xs, sgn64(w), None, stride, padding, dilation, groups)
    mag = F.conv2d(xs.abs(), torch.ones_like(w, dtype=torch.float64), None, stride, padding, dilation, groups)
    y = conv * alpha.view(1, -1, 1, 1)
    mag = mag * alpha.abs().view(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.double().view(1, -1, 1, 1)
        mag = mag + bias.double().abs().view(1, -1, 1, 1)
    return (y.relu() if activation == "relu" else y), mag


def ref_linear(x, w, bias, binarize_input=True, activation="none", alpha=None):
    alpha = w.double().abs().mean(1) if alpha is None else alpha.double()
    xs = sgn64(x) if binarize_input else x.double()
    y = (xs @ sgn64(w).T) * alpha
    mag = (xs.abs() @ torch.ones_like(w, dtype=torch.float64).T) * alpha.abs()
    if bias is not None:
        y, mag = y + bias.double(), mag + bias.double().abs()
    return (y.relu() if activation == "relu" else y), mag


def make_conv(gen, cin, cout, k, bias=True, **kw) -> BinaryConv2d:
    m = BinaryConv2d(cin, cout, k, bias=bias, **kw)
    with torch.no_grad():
        m.weight.copy_(with_zeros(torch.rand(m.weight.shape, generator=gen) * 2 - 1, gen))
        if bias:
            m.bias.copy_(torch.randn(cout, generator=gen))
    return m


def make_linear(gen, k, o, bias=True, **kw) -> BinaryLinear:
    m = BinaryLinear(k, o, bias=bias, **kw)
    with torch.no_grad():
        m.weight.copy_(with_zeros(torch.rand(o, k, generator=gen) * 2 - 1, gen))
        if bias:
            m.bias.copy_(torch.randn(o, generator=gen))
    return m


# ============================================================================================ packed_bits

@pytest.mark.parametrize("shape", [(3, 1), (4, 63), (2, 64), (5, 65), (3, 200), (4, 70, 3, 2), (2, 1, 1, 1),
                                   (3, 129, 1, 3)], ids=str)
def test_pack_unpack_round_trip(shape, gen):
    w = with_zeros(torch.randn(shape, generator=gen), gen)
    bits = pack_signs(w)
    assert bits.dtype == torch.int64 and tuple(bits.shape) == packed_shape(shape)
    validate_packed(bits, shape)  # tail bits are zero
    signs = unpack_signs(bits, shape)
    assert signs.shape == w.shape and torch.equal(signs.double(), sgn64(w))
    alpha = binary_alpha(w)
    torch.testing.assert_close(unpack_weight(bits, alpha, shape), sgn64(w).float() * alpha.view(-1, *[1] * (w.dim() - 1)))


def test_pack_layout_is_documented_one():
    # linear: bit i of word j = element 64 j + i; conv: the [O, C, kh, kw] weight is packed as [O, kh, kw, C]
    w = -torch.ones(1, 130)
    w[0, [0, 5, 63, 64, 129]] = 1.0
    bits = pack_signs(w)
    assert bits.tolist() == [[1 + 2**5 - 2**63, 1, 2**1]]  # bit 63 is the int64 sign bit
    c = -torch.ones(1, 3, 1, 2)
    c[0, 2, 0, 1] = 0.0  # channel 2 of tap (0, 1)
    assert pack_signs(c).tolist() == [[[[0], [1 << 2]]]]


def test_pack_sign_edge_values():
    w = torch.tensor([[0.0, -0.0, -1e-300, 1e-300, float("nan"), float("inf"), -float("inf")]], dtype=torch.float64)
    assert unpack_signs(pack_signs(w), w.shape).tolist() == [[1, 1, -1, 1, -1, 1, -1]]


def test_validate_packed_errors():
    shape = (3, 70)
    good = pack_signs(torch.randn(shape))
    with pytest.raises(TypeError, match=r"weight_bits must be int64 \(packed sign bits\), got torch.int32"):
        validate_packed(good.int(), shape)
    with pytest.raises(ValueError, match=r"must have shape \(3, 2\) for a weight of shape \(3, 70\), got \(3, 1\)"):
        validate_packed(good[:, :1], shape)
    for bit in (6, 40, 63):
        bad = good.clone()
        bad[1, 1] |= torch.tensor(1, dtype=torch.int64) << bit
        with pytest.raises(ValueError, match=r"nonzero tail bits past element 70"):
            validate_packed(bad, shape)
    ok = good.clone()
    ok[1, 1] |= 1 << 5  # element 69: a used bit
    validate_packed(ok, shape)
    with pytest.raises(TypeError, match="floating-point"):
        pack_signs(torch.ones(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"2-D \[O, K\] or 4-D"):
        pack_signs(torch.ones(2, 3, 4))


# ============================================================================================ STE

@pytest.mark.parametrize("fn", [sign_weight, sign_input], ids=["weight", "input"])
def test_ste_gradient(fn, gen):
    v = torch.tensor([-3.0, -1.0001, -1.0, -0.5, -0.0, 0.0, 1e-8, 0.7, 1.0, 1.0001, 2.5], dtype=torch.float64)
    v = torch.cat([v, torch.randn(200, generator=gen, dtype=torch.float64) * 1.5])
    x = v.clone().requires_grad_()
    y = fn(x)
    assert torch.equal(y.detach(), sgn64(v))
    g = torch.randn(v.shape, generator=gen, dtype=torch.float64)
    y.backward(g)
    inside = v.abs() <= 1
    assert torch.equal(x.grad[inside], g[inside])
    assert torch.equal(x.grad[~inside], torch.zeros(int((~inside).sum()), dtype=torch.float64))
    assert int(inside.sum()) > 20 and int((~inside).sum()) > 20
    # an infinite upstream gradient outside the window still gives an exact 0 (where, not a multiply)
    x2 = torch.tensor([2.0, 0.5], requires_grad=True)
    fn(x2).backward(torch.tensor([float("inf"), 1.0]))
    assert x2.grad.tolist() == [0.0, 1.0]


def test_linear_module_gradients_are_straight_through(gen):
    m = make_linear(gen, 70, 6)
    with torch.no_grad():  # latent weights beyond the clip range (as right after a hand-made update)
        m.weight[0, :10] = 1.5
        m.weight[1, :10] = -2.0
    x = (torch.randn(5, 70, generator=gen) * 1.5).requires_grad_()
    g = torch.randn(5, 6, generator=gen)
    m(x).backward(g)
    w = m.weight.detach()
    alpha = w.double().abs().mean(1)  # no gradient flows through alpha
    g_sign_w = (g.double() * alpha).T @ sgn64(x.detach())
    expected_w = torch.where(w.abs() <= 1, g_sign_w, torch.zeros_like(g_sign_w))
    torch.testing.assert_close(m.weight.grad.double(), expected_w, rtol=1e-5, atol=1e-5)
    assert torch.equal(m.weight.grad[w.abs() > 1], torch.zeros(20))
    g_sign_x = (g.double() * alpha) @ sgn64(w)
    expected_x = torch.where(x.detach().abs() <= 1, g_sign_x, torch.zeros_like(g_sign_x))
    torch.testing.assert_close(x.grad.double(), expected_x, rtol=1e-5, atol=1e-5)
    assert bool((x.grad[x.detach().abs() > 1] == 0).all())
    torch.testing.assert_close(m.bias.grad, g.sum(0))


def test_conv_module_gradients_are_straight_through(gen):
    m = make_conv(gen, 5, 4, 3, padding=1, stride=2)
    with torch.no_grad():
        m.weight[0, 0] = 1.25
    x = (torch.randn(2, 5, 7, 6, generator=gen) * 1.5).requires_grad_()
    g = torch.randn(2, 4, 4, 3, generator=gen)
    m(x).backward(g)
    w = m.weight.detach()
    alpha = w.double().abs().flatten(1).mean(1)
    gs = g.double() * alpha.view(1, -1, 1, 1)
    gw = torch.nn.grad.conv2d_weight(sgn64(x.detach()), w.shape, gs, stride=2, padding=1)
    torch.testing.assert_close(m.weight.grad.double(), torch.where(w.abs() <= 1, gw, torch.zeros_like(gw)),
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(m.weight.grad[0, 0], torch.zeros(3, 3))
    gx = torch.nn.grad.conv2d_input(x.shape, sgn64(w), gs, stride=2, padding=1)
    torch.testing.assert_close(x.grad.double(), torch.where(x.detach().abs() <= 1, gx, torch.zeros_like(gx)),
                               rtol=1e-5, atol=1e-5)


# ============================================================================================ clipping

@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9),
    lambda p: torch.optim.Adam(p, lr=0.3),
    lambda p: torch.optim.AdamW(p, lr=0.3, foreach=False),
    lambda p: torch.optim.RMSprop(p, lr=0.3),
], ids=["sgd", "adam", "adamw", "rmsprop"])
def test_latent_weights_stay_clipped_with_any_optimizer(make_opt, gen):
    conv = make_conv(gen, 3, 8, 3, padding=1)
    lin = make_linear(gen, 8 * 5 * 5, 4, binarize_input=False)
    control = nn.Linear(4, 4)  # an ordinary float parameter beyond 1 must NOT be clipped
    with torch.no_grad():
        control.weight.fill_(3.0)
    model = nn.Sequential(conv, nn.Flatten(), lin, nn.Tanh(), control)
    # the control sits in the same optimizer (the hook sees it) with lr=0, so only a wrong clip could move it
    opt = make_opt([{"params": [*conv.parameters(), *lin.parameters()]},
                    {"params": control.parameters(), "lr": 0.0}])
    x = torch.randn(6, 3, 5, 5, generator=gen)
    target = torch.randn(6, 4, generator=gen)
    for _ in range(6):
        opt.zero_grad()
        F.mse_loss(model(x), target).backward()
        opt.step()
        for m in (conv, lin):
            w = m.weight.detach()
            assert bool(torch.isfinite(w).all()) and float(w.abs().max()) <= 1.0
    for m in (conv, lin):  # the clip was active: some weights sit exactly on the bound
        assert bool((m.weight.detach().abs() == 1).any())
    assert torch.equal(control.weight.detach(), torch.full((4, 4), 3.0))


def test_clip_after_manual_update(gen):
    m = make_linear(gen, 9, 3)
    m(torch.randn(4, 9, generator=gen)).sum().backward()
    with torch.no_grad():
        m.weight -= 100 * m.weight.grad  # a hand-written update: no optimizer hook sees it
    assert float(m.weight.detach().abs().max()) > 1
    assert m.clip_() is m
    assert float(m.weight.detach().abs().max()) == 1.0
    w = torch.tensor([-3.0, 0.5, 2.0])
    assert clip_latent_(w).tolist() == [-1.0, 0.5, 1.0]


# ============================================================================================ BinaryConv2d

# (cin, cout, kernel, stride, padding, dilation, groups, padding_mode, binarize_input, activation, N, H, W)
CONV_CASES = [
    (1, 3, 3, 1, 1, 1, 1, "zeros", True, "none", 3, 7, 5),
    (3, 4, 1, 2, 0, 1, 1, "zeros", True, "relu", 1, 9, 9),
    (31, 6, 3, 2, 2, 2, 1, "zeros", True, "none", 3, 11, 7),
    (33, 5, 5, 1, 2, 1, 1, "zeros", True, "none", 1, 9, 11),
    (63, 4, (3, 5), (2, 1), (1, 2), 1, 1, "zeros", True, "relu", 2, 7, 9),
    (65, 6, 3, 1, 1, 2, 1, "zeros", False, "none", 2, 7, 9),
    (130, 4, 3, 2, 1, 1, 2, "zeros", True, "none", 3, 7, 7),
    (128, 6, 3, 1, 1, 1, 2, "ones", True, "none", 2, 5, 5),
    (129, 3, 1, 1, 0, 1, 1, "zeros", True, "none", 1, 3, 5),
    (64, 8, 3, 1, "same", 2, 4, "zeros", True, "none", 1, 9, 7),
    (6, 6, 3, 1, 1, 1, 6, "ones", True, "relu", 2, 5, 7),
    (34, 4, 3, 2, 1, 1, 2, "zeros", False, "relu", 3, 6, 6),
]


def conv_case_id(c):
    return f"c{c[0]}o{c[1]}k{c[2]}s{c[3]}p{c[4]}d{c[5]}g{c[6]}-{c[7]}-{'xnor' if c[8] else 'bc'}-{c[9]}-n{c[10]}"


@pytest.mark.parametrize("case", CONV_CASES, ids=conv_case_id)
def test_conv_matches_reference_train_and_eval(case, gen):
    cin, cout, k, s, p, d, g, pm, bi, act, n, h, w_ = case
    m = make_conv(gen, cin, cout, k, stride=s, padding=p, dilation=d, groups=g, padding_mode=pm,
                  binarize_input=bi, activation=act)
    x = with_zeros(torch.randn(n, cin, h, w_, generator=gen), gen)
    ref, mag = ref_conv(x, m.weight.detach(), m.bias.detach(), m.stride, m._pad, m.dilation, g, bi, pm, act)
    with torch.no_grad():
        y_train = m(x)
        m.eval()
        y_eval = m(x)
    assert_matches(y_train, ref, mag, "train mode")
    assert_matches(y_eval, ref, mag, "eval mode")
    if bi:  # +-1 products are exact integers: both paths agree to rounding, the count is the float conv count
        torch.testing.assert_close(y_eval, y_train, rtol=1e-6, atol=1e-6)
        alpha = m.alpha.double().view(1, -1, 1, 1)
        count = F.conv2d(F.pad(sgn64(x), (m._pad[1],) * 2 + (m._pad[0],) * 2, value=1.0) if pm == "ones"
                         else sgn64(x), sgn64(m.weight.detach()), None, m.stride, 0 if pm == "ones" else m._pad,
                         m.dilation, g)
        if act == "none":
            got = torch.round((y_eval.double() - m.bias.double().view(1, -1, 1, 1)) / alpha)
            assert torch.equal(got, count)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_conv_channels_last_and_unbatched(mode, gen):
    m = make_conv(gen, 70, 8, 3, padding=1, stride=2)
    m.train(mode == "train")
    x = torch.randn(3, 70, 9, 7, generator=gen)
    ref, mag = ref_conv(x, m.weight.detach(), m.bias.detach(), (2, 2), (1, 1), (1, 1), 1)
    with torch.no_grad():
        y_cl = m(x.contiguous(memory_format=torch.channels_last))
        assert y_cl.is_contiguous(memory_format=torch.channels_last)
        assert_matches(y_cl, ref, mag, "channels_last")
        y_nchw = m(x)
        assert y_nchw.is_contiguous()
        assert torch.equal(y_cl, y_nchw)
        y1 = m(x[1])
        assert y1.shape == (8, 5, 4)
        assert torch.equal(y1, y_nchw[1])
        y_strided = m(x.transpose(2, 3).contiguous().transpose(2, 3))  # neither NCHW- nor NHWC-contiguous
        assert_matches(y_strided, ref, mag, "strided")


def test_conv_eval_uses_the_packed_kernel(gen, monkeypatch):
    m = make_conv(gen, 5, 4, 3, padding=1).eval()
    calls = []
    real = sparsecomp.ops.binary_conv2d
    monkeypatch.setattr(sparsecomp.ops, "binary_conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        m(torch.randn(1, 5, 6, 6, generator=gen))
    assert calls == [1]
    m.train()
    with torch.no_grad():
        m(torch.randn(1, 5, 6, 6, generator=gen))
    assert calls == [1]


def test_conv_constructor_errors():
    with pytest.raises(ValueError, match=r"must be divisible by groups=2"):
        BinaryConv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match=r"must be divisible by groups=2"):
        BinaryConv2d(4, 3, 3, groups=2)
    with pytest.raises(ValueError, match=r"padding_mode must be 'zeros' or 'ones', got 'reflect'"):
        BinaryConv2d(4, 3, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match=r"padding_mode='ones' needs binarize_input=True"):
        BinaryConv2d(4, 3, 3, padding_mode="ones", binarize_input=False)
    with pytest.raises(ValueError, match=r"stride must be >= 1"):
        BinaryConv2d(4, 3, 3, stride=0)
    with pytest.raises(ValueError, match=r"padding must be >= 0"):
        BinaryConv2d(4, 3, 3, padding=-1)
    with pytest.raises(ValueError, match=r"padding='same' needs stride 1"):
        BinaryConv2d(4, 3, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match=r"padding='same' would be asymmetric"):
        BinaryConv2d(4, 3, 2, padding="same")
    with pytest.raises(ValueError, match=r"activation must be None, 'none' or 'relu', got 'gelu'"):
        BinaryConv2d(4, 3, 3, activation="gelu")
    assert BinaryConv2d(4, 3, 3, padding="valid")._pad == (0, 0)


def test_conv_forward_shape_errors(gen):
    m = make_conv(gen, 4, 3, 3)
    for mode in (True, False):
        m.train(mode)
        with pytest.raises(ValueError, match=r"input must be \[N, 4, H, W\] or \[4, H, W\], got shape \(2, 5, 6, 6\)"):
            m(torch.randn(2, 5, 6, 6))
        with pytest.raises(ValueError, match=r"got shape \(6, 6\)"):
            m(torch.randn(6, 6))


# ============================================================================================ BinaryLinear

@pytest.mark.parametrize("k", [1, 63, 64, 65, 130])
@pytest.mark.parametrize("lead", [(), (5,), (2, 3)], ids=lambda s: "x".join(map(str, s)) or "1d")
def test_linear_matches_reference_train_and_eval(k, lead, gen):
    for bi, act, bias in ((True, "none", True), (False, "relu", True), (True, "relu", False)):
        m = make_linear(gen, k, 7, bias=bias, binarize_input=bi, activation=act)
        x = with_zeros(torch.randn(*lead, k, generator=gen), gen)
        ref, mag = ref_linear(x.reshape(-1, k), m.weight.detach(), m.bias.detach() if bias else None, bi, act)
        with torch.no_grad():
            y_train = m(x)
            m.eval()
            y_eval = m(x)
        for y, what in ((y_train, "train"), (y_eval, "eval")):
            assert y.shape == (*lead, 7), what
            assert_matches(y.reshape(-1, 7), ref, mag, f"{what} bi={bi} act={act} bias={bias}")
        if bi:  # exact integer sums on both paths (BinaryConnect sums reals in another order)
            torch.testing.assert_close(y_eval, y_train, rtol=1e-6, atol=1e-6)


def test_linear_empty_batch(gen):
    m = make_linear(gen, 10, 3).eval()
    with torch.no_grad():
        assert m(torch.randn(0, 10)).shape == (0, 3)
        assert m(torch.randn(2, 0, 10)).shape == (2, 0, 3)


def test_linear_forward_shape_errors(gen):
    m = make_linear(gen, 6, 3)
    for mode in (True, False):
        m.train(mode)
        with pytest.raises(ValueError, match=r"input must end with in_features=6, got shape \(2, 5\)"):
            m(torch.randn(2, 5))
        with pytest.raises(ValueError, match=r"in_features=6"):
            m(torch.tensor(1.0))


def test_linear_eval_uses_the_packed_kernel(gen, monkeypatch):
    m = make_linear(gen, 5, 4).eval()
    calls = []
    real = sparsecomp.ops.binary_linear
    monkeypatch.setattr(sparsecomp.ops, "binary_linear", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        m(torch.randn(2, 3, 5, generator=gen))
    assert calls == [1]


# ============================================================================================ from_float

@pytest.mark.parametrize("with_bn,activation,conv_bias", [(False, None, True), (True, None, False),
                                                          (True, "relu", True), (False, "relu", False)])
def test_conv_from_float(with_bn, activation, conv_bias, gen):
    conv = nn.Conv2d(70, 6, 3, stride=2, padding=1, bias=conv_bias)
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        conv.weight.copy_(with_zeros(conv.weight, gen))
        bn.running_mean.copy_(torch.randn(6, generator=gen))
        bn.running_var.copy_(torch.rand(6, generator=gen) + 0.1)
        bn.weight.copy_(torch.randn(6, generator=gen))
        bn.weight[0] = -abs(bn.weight[0])  # a negative gain flips the sign of alpha
        bn.bias.copy_(torch.randn(6, generator=gen))
    bn.eval()
    m = BinaryConv2d.from_float(conv, bn=bn if with_bn else None, activation=activation)
    assert m.weight.data_ptr() != conv.weight.data_ptr() and torch.equal(m.weight, conv.weight)
    assert (m.bias is not None) == (conv_bias or with_bn)
    x = with_zeros(torch.randn(2, 70, 7, 9, generator=gen), gen)
    w = conv.weight.detach()
    ref, mag = ref_conv(x, w, conv.bias.detach() if conv_bias else None, (2, 2), (1, 1), (1, 1), 1)
    if with_bn:
        gain = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        ref = (ref - bn.running_mean.double().view(1, -1, 1, 1)) * gain.view(1, -1, 1, 1) + bn.bias.double().view(
            1, -1, 1, 1)
        mag = mag * gain.abs().view(1, -1, 1, 1) + (bn.running_mean.double() * gain).abs().view(1, -1, 1, 1) + \
            bn.bias.double().abs().view(1, -1, 1, 1)
        assert bool(m.alpha[0] < 0) and torch.equal(m.alpha < 0, gain < 0)
    if activation == "relu":
        ref = ref.relu()
    with torch.no_grad():
        y_train = m(x)
        y_eval = m.eval()(x)
    assert_matches(y_eval, ref, mag, "eval")
    assert_matches(y_train, ref, mag, "train")
    keys = {"weight_bits", "alpha"} | ({"bias"} if m.bias is not None else set()) | ({"scale"} if with_bn else set())
    assert set(m.state_dict()) == keys


def test_linear_from_float_with_bn(gen):
    lin = nn.Linear(100, 5)
    bn = nn.BatchNorm1d(5, affine=False).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(5, generator=gen))
        bn.running_var.copy_(torch.rand(5, generator=gen) + 0.5)
    m = BinaryLinear.from_float(lin, bn=bn, activation="relu", binarize_input=False).eval()
    x = torch.randn(4, 100, generator=gen)
    ref, mag = ref_linear(x, lin.weight.detach(), lin.bias.detach(), binarize_input=False)
    gain = 1 / torch.sqrt(bn.running_var.double() + bn.eps)
    ref = ((ref - bn.running_mean.double()) * gain).relu()
    mag = mag * gain + (bn.running_mean.double() * gain).abs()
    with torch.no_grad():
        assert_matches(m(x), ref, mag)
    plain = BinaryLinear.from_float(lin).eval()
    ref, mag = ref_linear(x, lin.weight.detach(), lin.bias.detach())
    with torch.no_grad():
        assert_matches(plain(x), ref, mag)


def test_from_float_errors():
    with pytest.raises(TypeError, match=r"conv must be an nn.Conv2d, got Linear"):
        BinaryConv2d.from_float(nn.Linear(3, 3))
    with pytest.raises(TypeError, match=r"linear must be an nn.Linear, got Conv2d"):
        BinaryLinear.from_float(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match=r"conv.padding_mode='reflect' is not supported"):
        BinaryConv2d.from_float(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(TypeError, match=r"bn must be an nn.BatchNorm2d or None, got BatchNorm1d"):
        BinaryConv2d.from_float(nn.Conv2d(3, 4, 3), bn=nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match=r"bn.num_features=5 does not match the layer's 4 outputs"):
        BinaryConv2d.from_float(nn.Conv2d(3, 4, 3), bn=nn.BatchNorm2d(5))
    with pytest.raises(ValueError, match=r"no running statistics"):
        BinaryLinear.from_float(nn.Linear(3, 4), bn=nn.BatchNorm1d(4, track_running_stats=False))
    with pytest.raises(ValueError, match=r"activation must be None, 'none' or 'relu', got 'tanh'"):
        BinaryLinear.from_float(nn.Linear(3, 4), activation="tanh")


# ============================================================================================ sync, state_dict

def test_packed_weights_follow_the_latent_weights(gen):
    m = make_conv(gen, 9, 4, 3, padding=1)
    x = torch.randn(2, 9, 5, 5, generator=gen)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        m(x).square().sum().backward()
        opt.step()
    with torch.no_grad():
        y_train = m(x)
        y_eval = m.eval()(x)
    torch.testing.assert_close(y_eval, y_train, rtol=1e-6, atol=1e-6)
    assert torch.equal(m.weight_bits, pack_signs(m.weight))
    # an in-place edit while in eval mode is seen by the next forward
    with torch.no_grad():
        m.weight.neg_()
        ref, mag = ref_conv(x, m.weight.detach(), m.bias.detach(), (1, 1), (1, 1), (1, 1), 1)
        assert_matches(m(x), ref, mag, "after in-place edit")
    # and state_dict() taken in training mode right after a step holds the current signs
    m.train()
    opt.zero_grad()
    m(x).sum().backward()
    opt.step()
    sd = m.state_dict()
    assert torch.equal(sd["weight_bits"], pack_signs(m.weight))
    torch.testing.assert_close(sd["alpha"], binary_alpha(m.weight))


def clone_sd(sd):
    return {k: v.clone() for k, v in sd.items()}


@pytest.mark.parametrize("keep_latent", [False, True])
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_state_dict_round_trip(kind, keep_latent, gen):
    if kind == "conv":
        src = make_conv(gen, 70, 6, 3, padding=1, groups=2, keep_latent=keep_latent)
        dst = BinaryConv2d(70, 6, 3, padding=1, groups=2)
        x = torch.randn(2, 70, 5, 4, generator=gen)
    else:
        src = make_linear(gen, 130, 6, keep_latent=keep_latent)
        dst = BinaryLinear(130, 6)
        x = torch.randn(3, 130, generator=gen)
    sd = src.state_dict()
    assert set(sd) == {"weight_bits", "alpha", "bias"} | ({"weight"} if keep_latent else set())
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    dst.load_state_dict(torch.load(buf, weights_only=True))
    for key, value in sd.items():
        assert torch.equal(dst.state_dict(keep_vars=True)[key] if key != "weight" else dst.weight, value), key
    src.eval(), dst.eval()
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))
    if keep_latent:
        assert isinstance(dst.weight, nn.Parameter) and torch.equal(dst.weight, src.weight)
        dst.train()
        with torch.no_grad():
            torch.testing.assert_close(dst(x), src.train()(x), rtol=0, atol=0)
        return
    # without latent weights: frozen signs, still usable in training mode (gradients reach input and bias)
    assert dst.weight is None and [n for n, _ in dst.named_parameters()] == ["bias"]
    dst.train()
    xg = x.clone().requires_grad_()
    y_frozen = dst(xg)
    y_frozen.sum().backward()
    assert xg.grad is not None and dst.bias.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(y_frozen.detach(), src(x), rtol=1e-6, atol=1e-6)
    # init_latent_() makes the signs trainable again without changing the function
    dst.init_latent_()
    assert isinstance(dst.weight, nn.Parameter) and torch.equal(dst.weight.abs(), torch.ones_like(dst.weight))
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=1e-6, atol=1e-6)
        assert torch.equal(dst.eval()(x), src(x))


def test_latent_weights_come_and_go_with_the_checkpoint(gen):
    src = make_linear(gen, 70, 4, keep_latent=True)
    dst = BinaryLinear(70, 4)
    dst.load_state_dict(BinaryLinear(70, 4).state_dict())  # packed only: the latent weight is dropped
    assert dst.weight is None
    dst.load_state_dict(src.state_dict())  # with latent: re-created, trainable and clipped by optimizers
    assert isinstance(dst.weight, nn.Parameter) and torch.equal(dst.weight, src.weight)
    opt = torch.optim.SGD(dst.parameters(), lr=100.0)
    dst(torch.randn(3, 70, generator=gen)).sum().backward()
    opt.step()
    assert float(dst.weight.detach().abs().max()) == 1.0
    dst.reset_parameters()
    assert dst.weight is not None and float(dst.weight.detach().abs().max()) < 1.0


def test_state_dict_with_folded_bn_round_trip(gen):
    conv = nn.Conv2d(5, 4, 3, padding=1)
    bn = nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([-1.0, 0.5, 2.0, -0.1]))
        bn.running_var.copy_(torch.rand(4, generator=gen) + 0.1)
    src = BinaryConv2d.from_float(conv, bn=bn, keep_latent=True)
    dst = BinaryConv2d(5, 4, 3, padding=1)
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst.scale, src.scale)
    x = torch.randn(2, 5, 6, 6, generator=gen)
    with torch.no_grad():
        assert torch.equal(dst.eval()(x), src.eval()(x))
        torch.testing.assert_close(dst.train()(x), src(x), rtol=1e-6, atol=1e-6)
    # and a plain checkpoint loaded over it drops the scale again
    dst.load_state_dict(BinaryConv2d(5, 4, 3, padding=1).state_dict())
    assert dst.scale is None and dst.weight is None


def _set_tail_bit(sd):
    sd["weight_bits"][0, -1] |= 1 << 10  # in_features = 70: bits 6..63 of the last word are tail
    return sd


def _with(key, value):
    def fn(sd):
        sd[key] = value(sd[key]) if callable(value) else value
        return sd
    return fn


def _drop(key):
    def fn(sd):
        del sd[key]
        return sd
    return fn


CORRUPTIONS = {
    "bits_shape": (_with("weight_bits", lambda t: t[:, :1].clone()), r"weight_bits must have shape \(6, 2\)"),
    "bits_rows": (_with("weight_bits", lambda t: t[:-1].clone()), r"weight_bits must have shape \(6, 2\)"),
    "bits_int32": (_with("weight_bits", lambda t: t.int()), r"weight_bits must be int64 \(packed sign bits\), got "
                                                            r"torch.int32"),
    "bits_float": (_with("weight_bits", lambda t: t.double()), r"weight_bits must be int64"),
    "tail_bits": (_set_tail_bit, r"weight_bits has nonzero tail bits past element 70"),
    "alpha_shape": (_with("alpha", lambda t: t[:-1].clone()), r"alpha must have shape \(6,\), got \(5,\)"),
    "alpha_int": (_with("alpha", lambda t: t.long()), r"alpha must be a floating-point tensor, got torch.int64"),
    "bias_shape": (_with("bias", lambda t: t.view(2, 3).clone()), r"bias must have shape \(6,\), got \(2, 3\)"),
    "latent_shape": (_with("weight", lambda t: t[:, :-1].clone()), r"weight \(latent\) must have shape \(6, 70\)"),
    "latent_signs": (_with("weight", lambda t: -t), r"weight_bits do not match the signs of the latent weight"),
    "not_a_tensor": (_with("alpha", [1.0] * 6), r"alpha must be a tensor, got list"),
    "missing_alpha": (_drop("alpha"), r'Missing key\(s\) in state_dict: "alpha"'),
    "unexpected": (lambda sd: {**sd, "extra": torch.zeros(1)}, r'Unexpected key\(s\) in state_dict: "extra"'),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_state_dict_rejected_and_module_unchanged(case, gen):
    src = make_linear(gen, 70, 6, keep_latent=True)
    dst = make_linear(gen, 70, 6, keep_latent=True)
    before = clone_sd(dst.state_dict())
    weight_before = dst.weight
    fn, pattern = CORRUPTIONS[case]
    bad = fn(clone_sd(src.state_dict()))
    with pytest.raises(RuntimeError, match=pattern):
        dst.load_state_dict(bad)
    assert dst.weight is weight_before
    after = dst.state_dict()
    assert set(after) == set(before)
    for key in before:
        assert torch.equal(after[key], before[key]), key
    x = torch.randn(3, 70, generator=gen)
    with torch.no_grad():
        ref, mag = ref_linear(x, dst.weight.detach(), dst.bias.detach())
        assert_matches(dst.eval()(x), ref, mag)


def test_state_dict_bias_mismatch_rejected(gen):
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "bias"'):
        BinaryConv2d(4, 3, 3, bias=False).load_state_dict(BinaryConv2d(4, 3, 3).state_dict())
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "bias"'):
        BinaryConv2d(4, 3, 3).load_state_dict(BinaryConv2d(4, 3, 3, bias=False).state_dict())
    # non-strict: an incomplete entry set is reported and skipped as a whole (never half a packed weight)
    dst = make_conv(gen, 4, 3, 3)
    before = clone_sd(dst.state_dict())
    result = dst.load_state_dict(make_conv(gen, 4, 3, 3, bias=False).state_dict(), strict=False)
    assert result.missing_keys == ["bias"] and result.unexpected_keys == []
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in before.items()) and dst.weight is not None


def test_state_dict_inside_a_model(gen):
    model = nn.Sequential(make_conv(gen, 3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Flatten(),
                          make_linear(gen, 8 * 4 * 4, 5))
    model.eval()
    sd = model.state_dict()
    assert {"0.weight_bits", "0.alpha", "3.weight_bits", "3.alpha", "3.bias"} <= set(sd)
    assert "0.weight" not in sd and "3.weight" not in sd
    fresh = nn.Sequential(BinaryConv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Flatten(),
                          BinaryLinear(8 * 4 * 4, 5)).eval()
    fresh.load_state_dict(sd)
    x = torch.randn(2, 3, 4, 4, generator=gen)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    bad = clone_sd(sd)
    bad["3.alpha"] = bad["3.alpha"][:2]
    with pytest.raises(RuntimeError, match=r"3: alpha must have shape \(5,\), got \(2,\)"):
        fresh.load_state_dict(bad)


# ============================================================================================ misc

def test_torch_compile_fullgraph_eval(gen):
    torch._dynamo.reset()
    model = nn.Sequential(make_conv(gen, 5, 8, 3, padding=1), make_conv(gen, 8, 8, 3, stride=2, groups=2,
                                                                         padding_mode="ones", padding=1),
                          nn.Flatten(), make_linear(gen, 8 * 3 * 3, 4, activation="relu")).eval()
    x = torch.randn(2, 5, 6, 6, generator=gen)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    assert torch.equal(compiled, eager)
    torch._dynamo.reset()


def test_weight_memory_is_32x_smaller():
    m = BinaryConv2d(256, 256, 3, padding=1)
    fp32 = 256 * 256 * 3 * 3 * 4
    assert m.float_weight_bytes() == fp32
    assert m.weight_memory_bytes() == 256 * 3 * 3 * 4 * 8 + 256 * 4
    assert fp32 / m.weight_memory_bytes() >= 31
    # what is saved: packed bits + alpha + bias vs the float layer's weight + bias
    saved = sum(t.numel() * t.element_size() for t in m.state_dict().values())
    dense = sum(t.numel() * t.element_size() for t in nn.Conv2d(256, 256, 3).state_dict().values())
    assert dense / saved >= 31
    assert "31.6x smaller than fp32" in repr(m)
    assert "latent=yes" in repr(m) and "keep_latent=False" in repr(m)
