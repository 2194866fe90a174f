"""Binary (XNOR-popcount) conv / linear vs torch fp32, interleaved in one run: table, results.json/.csv/.md.

    sparsecomp bench binary                   # issue 3's suite: ResNet-18 layers at batch 1 and 8,
                                              # BinaryLinear 4096x4096 at batch 1 and 64, 20 repeats
    sparsecomp bench binary --quick           # every layer at batch 1 only, 5 repeats (< 1 minute)
    sparsecomp bench binary --cases 256_14,4096x4096 --conv-batch 8 --threads 1
    sparsecomp bench binary --shapes 1024x4096 --batch 1,16   # other BinaryLinear shapes (no conv layers)

Every point first checks each method's output (first sample) against its float64 reference, then times all
methods interleaved (sparsecomp.benchmark.harness). Ratios = torch fp32 median / method median, both measured in
the same run at the same thread count; a family's time is its faster input layout (NCHW or channels_last), so fp32 is
not handicapped by a layout oneDNN dislikes, nor binary by one it dislikes. The binary ops pack the float
activations themselves, so packing is inside their time. binary_avx2 forces sparsecomp's AVX2 code path.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

from . import args as A
from . import binary_methods as bm
from .harness import check_same_result, measure
from .machine import machine_info

NAME = "binary"
HELP = "XNOR / BinaryConnect conv and linear layers vs torch fp32 (CPU)"
CPU_ONLY = True

FULL = {"conv_batch": list(bm.CONV_BATCHES), "linear_batch": list(bm.LINEAR_BATCHES), "repeats": 20, "warmup": 2}
QUICK = {"conv_batch": [1], "linear_batch": [1], "repeats": 5, "warmup": 1}
ALL_LAYERS = {layer.name: layer for layer in (*bm.RESNET18, *bm.LINEAR_LAYERS)}
DEFAULT_CASES = tuple(ALL_LAYERS)
LAYER_KEYS = {layer.key: layer.name for layer in ALL_LAYERS.values()}  # '64to128_56_s2' -> '64->128@56/2'
RATIO_FAMILIES = ("binary", "binary_connect", "binary_avx2")


# ----------------------------------------------------------------------------------------------- arguments
def _cases(text: str) -> list[str]:
    """Layer names or keys ('64->128@56/2' or '64to128_56_s2'), comma-separated -> names."""
    names = [LAYER_KEYS.get(t.strip(), t.strip()) for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in ALL_LAYERS]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"unknown or repeated case(s) in {text!r}; known: "
                                         + ", ".join(f"{n} ({ALL_LAYERS[n].key})" for n in ALL_LAYERS))
    return names


def add_arguments(p: argparse.ArgumentParser, default_out: str = "sparsecomp-bench/binary") -> None:
    A.add_common(p, dtypes=("float32",), default_out=default_out)
    p.add_argument("--cases", type=_cases, help="layers to run, comma-separated (default all: %s)"
                   % ", ".join(ALL_LAYERS))
    p.add_argument("--shapes", type=A.comma_list(A.shape, "shape"),
                   help="BinaryLinear shapes OUTxIN instead of --cases (e.g. 4096x4096,1024x4096)")
    p.add_argument("--batch", type=A.batch_list, help="batch sizes of every layer (sets both of the next two)")
    p.add_argument("--conv-batch", type=A.batch_list, help="conv batch sizes (default 1,8; --quick 1)")
    p.add_argument("--linear-batch", type=A.batch_list, help="linear batch sizes (default 1,64; --quick 1)")
    p.add_argument("--inputs", type=A.positive_int, default=3, help="pre-generated inputs rotated through")
    p.add_argument("--min-sample-ms", type=float, default=1.0,
                   help="a timed sample averages enough calls to last this long (keeps timer overhead out)")
    p.add_argument("--no-avx2", action="store_true", help="skip the forced-AVX2 binary methods")


def finalize(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    A.check_common(args, parser, cpu_only="the binary suite times the CPU kernels; on a GPU run "
                   "bench/binary_cuda_microbench.py")
    if args.batch is not None:
        if args.conv_batch is not None or args.linear_batch is not None:
            parser.error("--batch sets both --conv-batch and --linear-batch: give one or the other")
        args.conv_batch = args.linear_batch = args.batch
    A.fill_defaults(args, QUICK if args.quick else FULL)
    if args.shapes:
        if args.cases is not None:
            parser.error("--shapes and --cases both pick layers: give one or the other")
        args.cases = [f"{o}x{i}" for o, i in args.shapes]
    if args.cases is None:
        args.cases = list(DEFAULT_CASES)
    return args


def build_parser(prog: str | None = None, default_out: str = "sparsecomp-bench/binary") -> argparse.ArgumentParser:
    return A.suite_parser(__doc__, add_arguments, default_out, prog)


def parse_args(argv: list[str], default_out: str = "sparsecomp-bench/binary") -> argparse.Namespace:
    parser = build_parser(default_out=default_out)
    return finalize(parser.parse_args(argv), parser)


# ------------------------------------------------------------------------------------------------ running
def _reason(err: BaseException) -> str:
    first_line = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first_line[:200]}"


def check_methods(fns: dict, reference, skipped: dict) -> None:
    """Runs every method on input 0 and checks its first sample against its family's float64 reference.

    A method that raises is dropped (reason in ``skipped``), except fp32; a wrong result raises ResultMismatch.
    """
    by_family: dict[str, dict[str, torch.Tensor]] = {}
    for name in list(fns):
        try:
            out = fns[name](0)
        except Exception as err:
            if name == "fp32":
                raise
            skipped[name] = _reason(err)
            del fns[name]
            continue
        by_family.setdefault(bm.family_of(name), {})[name] = out[:1]
    for family, outputs in by_family.items():
        check_same_result(outputs, reference(family), *bm.tolerance(family))


def summarize_point(timings: dict) -> dict:
    ms = {name: t.median_ms for name, t in timings.items()}
    family_ms, family_layout = {}, {}
    for name, value in ms.items():
        family = bm.family_of(name)
        if family not in family_ms or value < family_ms[family]:
            family_ms[family], family_layout[family] = value, bm.layout_of(name)
    base = family_ms["fp32"]
    speedup = {f: (base / family_ms[f] if f in family_ms else None) for f in RATIO_FAMILIES}
    # the same ratio within one layout, for readers who run a whole network in that layout
    same_layout = {}
    for suffix, layout in bm.LAYOUTS.items():
        if "fp32" + suffix in ms:
            for f in RATIO_FAMILIES:
                if f + suffix in ms:
                    same_layout[f"{f}_{layout}"] = ms["fp32" + suffix] / ms[f + suffix]
    return {"ms": ms, "ms_quartiles": {n: t.quartiles_ms for n, t in timings.items()}, "family_ms": family_ms,
            "family_layout": family_layout, "speedup": speedup, "same_layout_speedup": same_layout}


def bench_conv(layer: bm.ConvLayer, batch: int, params: bm.BinaryParams, args) -> dict:
    inputs = bm.conv_inputs(layer, batch, args.inputs, args.seed + batch)
    fns = bm.make_conv_methods(layer, params, inputs, avx2=not args.no_avx2)
    skipped: dict[str, str] = {}
    x0 = inputs["nchw"][0][:1]
    check_methods(fns, lambda family: bm.conv_reference(family, layer, params, x0), skipped)
    timings = measure(fns, list(range(args.inputs)), repeats=args.repeats, warmup=args.warmup,
                      min_sample_s=args.min_sample_ms / 1e3, device="cpu")
    return {"kind": "conv", "case": layer.name, "layer": layer.describe(), "batch": batch, "c_in": layer.c_in,
            "c_out": layer.c_out, "hw": layer.hw, "out_hw": layer.out_hw, "stride": layer.stride,
            "kernel": layer.kernel, "padding": layer.padding, **summarize_point(timings),
            "weight_memory": bm.weight_memory(params), "skipped": skipped}


def bench_linear(layer: bm.LinearLayer, batch: int, params: bm.BinaryParams, args) -> dict:
    inputs = bm.linear_inputs(layer, batch, args.inputs, args.seed + batch)
    fns = bm.make_linear_methods(layer, params, inputs, avx2=not args.no_avx2)
    skipped: dict[str, str] = {}
    x0 = inputs[0][:1]
    check_methods(fns, lambda family: bm.linear_reference(family, params, x0), skipped)
    timings = measure(fns, list(range(args.inputs)), repeats=args.repeats, warmup=args.warmup,
                      min_sample_s=args.min_sample_ms / 1e3, device="cpu")
    point = summarize_point(timings)
    point["family_layout"] = {f: None for f in point["family_layout"]}  # a 2-D input has no memory format choice
    return {"kind": "linear", "case": layer.name, "layer": layer.describe(), "batch": batch,
            "in_features": layer.in_features, "out_features": layer.out_features, **point,
            "weight_memory": bm.weight_memory(params), "skipped": skipped}


def layer_of(name: str):
    """A suite layer by name, or a BinaryLinear layer 'OUTxIN' given with --shapes."""
    if name in ALL_LAYERS:
        return ALL_LAYERS[name]
    out_f, in_f = A.shape(name)
    return bm.LinearLayer(name, in_f, out_f)


def run_sweep(args, progress: bool = True) -> list[dict]:
    from tqdm import tqdm

    from sparsecomp import _C

    points = []
    for i, name in enumerate(args.cases):
        layer = layer_of(name)
        batches = args.conv_batch if isinstance(layer, bm.ConvLayer) else args.linear_batch
        points += [(i, layer, b) for b in batches]
    rows = []
    original_isa = _C.cpu_isa()
    try:
        with tqdm(total=len(points), desc="binary", unit="point", disable=not progress) as bar, torch.no_grad():
            params_of = {}
            for i, layer, batch in points:
                bar.set_postfix_str(f"{layer.name} b={batch}")
                if layer.name not in params_of:
                    make = bm.random_conv if isinstance(layer, bm.ConvLayer) else bm.random_linear
                    params_of = {layer.name: make(layer, seed=args.seed + i)}  # one layer's weights at a time
                bench = bench_conv if isinstance(layer, bm.ConvLayer) else bench_linear
                rows.append(bench(layer, batch, params_of[layer.name], args))
                bar.update()
    finally:
        _C.set_cpu_isa(original_isa)
    return rows


# ------------------------------------------------------------------------------------------------ summary
def geomean(values) -> float | None:
    values = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summarize(rows: list[dict]) -> dict:
    """Geomeans per (suite, batch, family), the headline layer, and issue 3's targets with the measured value."""
    resnet = {layer.name for layer in bm.RESNET18}
    summary: dict = {"resnet18": {}, "targets": []}
    targets = summary["targets"]

    def target(what, measured, goal):
        targets.append({"what": what, "measured": measured, "target": goal,
                        "met": None if measured is None else measured >= goal})

    for batch in sorted({r["batch"] for r in rows if r["case"] in resnet}):
        pts = [r for r in rows if r["case"] in resnet and r["batch"] == batch]
        entry = {"layers": len(pts)}
        for f in RATIO_FAMILIES:
            ratios = {r["case"]: r["speedup"][f] for r in pts if r["speedup"][f] is not None}
            entry[f] = {"geomean": geomean(ratios.values()),
                        "min": min(ratios.values()) if ratios else None,
                        "min_layer": min(ratios, key=ratios.get) if ratios else None}
        summary["resnet18"][str(batch)] = entry
        complete = entry["layers"] == len(bm.RESNET18)
        tag = "" if complete else f" ({entry['layers']} of {len(bm.RESNET18)} layers)"
        target(f"ResNet-18 suite batch {batch}: geomean{tag}", entry["binary"]["geomean"], bm.TARGETS["resnet_geomean"])
        target(f"ResNet-18 suite batch {batch}: slowest layer ({entry['binary']['min_layer']})",
               entry["binary"]["min"], bm.TARGETS["resnet_min"])
        target(f"ResNet-18 suite batch {batch}: AVX2 path geomean{tag}", entry["binary_avx2"]["geomean"],
               bm.TARGETS["avx2_geomean"])
    for r in rows:
        if r["case"] == bm.HEADLINE_CONV:
            target(f"3x3 256->256 14x14 batch {r['batch']}", r["speedup"]["binary"], bm.TARGETS["headline_conv"])
        if r["kind"] == "linear" and r["batch"] in (1, 64):
            goal = bm.TARGETS["linear_b1"] if r["batch"] == 1 else bm.TARGETS["linear_b64"]
            target(f"BinaryLinear {r['case']} batch {r['batch']}", r["speedup"]["binary"], goal)
    memory = bm.weight_memory(bm.random_conv(bm.ConvLayer("256@14", 256, 256, 14)))
    summary["weight_memory_3x3x256x256"] = memory
    target("weight memory 3x3x256x256 (bits + alpha)", memory["ratio_bits_alpha"], bm.TARGETS["weight_memory"])
    return summary


# ------------------------------------------------------------------------------------------------ reports
def fmt_ms(v):
    if v is None:
        return "n/a"
    return f"{v:.0f}" if v >= 100 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def fmt_x(v):
    return "n/a" if v is None else f"{v:.2f}x"


SHORT_LAYOUT = {"nchw": "N", "channels_last": "CL"}


def _cell(r: dict, family: str) -> str:
    ms = r["family_ms"].get(family)
    layout = r["family_layout"].get(family)
    return "n/a" if ms is None else fmt_ms(ms) + (f" {SHORT_LAYOUT[layout]}" if layout else "")


TABLE_COLUMNS = ["case", "batch", "fp32 ms", "binary ms", "speedup", "BC ms", "BC speedup", "AVX2 ms", "AVX2 speedup"]


def table_lines(rows: list[dict]) -> list[list[str]]:
    return [[r["case"], str(r["batch"]), _cell(r, "fp32"), _cell(r, "binary"), fmt_x(r["speedup"]["binary"]),
             _cell(r, "binary_connect"), fmt_x(r["speedup"]["binary_connect"]), _cell(r, "binary_avx2"),
             fmt_x(r["speedup"]["binary_avx2"])] for r in rows]


def format_table(rows: list[dict]) -> str:
    lines = table_lines(rows)
    widths = [max(len(c), *(len(l[i]) for l in lines)) if lines else len(c) for i, c in enumerate(TABLE_COLUMNS)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*TABLE_COLUMNS), fmt.format(*("-" * w for w in widths))] +
                     [fmt.format(*l) for l in lines])


def format_summary(summary: dict) -> str:
    out = []
    for batch, entry in summary["resnet18"].items():
        parts = [f"{bm.LABELS[f]} {fmt_x(entry[f]['geomean'])} (min {fmt_x(entry[f]['min'])} {entry[f]['min_layer']})"
                 for f in RATIO_FAMILIES]
        out.append(f"ResNet-18 suite geomean, batch {batch} ({entry['layers']} layers): " + "; ".join(parts))
    mem = summary["weight_memory_3x3x256x256"]
    out.append(f"weight memory 3x3x256x256: fp32 {mem['fp32_bytes']} B, bits {mem['bits_bytes']} B "
               f"({mem['ratio_bits']:.2f}x smaller), bits + alpha {mem['bits_bytes'] + mem['alpha_bytes']} B "
               f"({mem['ratio_bits_alpha']:.2f}x smaller)")
    out.append("issue 3 targets (2-core AVX-512 CPU):")
    for t in summary["targets"]:
        verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        out.append(f"  {t['what']}: {fmt_x(t['measured'])} (target >= {t['target']:g}x) {verdict}")
    return "\n".join(out)


LEGEND = ("ms = median per call of the faster layout (N = NCHW, CL = channels_last); speedup = torch fp32 ms / "
          "method ms, measured interleaved in this run; BC = BinaryConnect (binarize_input=False); AVX2 = binary "
          "with sparsecomp's AVX2 code path forced")


def render_markdown(results: dict) -> str:
    meta, rows = results["meta"], results["rows"]
    m = meta["machine"]
    out = [f"## Binary layers (issue 3), {m['device']}: {m['cpu_model']}, {m['threads']} threads, torch {m['torch']}",
           "", f"- command: `{meta['command']}`", f"- date: {meta['date']}, wall {meta.get('wall_s', '?')} s"
           + (f", load average before {meta['load_average_1min_before']:.2f}"
              if meta.get("load_average_1min_before") is not None else ""),
           f"- {meta['args']['repeats']} interleaved repeats per method, median; {LEGEND}", "",
           "| " + " | ".join(TABLE_COLUMNS) + " |", "|---|" + "---:|" * (len(TABLE_COLUMNS) - 1)]
    out += ["| " + " | ".join(line) + " |" for line in table_lines(rows)]
    out += ["", "```", format_summary(results["summary"]), "```"]
    return "\n".join(out) + "\n"


CSV_COLUMNS = ["kind", "case", "layer", "batch"] + [f"{f}_ms" for f in bm.FAMILIES] + \
    [f"{f}_layout" for f in bm.FAMILIES] + [f"speedup_{f}" for f in RATIO_FAMILIES] + ["weight_ratio_bits_alpha"]


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in rows:
            flat = {k: r[k] for k in ("kind", "case", "layer", "batch")}
            flat.update({f"{f}_ms": r["family_ms"].get(f) for f in bm.FAMILIES})
            flat.update({f"{f}_layout": r["family_layout"].get(f) for f in bm.FAMILIES})
            flat.update({f"speedup_{f}": r["speedup"][f] for f in RATIO_FAMILIES})
            flat["weight_ratio_bits_alpha"] = r["weight_memory"]["ratio_bits_alpha"]
            writer.writerow({k: "" if v is None else v for k, v in flat.items()})


def run(args: argparse.Namespace, command: str = "sparsecomp bench binary", progress: bool = True) -> int:
    A.set_threads(args)
    started = time.perf_counter()
    meta = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info("cpu"),
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "families": bm.LABELS,
    }
    meta["load_average_1min_before"] = A.load_warning()
    rows = run_sweep(args, progress=progress)
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    summary = summarize(rows)
    results = {"meta": meta, "rows": rows, "summary": summary}

    print(format_table(rows))
    print("\n" + LEGEND)
    print(format_summary(summary))
    for method, reason in sorted({(m, why) for r in rows for m, why in r["skipped"].items()}):
        print(f"n/a: {method}: {reason}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_csv(rows, out / "results.csv")
    (out / "results.md").write_text(render_markdown(results))
    print(f"\nwrote {out}/results.json, results.csv, results.md in {meta['wall_s']} s")
    return 0


def main(argv: list[str] | None = None, default_out: str = "sparsecomp-bench/binary",
         command: str = "sparsecomp bench binary") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv, default_out)
    return run(args, command=(command + " " + shlex.join(argv)).strip())


if __name__ == "__main__":
    sys.exit(main())
