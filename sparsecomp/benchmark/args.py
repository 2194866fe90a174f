"""argparse types and checks shared by the benchmark suites: every bad value gets an error naming what was wanted."""
from __future__ import annotations

import argparse
import os
import re

import torch

from .presets import PRESETS, GemmCase, linear

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def comma_list(parse_one, what: str):
    """argparse type: a comma-separated list of distinct values, each parsed by ``parse_one``."""
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty {what} list")
        values = [parse_one(t) for t in items]
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"duplicate {what} in {text!r}")
        return values
    return parse


def shape(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)[xX](\d+)", text)
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise argparse.ArgumentTypeError(f"shape must be OUTxIN with positive integers, e.g. 4096x4096; got {text!r}")
    return int(m[1]), int(m[2])


def shape_or_preset(text: str) -> tuple[str, tuple[GemmCase, ...]]:
    """'llm' -> ('llm', its cases); '512x256' -> ('', (that linear case,)); anything else is an error."""
    if text in PRESETS:
        return text, PRESETS[text]
    if re.fullmatch(r"\d+[xX]\d+", text):
        return "", (linear(*shape(text)),)
    raise argparse.ArgumentTypeError(f"shape must be OUTxIN (e.g. 4096x4096) or a preset ({', '.join(PRESETS)}); "
                                     f"got {text!r}")


def shapes_or_presets(text: str) -> list[tuple[str, tuple[GemmCase, ...]]]:
    items = comma_list(shape_or_preset, "shape")(text)
    names = [c.name for _, cases in items for c in cases]
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a shape is listed twice in {text!r}")
    return items


def int_at_least(minimum: int, what: str):
    """argparse type: an integer >= minimum, with an error that says what was expected."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            kind = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
            raise argparse.ArgumentTypeError(f"{what} must be {kind}, got {text!r}".lstrip())
        return value
    return parse


batch = int_at_least(1, "batch")
positive_int = int_at_least(1, "")
non_negative_int = int_at_least(0, "")
batch_list = comma_list(batch, "batch")


def sparsity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"sparsity must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity must be in [0, 1) (1 would leave no weights), got {text!r}")
    return value


sparsity_list = comma_list(sparsity, "sparsity")


def suite_parser(doc: str, add_arguments, default_out: str, prog: str | None = None) -> argparse.ArgumentParser:
    """A suite's stand-alone parser: its module docstring's first paragraph as description, its own options."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, default_out)
    return p


def add_common(p: argparse.ArgumentParser, *, dtypes=tuple(DTYPES), default_out: str) -> None:
    """The options every suite takes: --device --dtype --threads --repeats --warmup --seed --quick --out."""
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=list(dtypes), default="float32")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: all cores, os.cpu_count())")
    p.add_argument("--repeats", type=positive_int, help="timed samples per method (median reported)")
    p.add_argument("--warmup", type=non_negative_int, help="untimed rounds over all inputs before timing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="the small grid (make bench)")
    p.add_argument("--out", default=default_out, help=f"output folder (default {default_out})")


def check_common(args: argparse.Namespace, parser: argparse.ArgumentParser, *, cpu_only: str = "") -> None:
    """Errors (exit 2) for a device this machine lacks, or one the suite does not run on (``cpu_only``: why)."""
    if args.device == "cuda":
        if cpu_only:
            parser.error(f"--device cuda: {cpu_only}")
        if not torch.cuda.is_available():
            parser.error(f"--device cuda: torch.cuda.is_available() is False (torch {torch.__version__})")
    for name in ("min_sample_ms", "flush_mb"):
        if getattr(args, name, 0) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")


def fill_defaults(args: argparse.Namespace, grid: dict) -> None:
    """Sets every option still None from ``grid`` (explicit flags win over --quick)."""
    for key, default in grid.items():
        if getattr(args, key, None) is None:
            setattr(args, key, default)


def set_threads(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads or os.cpu_count() or 1)


def load_warning(prefix: str = "") -> float | None:
    """The 1-minute load average, warning on stderr when another process is busy (timings will be noisy)."""
    import sys

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None and load > 0.5:
        print(f"{prefix}warning: load average {load:.2f} before the sweep: another process is using the CPU, "
              "timings (of multi-threaded kernels above all) will be noisy", file=sys.stderr)
    return load
