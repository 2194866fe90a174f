"""torch.ops.sparsecomp.sparse_linear and its backward ops on CPU, against float64 dense references.

Forward kernels are run under every CPU code path this machine supports (``cpu_isa`` fixture), at batch
sizes around the GEMV/SpMM switch (batch <= 2) and around every batch-tile width (8/16-lane vectors,
32-sample AVX2 tiles, 64-sample AVX-512/scalar tiles).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparsecomp import _C

from conftest import assert_close_fp, assert_within_bound, linear_l2, random_pruned, ref_linear, to_csr

op = torch.ops.sparsecomp.sparse_linear
op_bwd_input = torch.ops.sparsecomp.sparse_linear_backward_input
op_bwd_values = torch.ops.sparsecomp.sparse_linear_backward_values

# batch sizes around the GEMV/SpMM switch (2), 8/9 (AVX-512 runs 8-wide ymm tiles for <= 8 samples), the
# 16-lane width, the AVX2 tile (32) and the AVX-512/scalar tile (64), incl. ragged last tiles
BATCHES = [0, 1, 2, 3, 8, 9, 15, 16, 17, 33, 63, 64, 65, 72, 129]
SHAPES = [(1, 1), (3, 17), (17, 3), (1000, 17), (64, 1000)]
SPARSITIES = [0.0, 0.3, 0.9, 0.99, 1.0]
DTYPES = [torch.float32, torch.float64]


def shape_id(s):
    return f"{s[0]}x{s[1]}"


def sparse_apply(x, w, b=None):
    v, ci, rp = to_csr(w)
    return op(x, v, ci, rp, b, w.shape[1])


# ------------------------------------------------------------------------------------------------ forward

def check_forward(dtype, shape, sparsity, gen, isa):
    out_f, in_f = shape
    w = random_pruned(out_f, in_f, sparsity, dtype, gen)
    b = torch.randn(out_f, generator=gen, dtype=dtype)
    v, ci, rp = to_csr(w)
    for i, batch in enumerate(BATCHES):
        x = torch.randn(batch, in_f, generator=gen, dtype=dtype)
        # bias on every other batch size, shifted per sparsity: across the sparsities each batch size (and so
        # each kernel variant) runs both with and without bias
        bias = b if (i + SPARSITIES.index(sparsity)) % 2 == 0 else None
        out = op(x, v, ci, rp, bias, in_f)
        assert out.dtype == dtype and out.shape == (batch, out_f) and out.is_contiguous()
        try:
            assert_close_fp(out, x, w, bias)
        except AssertionError as err:
            raise AssertionError(f"isa={isa} batch={batch} bias={bias is not None}: {err}") from None


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_forward_matches_reference_f32(cpu_isa, shape, sparsity, gen):
    check_forward(torch.float32, shape, sparsity, gen, cpu_isa)


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_forward_matches_reference_f64(shape, sparsity, gen):
    """float64 always runs the portable kernels (the ISA setting applies to float32 only)."""
    check_forward(torch.float64, shape, sparsity, gen, _C.cpu_isa())


def check_multi_tile(dtype, batch, gen):
    in_f = 70000
    for sparsity, bias in ((0.3, True), (0.99, False)):
        w = random_pruned(5, in_f, sparsity, dtype, gen)
        w[:, [0, 32767, 32768, 65535, 65536, in_f - 1]] = 1.0 + torch.rand(5, 6, generator=gen, dtype=dtype)
        b = torch.randn(5, generator=gen, dtype=dtype) if bias else None
        x = torch.randn(batch, in_f, generator=gen, dtype=dtype)
        assert_close_fp(sparse_apply(x, w, b), x, w, b)


@pytest.mark.parametrize("batch", [1, 2, 3, 9, 17, 65])
def test_forward_multi_tile_f32(cpu_isa, batch, gen):
    """in_features=70000: two column tiles, columns >= 32768 stored as negative int16."""
    check_multi_tile(torch.float32, batch, gen)


@pytest.mark.parametrize("batch", [1, 17])
def test_forward_multi_tile_f64(batch, gen):
    check_multi_tile(torch.float64, batch, gen)


@pytest.mark.parametrize("in_f", [65536, 65537])
def test_forward_tile_boundary(cpu_isa, in_f, gen):
    """Column 65535 (stored as -1) in a single tile, and a second tile holding one column."""
    w = random_pruned(3, in_f, 0.999, torch.float32, gen)
    w[:, in_f - 1] = torch.tensor([2.0, -3.0, 0.5])
    w[1, 65535] = 4.0
    for batch in (1, 5):
        x = torch.randn(batch, in_f, generator=gen)
        assert_close_fp(sparse_apply(x, w), x, w)


@pytest.mark.parametrize("batch", [1, 2, 3, 17, 64, 65])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_empty_rows(cpu_isa, dtype, batch, gen):
    """All-zero rows (first, last and random ones) give exactly the bias (or exactly 0 without bias)."""
    w = random_pruned(64, 100, 0.5, dtype, gen, empty_rows=10)
    w[0] = 0
    w[-1] = 0
    w[7] = 0
    empty = (w == 0).all(1)
    b = torch.randn(64, generator=gen, dtype=dtype)
    x = torch.randn(batch, 100, generator=gen, dtype=dtype)
    out_b = sparse_apply(x, w, b)
    out_nb = sparse_apply(x, w, None)
    assert torch.equal(out_b[:, empty], b[empty].expand(batch, -1))
    assert torch.equal(out_nb[:, empty], torch.zeros(batch, int(empty.sum()), dtype=dtype))
    assert_close_fp(out_b, x, w, b)
    assert_close_fp(out_nb, x, w)


@pytest.mark.parametrize("batch", [0, 1, 3, 70])
def test_forward_degenerate_shapes(cpu_isa, batch, gen):
    # in_features = 0: y = bias (or zeros)
    b = torch.randn(4, generator=gen)
    x = torch.randn(batch, 0)
    out = op(x, torch.empty(0), torch.empty(0, dtype=torch.int16), torch.zeros(5, dtype=torch.int64), b, 0)
    assert torch.equal(out, b.expand(batch, 4))
    out = op(x, torch.empty(0), torch.empty(0, dtype=torch.int16), torch.zeros(5, dtype=torch.int64), None, 0)
    assert torch.equal(out, torch.zeros(batch, 4))
    # out_features = 0
    x = torch.randn(batch, 6, generator=gen)
    out = op(x, torch.empty(0), torch.empty(0, dtype=torch.int16), torch.zeros(1, dtype=torch.int64), None, 6)
    assert out.shape == (batch, 0)


@pytest.mark.parametrize("batch", [2, 40])
def test_forward_non_contiguous_inputs(cpu_isa, batch, gen):
    w = random_pruned(33, 50, 0.7, torch.float32, gen)
    v, ci, rp = to_csr(w)
    b = torch.randn(33, generator=gen)
    x = torch.randn(batch, 50, generator=gen)
    expected = op(x, v, ci, rp, b, 50)
    assert_close_fp(expected, x, w, b)
    views = {
        "transposed": x.t().contiguous().t(),
        "column-sliced": torch.cat([x, torch.randn(batch, 50, generator=gen)], 1)[:, :50],
        "column-strided": torch.stack([x, torch.randn_like(x)], 2)[:, :, 0],
        "row-strided": torch.stack([x, torch.randn_like(x)], 1)[:, 0],
    }
    for name, xv in views.items():
        assert not xv.is_contiguous() and torch.equal(xv, x), name
        assert torch.equal(op(xv, v, ci, rp, b, 50), expected), name
    # strided values / bias / col_idx / row_ptr
    sv = torch.stack([v, torch.randn_like(v)], 1)[:, 0]
    sb = torch.stack([b, torch.randn_like(b)], 1)[:, 0]
    sci = torch.stack([ci, torch.zeros_like(ci)], 1)[:, 0]
    srp = torch.stack([rp, torch.zeros_like(rp)], 1)[:, 0]
    assert not (sv.is_contiguous() or sb.is_contiguous() or sci.is_contiguous() or srp.is_contiguous())
    assert torch.equal(op(x, sv, sci, srp, sb, 50), expected)


def test_forward_independent_of_thread_count(gen):
    """Threads split rows, never a row's sum: results must be bitwise identical for any thread count."""
    w = random_pruned(1000, 300, 0.8, torch.float32, gen, empty_rows=50)
    v, ci, rp = to_csr(w)
    b = torch.randn(1000, generator=gen)
    xs = [torch.randn(n, 300, generator=gen) for n in (1, 2, 7, 100)]
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append([op(x, v, ci, rp, b, 300) for x in xs])
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, c in zip(results[0], other):
            assert torch.equal(a, c)
    for x, y in zip(xs, results[0]):
        assert_close_fp(y, x, w, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_streamed_sample_tiles(cpu_isa, dtype, gen):
    """Many samples (a conv's im2col rows): threads split the sample tiles, each packing its own (the binding
    switches at 4 tiles per thread and a packed input over 8 MiB). Odd batch (partial last tile), odd K, empty
    rows, any thread count."""
    w = random_pruned(37, 1501, 0.676, dtype, gen, empty_rows=3)
    v, ci, rp = to_csr(w)
    b = torch.randn(37, generator=gen, dtype=dtype)
    x = torch.randn(1500 + 37, 1501, generator=gen, dtype=dtype)  # 25 tiles x 1501 x 64 x 4 B = 9.6 MB
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(op(x, v, ci, rp, b, 1501))
    finally:
        torch.set_num_threads(before)
    assert_close_fp(outs[0], x, w, b)
    for other in outs[1:]:
        assert torch.equal(outs[0], other)


def test_forward_does_not_modify_inputs(gen):
    w = random_pruned(20, 30, 0.5, torch.float32, gen)
    v, ci, rp = to_csr(w)
    b = torch.randn(20, generator=gen)
    x = torch.randn(9, 30, generator=gen)
    saved = [t.clone() for t in (x, v, ci, rp, b)]
    out = op(x, v, ci, rp, b, 30)
    for t, s in zip((x, v, ci, rp, b), saved):
        assert torch.equal(t, s)
    assert out.data_ptr() not in {t.data_ptr() for t in (x, v, b)}


# ------------------------------------------------------------------------------------ NaN / Inf semantics
#
# Defined behavior: the same as dense F.linear on the pruned weight. Dense computes 0 * x for pruned weights,
# so a NaN or Inf in x[b, k] makes y[b, o] NaN for every row o that does not store column k (0 * Inf = NaN),
# and w * x (NaN, or +-Inf with the sign of w) where it does. The kernels skip zeros, so the op restores this.

@pytest.mark.parametrize("batch", [1, 2, 3, 8, 9, 17, 64, 65])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_in_x_propagates_as_dense(cpu_isa, dtype, batch, gen):
    w = random_pruned(40, 60, 0.8, dtype, gen, empty_rows=3)
    b = torch.randn(40, generator=gen, dtype=dtype)
    x = torch.randn(batch, 60, generator=gen, dtype=dtype)
    nan_at = torch.rand(batch, 60, generator=gen) < 0.02
    nan_at[0, 5] = True
    x[nan_at] = float("nan")
    out = sparse_apply(x, w, b)
    dense = F.linear(x, w, b)
    assert torch.equal(torch.isnan(out), torch.isnan(dense))
    assert torch.equal(torch.isnan(out), nan_at.any(1, keepdim=True).expand_as(out))
    # samples without a NaN are untouched and still right
    clean = ~nan_at.any(1)
    assert_within_bound(out[clean], ref_linear(x[clean], w, b), linear_l2(x[clean], w, b), 61.0, dtype)


@pytest.mark.parametrize("batch", [1, 3, 33])
def test_inf_in_x_as_dense(cpu_isa, batch, gen):
    """An Inf in x[b, k]: +-Inf (sign of W) in y[b, o] where W[o, k] != 0, NaN (0 * Inf) where W[o, k] == 0."""
    w = random_pruned(30, 50, 0.7, torch.float32, gen)
    x = torch.randn(batch, 50, generator=gen)
    k = 11
    w[:5, k] = torch.tensor([1.0, -2.0, 0.0, 3.0, 0.0])
    x[batch - 1, k] = float("inf")
    out = sparse_apply(x, w)
    hit = w[:, k] != 0
    assert torch.equal(out[batch - 1, hit], torch.sign(w[hit, k]) * float("inf"))
    assert torch.isnan(out[batch - 1, ~hit]).all()
    assert torch.isfinite(out[: batch - 1]).all()
    dense = F.linear(x, w)
    assert torch.equal(torch.isnan(out), torch.isnan(dense)) and torch.equal(torch.isinf(out), torch.isinf(dense))


def test_nonfinite_input_in_multi_tile_layer_as_dense(gen):
    """The NaN pattern restore also maps columns of the second 65536-column tile correctly."""
    w = random_pruned(6, 70000, 0.99, torch.float32, gen)
    w[2, 69000] = 1.5
    x = torch.randn(2, 70000, generator=gen)
    x[1, 69000] = float("inf")
    out = sparse_apply(x, w)
    dense = F.linear(x, w)
    assert torch.equal(torch.isnan(out), torch.isnan(dense)) and torch.equal(torch.isinf(out), torch.isinf(dense))
    assert out[1, 2] == float("inf")


@pytest.mark.parametrize("batch", [1, 5])
def test_nan_in_weight(cpu_isa, batch, gen):
    """A NaN stored as a nonzero (TiledCSR keeps NaN) makes its whole output column NaN, as dense does."""
    w = random_pruned(10, 20, 0.5, torch.float32, gen)
    w[3, 4] = float("nan")
    x = torch.randn(batch, 20, generator=gen)
    out = sparse_apply(x, w)
    assert torch.equal(torch.isnan(out), torch.isnan(F.linear(x, w)))
    assert torch.isnan(out[:, 3]).all() and not torch.isnan(out[:, torch.arange(10) != 3]).any()


# --------------------------------------------------------------------------------------------- arg errors

def make_args(gen, dtype=torch.float32, out_f=4, in_f=10, batch=3):
    w = random_pruned(out_f, in_f, 0.5, dtype, gen)
    w[0, 0] = 1.0
    v, ci, rp = to_csr(w)
    x = torch.randn(batch, in_f, generator=gen, dtype=dtype)
    b = torch.randn(out_f, generator=gen, dtype=dtype)
    return dict(x=x, values=v, col_idx=ci, row_ptr=rp, bias=b, in_features=in_f)


def call(a):
    return op(a["x"], a["values"], a["col_idx"], a["row_ptr"], a["bias"], a["in_features"])


ERROR_CASES = {
    "x_dtype": (lambda a: a.update(x=a["x"].double()), r"x dtype Double does not match values dtype Float"),
    "x_columns": (lambda a: a.update(x=a["x"][:, :9]), r"x must have 10 columns, got shape \[3, 9\]"),
    "x_3d": (lambda a: a.update(x=a["x"].unsqueeze(0)), r"x must be 2-D \[batch, 10\], got shape \[1, 3, 10\]"),
    "x_1d": (lambda a: a.update(x=a["x"][0]), r"x must be 2-D"),
    "bias_shape": (lambda a: a.update(bias=a["bias"][:3]), r"bias must have shape \[4\], got \[3\]"),
    "bias_2d": (lambda a: a.update(bias=a["bias"].unsqueeze(0)), r"bias must have shape \[4\], got \[1, 4\]"),
    "bias_dtype": (lambda a: a.update(bias=a["bias"].double()), r"bias dtype Double does not match values dtype"),
    "col_idx_dtype": (lambda a: a.update(col_idx=a["col_idx"].int()), r"col_idx must be int16 \(uint16 bits\), got Int"),
    "col_idx_2d": (lambda a: a.update(col_idx=a["col_idx"].unsqueeze(0)), r"col_idx must be 1-D"),
    "col_idx_length": (lambda a: a.update(col_idx=a["col_idx"][:-1]), r"col_idx has \d+ entries but values has"),
    "row_ptr_dtype": (lambda a: a.update(row_ptr=a["row_ptr"].int()), r"row_ptr must be int64, got Int"),
    "row_ptr_empty": (lambda a: a.update(row_ptr=a["row_ptr"][:0]), r"row_ptr must have rows \* 1 \+ 1 entries"),
    # a shorter row_ptr describes fewer rows (one tile), so it is caught by its end (bias off: no shape clash)
    "row_ptr_short": (lambda a: a.update(row_ptr=a["row_ptr"][:-1], bias=None),
                      r"row_ptr must start at 0 and end at nnz"),
    "row_ptr_end": (lambda a: a["row_ptr"].__setitem__(-1, a["row_ptr"][-1] + 1),
                    r"row_ptr must start at 0 and end at nnz=\d+, got 0 \.\. \d+"),
    "row_ptr_start": (lambda a: a["row_ptr"].__setitem__(0, 1), r"row_ptr must start at 0"),
    "row_ptr_decreasing": (lambda a: a["row_ptr"].__setitem__(1, a["row_ptr"][-1] + 5),
                           r"row_ptr must be non-decreasing"),
    "values_2d": (lambda a: a.update(values=a["values"].unsqueeze(1)), r"values must be 1-D"),
    "in_features_negative": (lambda a: a.update(in_features=-1), r"in_features must be >= 0"),
    "float16": (lambda a: a.update(x=a["x"].half(), values=a["values"].half(), bias=a["bias"].half()),
                r"on CPU values must be float32 or float64, got Half"),
    "bfloat16": (lambda a: a.update(x=a["x"].bfloat16(), values=a["values"].bfloat16(), bias=None),
                 r"on CPU values must be float32 or float64, got BFloat16"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_forward_argument_errors(case, gen):
    a = make_args(gen)
    assert call(a).shape == (3, 4)  # the unmodified arguments are valid
    mutate, pattern = ERROR_CASES[case]
    a["row_ptr"] = a["row_ptr"].clone()
    mutate(a)
    with pytest.raises(RuntimeError, match=r"sparsecomp::sparse_linear: " + pattern):
        call(a)


def test_forward_row_ptr_wrong_length_multi_tile(gen):
    """With 2 column tiles row_ptr needs rows * 2 + 1 entries; an even count cannot be right."""
    w = random_pruned(3, 70000, 0.9999, torch.float32, gen)
    v, ci, rp = to_csr(w)
    x = torch.randn(1, 70000, generator=gen)
    assert rp.numel() == 7
    with pytest.raises(RuntimeError, match=r"row_ptr must have rows \* 2 \+ 1 entries for in_features=70000, got 6"):
        op(x, v, ci, rp[:-1], None, 70000)
    with pytest.raises(RuntimeError, match=r"got 8"):
        op(x, v, ci, torch.cat([rp, rp[-1:]]), None, 70000)


def test_backward_ops_argument_errors(gen):
    a = make_args(gen)
    g = torch.randn(3, 4, generator=gen)
    v, ci, rp, x = a["values"], a["col_idx"], a["row_ptr"], a["x"]
    with pytest.raises(RuntimeError, match=r"sparse_linear_backward_input: grad_out must have 4 columns"):
        op_bwd_input(g[:, :3], v, ci, rp, 10)
    with pytest.raises(RuntimeError, match=r"sparse_linear_backward_input: grad_out dtype Double does not match"):
        op_bwd_input(g.double(), v, ci, rp, 10)
    short = rp.clone()
    short[-1] -= 1
    with pytest.raises(RuntimeError, match=r"sparse_linear_backward_input: row_ptr must start at 0 and end at nnz"):
        op_bwd_input(g, v, ci, short, 10)
    with pytest.raises(RuntimeError, match=r"sparse_linear_backward_values: grad_out has 3 rows but x has 2"):
        op_bwd_values(g, x[:2], ci, rp, 10)
    with pytest.raises(RuntimeError, match=r"sparse_linear_backward_values: x must have 10 columns"):
        op_bwd_values(g, x[:, :9], ci, rp, 10)
    with pytest.raises(RuntimeError, match=r"sparse_linear_backward_values: col_idx must be int16"):
        op_bwd_values(g, x, ci.long(), rp, 10)
    with pytest.raises(RuntimeError, match=r"sparse_linear_backward_values: on CPU x must be float32 or float64"):
        op_bwd_values(g.half(), x.half(), ci, rp, 10)
    bad = rp.clone()
    bad[1] = bad[-1] + 1
    with pytest.raises(RuntimeError, match=r"sparse_linear_backward_values: row_ptr must be non-decreasing"):
        op_bwd_values(g, x, ci, bad, 10)


# ----------------------------------------------------------------------------------------------- backward

def dense_grads(x, w, b, g):
    """float64 dense autograd: (grad_x, grad_W, grad_b) of sum(g * (x @ w.T + b))."""
    xd = x.detach().double().requires_grad_()
    wd = w.detach().double().requires_grad_()
    bd = b.detach().double().requires_grad_() if b is not None else None
    y = F.linear(xd, wd, bd)
    y.backward(g.double())
    return xd.grad, wd.grad, (bd.grad if bd is not None else None)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (17, 3), (64, 1000)], ids=shape_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_matches_dense(dtype, shape, sparsity, gen):
    out_f, in_f = shape
    w = random_pruned(out_f, in_f, sparsity, dtype, gen, empty_rows=1 if out_f > 2 else 0)
    mask = w != 0
    v, ci, rp = to_csr(w)
    for batch in (0, 1, 2, 5, 65):
        for with_bias in (True, False):
            x = torch.randn(batch, in_f, generator=gen, dtype=dtype).requires_grad_()
            vals = v.clone().requires_grad_()
            b = torch.randn(out_f, generator=gen, dtype=dtype).requires_grad_() if with_bias else None
            g = torch.randn(batch, out_f, generator=gen, dtype=dtype)
            op(x, vals, ci, rp, b, in_f).backward(g)
            gx, gw, gb = dense_grads(x, w, b, g)
            ctx = f"batch={batch} bias={with_bias}"
            # grad_x[b, k] = sum_o g[b, o] W[o, k]: terms = nonzeros of column k
            assert_within_bound(x.grad, gx, linear_l2(g, w.T), mask.sum(0).double() + 1, dtype,
                                what=f"grad_x {ctx}")
            # grad_values[p] = dense grad_W at the p-th nonzero (row-major = storage order); batch terms
            l2_w = linear_l2(g.T, x.detach().T)[mask]
            assert vals.grad.shape == v.shape
            assert_within_bound(vals.grad, gw[mask], l2_w, batch + 1.0, dtype, what=f"grad_values {ctx}")
            if with_bias:
                assert_within_bound(b.grad, gb, g.double().square().sum(0).sqrt(), batch + 1.0, dtype, what=f"grad_b {ctx}")


def test_backward_multi_tile(gen):
    in_f = 70000
    w = random_pruned(4, in_f, 0.995, torch.float32, gen)
    w[:, [32768, 65535, 65536, in_f - 1]] = 1.5
    mask = w != 0
    v, ci, rp = to_csr(w)
    x = torch.randn(3, in_f, generator=gen).requires_grad_()
    vals = v.clone().requires_grad_()
    g = torch.randn(3, 4, generator=gen)
    op(x, vals, ci, rp, None, in_f).backward(g)
    gx, gw, _ = dense_grads(x, w, None, g)
    assert_within_bound(x.grad, gx, linear_l2(g, w.T), mask.sum(0).double() + 1, torch.float32)
    assert_within_bound(vals.grad, gw[mask], linear_l2(g.T, x.detach().T)[mask], 4.0,
                        torch.float32)
    assert torch.equal(x.grad[:, ~mask.any(0)], torch.zeros(3, int((~mask.any(0)).sum())))


def test_backward_non_contiguous(gen):
    """x and grad_out given as strided views (e.g. from a transpose upstream) give the contiguous grads."""
    w = random_pruned(12, 20, 0.5, torch.float64, gen)
    v, ci, rp = to_csr(w)
    x = torch.randn(6, 20, generator=gen, dtype=torch.float64)
    g = torch.randn(6, 12, generator=gen, dtype=torch.float64)
    grads = []
    for strided in (False, True):
        xi = (x.t().contiguous().t() if strided else x.clone()).requires_grad_()
        vals = v.clone().requires_grad_()
        gi = torch.stack([g, torch.zeros_like(g)], 2)[:, :, 0] if strided else g
        assert xi.is_contiguous() != strided and gi.is_contiguous() != strided
        op(xi, vals, ci, rp, None, 20).backward(gi)
        grads.append((xi.grad, vals.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    torch.testing.assert_close(grads[0][0], g @ w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0][1], (g.T @ x)[w != 0], rtol=1e-12, atol=1e-12)


def test_backward_ops_direct(gen):
    """The two backward ops called directly, incl. batch 0 (grad_values must be zeros, not uninitialized)."""
    w = random_pruned(20, 30, 0.6, torch.float64, gen)
    mask = w != 0
    v, ci, rp = to_csr(w)
    for batch in (0, 4):
        g = torch.randn(batch, 20, generator=gen, dtype=torch.float64)
        x = torch.randn(batch, 30, generator=gen, dtype=torch.float64)
        gx = op_bwd_input(g, v, ci, rp, 30)
        gv = op_bwd_values(g, x, ci, rp, 30)
        assert gx.shape == (batch, 30) and gv.shape == v.shape
        torch.testing.assert_close(gx, g @ w, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gv, (g.T @ x)[mask], rtol=1e-12, atol=1e-12)
    gv = op_bwd_values(torch.full((0, 20), float("nan"), dtype=torch.float64),
                       torch.empty(0, 30, dtype=torch.float64), ci, rp, 30)
    assert torch.equal(gv, torch.zeros_like(v))


def test_backward_needs_input_grad_subsets(gen):
    w = random_pruned(8, 12, 0.5, torch.float64, gen)
    v, ci, rp = to_csr(w)
    x = torch.randn(5, 12, generator=gen, dtype=torch.float64)
    for x_rg, v_rg in ((True, False), (False, True)):
        xx = x.clone().requires_grad_(x_rg)
        vv = v.clone().requires_grad_(v_rg)
        op(xx, vv, ci, rp, None, 12).sum().backward()
        assert (xx.grad is not None) == x_rg and (vv.grad is not None) == v_rg


# --------------------------------------------------------------------------------- opcheck / gradcheck

def opcheck_args(gen, dtype, batch, bias, rg_x=False, rg_v=False, rg_b=False):
    w = random_pruned(6, 9, 0.5, dtype, gen)
    w[0, 0] = 1.0
    v, ci, rp = to_csr(w)
    x = torch.randn(batch, 9, generator=gen, dtype=dtype).requires_grad_(rg_x)
    b = torch.randn(6, generator=gen, dtype=dtype).requires_grad_(rg_b) if bias else None
    return (x, v.clone().requires_grad_(rg_v), ci, rp, b, 9)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("grads", ["none", "x", "values", "all"])
def test_opcheck_forward(dtype, bias, grads, gen):
    rg_x = grads in ("x", "all")
    rg_v = grads in ("values", "all")
    rg_b = grads == "all" and bias
    for batch in (1, 5):
        torch.library.opcheck(op, opcheck_args(gen, dtype, batch, bias, rg_x, rg_v, rg_b))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck_backward_ops(dtype, gen):
    x, v, ci, rp, _, in_f = opcheck_args(gen, dtype, 5, False)
    g = torch.randn(5, 6, generator=gen, dtype=dtype)
    torch.library.opcheck(op_bwd_input, (g, v.detach(), ci, rp, in_f))
    torch.library.opcheck(op_bwd_values, (g, x, ci, rp, in_f))


@pytest.mark.parametrize("batch", [2, 5])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gradcheck(batch, bias, gen):
    w = random_pruned(5, 7, 0.5, torch.float64, gen, empty_rows=1)
    v, ci, rp = to_csr(w)
    x = torch.randn(batch, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    vals = v.clone().requires_grad_()
    b = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True) if bias else None

    def f(x, vals, b):
        return op(x, vals, ci, rp, b, 7)

    assert torch.autograd.gradcheck(f, (x, vals, b))
