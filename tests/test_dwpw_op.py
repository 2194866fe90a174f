"""dwpw_conv2d (fused depthwise -> pointwise conv) against torch's two convolutions in float64.

Reference: conv2d(groups=C) -> * scale + shift -> mid activation -> conv2d(1x1) + bias -> activation, all in
float64. Every CPU code path runs (cpu_isa fixture), both memory formats, and the tile/thread splits.
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from sparsecomp import ops

from conftest import assert_no_new_nan

ACTS = ops.DWPW_ACTIVATIONS
# hardswish has slope up to 1.5 (at x = 3): an input error grows by at most that much through an activation.
LIPSCHITZ = {"none": 1.0, "relu": 1.0, "relu6": 1.0, "hardswish": 1.5}
_ACT_FN = {"none": lambda t: t, "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish}


def reference(x, dw, scale, shift, mid_act, pw, bias, act, stride, padding):
    c = x.shape[1]
    d = F.conv2d(x.double(), dw.double(), None, stride, padding, 1, c)
    if scale is not None:
        d = d * scale.double().view(1, -1, 1, 1)
    if shift is not None:
        d = d + shift.double().view(1, -1, 1, 1)
    mid = _ACT_FN[mid_act](d)
    w = pw.double().reshape(pw.shape[0], c, 1, 1)
    return _ACT_FN[act](F.conv2d(mid, w, None if bias is None else bias.double()))


def envelope(x, dw, scale, shift, mid_act, pw, bias, act, stride, padding):
    """The same pipeline on absolute values, activations replaced by their slope bound: bounds every partial sum."""
    c = x.shape[1]
    d = F.conv2d(x.double().abs(), dw.double().abs(), None, stride, padding, 1, c)
    if scale is not None:
        d = d * scale.double().abs().view(1, -1, 1, 1)
    if shift is not None:
        d = d + shift.double().abs().view(1, -1, 1, 1)
    w = pw.double().abs().reshape(pw.shape[0], c, 1, 1)
    y = F.conv2d(d * LIPSCHITZ[mid_act], w, None if bias is None else bias.double().abs())
    return y * LIPSCHITZ[act]


def check(y, x, dw, scale, shift, mid_act, pw, bias, act, stride, padding, slack=8.0):
    """|y - ref| <= slack * sqrt(n) * u * envelope, n = k*k + C + 3 roundings along any output's dependency chain.

    Why: an output is a C-term sum of products with depthwise results, each a k*k-term sum followed by a scale
    and a shift; every rounding is at most u times a partial sum, which the envelope (the pipeline on |values|)
    bounds, and independent rounding errors add up like a random walk (see conftest.assert_within_bound). This
    still fails on one missing or misplaced term: a term is ~envelope / C, far above the tolerance.
    """
    ref = reference(x, dw, scale, shift, mid_act, pw, bias, act, stride, padding)
    assert y.shape == ref.shape, f"shape {tuple(y.shape)} != {tuple(ref.shape)}"
    assert y.dtype == x.dtype
    assert_no_new_nan(y, ref)
    n = dw.shape[-1] ** 2 + x.shape[1] + 3
    u = torch.finfo(y.dtype).eps / 2
    tol = slack * n ** 0.5 * u * envelope(x, dw, scale, shift, mid_act, pw, bias, act, stride, padding)
    err = (y.double() - ref).abs()
    bad = err > tol
    if bool(bad.any()):
        i = tuple(int(v) for v in bad.nonzero()[0])
        raise AssertionError(f"{int(bad.sum())}/{bad.numel()} outside the bound; first at {i}: got {y[i].item()!r}, "
                             f"expected {ref[i].item()!r}, tol {tol[i].item():.3e}")


def make(n, c, h, w, o, k, gen, dtype=torch.float32, scale=True, shift=True, bias=True, pw_2d=False):
    x = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    dw = torch.randn(c, 1, k, k, generator=gen, dtype=dtype) / k
    sc = torch.randn(c, generator=gen, dtype=dtype) if scale else None
    sh = torch.randn(c, generator=gen, dtype=dtype) if shift else None
    pw = torch.randn(o, c, generator=gen, dtype=dtype) / c ** 0.5
    pw = pw if pw_2d else pw[:, :, None, None]
    b = torch.randn(o, generator=gen, dtype=dtype) if bias else None
    return x, dw, sc, sh, pw, b


def run_and_check(x, dw, sc, sh, pw, b, mid_act, act, stride, padding, channels_last=False):
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = ops.dwpw_conv2d(x, dw, sc, sh, mid_act, pw, b, act, stride, padding)
    check(y, x, dw, sc, sh, mid_act, pw, b, act, stride, padding)
    if x.is_contiguous():
        assert y.is_contiguous()
    else:
        assert y.is_contiguous(memory_format=torch.channels_last)
    return y


# --------------------------------------------------------------------------------------------- values
@pytest.mark.parametrize("mid_act,act", list(itertools.product(ACTS, ACTS)))
def test_every_activation_pair(cpu_isa, mid_act, act, gen):
    # Values around the kinks (0, +-3, 6) are frequent with unit-variance data.
    x, dw, sc, sh, pw, b = make(2, 19, 9, 11, 21, 3, gen)
    for cl in (False, True):
        run_and_check(x, dw, sc, sh, pw, b, mid_act, act, [1, 1], [1, 1], cl)
        run_and_check(x, dw, sc, sh, pw, b, mid_act, act, [2, 2], [0, 0], cl)


def _geometries():
    """k x stride x padding (including asymmetric), with awkward sizes cycled through the cases."""
    strides = [(1, 1), (2, 2), (1, 2), (2, 1)]
    cases = []
    for k in (3, 5, 7):
        pads = [(p, p) for p in range(k // 2 + 1)] + [(0, k // 2), (k - 1, 1)]
        cases += [(k, s, p) for s in strides for p in pads]
    sizes = [(1, 1, 5, 5, 1), (3, 3, 33, 33, 5), (1, 17, 5, 33, 33), (3, 17, 33, 5, 1), (1, 3, 1, 1, 33),
             (0, 3, 5, 5, 5), (1, 1, 33, 33, 5)]
    return [(k, s, p, sizes[i % len(sizes)]) for i, (k, s, p) in enumerate(cases)]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_geometry(cpu_isa, channels_last, gen):
    checked = 0
    for k, stride, padding, (n, c, h, w, o) in _geometries():
        h, w = max(h, k - 2 * padding[0]), max(w, k - 2 * padding[1])  # at least one output pixel
        x, dw, sc, sh, pw, b = make(n, c, h, w, o, k, gen)
        run_and_check(x, dw, sc, sh, pw, b, "relu6", "hardswish", list(stride), list(padding), channels_last)
        checked += 1
    assert checked == 4 * ((2 + 2) + (3 + 2) + (4 + 2))  # strides x paddings of k = 3, 5, 7


def test_large_tiles_and_channel_blocks(cpu_isa, gen):
    # Several row tiles per image (C * W large against the per-thread scratch budget), output channels past
    # one 64-wide block, channel counts off the vector width, stride 2 with odd sizes.
    # 300 channels x 61 columns fill the 512 KiB scratch budget in 7 rows: 2 tiles per 10-row image in NCHW; in
    # channels_last the tiles run through the batch, so the second one spans images 0 and 1.
    for (n, c, h, w, o, k, s, p) in [(2, 300, 10, 61, 70, 3, 1, 1), (1, 301, 19, 57, 129, 5, 2, 2),
                                     (2, 40, 29, 29, 17, 7, 2, 3)]:
        x, dw, sc, sh, pw, b = make(n, c, h, w, o, k, gen)
        for cl in (False, True):
            run_and_check(x, dw, sc, sh, pw, b, "relu", "none", [s, s], [p, p], cl)


def test_channels_last_few_pixels_large_weight(cpu_isa, gen):
    # Few pixels and a large pointwise weight: the channels_last path transposes the pixels around the NCHW
    # product instead of packing the weight (DwpwShape::cl_transposed); odd O and C, pixel tails.
    for (n, c, h, w, o, k, s) in [(1, 200, 3, 3, 301, 3, 1), (2, 97, 1, 2, 250, 3, 1), (1, 150, 5, 4, 203, 5, 2)]:
        x, dw, sc, sh, pw, b = make(n, c, h, w, o, k, gen)
        run_and_check(x, dw, sc, sh, pw, b, "relu", "relu6", [s, s], [k // 2, k // 2], True)


def test_narrow_nchw_maps_run_the_channels_last_kernel(cpu_isa, gen):
    # NCHW with output rows of <= 8 pixels and O <= C (or <= 16 and O <= C / 2) goes through a channels_last
    # copy; the output is NCHW again.
    for (n, c, h, w, o, k, s) in [(2, 40, 7, 7, 40, 3, 1), (3, 33, 20, 8, 5, 5, 1), (1, 17, 9, 15, 16, 3, 2),
                                  (2, 41, 14, 14, 20, 3, 1)]:
        x, dw, sc, sh, pw, b = make(n, c, h, w, o, k, gen)
        y = run_and_check(x, dw, sc, sh, pw, b, "relu6", "hardswish", [s, s], [k // 2, k // 2])
        assert y.is_contiguous()


def test_optional_arguments_and_2d_pointwise(cpu_isa, gen):
    for scale, shift, bias in itertools.product((False, True), repeat=3):
        x, dw, sc, sh, pw, b = make(2, 5, 7, 6, 9, 3, gen, scale=scale, shift=shift, bias=bias, pw_2d=scale)
        for cl in (False, True):
            run_and_check(x, dw, sc, sh, pw, b, "hardswish", "relu", [1, 1], [1, 1], cl)


def test_noncontiguous_inputs(gen):
    x, dw, sc, sh, pw, b = make(2, 6, 14, 9, 7, 3, gen)
    views = [x[:, :, ::2], x.transpose(2, 3), x[:, ::2], x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)[..., 1:]]
    for v in views:
        c = v.shape[1]
        y = ops.dwpw_conv2d(v, dw[:c], sc[:c], sh[:c], "relu", pw[:, :c], b, "none", 1, 1)
        check(y, v, dw[:c], sc[:c], sh[:c], "relu", pw[:, :c], b, "none", [1, 1], [1, 1])
    # non-contiguous weights: a transposed view of the pointwise weight, strided scale
    pw_t = torch.randn(6, 7, generator=gen).t()
    scale = torch.randn(12, generator=gen)[::2]
    y = ops.dwpw_conv2d(x, dw, scale, sh, "none", pw_t, b, "relu6", 2, 1)
    check(y, x, dw, scale, sh, "none", pw_t, b, "relu6", [2, 2], [1, 1])


def test_float64(gen):
    x, dw, sc, sh, pw, b = make(2, 17, 13, 10, 33, 5, gen, dtype=torch.float64)
    for cl in (False, True):
        run_and_check(x, dw, sc, sh, pw, b, "hardswish", "relu6", [2, 1], [2, 1], cl)


def test_thread_count_does_not_change_results(cpu_isa, gen):
    # Batch 1 at 7x7 splits the output channels across threads, batch 3 the images, large images the rows (the
    # last case takes the transposed channels_last path):
    # the kernel sums in a fixed order, so results must be bitwise identical.
    cases = [(1, 96, 7, 7, 200, 3, 1), (3, 24, 30, 30, 40, 5, 2), (1, 300, 16, 61, 20, 3, 1), (1, 200, 3, 3, 300, 3, 1),
             (2, 64, 7, 7, 32, 3, 1)]
    before = torch.get_num_threads()
    try:
        for (n, c, h, w, o, k, s) in cases:
            x, dw, sc, sh, pw, b = make(n, c, h, w, o, k, gen)
            for cl in (False, True):
                xi = x.to(memory_format=torch.channels_last) if cl else x
                outs = []
                for t in (1, 2, 3):
                    torch.set_num_threads(t)
                    outs.append(ops.dwpw_conv2d(xi, dw, sc, sh, "relu", pw, b, "none", s, k // 2))
                assert all(torch.equal(outs[0], y) for y in outs[1:]), (n, c, h, w, o, cl)
    finally:
        torch.set_num_threads(before)


def test_nan_propagates_like_torch(cpu_isa, gen):
    x, dw, sc, sh, pw, b = make(1, 4, 9, 9, 6, 3, gen)
    x[0, 1, 4, 4] = float("nan")
    for cl in (False, True):
        xi = x.to(memory_format=torch.channels_last) if cl else x
        y = ops.dwpw_conv2d(xi, dw, sc, sh, "relu", pw, b, "hardswish", 1, 1)
        ref = reference(x, dw, sc, sh, "relu", pw, b, "hardswish", 1, 1)
        assert torch.equal(torch.isnan(y), torch.isnan(ref)) and bool(torch.isnan(ref).any())
        assert not bool(torch.isnan(ref[0, :, 0, 0]).any())  # far from the NaN: finite


def test_empty_batch_and_memory_format():
    x = torch.randn(0, 3, 5, 5)
    y = ops.dwpw_conv2d(x, torch.randn(3, 1, 3, 3), None, None, "none", torch.randn(4, 3), None, "none", 1, 1)
    assert y.shape == (0, 4, 5, 5)


# ----------------------------------------------------------------------------- torch integration
def test_opcheck(gen):
    op = torch.ops.sparsecomp.dwpw_conv2d.default
    x, dw, sc, sh, pw, b = make(2, 5, 8, 7, 6, 3, gen)
    torch.library.opcheck(op, (x, dw, sc, sh, "relu", pw, b, "hardswish", [1, 1], [1, 1]))
    torch.library.opcheck(op, (x.to(memory_format=torch.channels_last), dw, None, sh, "relu6", pw, None, "none",
                               [2, 2], [0, 1]))
    x, dw, sc, sh, pw, b = make(1, 3, 9, 9, 4, 5, gen, dtype=torch.float64)
    torch.library.opcheck(op, (x, dw, sc, None, "none", pw, b, "relu", [2, 1], [2, 2]))


@pytest.mark.parametrize("mid_act,act,stride,channels_last", [("relu", "hardswish", 1, False),
                                                               ("hardswish", "relu6", 2, True),
                                                               ("none", "none", 1, False)])
def test_gradcheck(mid_act, act, stride, channels_last, gen):
    x, dw, sc, sh, pw, b = make(2, 3, 6, 5, 4, 3, gen, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    tensors = [t.requires_grad_() for t in (x, dw, sc, sh, pw, b)]

    def f(x, dw, sc, sh, pw, b):
        return ops.dwpw_conv2d(x, dw, sc, sh, mid_act, pw, b, act, stride, 1)

    assert torch.autograd.gradcheck(f, tensors, fast_mode=True)


def test_backward_with_none_arguments(gen):
    x, dw, _, _, pw, _ = make(2, 3, 6, 6, 4, 3, gen)
    x.requires_grad_()
    pw.requires_grad_()
    ops.dwpw_conv2d(x, dw, None, None, "relu", pw, None, "none", 1, 1).square().sum().backward()
    x2, pw2 = x.detach().clone().requires_grad_(), pw.detach().clone().requires_grad_()
    F.conv2d(F.relu(F.conv2d(x2, dw, None, 1, 1, 1, 3)), pw2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pw.grad, pw2.grad, rtol=1e-4, atol=1e-5)


def test_compile_fullgraph(gen):
    x, dw, sc, sh, pw, b = make(2, 5, 8, 8, 6, 3, gen)

    def f(x):
        return ops.dwpw_conv2d(x, dw, sc, sh, "relu", pw, b, "relu6", [1, 1], [1, 1]) * 2

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), f(x))


# ------------------------------------------------------------------------------------------ errors
def _args(**over):
    a = dict(x=torch.zeros(1, 4, 6, 6), dw_weight=torch.zeros(4, 1, 3, 3), dw_scale=None, dw_shift=None,
             mid_activation="relu", pw_weight=torch.zeros(5, 4, 1, 1), pw_bias=None, activation="none",
             stride=[1, 1], padding=[1, 1])
    a.update(over)
    return a


@pytest.mark.parametrize("over,message", [
    (dict(x=torch.zeros(4, 6, 6)), "x must be 4-D"),
    (dict(x=torch.zeros(1, 0, 6, 6), dw_weight=torch.zeros(0, 1, 3, 3), pw_weight=torch.zeros(5, 0)),
     "at least one channel"),
    (dict(x=torch.zeros(1, 4, 6, 6, dtype=torch.float16), dw_weight=torch.zeros(4, 1, 3, 3, dtype=torch.float16),
          pw_weight=torch.zeros(5, 4, dtype=torch.float16)), "x must be float32 or float64 on CPU"),
    (dict(x=torch.zeros(1, 4, 6, 6, dtype=torch.int32), dw_weight=torch.zeros(4, 1, 3, 3, dtype=torch.int32),
          pw_weight=torch.zeros(5, 4, dtype=torch.int32)), "x must be float32 or float64 on CPU"),
    (dict(dw_weight=torch.zeros(4, 1, 3, 3, dtype=torch.float64)), "dw_weight dtype Double does not match x"),
    (dict(dw_weight=torch.zeros(4, 1, 4, 4)), "kernel size must be 3, 5 or 7, got 4"),
    (dict(dw_weight=torch.zeros(4, 1, 3, 5)), "dw_weight kernel must be square"),
    (dict(dw_weight=torch.zeros(4, 2, 3, 3)), r"dw_weight.size\(1\) must be 1"),
    (dict(dw_weight=torch.zeros(2, 1, 3, 3)), r"dw_weight must have C = x.size\(1\) = 4"),
    (dict(dw_weight=torch.zeros(4, 3, 3)), "dw_weight must be 4-D"),
    (dict(dw_scale=torch.zeros(3)), r"dw_scale must have shape \[4\]"),
    (dict(dw_shift=torch.zeros(4, 1)), r"dw_shift must have shape \[4\]"),
    (dict(dw_shift=torch.zeros(4, dtype=torch.float64)), "dw_shift dtype Double does not match"),
    (dict(pw_weight=torch.zeros(5, 4, 3, 3)), r"pw_weight must be \[O, C, 1, 1\] or \[O, C\]"),
    (dict(pw_weight=torch.zeros(5, 3)), "pw_weight must have C = x.size"),
    (dict(pw_bias=torch.zeros(4)), r"pw_bias must have shape \[5\]"),
    (dict(stride=[3, 1]), "stride must be 1 or 2"),
    (dict(stride=[1, 0]), "stride must be 1 or 2"),
    (dict(padding=[3, 1]), r"padding must be in \[0, k - 1\]"),
    (dict(padding=[0, -1]), r"padding must be in \[0, k - 1\]"),
    (dict(mid_activation="gelu"), "mid_activation must be one of 'none', 'relu', 'relu6', 'hardswish', got 'gelu'"),
    (dict(activation="sigmoid"), "dwpw_conv2d: activation must be one of .* got 'sigmoid'"),
    (dict(x=torch.zeros(1, 4, 2, 6), padding=[0, 0]), "smaller than the kernel size 3"),
])
def test_errors_name_the_argument(over, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.sparsecomp.dwpw_conv2d(**_args(**over))
