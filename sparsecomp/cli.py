"""Command line: `sparsecomp info`, `sparsecomp demo`."""
from __future__ import annotations

import argparse
import sys


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
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
