"""Shared fixtures and helpers of the CPU test suite.

- ``gen``: a seeded ``torch.Generator`` per test (reproducible, and different per test through its node id).
- ``random_pruned``: a dense weight with an exact, known zero pattern and fresh N(0, 1) nonzeros.
- ``cpu_isa``: runs a test under every x86 code path the machine supports, restoring the original after.
- ``ref_linear``: the float64 reference ``x @ w.T + b``.
- ``assert_close_fp`` / ``assert_within_bound``: compare a kernel result with the float64 reference within
  a bound derived from the floating-point error of a dot product (see assert_within_bound's docstring).
- ``assert_no_new_nan``: outputs are freshly allocated by the op (no stale buffer to poison), so the check
  that every element was written is "no NaN/Inf where the reference is finite" plus the value comparison.
"""
from __future__ import annotations

import zlib

import pytest
import torch

import sparsecomp  # noqa: F401  registers torch.ops.sparsecomp
from sparsecomp import _C

ISA_ORDER = ("scalar", "avx2", "avx512")


def supported_isas() -> list[str]:
    detected = _C.cpu_isa_detected()
    return list(ISA_ORDER[: ISA_ORDER.index(detected) + 1])


@pytest.fixture
def gen(request) -> torch.Generator:
    """A generator seeded from the test's node id: reproducible, and independent between parametrizations."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


@pytest.fixture(params=list(ISA_ORDER))
def cpu_isa(request) -> str:
    """Activates one CPU code path for the test (skipped where this CPU lacks it); restores the original after."""
    isa = request.param
    if isa not in supported_isas():
        pytest.skip(f"CPU does not support {isa} (detected {_C.cpu_isa_detected()})")
    original = _C.cpu_isa()
    _C.set_cpu_isa(isa)
    assert _C.cpu_isa() == isa
    try:
        yield isa
    finally:
        _C.set_cpu_isa(original)
    assert _C.cpu_isa() == original


def random_mask(out_f: int, in_f: int, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    """Boolean keep-mask with exactly round((1 - sparsity) * numel) True entries at random positions."""
    numel = out_f * in_f
    keep = int(round((1.0 - sparsity) * numel))
    mask = torch.zeros(numel, dtype=torch.bool)
    if keep:
        mask[torch.randperm(numel, generator=generator)[:keep]] = True
    return mask.reshape(out_f, in_f)


def random_pruned(out_f: int, in_f: int, sparsity: float, dtype=torch.float32,
                  generator: torch.Generator | None = None, empty_rows: int = 0) -> torch.Tensor:
    """Dense [out_f, in_f] weight: N(0, 1) values on a random pattern with the given sparsity, zeros elsewhere.

    The nonzeros are drawn away from zero (|v| >= 0.05) so the pattern of the returned tensor is exactly the
    drawn mask. ``empty_rows`` forces that many (randomly chosen) rows to be entirely zero.
    """
    mask = random_mask(out_f, in_f, sparsity, generator)
    if empty_rows and out_f:
        rows = torch.randperm(out_f, generator=generator)[: min(empty_rows, out_f)]
        mask[rows] = False
    vals = torch.randn(out_f, in_f, generator=generator, dtype=torch.float64)
    vals = torch.where(vals.abs() < 0.05, torch.copysign(torch.full_like(vals, 0.05), vals), vals)
    w = torch.where(mask, vals, torch.zeros_like(vals)).to(dtype)
    assert torch.equal(w != 0, mask)
    return w


def ref_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """float64 ``x @ w.T + b``."""
    y = x.double() @ w.double().T
    if b is not None:
        y = y + b.double()
    return y


def assert_within_bound(out: torch.Tensor, ref: torch.Tensor, l2: torch.Tensor, n_terms: torch.Tensor | float,
                        dtype: torch.dtype, slack: float = 8.0, what: str = "output") -> None:
    """|out - ref| <= slack * sqrt(n) * u * (l2 + |ref|) elementwise, u the unit roundoff of ``dtype``.

    ``ref`` is the exact (float64) sum, ``l2`` the 2-norm of its terms (``sqrt(x**2 @ w.T**2 + b**2)``) and
    ``n`` the number of terms. Why this bound: summing n terms in any order (sequential, blocked, several
    vector chains, FMA) commits n roundings, the i-th of size <= u * |partial sum_i| (plus <= u * |term| for
    a product). The errors are independent for random data, so the total is a random walk of size
    ~ u * sqrt(n) * typical |partial sum|. Partial sums of zero-mean terms stay ~ l2, and of terms with a
    drift stay ~ |ref|; ``slack`` = 8 leaves a wide margin (measured max err/tol over this suite: ~0.2, float64
    results included, whose float64 BLAS reference carries an error of the same order). The
    worst-case bound n * u * sum|terms| would be useless at n = 70000 (it would accept a dropped term); this
    one still catches a single missing, duplicated or misplaced term, and demands exactly 0 / exactly the
    bias for an all-zero row.
    """
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert_no_new_nan(out, ref)
    u = torch.finfo(dtype).eps / 2
    n = torch.as_tensor(n_terms, dtype=torch.float64)
    tol = slack * torch.sqrt(n) * u * (l2 + ref.abs())
    err = (out.double() - ref).abs()
    bad = err > tol
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.numel()} elements outside the error bound; first at {idx}: got "
            f"{out[idx].item()!r}, expected {ref[idx].item()!r}, |err|={err[idx].item():.3e} > tol="
            f"{tol[idx].item():.3e}; max err/tol={(err / tol.clamp_min(1e-300)).max().item():.3g}")


def linear_l2(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """2-norm of the terms of each (x @ w.T + b) element, in float64."""
    sq = x.double().square() @ w.double().square().T
    if b is not None:
        sq = sq + b.double().square()
    return sq.sqrt()


def assert_close_fp(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None,
                    slack: float = 8.0) -> None:
    """``out`` (computed in out.dtype) equals ref_linear(x, w, b) within the assert_within_bound tolerance."""
    ref = ref_linear(x, w, b)
    n = (w != 0).sum(1).double() + 1.0
    assert_within_bound(out, ref, linear_l2(x, w, b), n, out.dtype, slack)


def assert_no_new_nan(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Where the reference is finite the output must be finite (catches unwritten/garbage elements)."""
    bad = torch.isfinite(ref) & ~torch.isfinite(out.double())
    assert not bool(bad.any()), f"non-finite output where the reference is finite at {bad.nonzero()[:5].tolist()}"


def to_csr(w: torch.Tensor):
    """(values, col_idx, row_ptr) of a dense weight, via the package's converter."""
    from sparsecomp.formats import TiledCSR

    csr = TiledCSR.from_dense(w)
    return csr.values, csr.col_idx, csr.row_ptr
