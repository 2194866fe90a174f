"""CUDA implementation of the sparse_linear ops against float64 dense references.

Skipped without a CUDA device. The weight is built dense (random values, random zero pattern, some empty rows) and
converted to the tiled-CSR operands; the reference is computed in float64 from the same (already rounded) inputs.

Tolerances: the kernels multiply inputs that are exact in their dtype, accumulate in fp32 and round the result
once to the output dtype. So per element |out - ref| <= c * sqrt(K) * 2^-24 * sum|terms| (fp32 accumulation over K
terms; typical rounding errors grow like sqrt(K), the worst case like K) + 2 * u(dtype) * |ref| (final rounding, with
u = 2^-24, 2^-11, 2^-8 for fp32, fp16, bf16), where sum|terms| is the same product computed on absolute values.
This bound is per element, so it stays tight for outputs that cancel to near zero.
"""
import contextlib
import math

import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TILE = 65536
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
SHAPES = [(1, 1), (17, 33), (1000, 3), (256, 70000)]  # (out_features, in_features); the last has 2 column tiles
SPARSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]
BATCHES = [0, 1, 3, 8, 17, 64, 130]


@pytest.fixture(scope="module", autouse=True)
def native():
    """Imports the package (which registers the ops) only when a GPU is there, and needs its CUDA build."""
    import sparsecomp  # a GPU machine must be able to import it: no importorskip
    if not sparsecomp._C.built_with_cuda():
        pytest.skip("sparsecomp was built without CUDA")
    return sparsecomp


def tiled_csr(w):
    """Dense [rows, cols] -> (values, col_idx int16, row_ptr int64) in the tiled-CSR format of csrc/cpu/spmm.h."""
    try:
        from sparsecomp.formats.sparse import TiledCSR
    except ImportError:
        TiledCSR = None
    if TiledCSR is not None and hasattr(TiledCSR, "from_dense"):
        t = TiledCSR.from_dense(w)
        return t.values, t.col_idx, t.row_ptr
    rows, cols = w.shape
    tiles = 1 if cols <= TILE else -(-cols // TILE)
    r, c = w.nonzero(as_tuple=True)  # row-major order: by row, then column
    values = w[r, c].contiguous()
    in_tile = c % TILE
    col_idx = torch.where(in_tile >= 32768, in_tile - 65536, in_tile).to(torch.int16)  # uint16 bits
    counts = torch.bincount(r * tiles + c // TILE, minlength=rows * tiles)
    row_ptr = torch.zeros(rows * tiles + 1, dtype=torch.int64, device=w.device)
    row_ptr[1:] = counts.cumsum(0)
    return values, col_idx, row_ptr


_weights = {}


def random_weight(rows, cols, sparsity, dtype, seed=0):
    """(W dense in dtype on the GPU, its tiled-CSR operands); every 7th row is empty when sparsity > 0."""
    key = (rows, cols, sparsity, dtype, seed)
    if key not in _weights:
        g = torch.Generator(device="cuda").manual_seed(seed)
        w = torch.randn(rows, cols, generator=g, device="cuda")
        w[torch.rand(rows, cols, generator=g, device="cuda") < sparsity] = 0
        if sparsity > 0:
            w[::7] = 0
        w = w.to(dtype)
        _weights[key] = (w, tiled_csr(w))
    return _weights[key]


def randn(*shape, dtype, seed=1):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(*shape, generator=g, device="cuda").to(dtype)


def assert_close_to_reference(out, ref, mag, k, dtype):
    """out: kernel result; ref / mag: float64 result and the same product on absolute values; k: terms per sum."""
    assert out.dtype == dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    tol = 8 * math.sqrt(max(k, 1)) * 2.0**-24 * mag + 2 * UNIT_ROUNDOFF[dtype] * ref.abs() + torch.finfo(dtype).tiny
    err = (out.double() - ref).abs()
    bad = err > tol
    if bad.any():
        i = bad.nonzero()[0].tolist()
        pytest.fail(
            f"{int(bad.sum())} of {out.numel()} elements off; first at {i}: got {out[tuple(i)].item()}, "
            f"expected {ref[tuple(i)].item()} (tolerance {tol[tuple(i)].item():.3g})"
        )


def linear_reference(x, w, b):
    ref = x.double() @ w.double().T
    mag = x.double().abs() @ w.double().abs().T
    if b is not None:
        ref = ref + b.double()
        mag = mag + b.double().abs()
    return ref, mag


# ------------------------------------------------------------------------------------------------------ forward


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("batch", BATCHES)
def test_forward_matches_float64(dtype, shape, sparsity, batch):
    rows, cols = shape
    w, (values, col_idx, row_ptr) = random_weight(rows, cols, sparsity, dtype)
    x = randn(batch, cols, dtype=dtype)
    b = randn(rows, dtype=dtype, seed=2) if batch % 2 == 1 else None  # with and without bias on both kernels
    out = torch.ops.sparsecomp.sparse_linear(x, values, col_idx, row_ptr, b, cols)
    ref, mag = linear_reference(x, w, b)
    assert_close_to_reference(out, ref, mag, cols, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", [1, 5, 8, 9, 33])  # both kernels
def test_forward_views_and_unaligned_operands(dtype, batch):
    """Non-contiguous x, and values / col_idx starting at odd offsets (the kernels' vector loads need alignment)."""
    rows, cols = 67, 301
    w, (values, col_idx, row_ptr) = random_weight(rows, cols, 0.5, dtype)
    values_odd = torch.cat([values.new_zeros(1), values])[1:]
    col_idx_odd = torch.cat([col_idx.new_zeros(1), col_idx])[1:]
    x = randn(cols, batch, dtype=dtype).t()  # [batch, cols], transposed view
    b = randn(rows, dtype=dtype, seed=3)
    out = torch.ops.sparsecomp.sparse_linear(x, values_odd, col_idx_odd, row_ptr, b, cols)
    ref, mag = linear_reference(x, w, b)
    assert_close_to_reference(out, ref, mag, cols, dtype)
    assert out.is_contiguous()


@pytest.mark.parametrize("cols", [0, 65536, 65537, 3 * 65536 + 5])
def test_forward_column_tile_edges(cols):
    rows, batch = 5, 11
    w, (values, col_idx, row_ptr) = random_weight(rows, cols, 0.999 if cols > 1000 else 0.0, torch.float32)
    for bt in (3, batch):
        x = randn(bt, cols, dtype=torch.float32)
        b = randn(rows, dtype=torch.float32, seed=4)
        out = torch.ops.sparsecomp.sparse_linear(x, values, col_idx, row_ptr, b, cols)
        ref, mag = linear_reference(x, w, b)
        assert_close_to_reference(out, ref, mag, cols, torch.float32)


def test_forward_empty_outputs():
    w, (values, col_idx, row_ptr) = random_weight(0, 10, 0.5, torch.float32)
    assert torch.ops.sparsecomp.sparse_linear(randn(4, 10, dtype=torch.float32), values, col_idx, row_ptr, None,
                                              10).shape == (4, 0)
    w, (values, col_idx, row_ptr) = random_weight(6, 10, 0.5, torch.float32)
    out = torch.ops.sparsecomp.sparse_linear(randn(0, 10, dtype=torch.float32), values, col_idx, row_ptr, None, 10)
    assert out.shape == (0, 6) and out.device.type == "cuda"


def test_forward_on_side_stream_and_second_device():
    w, (values, col_idx, row_ptr) = random_weight(300, 200, 0.9, torch.float32)
    x = randn(40, 200, dtype=torch.float32)
    ref, mag = linear_reference(x, w, None)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = torch.ops.sparsecomp.sparse_linear(x, values, col_idx, row_ptr, None, 200)
    torch.cuda.current_stream().wait_stream(stream)
    assert_close_to_reference(out, ref, mag, 200, torch.float32)
    if torch.cuda.device_count() > 1:  # operands on cuda:1 while cuda:0 is current: the device guard
        dev = torch.device("cuda", 1)
        out1 = torch.ops.sparsecomp.sparse_linear(x.to(dev), values.to(dev), col_idx.to(dev), row_ptr.to(dev),
                                                  None, 200)
        assert out1.device == dev
        assert_close_to_reference(out1.to("cuda:0"), ref, mag, 200, torch.float32)


# ----------------------------------------------------------------------------------------------------- backward


def _backward_cases():
    for dtype in DTYPES:
        for shape in [(1, 1), (17, 33), (1000, 3), (256, 70000)]:
            for batch in [0, 1, 3, 17, 130]:
                yield pytest.param(dtype, shape, 0.9, batch, id=f"{dtype}-{shape[0]}x{shape[1]}-b{batch}")
    for sparsity in [0.0, 1.0]:
        yield pytest.param(torch.float32, (17, 33), sparsity, 9, id=f"float32-17x33-s{sparsity}-b9")


@contextlib.contextmanager
def deterministic_algorithms(enabled):
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


# backward_input has two CUDA paths: fp32 atomics (default) and, under torch.use_deterministic_algorithms, the
# forward kernel run on W^T built by a stable sort.
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("dtype,shape,sparsity,batch", list(_backward_cases()))
def test_backward_input_matches_float64(dtype, shape, sparsity, batch, deterministic):
    rows, cols = shape
    w, (values, col_idx, row_ptr) = random_weight(rows, cols, sparsity, dtype)
    grad_out = randn(batch, rows, dtype=dtype, seed=5)
    with deterministic_algorithms(deterministic):
        grad_x = torch.ops.sparsecomp.sparse_linear_backward_input(grad_out, values, col_idx, row_ptr, cols)
    ref = grad_out.double() @ w.double()
    mag = grad_out.double().abs() @ w.double().abs()
    assert_close_to_reference(grad_x, ref, mag, rows, dtype)


@pytest.mark.parametrize("batch", [3, 64])
def test_backward_input_deterministic_mode_is_bitwise_reproducible(batch):
    w, (values, col_idx, row_ptr) = random_weight(1000, 3, 0.5, torch.float32)
    grad_out = randn(batch, 1000, dtype=torch.float32, seed=6)
    with deterministic_algorithms(True):
        a = torch.ops.sparsecomp.sparse_linear_backward_input(grad_out, values, col_idx, row_ptr, 3)
        b = torch.ops.sparsecomp.sparse_linear_backward_input(grad_out, values, col_idx, row_ptr, 3)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype,shape,sparsity,batch", list(_backward_cases()))
def test_backward_values_matches_float64(dtype, shape, sparsity, batch):
    rows, cols = shape
    w, (values, col_idx, row_ptr) = random_weight(rows, cols, sparsity, dtype)
    x = randn(batch, cols, dtype=dtype, seed=7)
    grad_out = randn(batch, rows, dtype=dtype, seed=8)
    grad_values = torch.ops.sparsecomp.sparse_linear_backward_values(grad_out, x, col_idx, row_ptr, cols)
    r, c = w.nonzero(as_tuple=True)  # same order as the stored nonzeros
    terms = grad_out.double()[:, r] * x.double()[:, c]
    assert_close_to_reference(grad_values, terms.sum(0), terms.abs().sum(0), batch, dtype)


# --------------------------------------------------------------------------------------------- opcheck, errors


def _opcheck_samples():
    out = []
    for dtype in DTYPES:
        for rows, cols, batch in [(17, 33, 3), (40, 70000, 12)]:
            w, (values, col_idx, row_ptr) = random_weight(rows, cols, 0.99 if cols > 1000 else 0.5, dtype)
            x = randn(batch, cols, dtype=dtype)
            b = randn(rows, dtype=dtype, seed=2)
            g = randn(batch, rows, dtype=dtype, seed=5)
            out.append((dtype, x, values, col_idx, row_ptr, b, g, cols))
    return out


def test_opcheck():
    for dtype, x, values, col_idx, row_ptr, b, g, cols in _opcheck_samples():
        torch.library.opcheck(torch.ops.sparsecomp.sparse_linear.default, (x, values, col_idx, row_ptr, b, cols))
        torch.library.opcheck(torch.ops.sparsecomp.sparse_linear.default, (x, values, col_idx, row_ptr, None, cols))
        torch.library.opcheck(torch.ops.sparsecomp.sparse_linear_backward_input.default,
                              (g, values, col_idx, row_ptr, cols))
        torch.library.opcheck(torch.ops.sparsecomp.sparse_linear_backward_values.default,
                              (g, x, col_idx, row_ptr, cols))
        if dtype == torch.float32:  # through the registered autograd formula
            xr, vr = x.clone().requires_grad_(), values.clone().requires_grad_()
            torch.library.opcheck(torch.ops.sparsecomp.sparse_linear.default, (xr, vr, col_idx, row_ptr, b, cols))


def test_malformed_structure_does_not_fault():
    """row_ptr is not validated on CUDA (that would need a device sync): garbage must not fault the device."""
    rows, cols = 37, 70001
    g = torch.Generator(device="cuda").manual_seed(9)
    row_ptr = torch.randint(-100, 200, (rows * 2 + 1,), generator=g, device="cuda")
    col_idx = torch.randint(-32768, 32768, (50,), generator=g, device="cuda").to(torch.int16)
    values = torch.randn(50, device="cuda")
    for batch in (3, 40):
        x = torch.randn(batch, cols, device="cuda")
        torch.ops.sparsecomp.sparse_linear(x, values, col_idx, row_ptr, None, cols)
        torch.ops.sparsecomp.sparse_linear_backward_input(torch.randn(batch, rows, device="cuda"), values, col_idx,
                                                         row_ptr, cols)
        torch.ops.sparsecomp.sparse_linear_backward_values(torch.randn(batch, rows, device="cuda"), x, col_idx,
                                                          row_ptr, cols)
    torch.cuda.synchronize()  # an illegal access would surface here


def test_error_messages():
    w, (values, col_idx, row_ptr) = random_weight(17, 33, 0.5, torch.float32)
    x = randn(4, 33, dtype=torch.float32)
    op = torch.ops.sparsecomp.sparse_linear
    with pytest.raises(RuntimeError, match=r"x is on cpu but values is on cuda"):
        op(x.cpu(), values, col_idx, row_ptr, None, 33)
    with pytest.raises(RuntimeError, match=r"values is on cuda.* but col_idx and row_ptr are on cpu"):
        op(x, values, col_idx.cpu(), row_ptr.cpu(), None, 33)
    with pytest.raises(RuntimeError, match=r"on CUDA values must be float32, float16 or bfloat16, got Double"):
        op(x.double(), values.double(), col_idx, row_ptr, None, 33)
    with pytest.raises(RuntimeError, match=r"x dtype .* does not match values dtype"):
        op(x.half(), values, col_idx, row_ptr, None, 33)
    with pytest.raises(RuntimeError, match=r"bias must have shape \[17\]"):
        op(x, values, col_idx, row_ptr, torch.zeros(16, device="cuda"), 33)
    with pytest.raises(RuntimeError, match=r"x must have 33 columns"):
        op(x[:, :32], values, col_idx, row_ptr, None, 33)
    with pytest.raises(RuntimeError, match=r"col_idx must be int16"):
        op(x, values, col_idx.int(), row_ptr, None, 33)
    with pytest.raises(RuntimeError, match=r"on CUDA x must be float32, float16 or bfloat16"):
        torch.ops.sparsecomp.sparse_linear_backward_values(
            torch.randn(4, 17, device="cuda", dtype=torch.float64), x.double(), col_idx, row_ptr, 33)
    with pytest.raises(RuntimeError, match=r"grad_out has 3 rows but x has 4"):
        torch.ops.sparsecomp.sparse_linear_backward_values(torch.randn(3, 17, device="cuda"), x, col_idx, row_ptr, 33)
