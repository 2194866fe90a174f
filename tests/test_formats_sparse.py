"""TiledCSR (sparsecomp.formats.sparse): dense <-> tiled CSR round trips, layout invariants, validate()."""
from __future__ import annotations

import pytest
import torch

from sparsecomp.formats import TILE_COLS, TiledCSR
from sparsecomp.formats.sparse import num_col_tiles

from conftest import random_pruned

SHAPES = [(0, 5), (5, 0), (1, 1), (3, 17), (17, 1000), (2, 70000)]
SPARSITIES = [0.0, 0.5, 0.9, 1.0]


def check_invariants(csr: TiledCSR, w: torch.Tensor) -> None:
    """Checks the documented layout against the dense weight, independently of to_dense()."""
    rows, cols = w.shape
    tiles = num_col_tiles(cols)
    assert csr.shape == (rows, cols)
    assert csr.tiles == tiles
    assert csr.values.dtype == w.dtype and csr.values.dim() == 1
    assert csr.col_idx.dtype == torch.int16 and csr.col_idx.dim() == 1
    assert csr.row_ptr.dtype == torch.int64 and csr.row_ptr.numel() == rows * tiles + 1
    assert csr.values.is_contiguous() and csr.col_idx.is_contiguous() and csr.row_ptr.is_contiguous()
    nnz = int((w != 0).sum())
    assert csr.nnz == nnz == csr.col_idx.numel()
    rp = csr.row_ptr.tolist()
    assert rp[0] == 0 and rp[-1] == nnz
    assert all(a <= b for a, b in zip(rp, rp[1:])), "row_ptr decreases"
    cols_in_tile = (csr.col_idx.to(torch.int64) & 0xFFFF).tolist()
    vals = csr.values.tolist()
    for o in range(rows):
        for t in range(tiles):
            lo, hi = rp[o * tiles + t], rp[o * tiles + t + 1]
            seg_cols = [t * TILE_COLS + c for c in cols_in_tile[lo:hi]]
            # the segment holds exactly the nonzero columns of row o inside tile t, ascending
            expected = (w[o, t * TILE_COLS:(t + 1) * TILE_COLS] != 0).nonzero().flatten() + t * TILE_COLS
            assert seg_cols == expected.tolist(), f"row {o} tile {t}"
            assert vals[lo:hi] == w[o, expected].tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_round_trip_exact(shape, sparsity, dtype, gen):
    w = random_pruned(*shape, sparsity, dtype, gen)
    csr = TiledCSR.from_dense(w)
    csr.validate()
    check_invariants(csr, w)
    back = csr.to_dense()
    assert back.dtype == w.dtype and back.shape == w.shape
    assert torch.equal(back, w)


def test_multi_tile_high_columns_int16_wrap(gen):
    """Columns >= 32768 are stored as negative int16 and columns in the second tile are tile-relative."""
    cols = 70000
    w = torch.zeros(2, cols)
    picked = [0, 1, 32767, 32768, 40000, 65535, 65536, 65537, 69999]
    w[0, picked] = torch.randn(len(picked), generator=gen).abs() + 0.5
    w[1, [65535, 69999]] = -(torch.rand(2, generator=gen) + 0.5)
    csr = TiledCSR.from_dense(w)
    csr.validate()
    assert csr.tiles == 2
    assert csr.row_ptr.tolist() == [0, 6, 9, 10, 11]
    raw = csr.col_idx.tolist()
    assert raw[:6] == [0, 1, 32767, -32768, 40000 - 65536, -1]  # uint16 bits in int16
    assert raw[6:9] == [0, 1, 69999 - 65536]
    assert raw[9:] == [-1, 69999 - 65536]
    assert torch.equal(csr.to_dense(), w)
    check_invariants(csr, w)


@pytest.mark.parametrize("cols", [65535, 65536, 65537])
def test_tile_boundary_widths(cols, gen):
    """Exactly one tile up to 65536 columns (last column stored as -1); 65537 needs a second tile."""
    w = random_pruned(3, cols, 0.999, torch.float32, gen)
    w[:, cols - 1] = torch.randn(3, generator=gen).abs() + 0.5  # the last column is always present
    csr = TiledCSR.from_dense(w)
    csr.validate()
    assert csr.tiles == (1 if cols <= 65536 else 2)
    assert torch.equal(csr.to_dense(), w)
    check_invariants(csr, w)


def test_nan_and_inf_are_kept_as_nonzeros():
    w = torch.tensor([[0.0, float("nan"), 1.5], [float("-inf"), 0.0, 0.0]])
    csr = TiledCSR.from_dense(w)
    assert csr.nnz == 3
    assert (csr.col_idx.tolist(), csr.row_ptr.tolist()) == ([1, 2, 0], [0, 2, 3])
    back = csr.to_dense()
    assert torch.equal(torch.isnan(back), torch.isnan(w))
    assert back[0, 2] == 1.5 and back[1, 0] == float("-inf") and back[0, 0] == 0 and back[1, 1:].eq(0).all()


def test_negative_zero_is_pruned():
    w = torch.tensor([[-0.0, 2.0], [0.0, -0.0]])
    csr = TiledCSR.from_dense(w)
    assert csr.nnz == 1 and csr.row_ptr.tolist() == [0, 1, 1]


def test_from_dense_does_not_alias_or_track_grad(gen):
    w = random_pruned(4, 6, 0.5, torch.float32, gen).requires_grad_()
    csr = TiledCSR.from_dense(w)
    assert not csr.values.requires_grad
    with torch.no_grad():
        w.mul_(2)
    assert torch.equal(csr.to_dense() * 2, w.detach())


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.zeros(2, 3, 4), [[1.0, 2.0]]], ids=["1d", "3d", "list"])
def test_from_dense_rejects_non_2d(bad):
    with pytest.raises(ValueError, match="2-D"):
        TiledCSR.from_dense(bad)


def test_from_dense_rejects_integer_weight():
    with pytest.raises(TypeError, match="floating-point"):
        TiledCSR.from_dense(torch.ones(2, 3, dtype=torch.int32))


# ---------------------------------------------------------------------------------------------- validate()

def valid_csr(gen, shape=(4, 10), sparsity=0.5) -> TiledCSR:
    w = random_pruned(*shape, sparsity, torch.float32, gen)
    w[0, 9 % shape[1]] = 1.0  # never empty
    return TiledCSR.from_dense(w)


def replace(csr: TiledCSR, **kw) -> TiledCSR:
    fields = dict(values=csr.values, col_idx=csr.col_idx, row_ptr=csr.row_ptr, shape=csr.shape)
    fields.update(kw)
    return TiledCSR(**fields)


def test_validate_accepts_valid(gen):
    valid_csr(gen).validate()
    TiledCSR.from_dense(torch.zeros(3, 4)).validate()
    TiledCSR.from_dense(torch.zeros(0, 0)).validate()


def test_validate_row_ptr_decreasing(gen):
    csr = valid_csr(gen)
    rp = csr.row_ptr.clone()
    rp[1] = rp[2] + 1  # decreases from entry 1 to 2; start and end still right
    with pytest.raises(ValueError, match="row_ptr.*non-decreasing"):
        replace(csr, row_ptr=rp).validate()


@pytest.mark.parametrize("delta", [-1, 1])
def test_validate_row_ptr_wrong_end(gen, delta):
    csr = valid_csr(gen)
    rp = csr.row_ptr.clone()
    rp[-1] += delta
    with pytest.raises(ValueError, match="row_ptr.*end at nnz"):
        replace(csr, row_ptr=rp).validate()


def test_validate_row_ptr_wrong_start(gen):
    csr = valid_csr(gen)
    rp = csr.row_ptr.clone()
    rp[0] = 1 if rp[1] >= 1 else -1
    with pytest.raises(ValueError, match="row_ptr must start at 0"):
        replace(csr, row_ptr=rp).validate()


@pytest.mark.parametrize("extra", [-1, 1])
def test_validate_row_ptr_wrong_length(gen, extra):
    csr = valid_csr(gen)
    rp = csr.row_ptr
    rp = rp[:-1] if extra < 0 else torch.cat([rp, rp[-1:]])
    with pytest.raises(ValueError, match=r"row_ptr must have 5 entries for shape \(4, 10\), got " + str(5 + extra)):
        replace(csr, row_ptr=rp).validate()


def test_validate_row_ptr_length_multi_tile():
    csr = TiledCSR.from_dense(torch.zeros(2, 70000))
    assert csr.row_ptr.numel() == 5
    with pytest.raises(ValueError, match="row_ptr must have 5 entries"):
        replace(csr, row_ptr=torch.zeros(3, dtype=torch.int64)).validate()


@pytest.mark.parametrize("column", [10, 11, 32767, 65535])
def test_validate_col_idx_out_of_range(gen, column):
    csr = valid_csr(gen)
    ci = csr.col_idx.clone()
    ci[-1] = torch.tensor(column, dtype=torch.int32).to(torch.int16)
    with pytest.raises(ValueError, match="col_idx holds a column >= 10"):
        replace(csr, col_idx=ci).validate()


def test_validate_col_idx_out_of_range_in_last_tile():
    w = torch.zeros(1, 70000)
    w[0, 69999] = 1.0
    csr = TiledCSR.from_dense(w)
    csr.validate()
    ci = csr.col_idx.clone()
    ci[0] = 70000 - 65536  # column 70000 in tile 1
    with pytest.raises(ValueError, match="col_idx holds a column >= 70000"):
        replace(csr, col_idx=ci).validate()


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.float32])
def test_validate_col_idx_wrong_dtype(gen, dtype):
    csr = valid_csr(gen)
    with pytest.raises(ValueError, match=f"col_idx must be int16, got {dtype}"):
        replace(csr, col_idx=csr.col_idx.to(dtype)).validate()


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.float64])
def test_validate_row_ptr_wrong_dtype(gen, dtype):
    csr = valid_csr(gen)
    with pytest.raises(ValueError, match=f"row_ptr must be int64, got {dtype}"):
        replace(csr, row_ptr=csr.row_ptr.to(dtype)).validate()


def test_validate_length_mismatch(gen):
    csr = valid_csr(gen)
    with pytest.raises(ValueError, match="col_idx has .* entries but values has"):
        replace(csr, values=csr.values[:-1]).validate()


def test_validate_non_1d(gen):
    csr = valid_csr(gen)
    with pytest.raises(ValueError, match="must be 1-D"):
        replace(csr, values=csr.values.reshape(1, -1)).validate()


def test_validate_negative_shape(gen):
    csr = valid_csr(gen)
    with pytest.raises(ValueError, match="non-negative"):
        replace(csr, shape=(-1, 10)).validate()
