"""sparsecomp.nn.SparseLinear and SparseConv2d against the dense torch.nn layers holding the same pruned weight."""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from sparsecomp.nn import SparseConv2d, SparseLinear, sparse_conv

from conftest import assert_close_fp, assert_within_bound, random_mask, random_pruned, to_csr


def pruned_linear(in_f, out_f, sparsity, gen, bias=True, dtype=torch.float32) -> nn.Linear:
    lin = nn.Linear(in_f, out_f, bias=bias, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(random_pruned(out_f, in_f, sparsity, dtype, gen))
        if bias:
            lin.bias.copy_(torch.randn(out_f, generator=gen, dtype=dtype))
    return lin


# ============================================================================================ SparseLinear

@pytest.mark.parametrize("lead", [(), (5,), (2, 3, 4), (0,), (3, 0)], ids=lambda s: "x".join(map(str, s)) or "1d")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_linear_matches_dense(lead, bias, dtype, gen):
    lin = pruned_linear(37, 19, 0.8, gen, bias, dtype)
    sp = SparseLinear.from_dense(lin)
    x = torch.randn(*lead, 37, generator=gen, dtype=dtype)
    y = sp(x)
    assert y.shape == (*lead, 19) and y.dtype == dtype
    assert_close_fp(y.reshape(-1, 19), x.reshape(-1, 37), lin.weight.detach(),
                    lin.bias.detach() if bias else None)
    # and against nn.Linear itself (both round; allow the float32 dot-product error of K=37 terms)
    torch.testing.assert_close(y, lin(x).detach(), rtol=1e-5, atol=1e-5 if dtype == torch.float32 else 1e-12)


def test_linear_from_dense_with_explicit_weight(gen):
    lin = nn.Linear(20, 6)
    masked = lin.weight.detach() * random_mask(6, 20, 0.7, gen)
    sp = SparseLinear.from_dense(lin, weight=masked)
    assert torch.equal(sp.to_dense().weight, masked)
    assert sp.nnz == int((masked != 0).sum())


def test_linear_to_dense_and_counts(gen):
    lin = pruned_linear(50, 30, 0.9, gen)
    sp = SparseLinear.from_dense(lin)
    back = sp.to_dense()
    assert isinstance(back, nn.Linear)
    assert (back.in_features, back.out_features) == (50, 30)
    assert torch.equal(back.weight, lin.weight) and torch.equal(back.bias, lin.bias)
    assert back.weight.data_ptr() != lin.weight.data_ptr()
    nnz = int((lin.weight != 0).sum())
    assert sp.nnz == nnz == 150
    assert sp.sparsity == pytest.approx(1 - nnz / 1500)
    assert sp.sparse_nbytes() == nnz * 4 + nnz * 2 + 31 * 8
    assert f"nnz={nnz}" in repr(sp) and "in_features=50" in repr(sp)
    # a dense layer with nothing pruned and one with everything pruned
    full = SparseLinear.from_dense(pruned_linear(4, 3, 0.0, gen))
    assert full.nnz == 12 and full.sparsity == 0.0
    empty = SparseLinear.from_dense(pruned_linear(4, 3, 1.0, gen))
    assert empty.nnz == 0 and empty.sparsity == 1.0
    x = torch.randn(2, 4, generator=gen)
    assert torch.equal(empty(x), empty.bias.detach().expand(2, 3))


def test_linear_from_dense_does_not_alias(gen):
    lin = pruned_linear(8, 4, 0.5, gen)
    sp = SparseLinear.from_dense(lin)
    before = sp.to_dense().weight.clone()
    with torch.no_grad():
        lin.weight.mul_(3)
        lin.bias.add_(1)
    assert torch.equal(sp.to_dense().weight, before)
    assert not torch.equal(sp.bias, lin.bias)


def test_linear_state_dict_round_trip_resizes(gen):
    src = SparseLinear.from_dense(pruned_linear(40, 12, 0.75, gen))
    sd = src.state_dict()
    assert set(sd) == {"values", "col_idx", "row_ptr", "bias"}
    dst = SparseLinear(40, 12)
    assert dst.nnz == 0
    dst.load_state_dict(sd)
    assert dst.nnz == src.nnz == 120
    assert isinstance(dst.values, nn.Parameter) and dst.values.requires_grad
    for k in sd:
        assert torch.equal(dst.state_dict()[k], sd[k]), k
    x = torch.randn(7, 40, generator=gen)
    assert torch.equal(dst(x), src(x))
    # and into a module converted from another layer with a different nonzero count
    other = SparseLinear.from_dense(pruned_linear(40, 12, 0.1, gen))
    other.load_state_dict(sd)
    assert torch.equal(other(x), src(x))
    # the loaded module owns its data
    with torch.no_grad():
        src.values.mul_(2)
    assert not torch.equal(dst(x), src(x))


def test_linear_torch_save_load_weights_only(gen, tmp_path):
    src = SparseLinear.from_dense(pruned_linear(70, 9, 0.6, gen))
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    dst = SparseLinear(70, 9)
    dst.load_state_dict(sd)
    x = torch.randn(3, 70, generator=gen)
    assert torch.equal(dst(x), src(x))
    path = tmp_path / "sl.pt"
    torch.save(src.state_dict(), path)
    dst2 = SparseLinear(70, 9)
    dst2.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(dst2.to_dense().weight, src.to_dense().weight)


def corrupt(sd, name, fn):
    sd = {k: v.clone() for k, v in sd.items()}
    sd[name] = fn(sd[name])
    return sd


def _set(t, i, v):
    t[i] = v
    return t


CORRUPTIONS = {
    "col_idx_out_of_range": ("col_idx", lambda t: _set(t, -1, 10), r"invalid sparse weight.*col_idx holds a column >= 10"),
    "col_idx_uint16_high": ("col_idx", lambda t: _set(t, 0, -1), r"invalid sparse weight.*col_idx holds a column >= 10"),
    "row_ptr_end": ("row_ptr", lambda t: _set(t, -1, t[-1] + 3), r"invalid sparse weight.*row_ptr must start at 0"),
    "row_ptr_decreasing": ("row_ptr", lambda t: _set(t, 1, t[-1] + 1), r"row_ptr must start at 0, be non-decreasing"),
    "row_ptr_length": ("row_ptr", lambda t: t[:-1], r"row_ptr must have 5 entries for shape \(4, 10\), got 4"),
    "col_idx_dtype": ("col_idx", lambda t: t[:-1].to(torch.int32), r"col_idx must be int16, got torch.int32"),
    "values_short": ("values", lambda t: t[:-1], r"col_idx has \d+ entries but values has"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_linear_load_corrupted_state_dict_raises(case, gen):
    src = SparseLinear.from_dense(pruned_linear(10, 4, 0.5, gen))
    name, fn, pattern = CORRUPTIONS[case]
    bad = corrupt(src.state_dict(), name, fn)
    dst = SparseLinear(10, 4)
    with pytest.raises(RuntimeError, match=pattern):
        dst.load_state_dict(bad)


@pytest.mark.parametrize("case", ["col_idx_out_of_range", "col_idx_uint16_high", "row_ptr_end"])
def test_linear_rejected_load_leaves_module_safe(case, gen):
    """After a rejected load the module must not hold a structure the kernels would index out of bounds with.

    The op checks row_ptr on every call but trusts col_idx (only TiledCSR.validate checks it): a module left
    holding col_idx >= in_features reads past the end of x on its next forward (garbage or a segfault).
    So: either the module still holds a valid weight, or (row_ptr only) its forward refuses to run. The
    forward is not called while col_idx is invalid, so a failure here cannot crash the test process.
    """
    src = SparseLinear.from_dense(pruned_linear(10, 4, 0.5, gen))
    dst = SparseLinear.from_dense(pruned_linear(10, 4, 0.3, gen))
    name, fn, pattern = CORRUPTIONS[case]
    with pytest.raises(RuntimeError, match=pattern):
        dst.load_state_dict(corrupt(src.state_dict(), name, fn))
    x = torch.randn(2, 10, generator=gen)
    if name == "row_ptr":
        try:
            dst.sparse_weight().validate()
        except ValueError:
            with pytest.raises(RuntimeError, match="row_ptr must start at 0"):
                dst(x)
        return
    try:
        dst.sparse_weight().validate()
    except ValueError as err:
        pytest.fail(f"module left holding an invalid sparse weight after a rejected load ({err}); the op does "
                    f"not check col_idx, so its next forward reads x out of bounds")
    assert dst(x).shape == (2, 4)


def test_linear_finetune_keeps_pattern_and_learns(gen):
    lin = pruned_linear(24, 8, 0.75, gen)
    mask = lin.weight.detach() != 0
    sp = SparseLinear.from_dense(lin)
    col_idx, row_ptr = sp.col_idx.clone(), sp.row_ptr.clone()
    x = torch.randn(64, 24, generator=gen)
    target = torch.randn(64, 8, generator=gen)
    opt = torch.optim.SGD(sp.parameters(), lr=0.05)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = F.mse_loss(sp(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    w = sp.to_dense().weight
    assert torch.equal(w[~mask], torch.zeros(int((~mask).sum())))
    assert torch.equal(w != 0, mask)
    assert not torch.equal(w, lin.weight.detach())  # the nonzeros did train
    assert torch.equal(sp.col_idx, col_idx) and torch.equal(sp.row_ptr, row_ptr)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_linear_gradients_equal_masked_dense(dtype, gen):
    lin = pruned_linear(30, 11, 0.7, gen, dtype=dtype)
    mask = lin.weight.detach() != 0
    sp = SparseLinear.from_dense(lin)
    x = torch.randn(4, 5, 30, generator=gen, dtype=dtype)
    xs, xd = x.clone().requires_grad_(), x.clone().requires_grad_()
    t = torch.randn(4, 5, 11, generator=gen, dtype=dtype)
    (sp(xs) * t).sum().backward()
    (lin(xd) * t).sum().backward()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xs.grad, xd.grad, **tol)
    torch.testing.assert_close(sp.values.grad, lin.weight.grad[mask], **tol)
    torch.testing.assert_close(sp.bias.grad, lin.bias.grad, **tol)
    # the dense grad is nonzero at pruned positions; the sparse module has no parameter there to update
    assert lin.weight.grad[~mask].abs().sum() > 0
    assert sp.values.grad.shape == (sp.nnz,)


def test_linear_torch_compile_fullgraph_matches_eager(gen):
    torch._dynamo.reset()
    model = nn.Sequential(SparseLinear.from_dense(pruned_linear(33, 20, 0.8, gen)), nn.ReLU(),
                          SparseLinear.from_dense(pruned_linear(20, 7, 0.5, gen)))
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(9, 33, generator=gen)
    g = torch.randn(9, 7, generator=gen)

    def run(m):
        m.zero_grad()
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.backward(g)
        return y.detach(), xi.grad, [p.grad.clone() for p in model.parameters()]

    y_e, gx_e, gp_e = run(model)
    y_c, gx_c, gp_c = run(compiled)
    torch.testing.assert_close(y_c, y_e, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx_c, gx_e, rtol=1e-6, atol=1e-6)
    assert len(gp_c) == len(gp_e) == 4
    for a, b in zip(gp_c, gp_e):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch._dynamo.reset()


class _Scale(nn.Module):
    def forward(self, v):
        return 2.0 * v


def test_linear_weight_moved_by_torch_utils_is_found(gen):
    """forward reads values/bias from the module's dicts for speed; torch.nn.utils.prune and parametrize move
    them out of there, and the layer must then use what the attribute gives (masked / parametrized values)."""
    lin = pruned_linear(12, 5, 0.5, gen)
    x = torch.randn(3, 12, generator=gen)
    sp = SparseLinear.from_dense(lin)
    torch_prune.l1_unstructured(sp, "values", amount=0.5)
    assert "values" not in sp._parameters
    masked = SparseLinear.from_dense(lin)
    with torch.no_grad():
        masked.values.mul_(sp.values_mask)
    assert_close_fp(sp(x), x, masked.weight_matrix(), lin.bias.detach())
    # (parametrize cannot take "values": the name clashes with ModuleDict.values)
    sp = SparseLinear.from_dense(lin)
    parametrize.register_parametrization(sp, "bias", _Scale())
    assert "bias" not in sp._parameters
    assert_close_fp(sp(x), x, lin.weight.detach(), 2 * lin.bias.detach())


def test_linear_functional_call_uses_the_given_tensors(gen):
    lin = pruned_linear(10, 4, 0.5, gen)
    sp = SparseLinear.from_dense(lin)
    x = torch.randn(2, 3, 10, generator=gen)
    new_values, new_bias = torch.randn(sp.nnz, generator=gen), torch.randn(4, generator=gen)
    y = torch.func.functional_call(sp, {"values": new_values, "bias": new_bias}, (x,))
    w = torch.zeros(4, 10)
    w[lin.weight != 0] = new_values
    assert_close_fp(y, x, w, new_bias)
    assert_close_fp(sp(x), x, lin.weight.detach(), lin.bias.detach())  # the module itself is unchanged


def test_linear_double_and_half(gen):
    lin = pruned_linear(16, 5, 0.5, gen)
    sp = SparseLinear.from_dense(lin).double()
    assert sp.values.dtype == torch.float64 and sp.bias.dtype == torch.float64
    assert sp.col_idx.dtype == torch.int16 and sp.row_ptr.dtype == torch.int64
    x = torch.randn(3, 16, generator=gen, dtype=torch.float64)
    assert_close_fp(sp(x), x, lin.weight.detach().double(), lin.bias.detach().double())
    with pytest.raises(RuntimeError, match=r"x dtype Float does not match values dtype Double"):
        sp(x.float())
    half = SparseLinear.from_dense(lin).half()
    with pytest.raises(RuntimeError, match=r"on CPU values must be float32 or float64, got Half"):
        half(x.half())


def test_linear_from_dense_type_errors(gen):
    with pytest.raises(TypeError, match=r"linear must be an nn.Linear, got Conv2d"):
        SparseLinear.from_dense(nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match=r"got Tensor"):
        SparseLinear.from_dense(torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"weight must have shape \(4, 3\), got \(3, 4\)"):
        SparseLinear.from_dense(nn.Linear(3, 4), weight=torch.randn(3, 4))
    with pytest.raises(TypeError, match="floating-point"):
        SparseLinear.from_dense(nn.Linear(3, 4), weight=torch.ones(4, 3, dtype=torch.int64))


def test_linear_from_dense_weight_dtype_differs_from_bias(gen):
    """A weight override in another dtype than the layer must not yield a module whose forward always fails:
    either from_dense rejects it, or the module is consistent (bias in the weight's dtype) and runs."""
    lin = pruned_linear(8, 3, 0.5, gen)
    w64 = lin.weight.detach().double()
    try:
        sp = SparseLinear.from_dense(lin, weight=w64)
    except (TypeError, ValueError):
        return
    assert sp.bias.dtype == sp.values.dtype == torch.float64, (sp.bias.dtype, sp.values.dtype)
    x = torch.randn(2, 8, generator=gen, dtype=torch.float64)
    assert_close_fp(sp(x), x, w64, lin.bias.detach().double())


def test_linear_forward_shape_errors(gen):
    sp = SparseLinear.from_dense(pruned_linear(6, 3, 0.5, gen))
    with pytest.raises(ValueError, match=r"input must end with in_features=6, got shape \(2, 5\)"):
        sp(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"in_features=6"):
        sp(torch.tensor(1.0))


# ============================================================================================ SparseConv2d

def pruned_conv(cin, cout, k, gen, sparsity=0.6, **kw) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, **kw)
    with torch.no_grad():
        w = conv.weight
        flat = random_pruned(cout, w[0].numel(), sparsity, torch.float32, gen)
        w.copy_(flat.reshape(w.shape))
        if conv.bias is not None:
            conv.bias.copy_(torch.randn(cout, generator=gen))
    return conv


def assert_conv_close(y, conv: nn.Conv2d, x):
    """y vs the float64 dense conv, with the dot-product bound of assert_within_bound (terms = nonzeros)."""
    ref_conv = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                         dtype=torch.float64)
    with torch.no_grad():
        ref_conv.weight.copy_(conv.weight.double())
        if conv.bias is not None:
            ref_conv.bias.copy_(conv.bias.double())
        ref = ref_conv(x.double())
        # sum of squared terms: the same conv on x**2 with w**2 and b**2 (padding commutes with squaring)
        ref_conv.weight.square_()
        if conv.bias is not None:
            ref_conv.bias.square_()
        l2 = ref_conv(x.double().square()).sqrt()
    n = (conv.weight != 0).flatten(1).sum(1).double() + 1
    n = n.reshape(-1, 1, 1)
    assert_within_bound(y, ref, l2, n, torch.float32)


CONV_CONFIGS = [
    dict(stride=s, padding=p, dilation=d, bias=b, padding_mode=m)
    for s in (1, 2) for p in (0, 1, "same") for d in (1, 2) for b in (True, False) for m in ("zeros", "reflect")
    if not (p == "same" and s != 1)  # nn.Conv2d rejects padding="same" with stride > 1
]
CHANNELS = [(1, 3, 3), (3, 17, (3, 2)), (17, 1, 1)]  # (in, out, kernel); (3, 2) makes "same" padding asymmetric


def conv_id(cfg):
    return "-".join(f"{k[:3]}{v}" for k, v in cfg.items())


@pytest.mark.parametrize("cfg", CONV_CONFIGS, ids=conv_id)
def test_conv_matches_dense(cfg, gen):
    for cin, cout, k in CHANNELS:
        conv = pruned_conv(cin, cout, k, gen, **cfg)
        sp = SparseConv2d.from_dense(conv)
        for spatial in (1, 5, 9):
            x = torch.randn(2, cin, spatial, spatial + (spatial > 1), generator=gen)
            ctx = f"in={cin} out={cout} k={k} x={tuple(x.shape)}"
            try:
                with torch.no_grad():
                    conv(x)
            except (RuntimeError, ValueError):
                # the dense conv rejects this input (kernel larger than the padded input, reflect pad too wide)
                with pytest.raises((RuntimeError, ValueError)):
                    sp(x)
                continue
            y = sp(x)
            assert y.shape == conv(x).shape, ctx
            try:
                assert_conv_close(y, conv, x)
            except AssertionError as err:
                raise AssertionError(f"{ctx}: {err}") from None


@pytest.mark.parametrize("cfg", CONV_CONFIGS, ids=conv_id)
def test_conv_im2col_paths_agree(cfg, gen, monkeypatch):
    """Without a graph to x (and above a size) the input is unfolded through a strided view, otherwise through
    F.unfold (whose backward is fold): both must give bitwise the same result."""
    monkeypatch.setattr(sparse_conv, "_STRIDED_MIN_ELEMENTS", 0)  # strided whenever no graph reaches x
    for cin, cout, k in CHANNELS:
        sp = SparseConv2d.from_dense(pruned_conv(cin, cout, k, gen, **cfg))
        x = torch.randn(2, cin, 9, 10, generator=gen)
        y = sp(x)
        y_unfold = sp(x.clone().requires_grad_())
        assert y_unfold.grad_fn is not None
        assert torch.equal(y, y_unfold.detach()), (cin, cout, k)
        with torch.no_grad():
            assert torch.equal(sp(x.clone().requires_grad_()), y)


def test_conv_strided_inputs(gen, monkeypatch):
    """The strided im2col reads x through its own strides and storage offset: views, channels_last, expanded."""
    monkeypatch.setattr(sparse_conv, "_STRIDED_MIN_ELEMENTS", 0)
    conv = pruned_conv(3, 4, 3, gen, padding=(0, 1), stride=(2, 1), dilation=(1, 2))
    sp = SparseConv2d.from_dense(conv)
    big = torch.randn(3, 5, 12, 14, generator=gen)
    views = {
        "offset slice": big[1:, 1:4, 2:, 3:],
        "channel step": big[:, ::2, :, :],
        "transposed hw": big[:, :3].transpose(2, 3),
        "channels_last": big[:, :3].contiguous(memory_format=torch.channels_last),
        "expanded batch": big[:1, :3].expand(4, -1, -1, -1),
    }
    for name, xv in views.items():
        with torch.no_grad():
            expected = sp(xv.contiguous())
            assert torch.equal(sp(xv), expected), name
        assert_conv_close(expected, conv, xv.contiguous())


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_conv_unbatched_input(padding_mode, gen):
    conv = pruned_conv(3, 5, 3, gen, padding=1, padding_mode=padding_mode)
    sp = SparseConv2d.from_dense(conv)
    x = torch.randn(3, 6, 7, generator=gen)
    y = sp(x)
    assert y.shape == (5, 6, 7)
    assert_conv_close(y.unsqueeze(0), conv, x.unsqueeze(0))


def test_conv_under_every_isa(cpu_isa, gen):
    """Batch rows of the sparse matmul = N * H_out * W_out: hits the batch-tiled kernel with a ragged last tile."""
    conv = pruned_conv(17, 9, 3, gen, padding=1, stride=1)
    sp = SparseConv2d.from_dense(conv)
    for hw in ((1, 1), (1, 2), (5, 13), (9, 9)):
        x = torch.randn(2, 17, *hw, generator=gen)
        assert_conv_close(sp(x), conv, x)


def test_conv_to_dense(gen):
    conv = pruned_conv(4, 6, 3, gen, stride=2, padding=1, dilation=2, padding_mode="reflect")
    sp = SparseConv2d.from_dense(conv)
    back = sp.to_dense()
    assert isinstance(back, nn.Conv2d)
    assert (back.stride, back.padding, back.dilation, back.padding_mode) == ((2, 2), (1, 1), (2, 2), "reflect")
    assert torch.equal(back.weight, conv.weight) and torch.equal(back.bias, conv.bias)
    assert sp.nnz == int((conv.weight != 0).sum())
    assert sp.sparsity == pytest.approx(1 - sp.nnz / conv.weight.numel())


def test_conv_groups_and_type_errors(gen):
    with pytest.raises(ValueError, match=r"groups=1 only, got groups=2"):
        SparseConv2d.from_dense(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(TypeError, match=r"conv must be an nn.Conv2d, got Linear"):
        SparseConv2d.from_dense(nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"padding_mode must be"):
        SparseConv2d(3, 3, 3, padding_mode="mirror")
    sp = SparseConv2d.from_dense(pruned_conv(3, 2, 3, gen))
    with pytest.raises(ValueError, match=r"input must be \[N, 3, H, W\]"):
        sp(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"input must be"):
        sp(torch.randn(3, 5))


def test_conv_from_dense_integer_weight_type_error():
    conv = nn.Conv2d(2, 3, 3)
    with pytest.raises(TypeError, match="floating-point"):
        SparseConv2d.from_dense(conv, weight=torch.ones(3, 2, 3, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"weight must have shape \(3, 2, 3, 3\), got \(3, 2, 3\)"):
        SparseConv2d.from_dense(conv, weight=torch.ones(3, 2, 3))


def test_conv_state_dict_round_trip(gen):
    conv = pruned_conv(5, 7, 3, gen, padding=1, stride=2)
    src = SparseConv2d.from_dense(conv)
    dst = SparseConv2d(5, 7, 3, padding=1, stride=2)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst.load_state_dict(torch.load(buf, weights_only=True))
    assert dst.nnz == src.nnz
    x = torch.randn(2, 5, 8, 8, generator=gen)
    assert torch.equal(dst(x), src(x))
    bad = corrupt(src.state_dict(), "col_idx", lambda t: _set(t, 0, 45))
    with pytest.raises(RuntimeError, match=r"col_idx holds a column >= 45"):
        SparseConv2d(5, 7, 3, padding=1, stride=2).load_state_dict(bad)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_conv_backward_matches_dense(padding_mode, gen):
    conv = pruned_conv(3, 6, 3, gen, padding=1, stride=2, padding_mode=padding_mode)
    mask = conv.weight.detach() != 0
    sp = SparseConv2d.from_dense(conv)
    x = torch.randn(2, 3, 7, 6, generator=gen)
    xs, xd = x.clone().requires_grad_(), x.clone().requires_grad_()
    t = torch.randn(2, 6, 4, 3, generator=gen)
    (sp(xs) * t).sum().backward()
    (conv(xd) * t).sum().backward()
    torch.testing.assert_close(xs.grad, xd.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sp.values.grad, conv.weight.grad[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sp.bias.grad, conv.bias.grad, rtol=1e-5, atol=1e-5)


def test_conv_valid_padding_and_channels_last(gen):
    conv = pruned_conv(4, 5, (2, 3), gen, padding="valid", stride=(1, 2), dilation=(2, 1))
    sp = SparseConv2d.from_dense(conv)
    x = torch.randn(3, 4, 7, 8, generator=gen)
    y = sp(x)
    assert_conv_close(y, conv, x)
    y_cl = sp(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(y_cl, y, rtol=0, atol=0)


def test_conv_torch_compile_fullgraph_matches_eager(gen):
    torch._dynamo.reset()
    model = nn.Sequential(SparseConv2d.from_dense(pruned_conv(3, 6, 3, gen, padding=1)), nn.ReLU(),
                          SparseConv2d.from_dense(pruned_conv(6, 4, 3, gen, stride=2, padding_mode="reflect",
                                                              padding=1)))
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 7, 6, generator=gen)
    g = torch.randn(2, 4, 4, 3, generator=gen)

    def run(m):
        m.zero_grad()
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.backward(g)
        return y.detach(), xi.grad, [p.grad.clone() for p in model.parameters()]

    y_e, gx_e, gp_e = run(model)
    y_c, gx_c, gp_c = run(compiled)
    torch.testing.assert_close(y_c, y_e, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx_c, gx_e, rtol=1e-6, atol=1e-6)
    assert len(gp_c) == len(gp_e) == 4
    for a, b in zip(gp_c, gp_e):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # the other im2col path (strided view), compiled for inference
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-6, atol=1e-6)
    torch._dynamo.reset()
