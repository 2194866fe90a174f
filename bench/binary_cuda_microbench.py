"""GPU microbenchmarks of the binary CUDA kernels (csrc/cuda/kernels/binary.cuh): table on stdout + JSON.

    python bench/binary_cuda_microbench.py                            # all three parts, batch 256
    python bench/binary_cuda_microbench.py --parts conv --batch 64    # a quicker subset
    python bench/binary_cuda_microbench.py --kernels all              # also time each XNOR kernel, forced

(a) peak: b1_mma_peak_kernel issues independent mma.sync.m16n8k256.b1.and.popc back to back on register operands;
    it is built on the fly with torch.utils.cpp_extension.load_inline (needs nvcc). ops = 2 * 16 * 8 * 256 per MMA
    (an AND and a popcount-accumulate per bit pair: the usual binary TOPS convention). Best of a few occupancies.
(b) GEMM: binary_linear(x, W) with x [M, K] float16 packed inside the op, M = N = K = 8192, vs torch.matmul(x, W.T)
    float16 (cuBLAS). "binary TOPS" = 2 M N K / t. The packing of x alone (bitpack) is timed too, and the GEMM-only
    ratio (total minus packing) is reported next to the end-to-end one.
(c) conv: ResNet-18's 3x3 layers at batch 256 (the first 7x7 conv and the 1x1 shortcuts stay float in binary nets),
    binary_conv2d (XNOR, packing included) vs F.conv2d float16 (cuDNN, benchmark mode), in channels_last and NCHW.

Timing: CUDA events around `--iters` back-to-back calls after warmup; methods alternate inside every repeat; the
median over `--repeats` samples is reported. Each binary result is first checked against a float64 reference on a
slice (exact integer dots, then one rounding), so a fast but wrong kernel is never reported.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `bench` package importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
ENV = "SPARSECOMP_BINARY_CUDA_KERNEL"
OPS_PER_B1_MMA = 2 * 16 * 8 * 256
PEAK_CHAINS = 8  # kPeakChains in binary.cuh: MMAs per warp per loop iteration

# (name, in_channels, out_channels, input size, stride) of ResNet-18's 3x3 convolutions (each distinct shape once)
RESNET18_3X3 = [
    ("conv2_x 64@56", 64, 64, 56, 1),
    ("conv3_1 64->128 s2", 64, 128, 56, 2),
    ("conv3_x 128@28", 128, 128, 28, 1),
    ("conv4_1 128->256 s2", 128, 256, 28, 2),
    ("conv4_x 256@14", 256, 256, 14, 1),
    ("conv5_1 256->512 s2", 256, 512, 14, 2),
    ("conv5_x 512@7", 512, 512, 7, 1),
]


# ------------------------------------------------------------------------------------------------------ timing


def time_methods(fns: dict, iters: int, repeats: int, warmup: int = 3) -> dict:
    """Median seconds per call of each fn; the methods alternate (rotated start) inside every repeat."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    samples = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fns[name]()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end) / 1e3 / iters)
    return {k: statistics.median(v) for k, v in samples.items()}


@contextlib.contextmanager
def forced_kernel(kernel: str | None):
    old = os.environ.get(ENV)
    if kernel is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = kernel
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old


def sign_pm1(t: torch.Tensor) -> torch.Tensor:
    t = t.double()
    return torch.where(t >= 0, torch.ones_like(t), -torch.ones_like(t))


def check_close(out: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """out = fl16(fma32(alpha, dot, 0)) with an exact integer dot: within 2 (u32 + u16) |ref| of the reference."""
    tol = 2 * (2.0**-24 + 2.0**-11) * ref.abs() + 2.0**-24
    err = (out.double() - ref).abs()
    if not bool((err <= tol).all()):
        raise AssertionError(f"{what}: binary result differs from the float64 reference "
                             f"(max err {err.max().item():.3g}, max err/tol {(err / tol).max().item():.3g})")


# -------------------------------------------------------------------------------------------------------- peak

PEAK_SOURCE = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include "binary.cuh"

torch::Tensor b1_peak(int64_t blocks, int64_t threads, int64_t iters) {
  auto sink = torch::empty({blocks * threads}, torch::dtype(torch::kInt).device(torch::kCUDA));
  C10_CUDA_CHECK(sparsecomp::cuda::binary::launch_b1_mma_peak(static_cast<int>(blocks), static_cast<int>(threads),
                                                              static_cast<int>(iters), sink.data_ptr<int32_t>(),
                                                              c10::cuda::getCurrentCUDAStream()));
  return sink;
}
"""


def build_peak_module():
    from torch.utils.cpp_extension import load_inline

    major, minor = torch.cuda.get_device_capability()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    return load_inline(
        name="sparsecomp_b1_mma_peak",
        cpp_sources="torch::Tensor b1_peak(int64_t blocks, int64_t threads, int64_t iters);",
        cuda_sources=PEAK_SOURCE,
        functions=["b1_peak"],
        extra_include_paths=[str(ROOT / "csrc" / "cuda" / "kernels")],
        extra_cuda_cflags=["-O3"],
        verbose=False,
    )


def bench_peak(args) -> dict:
    if torch.cuda.get_device_capability()[0] < 8:
        return {"skipped": "b1 AND-popc MMA needs compute capability 8.0+"}
    mod = build_peak_module()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    best = None
    rows = []
    for warps_per_block, blocks_per_sm in [(4, 1), (4, 2), (4, 4), (8, 2), (8, 4)]:
        threads, blocks = 32 * warps_per_block, sms * blocks_per_sm
        t = time_methods({"peak": lambda: mod.b1_peak(blocks, threads, args.peak_iters)}, 1, args.repeats)["peak"]
        mmas = blocks * warps_per_block * args.peak_iters * PEAK_CHAINS
        tops = mmas * OPS_PER_B1_MMA / t / 1e12
        rows.append({"warps_per_block": warps_per_block, "blocks": blocks, "seconds": t, "tops": tops})
        best = max(best or 0.0, tops)
        print(f"  peak  warps/block={warps_per_block:2d} blocks={blocks:5d}  {t * 1e3:8.3f} ms  {tops:9.1f} TOPS")
    return {"best_tops": best, "configs": rows, "ops_per_mma": OPS_PER_B1_MMA, "iters": args.peak_iters}


# -------------------------------------------------------------------------------------------------------- GEMM


def bench_gemm(args, kernels) -> dict:
    ops = torch.ops.sparsecomp
    n = args.gemm_size
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, n, generator=g, device="cuda", dtype=torch.float16)
    w = torch.randn(n, n, generator=g, device="cuda", dtype=torch.float16)
    bits = ops.bitpack(w)
    alpha = torch.ones(n, device="cuda", dtype=torch.float16)
    # check on a slice: integer dots rounded once to fp16
    ref = sign_pm1(x[:64]) @ sign_pm1(w).T
    out = ops.binary_linear(x[:64].contiguous(), bits, alpha, None, n)
    if not torch.equal(out, ref.to(torch.float16)):
        raise AssertionError("binary_linear differs from the float64 reference on the GEMM check slice")
    fns = {"cublas_fp16": lambda: torch.matmul(x, w.T), "bitpack_x": lambda: ops.bitpack(x)}
    for k in kernels:
        fns[f"binary[{k}]"] = (lambda k=k: _with_kernel(k, lambda: ops.binary_linear(x, bits, alpha, None, n)))
    times = time_methods(fns, args.iters, args.repeats)
    flops = 2.0 * n * n * n
    result = {"size": n, "seconds": times, "cublas_tflops": flops / times["cublas_fp16"] / 1e12}
    print(f"  GEMM {n}^3: cuBLAS fp16 {times['cublas_fp16'] * 1e3:.3f} ms ({result['cublas_tflops']:.0f} TFLOP/s), "
          f"bitpack(x) {times['bitpack_x'] * 1e3:.3f} ms")
    for k in kernels:
        t = times[f"binary[{k}]"]
        gemm_only = max(t - times["bitpack_x"], 1e-12)
        result[f"binary[{k}]"] = {"seconds": t, "tops": flops / t / 1e12, "speedup": times["cublas_fp16"] / t,
                                  "speedup_without_packing": times["cublas_fp16"] / gemm_only}
        print(f"    binary[{k:8s}] {t * 1e3:8.3f} ms  {flops / t / 1e12:8.1f} TOPS  "
              f"x{times['cublas_fp16'] / t:5.2f} vs cuBLAS (x{times['cublas_fp16'] / gemm_only:5.2f} without packing)")
    return result


def _with_kernel(kernel, fn):
    with forced_kernel(None if kernel == "auto" else kernel):
        return fn()


# -------------------------------------------------------------------------------------------------------- conv


def bench_conv(args, kernels) -> dict:
    ops = torch.ops.sparsecomp
    torch.backends.cudnn.benchmark = True
    g = torch.Generator(device="cuda").manual_seed(1)
    formats = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}
    rows = []
    for name, cin, cout, size, stride in RESNET18_3X3:
        x32 = torch.randn(args.batch, cin, size, size, generator=g, device="cuda")
        w = torch.randn(cout, cin, 3, 3, generator=g, device="cuda")
        alpha = w.abs().mean(dim=(1, 2, 3)).half()
        bits = ops.bitpack(w.permute(0, 2, 3, 1).contiguous())
        w16 = w.half()
        for fmt_name, fmt in formats.items():
            if fmt_name not in args.formats:
                continue
            x = x32.half().contiguous(memory_format=fmt)
            w16f = w16.contiguous(memory_format=fmt)

            def binary(x=x):
                return ops.binary_conv2d(x, bits, alpha, None, cin, [3, 3], [stride] * 2, [1, 1], [1, 1], 1)

            ref = alpha.double().view(1, -1, 1, 1) * F.conv2d(sign_pm1(x[:2]), sign_pm1(w), None, stride, 1)
            for k in kernels:
                check_close(_with_kernel(k, lambda: binary(x[:2].contiguous(memory_format=fmt))), ref,
                            f"{name} {fmt_name} {k}")
            fns = {"cudnn_fp16": lambda x=x, w16f=w16f: F.conv2d(x, w16f, None, stride, 1)}
            for k in kernels:
                fns[f"binary[{k}]"] = (lambda k=k, binary=binary: _with_kernel(k, binary))
            times = time_methods(fns, args.iters, args.repeats)
            row = {"layer": name, "format": fmt_name, "batch": args.batch, "seconds": times}
            for k in kernels:
                row[f"speedup[{k}]"] = times["cudnn_fp16"] / times[f"binary[{k}]"]
            rows.append(row)
            ratios = "  ".join(f"{k}: {times[f'binary[{k}]'] * 1e3:7.3f} ms x{row[f'speedup[{k}]']:5.2f}"
                               for k in kernels)
            print(f"  {name:22s} {fmt_name:13s} cuDNN {times['cudnn_fp16'] * 1e3:7.3f} ms  {ratios}")
        del x32, w
    geomeans = {}
    for fmt_name in formats:
        for k in kernels:
            r = [row[f"speedup[{k}]"] for row in rows if row["format"] == fmt_name]
            if r:
                geomeans[f"{fmt_name}[{k}]"] = math.exp(sum(math.log(v) for v in r) / len(r))
    for key, v in geomeans.items():
        print(f"  geomean speedup vs cuDNN fp16, {key}: x{v:.2f}")
    return {"layers": rows, "geomean_speedup": geomeans}


# -------------------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "binary_cuda")
    p.add_argument("--parts", default="peak,gemm,conv", help="comma list of peak, gemm, conv")
    p.add_argument("--kernels", default="auto",
                   help="XNOR kernels to time: comma list of auto, simt, mma_wide, mma_tall, or 'all'")
    p.add_argument("--formats", default="channels_last,nchw", help="conv input formats: channels_last, nchw")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--gemm-size", type=int, default=8192)
    p.add_argument("--iters", type=int, default=10, help="calls per timed sample")
    p.add_argument("--repeats", type=int, default=7, help="timed samples per method (median reported)")
    p.add_argument("--peak-iters", type=int, default=20000, help="loop iterations of the peak kernel")
    args = p.parse_args(argv)

    if not torch.cuda.is_available():
        print("binary_cuda_microbench: needs a CUDA device", file=sys.stderr)
        return 2
    import sparsecomp

    if not sparsecomp._C.built_with_cuda():
        print("binary_cuda_microbench: sparsecomp was built without CUDA", file=sys.stderr)
        return 2
    kernels = ["auto", "simt", "mma_wide", "mma_tall"] if args.kernels == "all" else args.kernels.split(",")
    if torch.cuda.get_device_capability()[0] < 8:
        kernels = [k for k in kernels if not k.startswith("mma")]
    parts = set(args.parts.split(","))

    from bench.machine import machine_info

    result = {"machine": machine_info("cuda"), "args": {k: str(v) for k, v in vars(args).items()}}
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  kernels {kernels}")
    if "peak" in parts:
        print("(a) b1 MMA peak")
        result["peak"] = bench_peak(args)
    if "gemm" in parts:
        print("(b) binary GEMM vs cuBLAS fp16")
        result["gemm"] = bench_gemm(args, kernels)
    if "conv" in parts:
        print(f"(c) ResNet-18 3x3 layers, batch {args.batch}, vs cuDNN fp16")
        result["conv"] = bench_conv(args, kernels)

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "binary_cuda_microbench.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
