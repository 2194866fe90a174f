"""codebook_mm against the float64 dequantize-then-matmul reference, every bit width and CPU code path."""
from __future__ import annotations

import pytest
import torch

from sparsecomp import ops
from sparsecomp.formats.codebook import dequantize, pack_indices, row_words, unpack_indices

from conftest import assert_within_bound, linear_l2, ref_linear

# in_features: below one vector, odd, not a multiple of 16 (or of 32 / bits), one and several 128-index blocks.
COLS = (1, 7, 33, 100, 128, 259)
# batches: empty, GEMV (1, odd, > one 8-sample pass), dequantize + GEMM (> 16 at 6..8 bits, > 32 below).
BATCHES = (0, 1, 3, 9, 17, 33, 40)


def _case(out_f, in_f, bits, per_row, gen):
    idx = torch.randint(0, 1 << bits, (out_f, in_f), generator=gen)
    cb = torch.randn((out_f, 1 << bits) if per_row else (1 << bits,), generator=gen)
    return idx, cb, pack_indices(idx, bits)


def _check(y, x, idx, cb, bias):
    w = dequantize(idx, cb.double())
    ref = ref_linear(x, w, bias)
    assert_within_bound(y, ref, linear_l2(x, w, bias), x.shape[1] + 1, torch.float32)


@pytest.mark.parametrize("per_row", [False, True], ids=["per_layer", "per_row"])
@pytest.mark.parametrize("bits", range(1, 9))
def test_matches_float64_reference(cpu_isa, bits, per_row, gen):
    for in_f in COLS:
        out_f = 5 + in_f % 4
        idx, cb, packed = _case(out_f, in_f, bits, per_row, gen)
        bias = torch.randn(out_f, generator=gen)
        for batch in BATCHES:
            x = torch.randn(batch, in_f, generator=gen)
            _check(ops.codebook_mm(x, packed, cb, bias, in_f, bits), x, idx, cb, bias)
        x = torch.randn(2, in_f, generator=gen)
        _check(ops.codebook_mm(x, packed, cb, None, in_f, bits), x, idx, cb, None)


@pytest.mark.parametrize("per_row", [False, True], ids=["per_layer", "per_row"])
@pytest.mark.parametrize("bits", [1, 3, 4, 5, 8])
@pytest.mark.parametrize("batch", [1, 5, 64])
def test_exact_mode_relative_error(cpu_isa, batch, bits, per_row, gen):
    # The acceptance: equal to dequantize-then-matmul within 1e-5 relative (here in fp32 at K=4099).
    # Large enough to run threaded, with several K chunks and row blocks, and buffer-end handling in the last row.
    in_f, out_f = 4099, 33
    idx, cb, packed = _case(out_f, in_f, bits, per_row, gen)
    x = torch.randn(batch, in_f, generator=gen)
    y = ops.codebook_mm(x, packed, cb, None, in_f, bits)
    ref = x.double() @ dequantize(idx, cb.double()).T
    assert ((y.double() - ref).norm() / ref.norm()).item() <= 1e-5


def test_padding_bits_are_ignored(cpu_isa, gen):
    in_f, bits = 13, 3  # 39 bits: 25 padding bits in the second word
    idx, cb, packed = _case(4, in_f, bits, False, gen)
    dirty = packed.clone()
    dirty[:, -1] |= torch.tensor(-(1 << 7), dtype=torch.int32)  # set every bit from 7 up (the padding)
    assert torch.equal(unpack_indices(dirty, in_f, bits), idx)
    x = torch.randn(3, in_f, generator=gen)
    clean = ops.codebook_mm(x, packed, cb, None, in_f, bits)
    assert torch.equal(ops.codebook_mm(x, dirty, cb, None, in_f, bits), clean)


def test_nonfinite_propagate_like_dense(cpu_isa):
    idx = torch.zeros(3, 20, dtype=torch.int64)
    cb = torch.tensor([1.0, 2.0, 3.0, 4.0])
    x = torch.ones(2, 20)
    x[0, 5] = float("nan")
    y = ops.codebook_mm(x, pack_indices(idx, 2), cb, None, 20, 2)
    assert torch.isnan(y[0]).all() and torch.equal(y[1], torch.full((3,), 20.0))


def test_noncontiguous_inputs(gen):
    idx, cb, packed = _case(6, 40, 5, True, gen)
    x = torch.randn(40, 7, generator=gen).t()  # [7, 40], not contiguous
    _check(ops.codebook_mm(x, packed, cb, None, 40, 5), x, idx, cb, None)


def test_zero_in_features_gives_bias():
    packed = torch.zeros(3, 0, dtype=torch.int32)
    bias = torch.tensor([1.0, 2.0, 3.0])
    y = ops.codebook_mm(torch.zeros(2, 0), packed, torch.zeros(4), bias, 0, 2)
    assert torch.equal(y, bias.expand(2, 3))


def test_pack_roundtrip_and_layout():
    idx = torch.tensor([[1, 2, 3, 0, 7]])
    packed = pack_indices(idx, 3)  # stream: 001 010 011 000 111 (LSB first per index)
    expect = 1 | (2 << 3) | (3 << 6) | (0 << 9) | (7 << 12)
    assert packed.tolist() == [[expect]]
    for bits in range(1, 9):
        idx = torch.randint(0, 1 << bits, (3, 77))
        p = pack_indices(idx, bits)
        assert p.shape == (3, row_words(77, bits)) and torch.equal(unpack_indices(p, 77, bits), idx)


def test_pack_rejects_out_of_range_index():
    with pytest.raises(ValueError, match="index out of range"):
        pack_indices(torch.tensor([[0, 4]]), 2)
    with pytest.raises(ValueError, match="index out of range"):
        pack_indices(torch.tensor([[-1, 0]]), 2)


def test_opcheck(gen):
    idx, cb, packed = _case(5, 37, 3, False, gen)
    x = torch.randn(4, 37, generator=gen)
    bias = torch.randn(5, generator=gen)
    torch.library.opcheck(torch.ops.sparsecomp.codebook_mm.default, (x, packed, cb, bias, 37, 3))
    idx, cb, packed = _case(5, 37, 6, True, gen)
    torch.library.opcheck(torch.ops.sparsecomp.codebook_mm.default, (x, packed, cb, None, 37, 6))


def test_backward_matches_dense(gen):
    idx, cb, packed = _case(6, 19, 3, False, gen)
    x = torch.randn(4, 19, generator=gen, requires_grad=True)
    cb = cb.requires_grad_()
    bias = torch.randn(6, generator=gen, requires_grad=True)
    ops.codebook_mm(x, packed, cb, bias, 19, 3).square().sum().backward()
    x2, cb2, b2 = (t.detach().clone().requires_grad_() for t in (x, cb, bias))
    torch.nn.functional.linear(x2, cb2[idx], b2).square().sum().backward()
    for a, b in ((x, x2), (cb, cb2), (bias, b2)):
        torch.testing.assert_close(a.grad, b.grad)


def test_compile_fullgraph(gen):
    idx, cb, packed = _case(5, 20, 4, False, gen)
    x = torch.randn(3, 20, generator=gen)
    f = torch.compile(lambda x: ops.codebook_mm(x, packed, cb, None, 20, 4) * 2, fullgraph=True, backend="eager")
    torch.testing.assert_close(f(x), ops.codebook_mm(x, packed, cb, None, 20, 4) * 2)


def _args(**over):
    a = dict(x=torch.zeros(2, 10), packed_indices=torch.zeros(3, row_words(10, 4), dtype=torch.int32),
             codebook=torch.zeros(16), bias=None, in_features=10, bits=4)
    a.update(over)
    return a


@pytest.mark.parametrize("over, msg", [
    (dict(bits=0), "bits must be in 1..8"),
    (dict(bits=9), "bits must be in 1..8"),
    (dict(codebook=torch.zeros(15)), "codebook must have 2\\^bits = 16 entries"),
    (dict(codebook=torch.zeros(4, 16)), "per-row codebook must have 3 rows"),
    (dict(codebook=torch.zeros(2, 2, 16)), "codebook must be 1-D"),
    (dict(codebook=torch.zeros(16, dtype=torch.float64), x=torch.zeros(2, 10, dtype=torch.float64)),
     "codebook must be float32"),
    (dict(x=torch.zeros(2, 11)), "x must be 2-D \\[batch, 10\\]"),
    (dict(x=torch.zeros(2, 10, dtype=torch.float64)), "x dtype"),
    (dict(packed_indices=torch.zeros(3, 1, dtype=torch.int32)), "2 words per row"),
    (dict(packed_indices=torch.zeros(3, 2, dtype=torch.int64)), "packed_indices must be int32"),
    (dict(bias=torch.zeros(4)), "bias must have shape \\[3\\]"),
    (dict(in_features=-1, x=torch.zeros(2, 0)), "in_features must be >= 0"),
])
def test_errors(over, msg):
    a = _args(**over)
    with pytest.raises(RuntimeError, match=msg):
        ops.codebook_mm(a["x"], a["packed_indices"], a["codebook"], a["bias"], a["in_features"], a["bits"])
