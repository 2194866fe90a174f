"""codebook_mm on CUDA against the float64 reference (skipped without a GPU; written before one was available)."""
from __future__ import annotations

import pytest
import torch

from sparsecomp import ops
from sparsecomp.formats.codebook import dequantize, pack_indices

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 8])
def test_matches_reference(bits, per_row, dtype):
    g = torch.Generator().manual_seed(bits * 7 + per_row)
    for in_f in (1, 33, 1000):
        out_f = 37
        idx = torch.randint(0, 1 << bits, (out_f, in_f), generator=g)
        cb = torch.randn((out_f, 1 << bits) if per_row else (1 << bits,), generator=g)
        bias = torch.randn(out_f, generator=g)
        packed = pack_indices(idx, bits).cuda()
        for batch in (0, 1, 5, 8, 9, 40):
            x = torch.randn(batch, in_f, generator=g)
            ref = x.double() @ dequantize(idx, cb.double()).T + bias.double()
            y = ops.codebook_mm(x.to("cuda", dtype), packed, cb.to("cuda", dtype), bias.to("cuda", dtype), in_f, bits)
            assert y.dtype == dtype and y.shape == (batch, out_f)
            scale = ref.abs().max().item() + 1 if batch else 1
            assert (y.double().cpu() - ref).abs().max().item() <= TOL[dtype] * scale * (in_f ** 0.5)


def test_errors_on_cuda():
    x = torch.zeros(2, 10, device="cuda", dtype=torch.float64)
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        ops.codebook_mm(x, torch.zeros(3, 2, dtype=torch.int32, device="cuda"),
                        torch.zeros(16, dtype=torch.float64, device="cuda"), None, 10, 4)
