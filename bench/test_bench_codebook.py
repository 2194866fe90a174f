"""pytest-benchmark suite of the codebook linear layer: torch fp32 F.linear (dequantized weight) vs codebook_mm.

    pytest bench/test_bench_codebook.py --benchmark-only                  # quick: 4096x4096, bits 2,4, batch 1,64
    BENCH_GRID=full pytest bench/test_bench_codebook.py --benchmark-only  # bits 2,3,4,8, batch 1,8,64, 11008x4096

One benchmark group per (shape, bits, batch), e.g. '4096x4096-bits4-b1', so the compare table lines the two
methods up and ``--benchmark-compare`` matches groups across commits. Indices, codebook, the dequantized weight and
the inputs are built once per (shape, bits) in cached helpers, outside the timed calls; each test first checks its
method against the float64 dequantize-then-matmul reference. Methods run back to back (sparsecomp bench codebook
interleaves them: quote its ratios).
"""
from __future__ import annotations

import functools
import itertools
import os

import pytest
import torch

from sparsecomp.benchmark.harness import check_same_result

FULL = os.environ.get("BENCH_GRID", "quick") == "full"
SHAPES = ((4096, 4096), (11008, 4096)) if FULL else ((4096, 4096),)
BITS = (2, 3, 4, 8) if FULL else (2, 4)
BATCHES = (1, 8, 64) if FULL else (1, 64)
METHODS = ("dense_fp32", "codebook")
N_INPUTS = 4
CASES = [(s, bits, b, m) for s in SHAPES for bits in BITS for b in BATCHES for m in METHODS]


@functools.lru_cache(maxsize=1)
def _layer(shape, bits):
    from sparsecomp.formats.codebook import dequantize, pack_indices

    out_f, in_f = shape
    g = torch.Generator().manual_seed(bits)
    idx = torch.randint(0, 1 << bits, (out_f, in_f), generator=g)
    codebook = torch.randn(1 << bits, generator=g) / in_f ** 0.5
    return pack_indices(idx, bits), codebook, dequantize(idx, codebook).contiguous(), 0.1 * torch.randn(out_f,
                                                                                                        generator=g)


def _fn(method, shape, bits):
    from sparsecomp import ops

    packed, codebook, weight, bias = _layer(shape, bits)
    if method == "dense_fp32":
        return lambda x: torch.nn.functional.linear(x, weight, bias)
    return lambda x: ops.codebook_mm(x, packed, codebook, bias, shape[1], bits)


@pytest.mark.parametrize("shape,bits,batch,method", CASES,
                         ids=[f"{o}x{i}-bits{bits}-b{b}-{m}" for (o, i), bits, b, m in CASES])
def test_codebook_linear(benchmark, shape, bits, batch, method):
    fn = _fn(method, shape, bits)
    _, _, weight, bias = _layer(shape, bits)
    g = torch.Generator().manual_seed(batch)
    inputs = [torch.randn(batch, shape[1], generator=g) for _ in range(N_INPUTS)]
    benchmark.group = f"{shape[0]}x{shape[1]}-bits{bits}-b{batch}"
    benchmark.extra_info.update(method=method, bits=bits, threads=torch.get_num_threads())
    with torch.no_grad():
        ref = torch.nn.functional.linear(inputs[0].double(), weight.double(), bias.double())
        check_same_result({method: fn(inputs[0])}, ref, 1e-4, 1e-4)
        for x in inputs:  # warm up on every input
            fn(x)
        rotating = itertools.cycle(inputs)
        benchmark(lambda: fn(next(rotating)))
