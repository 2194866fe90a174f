"""pytest-benchmark suite: 4096x4096 fp32 linear, dense vs sparsecomp vs torch.sparse CSR.

    pytest bench/ --benchmark-only                      # the quick grid (sparsity 0.5, 0.9, 0.99; about a minute)
    BENCH_GRID=full pytest bench/ --benchmark-only      # 8 sparsities (a few minutes on 2 cores)
    pytest bench/ --benchmark-only -k "b1-"             # batch 1 only
    pytest bench/ --benchmark-only --benchmark-autosave  # then --benchmark-compare after a kernel change
    BENCH_FLUSH_MB=1024 pytest bench/ --benchmark-only   # cold weights: evict caches before every call

By default each method runs back to back, so its weight stays warm in cache (on a large-L3 CPU that
flatters every method, the smaller sparse weights most); sweep_sparse.py interleaves methods instead.

One benchmark group per (shape, batch, sparsity), e.g. '4096x4096-b1-s0.9', so compare tables line the three
methods up and `--benchmark-compare` matches the same group across commits. Weight pruning and
conversion happen once per sparsity in cached helpers, outside the timed calls; each test first checks its
method against a float64 reference.
"""
from __future__ import annotations

import functools
import itertools
import os

import pytest
import torch

from sparsecomp.benchmark import sparse_methods as methods
from sparsecomp.benchmark.harness import cache_flusher, check_same_result, measure

OUT_FEATURES = IN_FEATURES = 4096
BATCHES = (1, 16, 128)
FULL = os.environ.get("BENCH_GRID", "quick") == "full"
SPARSITIES = (0.3, 0.4, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99) if FULL else (0.5, 0.9, 0.99)
METHODS = ("dense", "sparsecomp", "torch_csr")
N_INPUTS = 4
FLUSH_MB = float(os.environ.get("BENCH_FLUSH_MB", "0"))  # > 0: read this much memory (untimed) before each call
FLUSH_ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))  # rounds per test in cold mode (pedantic: no calibration)
# Sparsity outermost, so the cached setup of one sparsity is reused by all its tests before being replaced.
CASES = [(s, b, m) for s in SPARSITIES for b in BATCHES for m in METHODS]


@functools.lru_cache(maxsize=1)
def _layer():
    weight, bias = methods.random_layer(OUT_FEATURES, IN_FEATURES, seed=0)
    return weight, bias, methods.magnitude_order(weight)


@functools.lru_cache(maxsize=1)
def _setup(sparsity: float):
    """(pruned weight, bias, {method or CSR variant: fn}) of one sparsity; the expensive, untimed part."""
    weight, bias, order = _layer()
    pruned = methods.prune_to(weight, order, sparsity)
    with torch.no_grad():
        fns = {"dense": methods.make_dense(pruned, bias), "sparsecomp": methods.make_sparsecomp(pruned, bias),
               **methods.make_csr_variants(pruned, bias)}
    return pruned, bias, fns


@functools.lru_cache(maxsize=1)
def _inputs_and_reference(sparsity: float, batch: int):
    pruned, bias, _ = _setup(sparsity)
    inputs = methods.random_inputs(N_INPUTS, batch, IN_FEATURES, seed=batch, dtype=torch.float32, device="cpu")
    ref = torch.nn.functional.linear(inputs[0].double(), pruned.double(), bias.double())
    return inputs, ref


@functools.lru_cache(maxsize=None)
def _faster_csr_variant(sparsity: float, batch: int) -> str:
    """torch.sparse CSR runs either as F.linear or as sparse.mm; the peer we compare with is the faster one."""
    fns = _setup(sparsity)[2]
    inputs, _ = _inputs_and_reference(sparsity, batch)
    with torch.no_grad():
        timings = measure({v: fns[v] for v in methods.CSR_VARIANTS}, inputs, repeats=5, warmup=1)
    return min(timings, key=lambda v: timings[v].median_s)


@pytest.mark.parametrize("sparsity,batch,method", CASES, ids=[f"b{b}-s{s}-{m}" for s, b, m in CASES])
def test_sparse_linear(benchmark, sparsity, batch, method):
    fns = _setup(sparsity)[2]
    inputs, ref = _inputs_and_reference(sparsity, batch)
    name = _faster_csr_variant(sparsity, batch) if method == "torch_csr" else method
    fn = fns[name]
    benchmark.group = f"{OUT_FEATURES}x{IN_FEATURES}-b{batch}-s{sparsity}"
    benchmark.extra_info.update(method=method, variant=methods.CSR_VARIANTS.get(name, name),
                                threads=torch.get_num_threads())
    with torch.no_grad():
        check_same_result({name: fn(inputs[0])}, ref, *methods.tolerance(torch.float32))
        for x in inputs:  # warm up on every input
            fn(x)
        rotating = itertools.cycle(inputs)  # a different input each call, as in sweep_sparse.py
        flush = cache_flusher(FLUSH_MB, "cpu")
        if flush is None:
            benchmark(lambda: fn(next(rotating)))
        else:
            def evict_then_pick_input():  # pedantic's setup is not timed
                flush()
                return (next(rotating),), {}

            benchmark.extra_info["flush_mb"] = FLUSH_MB
            benchmark.pedantic(fn, setup=evict_then_pick_input, rounds=FLUSH_ROUNDS)
