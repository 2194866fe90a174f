"""`sparsecomp bench codebook`: codebook (clustered-weight) linear layer vs torch fp32 F.linear over shape x batch x
bits: a table and results.json.

    sparsecomp bench codebook                  # 4096x4096 and 11008x4096, batch 1,8,64, bits 2,3,4,8
    sparsecomp bench codebook --quick          # one shape, fewer repeats (a smoke run, about a minute on 2 cores)
    sparsecomp bench codebook --shapes bert --bits 4 --per-channel

Every point first checks that codebook_mm equals the float64 dequantize-then-matmul reference, then times both
methods interleaved (sparsecomp.benchmark.harness). Speedup = F.linear median / codebook_mm median. The dense
baseline multiplies by the dequantized weight, so both compute the same function.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from . import args as A
from .harness import cache_flusher, check_same_result, measure
from .machine import machine_info
from .presets import linear

NAME = "codebook"
HELP = "codebook (k-means clustered, packed indices) linear layer vs torch fp32 F.linear (CPU)"
CPU_ONLY = True
FULL = {"shapes": [("", (linear(4096, 4096),)), ("", (linear(11008, 4096),))], "batch": [1, 8, 64],
        "bits": [2, 3, 4, 8], "repeats": 20, "warmup": 1}
QUICK = {"shapes": [("", (linear(4096, 4096),))], "batch": [1, 8, 64], "bits": [2, 4, 8], "repeats": 5, "warmup": 1}


def _bits(text: str) -> int:
    value = A.int_at_least(1, "bits")(text)
    if value > 8:
        raise argparse.ArgumentTypeError(f"bits must be in 1..8, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser, default_out: str = "sparsecomp-bench/codebook") -> None:
    A.add_common(p, dtypes=("float32",), default_out=default_out)
    p.add_argument("--shapes", type=A.shapes_or_presets, help="OUTxIN and/or presets, comma-separated "
                   "(default 4096x4096,11008x4096; --quick 4096x4096)")
    p.add_argument("--batch", type=A.batch_list, help="batch sizes (default 1,8,64)")
    p.add_argument("--bits", type=A.comma_list(_bits, "bits"), help="index widths (default 2,3,4,8; --quick 2,4,8)")
    p.add_argument("--per-channel", action="store_true", help="one codebook per output row")
    p.add_argument("--flush-mb", type=float, default=0.0, help="read this many MB before every sample (cold weights)")
    p.add_argument("--min-sample-ms", type=float, default=1.0)


def finalize(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    A.check_common(args, parser, cpu_only="the codebook suite times the CPU kernel only")
    A.fill_defaults(args, QUICK if args.quick else FULL)
    return args


def build_parser(prog: str | None = None, default_out: str = "sparsecomp-bench/codebook") -> argparse.ArgumentParser:
    return A.suite_parser(__doc__, add_arguments, default_out, prog)


def run_sweep(args, progress: bool = True) -> list[dict]:
    from tqdm import tqdm

    from sparsecomp import ops
    from sparsecomp.formats.codebook import dequantize, pack_indices

    gen = torch.Generator().manual_seed(args.seed)
    cases = [c for _, cs in args.shapes for c in cs]
    results = []
    with tqdm(total=len(cases) * len(args.bits) * len(args.batch), desc="codebook", unit="point",
              disable=not progress) as bar:
        for case in cases:
            out_f, in_f = case.out_features, case.in_features
            for bits in args.bits:
                idx = torch.randint(0, 1 << bits, (out_f, in_f), generator=gen)
                cb = torch.randn((out_f, 1 << bits) if args.per_channel else (1 << bits,), generator=gen) * 0.02
                packed = pack_indices(idx, bits)
                w = dequantize(idx, cb).contiguous()
                bias = torch.randn(out_f, generator=gen)
                del idx
                for batch in args.batch:
                    bar.set_postfix_str(f"{case.name} bits={bits} b={batch}")
                    rows = case.gemm_rows(batch)
                    inputs = [torch.randn(rows, in_f, generator=gen) for _ in range(4)]
                    fns = {"dense_fp32": lambda x: torch.nn.functional.linear(x, w, bias),
                           "codebook": lambda x: ops.codebook_mm(x, packed, cb, bias, in_f, bits)}
                    ref = torch.nn.functional.linear(inputs[0].double(), w.double(), bias.double())
                    check_same_result({n: f(inputs[0]) for n, f in fns.items()}, ref, 1e-4, 1e-4)
                    t = measure(fns, inputs, repeats=args.repeats, warmup=args.warmup,
                                min_sample_s=args.min_sample_ms / 1e3,
                                before_sample=cache_flusher(args.flush_mb, "cpu"))
                    d, c = t["dense_fp32"].median_ms, t["codebook"].median_ms
                    results.append({"case": case.name, "shape": [out_f, in_f], "bits": bits, "batch": batch,
                                    "gemm_rows": rows, "dense_ms": d, "codebook_ms": c, "speedup": d / c,
                                    "quartiles_ms": {k: v.quartiles_ms for k, v in t.items()}})
                    bar.update()
    return results


def format_table(results: list[dict]) -> str:
    lines = [f"{'case':<14} {'bits':>4} {'batch':>5} {'dense ms':>9} {'codebook ms':>11} {'speedup':>8}"]
    lines += [f"{r['case']:<14} {r['bits']:>4} {r['batch']:>5} {r['dense_ms']:>9.3f} {r['codebook_ms']:>11.3f} "
              f"{r['speedup']:>7.2f}x" for r in results]
    return "\n".join(lines)


def run(args: argparse.Namespace, command: str = "sparsecomp bench codebook", progress: bool = True) -> int:
    A.set_threads(args)
    started = time.perf_counter()
    meta = {"command": command,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info("cpu"),
            "args": {k: v for k, v in vars(args).items() if k not in ("shapes", "func")}
            | {"shapes": [p or cs[0].name for p, cs in args.shapes]},
            "load_average_1min_before": A.load_warning()}
    results = run_sweep(args, progress=progress)
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    print(format_table(results))
    print("speedup = dense F.linear (dequantized weight) ms / codebook_mm ms, interleaved in this run")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps({"meta": meta, "machine": meta["machine"], "threads": torch.get_num_threads(),
                                "results": results}, indent=1, default=str))
    print(f"wrote {path} in {meta['wall_s']} s")
    return 0


def main(argv: list[str] | None = None, default_out: str = "sparsecomp-bench/codebook",
         command: str = "sparsecomp bench codebook") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(default_out=default_out)
    args = finalize(parser.parse_args(argv), parser)
    return run(args, command=(command + " " + shlex.join(argv)).strip())


if __name__ == "__main__":
    sys.exit(main())
