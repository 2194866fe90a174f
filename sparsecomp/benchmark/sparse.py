"""`sparsecomp bench sparse`: pruned linear layers (and convs as im2col GEMMs) vs their peers over shape x batch x
sparsity, with the crossover sparsity per (shape, batch, method), a table, results.json/.csv and a plot.

    sparsecomp bench sparse                           # 4096x4096, batch 1,16,128, 8 sparsities
    sparsecomp bench sparse --quick                   # the same shape, 3 sparsities (make bench)
    sparsecomp bench sparse --shapes llm,768x3072 --batch 1,8 --sparsity 0.5,0.9
    sparsecomp bench sparse --shapes alexnet-conv     # SSL's AlexNet convs at their own sparsities
    sparsecomp bench sparse --device cuda --dtype float16

Shapes are weight shapes OUTxIN or presets (sparsecomp.benchmark.presets). A conv preset's batch counts images:
its GEMM has batch x output-pixels rows, and its layers carry their own sparsity (an explicit --sparsity adds
grid points to them). Every point checks that all methods computing the same function agree with a float64
reference before timing (sparsecomp.benchmark.harness explains the timing). Speedup = dense median / method
median; "ours vs csr" = torch.sparse CSR median / sparsecomp median.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch

from . import args as A
from . import sparse_methods as methods
from .crossover import CROSSOVER_LEGEND, crossovers, format_crossover
from .harness import cache_flusher, check_same_result, measure
from .machine import machine_info
from .presets import PRESET_BATCHES, PRESET_QUICK_BATCHES, PRESETS, SSL_ALEXNET_SPEEDUP, GemmCase, describe_presets

NAME = "sparse"
HELP = "pruned linear / conv-as-GEMM layers: dense vs sparsecomp vs torch.sparse vs structured (vs 2:4 on CUDA)"
DEFAULT_BATCH = [1, 16, 128]
FULL_GRID = {"shapes": [("square", PRESETS["square"])], "sparsity": [0.3, 0.4, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99],
             "repeats": 20, "warmup": 2}
QUICK_GRID = {"shapes": [("square", PRESETS["square"])], "sparsity": [0.5, 0.8, 0.95], "repeats": 7, "warmup": 1}
REPORTED = ("dense", "sparsecomp", "torch_csr", "torch_bsr", "structured", "semi_structured_24")
CROSSOVER_METHODS = ("sparsecomp", "torch_csr", "torch_bsr", "structured")  # 2:4 is always 50%: no sparsity axis
#: torch_bsr is left out of the timing when its checked call is this many times slower than dense's
BSR_MAX_SLOWDOWN = 20
#: bytes of pre-generated inputs allowed per point (conv GEMMs at large batch have ~10^5 rows)
INPUT_BUDGET_BYTES = 512 * 2**20


# ----------------------------------------------------------------------------------------------- arguments
def add_arguments(p: argparse.ArgumentParser, default_out: str = "sparsecomp-bench/sparse") -> None:
    A.add_common(p, default_out=default_out)
    p.add_argument("--shapes", type=A.shapes_or_presets,
                   help="weight shapes OUTxIN and/or presets, comma-separated (default 4096x4096); presets: "
                   + describe_presets())
    p.add_argument("--batch", type=A.batch_list, help="batch sizes (default 1,16,128; conv presets 1,8 images, "
                   "--quick 1)")
    p.add_argument("--sparsity", type=A.sparsity_list,
                   help="fractions of weights pruned, each in [0, 1) (default 0.3,0.4,0.5,0.7,0.8,0.9,0.95,0.99; "
                        "--quick 0.5,0.8,0.95)")
    p.add_argument("--inputs", type=A.positive_int, default=4, help="pre-generated inputs rotated through")
    p.add_argument("--min-sample-ms", type=float, default=1.0,
                   help="a timed sample averages enough calls to last this long (keeps timer overhead out)")
    p.add_argument("--flush-mb", type=float, default=0.0,
                   help="before every timed sample, untimed, read a buffer of this many MB so weights start "
                        "cold: more than the last-level cache, with --min-sample-ms 0 (else only the first call "
                        "of a batched sample is cold); default 0: off")
    p.add_argument("--bsr", action=argparse.BooleanOptionalAction, default=None,
                   help="time torch.sparse BSR too (default: on CUDA only; on CPU its kernels ran 20-170x slower "
                        "than dense on unstructured zeros here, adding minutes per grid; never with --quick)")


def finalize(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    args.batch_given, args.sparsity_given = args.batch is not None, args.sparsity is not None
    A.fill_defaults(args, QUICK_GRID if args.quick else FULL_GRID)
    A.check_common(args, parser)
    if args.bsr is None:
        args.bsr = args.device == "cuda" and not args.quick
    return args


def build_parser(prog: str | None = None, default_out: str = "sparsecomp-bench/sparse") -> argparse.ArgumentParser:
    return A.suite_parser(__doc__, add_arguments, default_out, prog)


def parse_args(argv: list[str], default_out: str = "sparsecomp-bench/sparse") -> argparse.Namespace:
    parser = build_parser(default_out=default_out)
    return finalize(parser.parse_args(argv), parser)


def plan(args: argparse.Namespace) -> list[tuple[str, GemmCase, list[float], list[int]]]:
    """(preset, case, sparsities, batches) per case: a layer's own sparsity replaces the grid (explicit
    --sparsity values are added to it); conv presets have their own default batches."""
    out = []
    for preset, cases in args.shapes:
        if args.batch_given:
            batches = list(args.batch)
        else:
            batches = list((PRESET_QUICK_BATCHES if args.quick else PRESET_BATCHES).get(preset, DEFAULT_BATCH))
        for case in cases:
            if case.sparsity is None:
                sparsities = list(args.sparsity)
            else:
                extra = args.sparsity if args.sparsity_given else []
                sparsities = sorted({case.sparsity, *extra})
            out.append((preset, case, sparsities, batches))
    return out


# ------------------------------------------------------------------------------------------------ running
def _reason(err: BaseException) -> str:
    first_line = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first_line[:200]}"


def build_for_sparsity(pruned, bias, unpruned, sparsity, bsr: bool = True) -> tuple[dict, dict]:
    """Callables for one pruned weight (reused across batch sizes) and {method: reason} for those that fail."""
    fns, skipped = {"dense": methods.make_dense(pruned, bias)}, {}
    builders = {"sparsecomp": lambda: {"sparsecomp": methods.make_sparsecomp(pruned, bias)},
                "torch_csr": lambda: methods.make_csr_variants(pruned, bias),
                "structured": lambda: {"structured": methods.make_structured(unpruned, bias, sparsity)}}
    if bsr:
        builders["torch_bsr"] = lambda: {"torch_bsr": methods.make_bsr(pruned, bias)}
    for name, build in builders.items():
        try:
            fns.update(build())
        except Exception as err:
            skipped[name] = _reason(err)
    return fns, skipped


def bench_point(fns, skipped, pruned, bias, unpruned, rows, args, geometry=None, batch=None) -> dict:
    """Checks, then times, every method on ``rows`` GEMM rows: medians/quartiles in ms, CSR variant, skips.
    With a conv ``geometry`` (and ``batch`` images) the GEMM inputs are im2col matrices of random images, and
    the conv methods run on those images."""
    dtype = A.DTYPES[args.dtype]
    in_features = pruned.shape[1]
    n_inputs = max(1, min(args.inputs, INPUT_BUDGET_BYTES // max(1, rows * in_features * 4)))
    skipped = dict(skipped)
    fns = dict(fns)
    if geometry is None:
        inputs = methods.random_inputs(n_inputs, rows, in_features, args.seed + rows, dtype, args.device)
    else:
        images, inputs = methods.conv_inputs(geometry, batch, n_inputs, args.seed + rows, dtype, args.device)
        try:
            fns.update(methods.make_conv_methods(pruned, bias, geometry, images, inputs))
        except Exception as err:
            skipped["sparsecomp_conv2d"] = _reason(err)
    if args.device == "cuda":
        try:
            fn24, ref24 = methods.make_semi_structured_24(unpruned, bias, inputs)
            check_same_result({"semi_structured_24": fn24(inputs[0])}, ref24(inputs[0]),
                              *methods.tolerance(torch.float16))
            fns["semi_structured_24"] = fn24
        except Exception as err:
            skipped["semi_structured_24"] = _reason(err)
    outputs, check_s = {}, {}
    for name in list(fns):
        try:
            t0 = time.perf_counter()
            outputs[name] = fns[name](inputs[0])
            check_s[name] = time.perf_counter() - t0
        except Exception as err:
            if name == "dense":
                raise
            skipped[name] = _reason(err)
            del fns[name]
    # torch's BSR on CPU can be 100-1000x slower than dense on unstructured zeros: seconds per call would
    # dominate the grid, and a ratio that far below 1 needs no precision (its check-call time is kept)
    slow = check_s.get("torch_bsr", 0.0) / max(check_s["dense"], 1e-6)
    if slow > BSR_MAX_SLOWDOWN and check_s["torch_bsr"] > 0.05:
        skipped["torch_bsr"] = (f"not timed: its checked call took {check_s['torch_bsr'] * 1e3:.0f} ms, "
                                f"{slow:.0f}x dense's (limit {BSR_MAX_SLOWDOWN}x)")
        del fns["torch_bsr"]
    ref = torch.nn.functional.linear(inputs[0].double(), pruned.double(), bias.double())
    for name in methods.CONV_METHODS:
        if name in outputs:
            outputs[name] = methods.as_gemm_rows(outputs[name])
    check_same_result({n: o for n, o in outputs.items() if n in methods.SAME_FUNCTION + methods.CONV_METHODS},
                      ref, *methods.tolerance(dtype))
    del outputs
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
    conv_ms = {name: ms.pop(name) for name in methods.CONV_METHODS if name in ms}
    return {"ms": ms, "ms_quartiles": quartiles, "csr_ms_by_variant": csr, "csr_variant": csr_variant,
            "conv_ms": conv_ms or None, "conv_speedup": _ratio(conv_ms.get("dense_conv2d"),
                                                                 conv_ms.get("sparsecomp_conv2d")),
            "skipped": skipped, "inputs": n_inputs}


def _ratio(num, den):
    return None if num is None or den is None or den <= 0 else num / den


def run_sweep(args, progress: bool = True) -> list[dict]:
    from tqdm import tqdm

    dtype = A.DTYPES[args.dtype]
    rows = []
    cases = plan(args)
    total = sum(len(s) * len(b) for _, _, s, b in cases)
    with tqdm(total=total, desc="sparse", unit="point", disable=not progress) as bar:
        for case_i, (preset, case, sparsities, batches) in enumerate(cases):
            out_f, in_f = case.out_features, case.in_features
            weight, bias = methods.random_layer(out_f, in_f, seed=args.seed + case_i)
            order = methods.magnitude_order(weight)  # the slow part of pruning, shared by every sparsity
            unpruned = weight.to(device=args.device, dtype=dtype)
            bias = bias.to(device=args.device, dtype=dtype)
            for sparsity in sparsities:
                pruned = methods.prune_to(weight, order, sparsity).to(device=args.device, dtype=dtype)
                # no_grad, not inference_mode: F.linear with a CSR weight raises under inference_mode
                with torch.no_grad():
                    fns, skipped = build_for_sparsity(pruned, bias, unpruned, sparsity, bsr=args.bsr)
                for batch in batches:
                    gemm_rows = case.gemm_rows(batch)
                    bar.set_postfix_str(f"{case.name} s={sparsity} b={batch}")
                    with torch.no_grad():
                        point = bench_point(fns, skipped, pruned, bias, unpruned, gemm_rows, args,
                                            geometry=case.geometry, batch=batch)
                    ms = point["ms"]
                    rows.append({
                        "case": case.name, "preset": preset or None, "shape": case.shape, "out_features": out_f,
                        "in_features": in_f, "positions": case.positions, "groups": case.groups, "conv": case.conv,
                        "batch": batch, "gemm_rows": gemm_rows, "sparsity": sparsity,
                        "layer_sparsity": case.sparsity, "nnz": int((pruned != 0).sum()),
                        "structured_rows": methods.structured_rows(out_f, sparsity),
                        **point,
                        "ms": {m: ms.get(m) for m in REPORTED},
                        "speedup": {m: _ratio(ms["dense"], ms.get(m)) for m in REPORTED if m != "dense"},
                        "ours_vs_csr": _ratio(ms.get("torch_csr"), ms.get("sparsecomp")),
                    })
                    bar.update()
    return rows


# ------------------------------------------------------------------------------------------------ targets
def targets(rows: list[dict], found: list[dict]) -> list[dict]:
    """Issue 7's targets next to what this run measured (reported, never asserted). Only those the grid covers."""
    out = []

    def add(what, measured, goal, met):
        out.append({"what": what, "measured": measured, "target": goal, "met": met})

    for c in found:
        if c["shape"] == "4096x4096" and c["method"] == "sparsecomp" and c["batch"] in (1, 128) and c["points"] > 1:
            goal = 0.4 if c["batch"] == 1 else 0.7
            reached = c["sparsity"]
            if reached is None:
                met = False
            elif reached == c["lowest_measured"] and reached > goal:
                met = None  # faster at every measured point, but the grid starts above the goal: undecided
            else:
                met = reached <= goal
            add(f"4096x4096 batch {c['batch']}: SparseLinear break-even sparsity", format_crossover(c),
                f"<= {goal}", met)
    for r in rows:
        if r["shape"] == "4096x4096" and r["sparsity"] == 0.9 and r["ours_vs_csr"] is not None:
            add(f"4096x4096 batch {r['batch']} at 90%: SparseLinear vs torch.sparse CSR", f"{r['ours_vs_csr']:.2f}x",
                ">= 3x", r["ours_vs_csr"] >= 3.0)
        if r["preset"] == "alexnet-conv" and r["sparsity"] == r["layer_sparsity"] and r["speedup"]["sparsecomp"]:
            i = int(r["case"][-1]) - 1
            add(f"AlexNet {r['case']} at {r['sparsity']:g}, batch {r['batch']}: sparse vs dense im2col GEMM "
                f"(SSL paper CPU {SSL_ALEXNET_SPEEDUP['cpu'][i]}x, GPU {SSL_ALEXNET_SPEEDUP['gpu'][i]}x)",
                f"{r['speedup']['sparsecomp']:.2f}x", "> 1x", r["speedup"]["sparsecomp"] > 1.0)
            if r.get("conv_speedup"):
                add(f"AlexNet {r['case']} at {r['sparsity']:g}, batch {r['batch']}: SparseConv2d vs torch conv2d",
                    f"{r['conv_speedup']:.2f}x", "> 1x", r["conv_speedup"] > 1.0)
    return out


# ------------------------------------------------------------------------------------------------ reports
def fmt_ms(v):
    if v is None:
        return "n/a"
    return f"{v:.0f}" if v >= 100 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def fmt_x(v):
    return "n/a" if v is None else f"{v:.2f}x"


def format_table(rows: list[dict], device: str) -> str:
    has_bsr = any(r["ms"]["torch_bsr"] is not None for r in rows)
    cols = ["case", "shape", "batch", "rows", "sparsity", "dense ms", "ours ms", "csr ms", "csr via"]
    cols += ["bsr ms"] if has_bsr else []
    has_conv = any(r.get("conv_ms") for r in rows)
    cols += ["struct ms"] + (["2:4 ms"] if device == "cuda" else []) + ["speedup", "ours vs csr"]
    cols += ["conv ms", "sp conv ms", "conv speedup"] if has_conv else []
    lines = []
    for r in rows:
        ms = r["ms"]
        line = [r["case"], r["shape"], str(r["batch"]), str(r["gemm_rows"]), f"{r['sparsity']:g}",
                fmt_ms(ms["dense"]), fmt_ms(ms["sparsecomp"]), fmt_ms(ms["torch_csr"]),
                {"csr_linear": "F.linear", "csr_mm": "sparse.mm"}.get(r["csr_variant"], "-")]
        line += [fmt_ms(ms["torch_bsr"])] if has_bsr else []
        line += [fmt_ms(ms["structured"])] + ([fmt_ms(ms["semi_structured_24"])] if device == "cuda" else [])
        line += [fmt_x(r["speedup"]["sparsecomp"]), fmt_x(r["ours_vs_csr"])]
        if has_conv:
            conv = r.get("conv_ms") or {}
            line += [fmt_ms(conv.get("dense_conv2d")), fmt_ms(conv.get("sparsecomp_conv2d")),
                     fmt_x(r.get("conv_speedup"))]
        lines.append(line)
    widths = [max(len(c), *(len(l[i]) for l in lines)) if lines else len(c) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*cols), fmt.format(*("-" * w for w in widths))] + [fmt.format(*l) for l in lines])


def format_crossovers(found: list[dict]) -> str:
    methods_run = [m for m in CROSSOVER_METHODS if any(c["method"] == m for c in found)]
    lines = ["crossover sparsity (lowest sparsity from which the method stays faster than dense, interpolated; "
             f"{CROSSOVER_LEGEND}; single-sparsity layers: '<= s' faster, 'none' slower):",
             "  " + f"{'case':<22} {'batch':>5}  " + "  ".join(f"{m:<11}" for m in methods_run)]
    for case, batch in dict.fromkeys((c["case"], c["batch"]) for c in found):
        cells = {c["method"]: format_crossover(c) for c in found if c["case"] == case and c["batch"] == batch}
        lines.append(f"  {case:<22} {batch:>5}  " + "  ".join(f"{cells.get(m, 'n/a'):<11}" for m in methods_run))
    return "\n".join(lines)


CSV_COLUMNS = ["case", "shape", "out_features", "in_features", "positions", "groups", "batch", "gemm_rows",
               "sparsity", "nnz", "structured_rows"] + [f"{m}_ms" for m in REPORTED] + ["csr_variant"] + \
    [f"speedup_{m}" for m in REPORTED if m != "dense"] + ["ours_vs_csr", "dense_conv2d_ms", "sparsecomp_conv2d_ms",
                                                          "conv_speedup"]


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in rows:
            flat = {k: r[k] for k in CSV_COLUMNS if k in r}
            flat.update({f"{m}_ms": r["ms"][m] for m in REPORTED})
            flat.update({f"speedup_{m}": v for m, v in r["speedup"].items()})
            flat.update({f"{m}_ms": v for m, v in (r.get("conv_ms") or {}).items()})
            writer.writerow({k: "" if v is None else v for k, v in flat.items()})


def run(args: argparse.Namespace, command: str = "sparsecomp bench sparse", progress: bool = True) -> int:
    warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
    warnings.filterwarnings("ignore", "Sparse BSR tensor support is in beta", UserWarning)
    A.set_threads(args)
    started = time.perf_counter()
    meta = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(args.device),
        "args": {k: v for k, v in vars(args).items() if k not in ("shapes", "func")}
        | {"shapes": [preset or cases[0].name for preset, cases in args.shapes]},
        "csr_variants": methods.CSR_VARIANTS,
        "tolerance_rtol_atol": methods.tolerance(A.DTYPES[args.dtype]),
    }
    meta["load_average_1min_before"] = A.load_warning()
    rows = run_sweep(args, progress=progress)
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    found = crossovers(rows, CROSSOVER_METHODS)
    goals = targets(rows, found)

    print(format_table(rows, args.device))
    print("\nrows = GEMM rows (batch x output pixels for convs); speedup = dense ms / ours ms; "
          "ours vs csr = csr ms / ours ms (> 1: sparsecomp is faster)")
    print("dense = F.linear on the (im2col) input; conv ms / sp conv ms = torch F.conv2d / sparsecomp SparseConv2d "
          "on the images (im2col inside), conv speedup = their ratio; torch.sparse CSR = the faster of "
          + " and ".join(f"{k}: {v}" for k, v in methods.CSR_VARIANTS.items()) + " (csr via)")
    print("\n" + format_crossovers(found))
    if goals:
        print("\nissue 7 targets (reported, not asserted):")
        for t in goals:
            verdict = "undecided on this grid" if t["met"] is None else ("met" if t["met"] else "NOT met")
            print(f"  {t['what']}: {t['measured']} (target {t['target']}) {verdict}")
    for method, reason in sorted({(m, reason) for r in rows for m, reason in r["skipped"].items()}):
        print(f"n/a: {method}: {reason}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "crossover": found,
                                                  "targets": goals}, indent=1))
    write_csv(rows, out / "results.csv")
    written = ["results.json", "results.csv"]
    try:
        from .plot import plot_speedup

        plot_speedup(rows, meta, out / "speedup_vs_sparsity.png")
        written.append("speedup_vs_sparsity.png")
    except ImportError as err:
        print(f"no plot: {err}")
    print(f"\nwrote {', '.join(str(out / w) for w in written)} in {meta['wall_s']} s")
    return 0


def main(argv: list[str] | None = None, default_out: str = "sparsecomp-bench/sparse",
         command: str = "sparsecomp bench sparse") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv, default_out)
    return run(args, command=(command + " " + shlex.join(argv)).strip())


if __name__ == "__main__":
    sys.exit(main())
