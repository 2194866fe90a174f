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
    demo = sub.add_parser("demo", help="prune a built-in model, convert it, report speed and memory per layer")
    demo.add_argument("--sparsity", type=_fraction, default=0.9)
    demo.add_argument("--batch", type=_positive, default=1)
    demo.add_argument("--repeats", type=_positive, default=30)
    args = parser.parse_args(argv)

    import sparsecomp  # imported late: `--help` works without loading the native library

    if args.command == "info":
        sparsecomp.info(verbose=True)
    elif args.command == "demo":
        from . import demo as demo_module

        result = demo_module.run(sparsity=args.sparsity, batch=args.batch, repeats=args.repeats)
        return 0 if result["match"] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
