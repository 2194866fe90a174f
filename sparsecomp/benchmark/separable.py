"""`sparsecomp bench separable`: fused depthwise -> pointwise (ops.dwpw_conv2d) vs torch's two eager convs,
interleaved in one run.

    sparsecomp bench separable                    # MobileNet pairs at batch 1, 8, 32, 20 repeats
    sparsecomp bench separable --quick            # batch 1 and 8, 5 repeats (< 1 minute)
    sparsecomp bench separable --threads 1 --batch 1 --pairs 960@7-160,1024@7-1024

Every point builds one MobileNetV2-style block (3x3 depthwise + bias (a folded BN), ReLU6, 1x1 pointwise + bias,
no output activation) and times, interleaved (sparsecomp.benchmark.harness): torch = F.conv2d(groups=C) -> relu6 ->
F.conv2d(1x1), and fused = one dwpw_conv2d call, each in NCHW and in channels_last, at the same thread count.
Before timing, every method's output is checked against the float64 torch result. Ratios are torch ms / fused
ms within one layout; `policy` is the ratio the module gets (sparsecomp/nn/_separable_policy.should_fuse picks
fused or torch, so 1.00x where it falls back).
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
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import args as A
from .harness import check_same_result, measure
from .machine import machine_info

NAME = "separable"
HELP = "fused depthwise -> pointwise conv (MobileNet pairs) vs torch's two convs, NCHW and channels_last (CPU)"
CPU_ONLY = True


@dataclass(frozen=True)
class Pair:
    c: int
    hw: int
    o: int
    stride: int = 1

    @property
    def name(self) -> str:
        return f"{self.c}@{self.hw}->{self.o}" + ("/s2" if self.stride == 2 else "")

    @property
    def key(self) -> str:
        return f"{self.c}@{self.hw}-{self.o}" + ("-s2" if self.stride == 2 else "")


# MobileNetV1/V2 depthwise -> pointwise pairs (input channels @ input size -> output channels), 3x3, padding 1.
PAIRS = (Pair(32, 112, 64), Pair(144, 56, 24), Pair(144, 56, 24, 2), Pair(192, 28, 32), Pair(384, 14, 64),
         Pair(512, 14, 512), Pair(960, 7, 160), Pair(1024, 7, 1024))
LAYOUTS = ("nchw", "channels_last")
TARGETS = {1: 1.5, 8: 3.0}  # issue 5: geomean at batch 1 and 8 on 2 cores; every pair >= 0.95x
MIN_RATIO = 0.95
FULL = {"batch": [1, 8, 32], "repeats": 20, "warmup": 2}
QUICK = {"batch": [1, 8], "repeats": 5, "warmup": 1}


def _pairs(text: str) -> list[Pair]:
    by_key = {p.key: p for p in PAIRS} | {p.name: p for p in PAIRS}
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in by_key]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown pair(s) {unknown or text!r}; known: "
                                         + ", ".join(p.key for p in PAIRS))
    return [by_key[n] for n in names]


def add_arguments(p: argparse.ArgumentParser, default_out: str = "sparsecomp-bench/separable") -> None:
    A.add_common(p, dtypes=("float32",), default_out=default_out)
    p.add_argument("--pairs", type=_pairs, help="pairs to run (default all: %s)" % ", ".join(q.key for q in PAIRS))
    p.add_argument("--batch", type=A.batch_list, help="batch sizes (default 1,8,32; --quick 1,8)")
    p.add_argument("--inputs", type=A.positive_int, default=2, help="pre-generated inputs rotated through")
    p.add_argument("--min-sample-ms", type=float, default=2.0,
                   help="a timed sample averages enough calls to last this long (keeps timer overhead out)")


def finalize(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    A.check_common(args, parser, cpu_only="the separable suite times the CPU kernel only")
    A.fill_defaults(args, QUICK if args.quick else FULL)
    if args.pairs is None:
        args.pairs = list(PAIRS)
    return args


def build_parser(prog: str | None = None, default_out: str = "sparsecomp-bench/separable") -> argparse.ArgumentParser:
    return A.suite_parser(__doc__, add_arguments, default_out, prog)


# ------------------------------------------------------------------------------------------------ running
def make_block(pair: Pair, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    c, o = pair.c, pair.o
    return {"dw": torch.randn(c, 1, 3, 3, generator=g) / 3, "dw_bias": torch.randn(c, generator=g) * 0.1,
            "pw": torch.randn(o, c, 1, 1, generator=g) / c ** 0.5, "pw_bias": torch.randn(o, generator=g) * 0.1}


def torch_block(x, w, stride):
    mid = F.relu6(F.conv2d(x, w["dw"], w["dw_bias"], stride, 1, 1, x.shape[1]))
    return F.conv2d(mid, w["pw"], w["pw_bias"])


def fused_block(x, w, stride):
    from sparsecomp import ops

    return ops.dwpw_conv2d(x, w["dw"], None, w["dw_bias"], "relu6", w["pw"], w["pw_bias"], "none", stride, 1)


def bench_point(pair: Pair, batch: int, w: dict, args) -> dict:
    from sparsecomp.nn._separable_policy import should_fuse

    g = torch.Generator().manual_seed(args.seed + batch)
    xs = [torch.randn(batch, pair.c, pair.hw, pair.hw, generator=g) for _ in range(args.inputs)]
    inputs = {"nchw": xs, "channels_last": [x.to(memory_format=torch.channels_last) for x in xs]}
    fns = {}
    for layout in LAYOUTS:
        fns[f"torch_{layout}"] = lambda i, L=layout: torch_block(inputs[L][i], w, pair.stride)
        fns[f"fused_{layout}"] = lambda i, L=layout: fused_block(inputs[L][i], w, pair.stride)
    w64 = {k: v.double() for k, v in w.items()}
    ref = torch_block(xs[0][:2].double(), w64, pair.stride)
    # fp32 with K = 9 + C terms per output: both methods round differently from float64 by ~1e-6 relative.
    check_same_result({name: fn(0)[:2] for name, fn in fns.items()}, ref, rtol=1e-4, atol=1e-4)
    timings = measure(fns, list(range(args.inputs)), repeats=args.repeats, warmup=args.warmup,
                      min_sample_s=args.min_sample_ms / 1e3, device="cpu")
    ms = {name: t.median_ms for name, t in timings.items()}
    row = {"pair": pair.name, "c": pair.c, "hw": pair.hw, "o": pair.o, "stride": pair.stride, "batch": batch,
           "ms": ms, "ms_quartiles": {n: t.quartiles_ms for n, t in timings.items()}, "ratio": {}, "policy": {}}
    for layout in LAYOUTS:
        ratio = ms[f"torch_{layout}"] / ms[f"fused_{layout}"]
        fuse = should_fuse(batch, pair.c, pair.o, pair.hw, pair.hw, 3, pair.stride, layout == "channels_last")
        row["ratio"][layout] = ratio
        row["policy"][layout] = ratio if fuse else 1.0
    return row


def run_sweep(args, progress: bool = True) -> list[dict]:
    from tqdm import tqdm

    rows = []
    with torch.no_grad(), tqdm(total=len(args.pairs) * len(args.batch), desc="separable", unit="point",
                               disable=not progress) as bar:
        for i, pair in enumerate(args.pairs):
            w = make_block(pair, args.seed + i)
            for batch in args.batch:
                bar.set_postfix_str(f"{pair.name} b={batch}")
                rows.append(bench_point(pair, batch, w, args))
                bar.update()
    return rows


# ------------------------------------------------------------------------------------------------ reports
def geomean(values) -> float | None:
    values = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summarize(rows: list[dict]) -> dict:
    summary = {}
    for batch in sorted({r["batch"] for r in rows}):
        pts = [r for r in rows if r["batch"] == batch]
        entry = {"pairs": len(pts)}
        for layout in LAYOUTS:
            for kind in ("ratio", "policy"):
                vals = {r["pair"]: r[kind][layout] for r in pts}
                worst = min(vals, key=vals.get)
                entry[f"{kind}_{layout}"] = {"geomean": geomean(vals.values()), "min": vals[worst], "min_pair": worst}
        summary[str(batch)] = entry
    return summary


COLUMNS = ["pair", "batch", "torch N", "fused N", "N ratio", "torch CL", "fused CL", "CL ratio", "policy N/CL"]


def table_lines(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        m = r["ms"]
        out.append([r["pair"], str(r["batch"]), f"{m['torch_nchw']:.3f}", f"{m['fused_nchw']:.3f}",
                    f"{r['ratio']['nchw']:.2f}x", f"{m['torch_channels_last']:.3f}", f"{m['fused_channels_last']:.3f}",
                    f"{r['ratio']['channels_last']:.2f}x",
                    f"{r['policy']['nchw']:.2f}/{r['policy']['channels_last']:.2f}"])
    return out


def format_table(rows: list[dict]) -> str:
    lines = table_lines(rows)
    widths = [max(len(c), *(len(l[i]) for l in lines)) for i, c in enumerate(COLUMNS)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*COLUMNS), fmt.format(*("-" * w for w in widths))] + [fmt.format(*l) for l in lines])


def format_summary(summary: dict) -> str:
    out = []
    for batch, e in summary.items():
        for layout in LAYOUTS:
            r, p = e[f"ratio_{layout}"], e[f"policy_{layout}"]
            target = TARGETS.get(int(batch))
            verdict = "" if target is None else (" (target >= %.1fx %s)" % (target, "met" if r["geomean"] >= target
                                                                            else "NOT met"))
            out.append(f"batch {batch} {layout}: geomean {r['geomean']:.2f}x{verdict}, min {r['min']:.2f}x "
                       f"({r['min_pair']}); with the fallback policy: geomean {p['geomean']:.2f}x, min "
                       f"{p['min']:.2f}x ({p['min_pair']}){'' if p['min'] >= MIN_RATIO else ' BELOW 0.95x'}")
    return "\n".join(out)


def write_csv(rows: list[dict], path: Path) -> None:
    fields = ["pair", "c", "hw", "o", "stride", "batch"] + [f"{m}_ms" for m in rows[0]["ms"]] + \
        [f"ratio_{layout}" for layout in LAYOUTS] + [f"policy_{layout}" for layout in LAYOUTS]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            flat = {k: r[k] for k in ("pair", "c", "hw", "o", "stride", "batch")}
            flat.update({f"{m}_ms": v for m, v in r["ms"].items()})
            flat.update({f"ratio_{layout}": r["ratio"][layout] for layout in LAYOUTS})
            flat.update({f"policy_{layout}": r["policy"][layout] for layout in LAYOUTS})
            writer.writerow(flat)


def run(args: argparse.Namespace, command: str = "sparsecomp bench separable", progress: bool = True) -> int:
    A.set_threads(args)
    started = time.perf_counter()
    meta = {"command": command,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info("cpu"), "load_average_1min_before": A.load_warning(),
            "args": {k: (v if k != "pairs" else [p.name for p in v]) for k, v in vars(args).items() if k != "func"}}
    rows = run_sweep(args, progress=progress)
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    summary = summarize(rows)
    print(format_table(rows))
    print(f"\nms = median per call ({args.repeats} interleaved repeats, {torch.get_num_threads()} threads); ratio = "
          "torch ms / fused ms in the same layout (N = NCHW, CL = channels_last); policy = ratio with should_fuse")
    print(format_summary(summary))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "summary": summary}, indent=1,
                                                 default=str))
    write_csv(rows, out / "results.csv")
    print(f"\nwrote {out}/results.json, results.csv in {meta['wall_s']} s")
    return 0


def main(argv: list[str] | None = None, default_out: str = "sparsecomp-bench/separable",
         command: str = "sparsecomp bench separable") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(default_out=default_out)
    args = finalize(parser.parse_args(argv), parser)
    return run(args, command=(command + " " + shlex.join(argv)).strip())


if __name__ == "__main__":
    sys.exit(main())
