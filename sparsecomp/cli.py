"""Command line: `sparsecomp info`, `sparsecomp demo`, `sparsecomp bench sparse|binary|codebook|all`."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity must be in [0, 1), got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparsecomp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, torch, CPU ISA in use, threads, CUDA kernels built")
    demo = sub.add_parser("demo", help="train, prune with distillation, convert, save and reload an MLP and a CNN "
                                       "on the digits data; compare size, accuracy and latency")
    demo.add_argument("--sparsity", type=_fraction, default=None, help="MLP target sparsity (default 0.98)")
    demo.add_argument("--batch", type=_positive, default=256,
                      help="the larger latency batch, also the batch convert times layers at (default 256)")
    demo.add_argument("--repeats", type=_positive, default=41, help="interleaved latency rounds (default 41)")
    demo.add_argument("--threads", type=_positive, default=1, help="torch threads (default 1)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--models", choices=["mlp", "cnn", "both"], default="both")
    demo.add_argument("--out", default=None, help="keep the .scz files in this directory (default: a temporary one)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    bench_parsers = _add_bench(sub)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return _run_bench(args, bench_parsers, argv)

    import sparsecomp  # imported late: `--help` works without loading the native library

    if args.command == "info":
        sparsecomp.info(verbose=True)
    elif args.command == "demo":
        from . import demo as demo_module

        config = demo_module.config_from_args(sparsity=args.sparsity, batch=args.batch, repeats=args.repeats,
                                              threads=args.threads, seed=args.seed, models=args.models,
                                              progress=not args.no_progress)
        demo_module.run(config, workdir=args.out)  # a missed target is reported, not an error: exit 0
    return 0


# ------------------------------------------------------------------------------------------------- bench
ALL_OPTIONS = ("device", "dtype", "threads", "repeats", "warmup", "seed")


def _add_bench(sub) -> dict[str, argparse.ArgumentParser]:
    """`sparsecomp bench <suite>` for every suite in sparsecomp.benchmark.SUITES, and `bench all`."""
    from .benchmark import SUITES, load
    from .benchmark.args import add_common

    bench = sub.add_parser("bench", help="benchmark sparsecomp's layers against their peers on this machine",
                           description="Time sparsecomp's layers against their peers (interleaved, warmed up, "
                                       "median of repeats): a table, JSON/CSV, plot and crossover points.")
    suites = bench.add_subparsers(dest="suite", required=True, metavar="{" + ",".join([*SUITES, "all"]) + "}")
    parsers = {}
    for name in SUITES:
        module = load(name)
        description = (module.__doc__ or module.HELP).split("\n\n")[0]
        p = suites.add_parser(name, help=module.HELP, description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p, f"sparsecomp-bench/{name}")
        parsers[name] = p
    every = suites.add_parser("all", help="every suite in turn with the shared options (out: OUT/<suite>)")
    add_common(every, default_out="sparsecomp-bench")
    return parsers


def _run_bench(args: argparse.Namespace, parsers: dict, argv: list[str]) -> int:
    from .benchmark import SUITES, load

    if args.suite != "all":
        module = load(args.suite)
        module.finalize(args, parsers[args.suite])
        return module.run(args, command="sparsecomp " + shlex.join(argv))
    status = 0
    for name in SUITES:
        module = load(name)
        if args.device == "cuda" and getattr(module, "CPU_ONLY", False):
            print(f"== bench {name}: skipped (CPU only)")
            continue
        sub_argv = [f"--{k}={getattr(args, k)}" for k in ALL_OPTIONS if getattr(args, k) is not None]
        sub_argv += ["--quick"] * args.quick + ["--out", str(Path(args.out) / name)]
        if name != "sparse" and args.dtype != "float32":
            print(f"== bench {name}: skipped (float32 only, --dtype {args.dtype})")
            continue
        parser = parsers[name]
        print(f"== sparsecomp bench {name} {shlex.join(sub_argv)}", flush=True)
        sub_args = module.finalize(parser.parse_args(sub_argv), parser)
        status |= module.run(sub_args, command=f"sparsecomp bench {name} {shlex.join(sub_argv)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
