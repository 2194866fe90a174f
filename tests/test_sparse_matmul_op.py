"""sparsecomp::sparse_matmul (out[n] = W @ x[n] + b, x k-major) against float64 references, every CPU ISA."""
import pytest
import torch

from conftest import assert_close_fp, random_pruned, to_csr

op = torch.ops.sparsecomp.sparse_matmul

# Column counts straddling the vector widths (8, 16) and tile widths (32, 64): in-place full tiles, packed ragged
# last tiles, and a single short tile.
COLUMNS = [1, 7, 8, 9, 16, 17, 64, 65, 130]


def reference_check(out, x, w, b):
    """Each sample n is a linear layer applied to the columns of x[n]: reuse the float64 linear bound."""
    for n in range(x.shape[0]):
        assert_close_fp(out[n].T.contiguous(), x[n].T, w, b)


@pytest.mark.parametrize("columns", COLUMNS)
@pytest.mark.parametrize("shape,sparsity", [((3, 17), 0.5), ((33, 70), 0.9), ((16, 9), 0.0), ((5, 12), 1.0)])
def test_matches_float64_reference(cpu_isa, gen, columns, shape, sparsity):
    out_f, in_f = shape
    w = random_pruned(out_f, in_f, sparsity, generator=gen)
    b = torch.randn(out_f, generator=gen)
    x = torch.randn(2, in_f, columns, generator=gen)
    out = op(x, *to_csr(w), b, in_f)
    assert out.shape == (2, out_f, columns)
    reference_check(out, x, w, b)


def test_float64_without_bias_and_noncontiguous_input(gen):
    w = random_pruned(11, 20, 0.7, dtype=torch.float64, generator=gen)
    x = torch.randn(3, 37, 20, dtype=torch.float64, generator=gen).transpose(1, 2)  # not contiguous
    out = op(x, *to_csr(w), None, 20)
    torch.testing.assert_close(out, w @ x, rtol=1e-12, atol=1e-12)


def test_empty_batch_and_empty_columns(gen):
    w = random_pruned(4, 6, 0.5, generator=gen)
    assert op(torch.randn(0, 6, 5), *to_csr(w), None, 6).shape == (0, 4, 5)
    assert op(torch.randn(2, 6, 0), *to_csr(w), None, 6).shape == (2, 4, 0)


@pytest.mark.parametrize("bad,match", [
    (lambda x: x[0], r"x must be 3-D \[batch, 6, columns\]"),
    (lambda x: x[:, :5], r"x must be 3-D \[batch, 6, columns\]"),
    (lambda x: x.double(), r"x dtype Double does not match values dtype Float"),
])
def test_errors_name_the_argument(gen, bad, match):
    w = random_pruned(4, 6, 0.5, generator=gen)
    with pytest.raises(RuntimeError, match=match):
        op(bad(torch.randn(2, 6, 5)), *to_csr(w), None, 6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(gen, dtype):
    w = random_pruned(7, 10, 0.6, dtype=dtype, generator=gen)
    values, col_idx, row_ptr = to_csr(w)
    x = torch.randn(2, 10, 19, dtype=dtype, generator=gen, requires_grad=True)
    b = torch.randn(7, dtype=dtype, generator=gen, requires_grad=True)
    torch.library.opcheck(op, (x, values.clone().requires_grad_(), col_idx, row_ptr, b, 10))
    torch.library.opcheck(op, (x.detach(), values, col_idx, row_ptr, None, 10))


def test_gradcheck(gen):
    w = random_pruned(5, 8, 0.5, dtype=torch.float64, generator=gen)
    values, col_idx, row_ptr = to_csr(w)
    x = torch.randn(2, 8, 9, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, generator=gen, requires_grad=True)
    v = values.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, v, b: op(x, v, col_idx, row_ptr, b, 8), (x, v, b))


def test_nonfinite_input_as_dense(cpu_isa, gen):
    """NaN/Inf in x give the NaN/Inf pattern of the dense product W @ x[n] (0 * Inf = NaN for pruned weights)."""
    w = random_pruned(9, 12, 0.7, generator=gen)
    x = torch.randn(3, 12, 21, generator=gen)
    x[0, 4, 3] = float("nan")
    x[2, 7, 20] = float("inf")
    out = op(x, *to_csr(w), None, 12)
    dense = w @ x
    assert torch.equal(out.isnan(), dense.isnan()) and torch.equal(out.isinf(), dense.isinf())
    finite = dense.isfinite()
    torch.testing.assert_close(out[finite], dense[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_nonfinite_in_any_sample_tile_as_dense(cpu_isa, gen, threads, dtype):
    """The finiteness scan runs per sample tile inside the kernel loop: a single NaN or Inf anywhere (first,
    middle or ragged last tile of any sample, first or last input row) must still give the dense pattern."""
    w = random_pruned(40, 12, 0.7, dtype=dtype, generator=gen)  # 40 rows: several row chunks per tile
    w[:, 0] = 0  # input row 0 stored by no output row: every output of its columns turns NaN
    x = torch.randn(3, 12, 130, dtype=dtype, generator=gen)  # 130 columns: 3-5 tiles, the last one ragged
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n, k, col in [(0, 0, 0), (0, 11, 40), (1, 5, 64), (1, 0, 100), (2, 11, 129), (2, 3, 127)]:
            for bad in (float("nan"), float("inf")):
                xb = x.clone()
                xb[n, k, col] = bad
                out = op(xb, *to_csr(w), None, 12)
                dense = w @ xb
                ctx = f"x[{n}, {k}, {col}] = {bad}"
                assert torch.equal(out.isnan(), dense.isnan()), ctx
                assert torch.equal(out.isinf(), dense.isinf()), ctx
                assert out.isnan().any(), ctx
    finally:
        torch.set_num_threads(before)
