"""pytest-benchmark suite of the binary layers (issue 3): torch fp32 vs XNOR binary vs BinaryConnect.

    pytest bench/test_bench_binary.py --benchmark-only                  # quick: batch 1, fp32 vs XNOR (~1 min)
    BENCH_GRID=full pytest bench/test_bench_binary.py --benchmark-only  # every method and batch (minutes)
    pytest bench/test_bench_binary.py --benchmark-only -k "256_14-b1"   # one layer, batch 1
    pytest bench/test_bench_binary.py --benchmark-only --benchmark-group-by=group

Test ids and groups use the layer keys (binary_methods: '64->128@56/2' is '64to128_56_s2'). One benchmark
group per (layer, batch), so the compare table lines the methods up: ``fp32`` / ``fp32_cl``
(torch conv2d in NCHW / channels_last), ``binary`` / ``binary_cl``, ``binary_connect`` / ``binary_connect_cl``
and ``binary_avx2`` / ``binary_avx2_cl`` (sparsecomp's AVX2 path forced); linear layers have no ``_cl``
variants. Methods run back to back (sweep_binary.py interleaves them, and its ratios are the ones to quote).
Weights and inputs are built once per layer in cached helpers, outside the timed calls; each test first checks
its method's first output sample against a float64 reference.
"""
from __future__ import annotations

import functools
import itertools
import os

import pytest
import torch

from sparsecomp.benchmark import binary_methods as bm
from sparsecomp.benchmark.harness import check_same_result

N_INPUTS = 3
FULL = os.environ.get("BENCH_GRID", "quick") == "full"
FAMILIES = bm.FAMILIES if FULL else ("fp32", "binary")
CONV_METHODS = tuple(f + s for f in FAMILIES for s in bm.LAYOUTS)
LINEAR_METHODS = FAMILIES
CONV_BATCHES = bm.CONV_BATCHES if FULL else (1,)
LINEAR_BATCHES = bm.LINEAR_BATCHES if FULL else (1,)
CASES = [(layer, b, m) for layer in bm.RESNET18 for b in CONV_BATCHES for m in CONV_METHODS] + \
        [(layer, b, m) for layer in bm.LINEAR_LAYERS for b in LINEAR_BATCHES for m in LINEAR_METHODS]


@functools.lru_cache(maxsize=1)
def _params(layer):
    return bm.random_conv(layer) if isinstance(layer, bm.ConvLayer) else bm.random_linear(layer)


@functools.lru_cache(maxsize=1)
def _setup(layer, batch):
    """(methods, x0, reference(family)) of one (layer, batch); layer outermost in CASES, so reused per group."""
    p = _params(layer)
    if isinstance(layer, bm.ConvLayer):
        inputs = bm.conv_inputs(layer, batch, N_INPUTS, seed=batch)
        x0 = inputs["nchw"][0][:1]
        return bm.make_conv_methods(layer, p, inputs), lambda f: bm.conv_reference(f, layer, p, x0)
    inputs = bm.linear_inputs(layer, batch, N_INPUTS, seed=batch)
    x0 = inputs[0][:1]
    return bm.make_linear_methods(layer, p, inputs), lambda f: bm.linear_reference(f, p, x0)


@pytest.mark.parametrize("layer,batch,method", CASES, ids=[f"{lay.key}-b{b}-{m}" for lay, b, m in CASES])
def test_binary_layer(benchmark, layer, batch, method):
    fns, reference = _setup(layer, batch)
    if method not in fns:
        pytest.skip(f"{method} not available on this CPU")
    fn = fns[method]
    family = bm.family_of(method)
    benchmark.group = f"{layer.key}-b{batch}"
    benchmark.extra_info.update(method=method, family=family, layout=bm.layout_of(method), layer=layer.describe(),
                                threads=torch.get_num_threads())
    with torch.no_grad():
        check_same_result({method: fn(0)[:1]}, reference(family), *bm.tolerance(family))
        for i in range(N_INPUTS):  # warm up on every input
            fn(i)
        rotating = itertools.cycle(range(N_INPUTS))  # a different input each call, as in sweep_binary.py
        benchmark(lambda: fn(next(rotating)))
