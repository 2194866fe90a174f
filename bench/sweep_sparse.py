"""Sparse linear layer vs its peers over shape x batch x sparsity: table, results.json/.csv and a plot.

    python bench/sweep_sparse.py                      # full grid: 4096x4096, batch 1,16,128, 8 sparsities
    python bench/sweep_sparse.py --quick              # small grid, < 3 minutes on 2 cores
    python bench/sweep_sparse.py --device cuda --dtype float16 --shapes 4096x4096,11008x4096

Shapes are weight shapes OUTxIN (out_features x in_features). Every point checks that all methods computing
the same function agree with a float64 reference before timing them (bench/harness.py explains the timing).
Speedup = dense median / method median; "ours vs csr" = torch.sparse CSR median / sparsecomp median.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import shlex
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `bench` package importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from tqdm import tqdm

from bench import sparse_linear_methods as methods
from bench.harness import cache_flusher, check_same_result, crossover, measure
from bench.machine import machine_info

FULL_GRID = {"shapes": [(4096, 4096)], "batch": [1, 16, 128],
             "sparsity": [0.3, 0.4, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99], "repeats": 20, "warmup": 2}
QUICK_GRID = {"shapes": [(4096, 4096)], "batch": [1, 16, 128], "sparsity": [0.5, 0.8, 0.95], "repeats": 7,
              "warmup": 1}
REPORTED = ("dense", "sparsecomp", "torch_csr", "structured", "semi_structured_24")
CROSSOVER_METHODS = ("sparsecomp", "torch_csr", "structured")  # 2:4 is always 50%: no sparsity axis


# ----------------------------------------------------------------------------------------------- arguments
def _comma_list(parse_one, what):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty {what} list")
        values = [parse_one(t) for t in items]
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"duplicate {what} in {text!r}")
        return values
    return parse


def _shape(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)[xX](\d+)", text)
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise argparse.ArgumentTypeError(f"shape must be OUTxIN with positive integers, e.g. 4096x4096; got {text!r}")
    return int(m[1]), int(m[2])


def _int_at_least(minimum: int, what: str):
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


_batch = _int_at_least(1, "batch")
_positive_int = _int_at_least(1, "")
_non_negative_int = _int_at_least(0, "")


def _sparsity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"sparsity must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity must be in [0, 1) (1 would leave no weights), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=list(methods.DTYPES), default="float32")
    p.add_argument("--shapes", type=_comma_list(_shape, "shape"), help="weight shapes OUTxIN, comma-separated "
                   "(default 4096x4096)")
    p.add_argument("--batch", type=_comma_list(_batch, "batch"), help="batch sizes (default 1,16,128)")
    p.add_argument("--sparsity", type=_comma_list(_sparsity, "sparsity"),
                   help="fractions of weights pruned, each in [0, 1) (default 0.3,0.4,0.5,0.7,0.8,0.9,0.95,0.99)")
    p.add_argument("--repeats", type=_positive_int, help="timed samples per method (default 20, --quick 7)")
    p.add_argument("--warmup", type=_non_negative_int, help="untimed rounds over all inputs (default 2)")
    p.add_argument("--inputs", type=_positive_int, default=4, help="pre-generated inputs rotated through")
    p.add_argument("--min-sample-ms", type=float, default=1.0,
                   help="a timed sample averages enough calls to last this long (keeps timer overhead out)")
    p.add_argument("--flush-mb", type=float, default=0.0,
                   help="before every timed sample, untimed, read a buffer of this many MB so weights start "
                        "cold: more than the last-level cache (lscpu; ~50 MB L2 on H100), with --min-sample-ms 0 "
                        "(else only the first call of a batched sample is cold); default 0: off")
    p.add_argument("--threads", type=_positive_int, help="torch threads (default: all cores, os.cpu_count())")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small grid (%s) that runs in < 3 minutes on 2 cores"
                   % ", ".join(f"{k}={v}" for k, v in QUICK_GRID.items()))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"), help="output folder")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    grid = QUICK_GRID if args.quick else FULL_GRID
    for key, default in grid.items():  # flags given explicitly win over --quick
        if getattr(args, key) is None:
            setattr(args, key, default)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda: torch.cuda.is_available() is False (torch {torch.__version__})")
    if args.min_sample_ms < 0:
        parser.error(f"--min-sample-ms must be >= 0, got {args.min_sample_ms}")
    if args.flush_mb < 0:
        parser.error(f"--flush-mb must be >= 0, got {args.flush_mb}")
    return args


# ------------------------------------------------------------------------------------------------ running
def _reason(err: BaseException) -> str:
    first_line = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first_line[:200]}"


def build_for_sparsity(pruned, bias, unpruned, sparsity) -> tuple[dict, dict]:
    """Callables for one pruned weight (reused across batch sizes) and {method: reason} for those that fail."""
    fns, skipped = {"dense": methods.make_dense(pruned, bias)}, {}
    builders = {"sparsecomp": lambda: {"sparsecomp": methods.make_sparsecomp(pruned, bias)},
                "torch_csr": lambda: methods.make_csr_variants(pruned, bias),
                "structured": lambda: {"structured": methods.make_structured(unpruned, bias, sparsity)}}
    for name, build in builders.items():
        try:
            fns.update(build())
        except Exception as err:
            skipped[name] = _reason(err)
    return fns, skipped


def bench_point(fns, skipped, pruned, bias, unpruned, batch, args) -> dict:
    """Checks, then times, every method at one batch size: medians and quartiles in ms, CSR variant, skips."""
    dtype = methods.DTYPES[args.dtype]
    inputs = methods.random_inputs(args.inputs, batch, pruned.shape[1], args.seed + batch, dtype, args.device)
    skipped = dict(skipped)
    fns = dict(fns)
    if args.device == "cuda":
        try:
            fn24, ref24 = methods.make_semi_structured_24(unpruned, bias, inputs)
            check_same_result({"semi_structured_24": fn24(inputs[0])}, ref24(inputs[0]),
                              *methods.tolerance(torch.float16))
            fns["semi_structured_24"] = fn24
        except Exception as err:
            skipped["semi_structured_24"] = _reason(err)
    outputs = {}
    for name in list(fns):
        try:
            outputs[name] = fns[name](inputs[0])
        except Exception as err:
            if name == "dense":
                raise
            skipped[name] = _reason(err)
            del fns[name]
    ref = torch.nn.functional.linear(inputs[0].double(), pruned.double(), bias.double())
    check_same_result({n: o for n, o in outputs.items() if n in methods.SAME_FUNCTION}, ref,
                      *methods.tolerance(dtype))
    timings = measure(fns, inputs, repeats=args.repeats, warmup=args.warmup,
                      min_sample_s=args.min_sample_ms / 1e3, device=args.device,
                      before_sample=cache_flusher(args.flush_mb, args.device))
    ms = {name: t.median_ms for name, t in timings.items()}
    quartiles = {name: t.quartiles_ms for name, t in timings.items()}
    csr = {v: ms.pop(v) for v in methods.CSR_VARIANTS if v in ms}
    csr_variant = min(csr, key=csr.get) if csr else None
    ms["torch_csr"] = csr[csr_variant] if csr else None
    if csr_variant:
        quartiles["torch_csr"] = quartiles[csr_variant]
    return {"ms": ms, "ms_quartiles": quartiles, "csr_ms_by_variant": csr, "csr_variant": csr_variant,
            "skipped": skipped}


def _ratio(num, den):
    return None if num is None or den is None or den <= 0 else num / den


def run_sweep(args) -> list[dict]:
    dtype = methods.DTYPES[args.dtype]
    rows = []
    grid = [(shape, s, b) for shape in args.shapes for s in args.sparsity for b in args.batch]
    with tqdm(total=len(grid), desc="sweep", unit="point") as bar:
        for shape_i, (out_f, in_f) in enumerate(args.shapes):
            weight, bias = methods.random_layer(out_f, in_f, seed=args.seed + shape_i)
            order = methods.magnitude_order(weight)  # the slow part of pruning, shared by every sparsity
            unpruned = weight.to(device=args.device, dtype=dtype)
            bias = bias.to(device=args.device, dtype=dtype)
            for sparsity in args.sparsity:
                pruned = methods.prune_to(weight, order, sparsity).to(device=args.device, dtype=dtype)
                # no_grad, not inference_mode: F.linear with a CSR weight raises under inference_mode
                with torch.no_grad():
                    fns, skipped = build_for_sparsity(pruned, bias, unpruned, sparsity)
                for batch in args.batch:
                    bar.set_postfix_str(f"{out_f}x{in_f} s={sparsity} b={batch}")
                    with torch.no_grad():
                        point = bench_point(fns, skipped, pruned, bias, unpruned, batch, args)
                    ms = point["ms"]
                    rows.append({
                        "shape": f"{out_f}x{in_f}", "out_features": out_f, "in_features": in_f, "batch": batch,
                        "sparsity": sparsity, "nnz": int((pruned != 0).sum()),
                        "structured_rows": methods.structured_rows(out_f, sparsity),
                        **point,
                        "ms": {m: ms.get(m) for m in REPORTED},
                        "speedup": {m: _ratio(ms["dense"], ms.get(m)) for m in REPORTED if m != "dense"},
                        "ours_vs_csr": _ratio(ms.get("torch_csr"), ms.get("sparsecomp")),
                    })
                    bar.update()
    return rows


def crossovers(rows: list[dict]) -> list[dict]:
    found = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        for batch in dict.fromkeys(r["batch"] for r in rows):
            pts = [r for r in rows if r["shape"] == shape and r["batch"] == batch]
            for method in CROSSOVER_METHODS:
                found.append({"shape": shape, "batch": batch, "method": method,
                              "sparsity": crossover([r["sparsity"] for r in pts], [r["speedup"][method] for r in pts]),
                              "lowest_measured": min(r["sparsity"] for r in pts)})
    return found


# ------------------------------------------------------------------------------------------------ reports
def fmt_ms(v):
    if v is None:
        return "n/a"
    return f"{v:.0f}" if v >= 100 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def fmt_x(v):
    return "n/a" if v is None else f"{v:.2f}x"


def format_table(rows: list[dict], device: str) -> str:
    cols = ["shape", "batch", "sparsity", "dense ms", "ours ms", "csr ms", "csr via", "struct ms"]
    cols += ["2:4 ms"] if device == "cuda" else []
    cols += ["speedup", "ours vs csr"]
    lines = []
    for r in rows:
        ms = r["ms"]
        line = [r["shape"], str(r["batch"]), f"{r['sparsity']:g}", fmt_ms(ms["dense"]), fmt_ms(ms["sparsecomp"]),
                fmt_ms(ms["torch_csr"]), {"csr_linear": "F.linear", "csr_mm": "sparse.mm"}.get(r["csr_variant"], "-"),
                fmt_ms(ms["structured"])]
        line += [fmt_ms(ms["semi_structured_24"])] if device == "cuda" else []
        line += [fmt_x(r["speedup"]["sparsecomp"]), fmt_x(r["ours_vs_csr"])]
        lines.append(line)
    widths = [max(len(c), *(len(l[i]) for l in lines)) if lines else len(c) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*cols), fmt.format(*("-" * w for w in widths))] + [fmt.format(*l) for l in lines])


def format_crossover(c: dict) -> str:
    """'0.412'; '<= 0.3' when faster at every measured sparsity; 'none' when slower at the highest one."""
    if c["sparsity"] is None:
        return "none"
    if c["sparsity"] == c["lowest_measured"]:
        return f"<= {c['sparsity']:.3g}"
    return f"{c['sparsity']:.3f}"


CROSSOVER_LEGEND = ("'<= s': faster than dense at every sparsity measured; "
                    "'none': slower than dense at the highest sparsity measured")


CSV_COLUMNS = ["shape", "out_features", "in_features", "batch", "sparsity", "nnz", "structured_rows"] + \
    [f"{m}_ms" for m in REPORTED] + ["csr_variant"] + [f"speedup_{m}" for m in REPORTED if m != "dense"] + \
    ["ours_vs_csr"]


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in rows:
            flat = {k: r[k] for k in CSV_COLUMNS if k in r}
            flat.update({f"{m}_ms": r["ms"][m] for m in REPORTED})
            flat.update({f"speedup_{m}": v for m, v in r["speedup"].items()})
            writer.writerow({k: "" if v is None else v for k, v in flat.items()})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    started = time.perf_counter()
    meta = {
        "command": "python bench/sweep_sparse.py " + shlex.join(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(args.device),
        "args": {**vars(args), "shapes": [f"{o}x{i}" for o, i in args.shapes]},
        "csr_variants": methods.CSR_VARIANTS,
        "tolerance_rtol_atol": methods.tolerance(methods.DTYPES[args.dtype]),
    }
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None and load > 0.5:
        print(f"warning: load average {load:.2f} before the sweep: another process is using the CPU, "
              "timings (of multi-threaded kernels above all) will be noisy", file=sys.stderr)
    meta["load_average_1min_before"] = load
    rows = run_sweep(args)
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    found = crossovers(rows)

    print(format_table(rows, args.device))
    print("\nspeedup = dense ms / ours ms; ours vs csr = csr ms / ours ms (> 1: sparsecomp is faster)")
    print("torch.sparse CSR column = the faster of " + " and ".join(f"{k}: {v}" for k, v in
                                                                    methods.CSR_VARIANTS.items()) + " (csr via)")
    print("\ncrossover sparsity (lowest sparsity from which the method stays faster than dense, interpolated; "
          f"{CROSSOVER_LEGEND}):")
    for c in found:
        print(f"  {c['shape']} batch {c['batch']:>4}  {c['method']:<11} {format_crossover(c)}")
    skipped = sorted({(m, reason) for r in rows for m, reason in r["skipped"].items()})
    for method, reason in skipped:
        print(f"n/a: {method}: {reason}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "crossover": found}, indent=1))
    write_csv(rows, out / "results.csv")
    try:
        from bench.plot_speedup import plot_speedup

        plot_speedup(rows, meta, out / "speedup_vs_sparsity.png")
    except ImportError as err:
        print(f"no plot: {err}")
    print(f"\nwrote {out}/results.json, results.csv, speedup_vs_sparsity.png in {meta['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
