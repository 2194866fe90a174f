"""DepthwiseSeparableConv2d: both computation paths against a float64 torch reference (conv2d(groups=C) -> BN ->
act -> conv2d 1x1 -> BN -> act written out here), BN folding, from_modules validation, state_dict, compile,
training, and which path runs when."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsecomp.nn import DepthwiseSeparableConv2d
from sparsecomp.nn import separable as separable_mod

ACTS = {"none": lambda t: t, "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish}


def randomize_bn(bn: nn.BatchNorm2d, gen: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters, so that folding them is actually exercised."""
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=gen))
        bn.running_var.copy_(torch.rand(c, generator=gen) * 2 + 0.25)
        if bn.weight is not None:
            bn.weight.copy_(torch.randn(c, generator=gen))
            bn.bias.copy_(torch.randn(c, generator=gen))


def make(c, o, k, stride, padding, gen, dtype=torch.float32, fused="auto", **kw) -> DepthwiseSeparableConv2d:
    m = DepthwiseSeparableConv2d(c, o, k, stride, padding, fused=fused, dtype=dtype, **kw)
    with torch.no_grad():
        for p in m.parameters():  # O(1) weights so that activations' thresholds (0, +-3, 6) are all crossed
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    for bn in (m.bn, m.pw_bn):
        if bn is not None:
            randomize_bn(bn, gen)
    return m.eval()


def bn_eval(y, bn):
    s = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        s = s * bn.weight.double()
    y = (y - bn.running_mean.double().view(1, -1, 1, 1)) * s.view(1, -1, 1, 1)
    return y + bn.bias.double().view(1, -1, 1, 1) if bn.bias is not None else y


def reference(m: DepthwiseSeparableConv2d, x: torch.Tensor, absolute: bool = False) -> torch.Tensor:
    """float64 ``act(pw_bn(pw(mid_act(bn(dw(x))))))`` with BNs at running statistics. ``absolute``: the same sums
    of absolute values with no activation (a scale for the rounding error bound)."""
    d = (lambda t: t.double().abs()) if absolute else (lambda t: t.double())
    opt = lambda t: None if t is None else d(t)  # noqa: E731
    y = F.conv2d(d(x), d(m.dw_weight), opt(m.dw_bias), m.stride, m.padding, 1, m.in_channels)
    if m.bn is not None:
        y = bn_eval(y, m.bn).abs() if absolute else bn_eval(y, m.bn)
    y = y if absolute else ACTS[m.mid_activation](y)
    y = F.conv2d(y, d(m.pw_weight), opt(m.pw_bias))
    if m.pw_bn is not None:
        y = bn_eval(y, m.pw_bn).abs() if absolute else bn_eval(y, m.pw_bn)
    return y if absolute else ACTS[m.activation](y)


def assert_matches_reference(out, m, x):
    ref = reference(m, x)
    assert out.shape == ref.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    u = torch.finfo(out.dtype).eps / 2
    n = m.kernel_size ** 2 + m.in_channels + 4  # terms of the dw sum + of the pw sum + BN/bias steps
    tol = 16 * n ** 0.5 * u * (reference(m, x, absolute=True) + ref.abs()) + 1e-300
    err = (out.double() - ref).abs()
    assert bool((err <= tol).all()), f"max err/tol = {(err / tol).max().item():.3g}"


# (C, O, k, stride, padding, H, W, options): awkward sizes, every kernel/stride, all activations, BN or not.
CASES = [
    (1, 1, 3, 1, 1, 1, 1, dict()),
    (3, 5, 3, 2, 1, 5, 5, dict(mid_activation="relu", activation="relu", bn=True)),
    (17, 9, 3, 1, 0, 33, 7, dict(mid_activation="relu6", activation="hardswish", pw_bn=True)),
    (4, 16, 5, 1, 2, 9, 9, dict(mid_activation="hardswish", bias=False, bn=True, pw_bn=True)),
    (8, 3, 5, 2, 2, 11, 6, dict(activation="relu6", dw_bias=True)),
    (6, 7, 7, 1, 3, 5, 5, dict(mid_activation="relu", dw_bias=True, bn=True)),
    (5, 8, 7, 2, (3, 1), 13, 9, dict(mid_activation=nn.ReLU6(), activation=nn.Hardswish(), bias=False)),
    (16, 32, 3, 2, 0, 8, 8, dict(mid_activation="relu6", pw_bn=True, bn=True)),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_forward_matches_float64_reference(case, dtype, fused, layout, gen):
    c, o, k, s, p, h, w, kw = CASES[case]
    m = make(c, o, k, s, p, gen, dtype=dtype, fused=fused, **kw)
    x = torch.randn(2, c, h, 2 * w if layout == "strided" else w, generator=gen, dtype=dtype) * 3
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = x[..., ::2]
        assert not x.is_contiguous()
    assert m.path_for(x)[0] == ("fused" if fused else "torch")
    with torch.no_grad():
        out = m(x)
    assert_matches_reference(out, m, x)


@pytest.mark.parametrize("case", [1, 3, 7])
def test_auto_agrees_with_torch_path(case, gen, monkeypatch):
    c, o, k, s, p, h, w, kw = CASES[case]
    m = make(c, o, k, s, p, gen, **kw)
    x = torch.randn(3, c, h, w, generator=gen)
    monkeypatch.setattr(separable_mod, "should_fuse", lambda *a: True)
    with torch.no_grad():
        assert m.path_for(x)[0] == "fused"
        fused = m(x)
        ref = m._forward_torch(x)
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)


def test_bn_folding_equals_torch_bn_in_eval_mode(gen):
    m = make(12, 10, 3, 1, 1, gen, mid_activation="relu", activation="relu", bn=True, pw_bn=True, dw_bias=True,
             dtype=torch.float64)
    torch_modules = m.to_modules().eval()  # BN modules running their own eval-mode math
    assert isinstance(torch_modules[1], nn.BatchNorm2d) and isinstance(torch_modules[4], nn.BatchNorm2d)
    x = torch.randn(2, 12, 7, 6, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        want = torch_modules(x)
        for fused in (True, False):
            m.fused = fused
            torch.testing.assert_close(m(x), want, rtol=1e-12, atol=1e-12)
    # The folded scale/shift themselves: bn(z + dw_bias) == z * scale + shift.
    scale, shift, _, _ = m._compute_folded()
    z = torch.randn(12, generator=gen, dtype=torch.float64)
    bn = m.bn
    want = (z + m.dw_bias - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(z * scale + shift, want, rtol=1e-12, atol=1e-12)


def test_folded_cache_follows_weight_and_bn_updates(gen):
    m = make(6, 4, 3, 1, 1, gen, bn=True, pw_bn=True, mid_activation="relu", fused=True, dtype=torch.float64)
    x = torch.randn(1, 6, 5, 5, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        m(x)
        m.pw_weight.mul_(2)  # in-place updates (optimizer steps, BN momentum) must invalidate the cached folding
        m.bn.running_mean.add_(1)
        m.pw_bn.weight.sub_(0.5)
        assert_matches_reference(m(x), m, x)
        fresh = make(6, 4, 3, 1, 1, gen, bn=True, pw_bn=True, mid_activation="relu", dtype=torch.float64)
        m.load_state_dict(fresh.state_dict())
        assert_matches_reference(m(x), m, x)


def test_training_step_and_gradients(gen):
    torch.manual_seed(0)
    m = DepthwiseSeparableConv2d(6, 8, 3, 2, 1, mid_activation="relu6", activation="relu", bn=True, pw_bn=True,
                                 dw_bias=True).train()
    ref = m.to_modules().train()
    x = torch.randn(4, 6, 9, 9, generator=gen)
    assert m.path_for(x)[0] == "torch"
    before = {k: v.clone() for k, v in m.state_dict().items()}
    out = m(x)
    torch.testing.assert_close(out, ref(x))
    out.square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    torch.optim.SGD(m.parameters(), lr=0.1).step()
    after = m.state_dict()
    for k in ("dw_weight", "pw_weight", "bn.running_mean", "pw_bn.running_var"):
        assert not torch.equal(before[k], after[k]), k


def test_fused_true_gradients_match_torch_path(gen):
    """fused=True keeps the op while grads are needed (autograd of the op): its grads equal the torch path's."""
    m = make(5, 7, 3, 1, 1, gen, mid_activation="relu", activation="hardswish", bn=True, pw_bn=True, dw_bias=True,
             dtype=torch.float64, fused=True)
    x = torch.randn(2, 5, 6, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    grads = {}
    for fused in (True, False):
        m.fused = fused
        assert m.path_for(x)[0] == ("fused" if fused else "torch")
        m.zero_grad()
        x.grad = None
        (m(x) * torch.linspace(-1, 1, 7, dtype=torch.float64).view(1, 7, 1, 1)).sum().backward()
        grads[fused] = [x.grad.clone()] + [p.grad.clone() for p in m.parameters()]
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_path_selection(gen, monkeypatch):
    calls = []

    def policy(*args):
        calls.append(args)
        return policy.answer

    monkeypatch.setattr(separable_mod, "should_fuse", policy)
    m = make(8, 16, 5, 2, 2, gen, bn=True)
    x = torch.randn(3, 8, 12, 10, generator=gen)
    policy.answer = True
    m.train()
    assert m.path_for(x)[0] == "torch"  # training: torch ops, BN uses batch statistics
    m.eval()
    assert m.path_for(x)[0] == "torch"  # grads needed (parameters require grad, grad mode on)
    with torch.no_grad():
        assert m.path_for(x)[0] == "fused"
        assert calls[-1] == (3, 8, 16, 12, 10, 5, 2, False)
        m.path_for(x.contiguous(memory_format=torch.channels_last))
        assert calls[-1] == (3, 8, 16, 12, 10, 5, 2, True)
        policy.answer = False
        assert m.path_for(x) == ("torch", "the measured policy says fusion loses for this shape")
        assert m.path_for(x.to(torch.bfloat16))[0] == "torch"  # no CPU kernel for bf16
        m.fused = True
        assert m.path_for(x)[0] == "fused"
        m.fused = False
        assert m.path_for(x)[0] == "torch"
    m.fused = True
    assert m.path_for(x)[0] == "fused"  # forced: the op's autograd serves the grads
    m.train()
    assert m.path_for(x)[0] == "torch"  # BN in training mode cannot be folded
    m4 = DepthwiseSeparableConv2d(8, 16, 4, 1, 0).eval()
    with torch.no_grad():
        assert m4.path_for(x) == ("torch", "no fused kernel for kernel_size=4, stride=1")
        out = m4(x)
        assert out.shape == (3, 16, 9, 7)
        m_pad = DepthwiseSeparableConv2d(8, 16, 3, 1, 3).eval()
        assert m_pad.path_for(x)[1] == "no fused kernel for padding (3, 3) >= kernel_size=3"
        assert m_pad(x).shape == (3, 16, 16, 14)


def test_extra_repr_names_the_path():
    assert "fused=auto (fused op at inference where" in repr(DepthwiseSeparableConv2d(4, 8, 3))
    assert "fused=False (torch convs always)" in repr(DepthwiseSeparableConv2d(4, 8, 3, fused=False))
    assert "fused=True" in repr(DepthwiseSeparableConv2d(4, 8, 3, fused=True))
    assert "no fused kernel for kernel_size=1" in repr(DepthwiseSeparableConv2d(4, 8, 1))
    r = repr(DepthwiseSeparableConv2d(4, 8, 3, 2, 1, bias=False, mid_activation=nn.ReLU(), activation="relu6"))
    assert "stride=2" in r and "bias=False" in r and "mid_activation=relu" in r and "activation=relu6" in r


def test_from_modules_and_back(gen):
    dw = nn.Conv2d(6, 6, 5, 2, 2, groups=6, bias=True).double()
    pw = nn.Conv2d(6, 9, 1, bias=False).double()
    bn, pw_bn = nn.BatchNorm2d(6).double(), nn.BatchNorm2d(9).double()
    randomize_bn(bn, gen)
    randomize_bn(pw_bn, gen)
    seq = nn.Sequential(dw, bn, nn.Hardswish(), pw, pw_bn, nn.ReLU6()).eval()
    m = DepthwiseSeparableConv2d.from_modules(dw, pw, bn, nn.Hardswish(), pw_bn, "relu6").eval()
    assert m.dw_bias is not None and m.pw_bias is None and m.kernel_size == 5 and m.stride == 2
    assert m.bn is not bn  # copied, not shared
    x = torch.randn(2, 6, 11, 10, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        want = seq(x)
        torch.testing.assert_close(m(x), want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(m.to_modules()(x), want, rtol=1e-12, atol=1e-12)


def test_to_dense_conv(gen):
    m = make(7, 5, 3, 2, 1, gen, dtype=torch.float64, bn=True, pw_bn=True, dw_bias=True, activation="relu")
    x = torch.randn(2, 7, 9, 8, generator=gen, dtype=torch.float64)
    dense = m.to_dense_conv()
    assert isinstance(dense[0], nn.Conv2d) and dense[0].kernel_size == (3, 3) and dense[0].groups == 1
    with torch.no_grad():
        torch.testing.assert_close(dense(x), reference(m, x), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="mid_activation='none'"):
        make(7, 5, 3, 1, 1, gen, mid_activation="relu").to_dense_conv()


@pytest.mark.parametrize("args, match", [
    (lambda: (nn.Conv2d(4, 4, 3), nn.Conv2d(4, 8, 1)), "depthwise"),
    (lambda: (nn.Conv2d(4, 8, 3, groups=4), nn.Conv2d(8, 8, 1)), "depthwise"),
    (lambda: (nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 8, 3)), "1x1"),
    (lambda: (nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 8, 1, groups=2)), "groups=1"),
    (lambda: (nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 8, 1, stride=2)), "stride 1"),
    (lambda: (nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(5, 8, 1)), "in_channels=5"),
    (lambda: (nn.Conv2d(4, 4, 3, groups=4, dilation=2), nn.Conv2d(4, 8, 1)), "dilation"),
    (lambda: (nn.Conv2d(4, 4, 3, groups=4, padding=1, padding_mode="reflect"), nn.Conv2d(4, 8, 1)), "padding_mode"),
    (lambda: (nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 8, 1), nn.BatchNorm2d(5)), "num_features=5"),
    (lambda: (nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 8, 1), nn.BatchNorm2d(4, track_running_stats=False)),
     "running statistics"),
    (lambda: (nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 8, 1), None, nn.GELU()), "mid_activation"),
    (lambda: (nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 8, 1), None, None, nn.BatchNorm2d(4)), "pw_bn"),
    (lambda: (nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 8, 1), None, None, None, "gelu"), "activation"),
])
def test_from_modules_errors(args, match):
    with pytest.raises(ValueError, match=match):
        DepthwiseSeparableConv2d.from_modules(*args())


def test_from_modules_type_errors():
    with pytest.raises(TypeError, match="dw_conv must be an nn.Conv2d"):
        DepthwiseSeparableConv2d.from_modules(nn.Linear(2, 2), nn.Conv2d(4, 8, 1))
    with pytest.raises(TypeError, match="bn must be an nn.BatchNorm2d"):
        DepthwiseSeparableConv2d.from_modules(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 8, 1), nn.LayerNorm(4))


@pytest.mark.parametrize("kwargs, match", [
    (dict(kernel_size=(3, 5)), "square"),
    (dict(kernel_size=0), "positive"),
    (dict(kernel_size=4, fused=True), "fused=True needs kernel_size"),
    (dict(stride=3, fused=True), "stride in"),
    (dict(padding=3, fused=True), "padding < kernel_size"),
    (dict(fused="yes"), "fused must be"),
    (dict(mid_activation="gelu"), "mid_activation must be one of"),
    (dict(padding="same", stride=2), "padding='same'"),
    (dict(padding=-1), "padding must be"),
    (dict(in_channels=0), "in_channels"),
])
def test_constructor_errors(kwargs, match):
    args = dict(in_channels=4, out_channels=8, kernel_size=3) | kwargs
    with pytest.raises(ValueError, match=match):
        DepthwiseSeparableConv2d(**args)


def test_input_errors():
    m = DepthwiseSeparableConv2d(4, 8, 3, padding=1)
    with pytest.raises(ValueError, match=r"\[N, 4, H, W\]"):
        m(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match=r"\[N, 4, H, W\]"):
        m(torch.randn(4, 5, 5))


def test_state_dict_round_trip(gen, tmp_path):
    kw = dict(mid_activation="relu", activation="relu6", bn=True, pw_bn=True, dw_bias=True)
    a = make(6, 10, 3, 1, 1, gen, **kw)
    torch.save(a.state_dict(), tmp_path / "sd.pt")
    b = DepthwiseSeparableConv2d(6, 10, 3, 1, 1, **kw).eval()
    b.load_state_dict(torch.load(tmp_path / "sd.pt"))
    assert set(a.state_dict()) == set(b.state_dict())
    x = torch.randn(2, 6, 8, 8, generator=gen)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    with pytest.raises(RuntimeError, match="size mismatch"):
        DepthwiseSeparableConv2d(6, 10, 5, **kw).load_state_dict(a.state_dict())
    with pytest.raises(RuntimeError, match="Unexpected key"):
        DepthwiseSeparableConv2d(6, 10, 3).load_state_dict(a.state_dict())


@pytest.mark.parametrize("fused", [True, "auto"])
def test_compile_fullgraph_at_eval(fused, gen, monkeypatch):
    monkeypatch.setattr(separable_mod, "should_fuse", lambda *a: True)
    m = make(8, 12, 3, 2, 1, gen, mid_activation="relu6", activation="relu", bn=True, pw_bn=True, fused=fused)
    x = torch.randn(2, 8, 10, 10, generator=gen)
    compiled = torch.compile(m, fullgraph=True)
    with torch.no_grad():
        want = m(x)
        torch.testing.assert_close(compiled(x), want, rtol=1e-5, atol=1e-5)


def test_compiled_graph_contains_the_fused_op(gen, monkeypatch):
    monkeypatch.setattr(separable_mod, "should_fuse", lambda *a: True)
    m = make(6, 10, 5, 1, 2, gen, mid_activation="hardswish", bn=True)
    targets = []

    def recording_backend(gm, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes)
        return gm.forward

    x = torch.randn(1, 6, 9, 9, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(m, fullgraph=True, backend=recording_backend)(x), m(x))
    assert any("dwpw_conv2d" in t for t in targets), targets
    assert not any("conv2d" in t and "dwpw" not in t for t in targets), targets
