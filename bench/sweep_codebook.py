"""Codebook (clustered-weight) linear layer vs torch fp32 F.linear over shape x batch x bits: a table and JSON.

    python bench/sweep_codebook.py                  # 4096x4096 and 11008x4096, batch 1,8,64, bits 2,3,4,8
    python bench/sweep_codebook.py --quick          # one shape, fewer repeats (a smoke run, minutes on 2 cores)

Every point first checks that codebook_mm equals the float64 dequantize-then-matmul reference, then times both
methods interleaved (bench/harness.py). Speedup = F.linear median / codebook_mm median. The dense baseline
multiplies by the dequantized weight, so both compute the same function.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `bench` package importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.harness import cache_flusher, check_same_result, measure
from bench.machine import machine_info

FULL = {"shapes": [(4096, 4096), (11008, 4096)], "batch": [1, 8, 64], "bits": [2, 3, 4, 8], "repeats": 20}
QUICK = {"shapes": [(4096, 4096)], "batch": [1, 8, 64], "bits": [2, 4, 8], "repeats": 5}


def _ints(text):
    return [int(t) for t in text.split(",") if t.strip()]


def _shapes(text):
    return [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",") if s.strip()]


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", type=_shapes, help="OUTxIN, comma-separated")
    p.add_argument("--batch", type=_ints)
    p.add_argument("--bits", type=_ints)
    p.add_argument("--repeats", type=int)
    p.add_argument("--per-channel", action="store_true", help="one codebook per output row")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--flush-mb", type=float, default=0.0, help="read this many MB before every sample (cold weights)")
    p.add_argument("--min-sample-ms", type=float, default=1.0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    return p


def run(args) -> list[dict]:
    from sparsecomp import ops
    from sparsecomp.formats.codebook import dequantize, pack_indices

    gen = torch.Generator().manual_seed(args.seed)
    results = []
    for out_f, in_f in args.shapes:
        for bits in args.bits:
            idx = torch.randint(0, 1 << bits, (out_f, in_f), generator=gen)
            cb = torch.randn((out_f, 1 << bits) if args.per_channel else (1 << bits,), generator=gen) * 0.02
            packed = pack_indices(idx, bits)
            w = dequantize(idx, cb).contiguous()
            bias = torch.randn(out_f, generator=gen)
            del idx
            for batch in args.batch:
                inputs = [torch.randn(batch, in_f, generator=gen) for _ in range(4)]
                fns = {"dense_fp32": lambda x: torch.nn.functional.linear(x, w, bias),
                       "codebook": lambda x: ops.codebook_mm(x, packed, cb, bias, in_f, bits)}
                ref = torch.nn.functional.linear(inputs[0].double(), w.double(), bias.double())
                check_same_result({n: f(inputs[0]) for n, f in fns.items()}, ref, 1e-4, 1e-4)
                t = measure(fns, inputs, repeats=args.repeats, warmup=1, min_sample_s=args.min_sample_ms / 1e3,
                            before_sample=cache_flusher(args.flush_mb, "cpu"))
                d, c = t["dense_fp32"].median_ms, t["codebook"].median_ms
                row = {"shape": [out_f, in_f], "bits": bits, "batch": batch, "dense_ms": d, "codebook_ms": c,
                       "speedup": d / c, "quartiles_ms": {k: v.quartiles_ms for k, v in t.items()}}
                results.append(row)
                print(f"{out_f:>6}x{in_f:<6} bits={bits} batch={batch:<4} dense {d:8.3f} ms  codebook {c:8.3f} ms"
                      f"  speedup {d / c:5.2f}x", flush=True)
    return results


def main(argv=None):
    args = build_parser().parse_args(argv)
    grid = QUICK if args.quick else FULL
    for key, default in grid.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"codebook-{stamp}.json"
    path.write_text(json.dumps({"machine": machine_info("cpu"), "threads": torch.get_num_threads(),
                                "args": {k: v for k, v in vars(args).items() if k != "out"}, "results": results},
                               indent=1, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
