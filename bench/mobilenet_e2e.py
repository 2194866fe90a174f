"""A whole MobileNet end to end: torch separate convs (NCHW and channels_last) vs the fused model, a table and JSON.

    python bench/mobilenet_e2e.py                  # MobileNetV2 at 224x224, batch 1 and 8
    python bench/mobilenet_e2e.py --quick          # 112x112, fewer repeats (a smoke run)
    python bench/mobilenet_e2e.py --model v1 --fused-mode both

Methods (same weights, eval mode, torch.inference_mode, same thread count, timed interleaved by bench/harness.py):
  torch_nchw / torch_cl   every DepthwiseSeparableConv2d unrolled into nn.Conv2d(groups=C) -> BN -> act ->
                          nn.Conv2d(1x1) -> BN -> act (sparsecomp.models.to_torch), NCHW / channels_last input;
  fused_nchw / fused_cl   the model itself: each pair runs the fused op where the measured policy says it wins
                          (fused="auto"), the torch convs otherwise;
  forced_nchw             (--fused-mode both) every pair forced through the fused op (fused=True).
Every method is first checked against a float64 run of the torch model. BN statistics are randomized so the
folding is exercised. Speedups are torch_nchw median / method median.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `bench` package importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from bench.harness import check_same_result, measure
from bench.machine import machine_info


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("v1", "v2"), default="v2")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier")
    p.add_argument("--size", type=int, help="input resolution (default 224, --quick 112)")
    p.add_argument("--batch", type=lambda t: [int(v) for v in t.split(",")], default=[1, 8])
    p.add_argument("--repeats", type=int, help="timed samples per method (default 15, --quick 5)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--fused-mode", choices=("auto", "both"), default="auto",
                   help="both: also time the model with every pair forced through the fused op")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    return p


def _randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        c = bn.num_features
        with torch.no_grad():
            bn.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            bn.weight.copy_(torch.rand(c, generator=gen) + 0.5)
            bn.bias.copy_(torch.randn(c, generator=gen) * 0.1)


def _fused_pairs(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(pairs that take the fused op, all pairs) for input x."""
    from sparsecomp.nn import DepthwiseSeparableConv2d

    paths = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: paths.append(mod.path_for(args[0])[0]))
             for m in model.modules() if isinstance(m, DepthwiseSeparableConv2d)]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return sum(p == "fused" for p in paths), len(paths)


def run(args) -> list[dict]:
    from sparsecomp import models

    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    build = models.mobilenet_v2 if args.model == "v2" else models.mobilenet_v1
    fused = build(width_mult=args.width).eval()
    _randomize_bn(fused, gen)
    plain = models.to_torch(fused).eval()
    cl = torch.channels_last
    variants = {"torch_nchw": (plain, False), "torch_cl": (models.to_torch(fused).to(memory_format=cl), True),
                "fused_nchw": (fused, False), "fused_cl": (copy.deepcopy(fused).to(memory_format=cl), True)}
    if args.fused_mode == "both":
        forced = build(width_mult=args.width, fused=True).eval()
        forced.load_state_dict(fused.state_dict())
        variants["forced_nchw"] = (forced, False)
    results = []
    for batch in args.batch:
        # (NCHW, channels_last) copies of each input, made before timing: no method pays for a layout change.
        inputs = []
        for _ in range(3):
            x = torch.randn(batch, 3, args.size, args.size, generator=gen)
            inputs.append((x, x.contiguous(memory_format=cl)))
        fns = {name: (lambda m, c: (lambda xs: m(xs[1] if c else xs[0])))(model, to_cl)
               for name, (model, to_cl) in variants.items()}
        with torch.inference_mode():
            ref = plain.double()(inputs[0][0].double())
            plain.float()
            outs = {n: f(inputs[0]) for n, f in fns.items()}
            check_same_result(outs, ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())
            pairs = {n: _fused_pairs(m, inputs[0][1] if c else inputs[0][0])
                     for n, (m, c) in variants.items() if n.startswith(("fused", "forced"))}
            t = measure(fns, inputs, repeats=args.repeats, warmup=2, device="cpu")
        base = t["torch_nchw"].median_ms
        row = {"model": args.model, "width": args.width, "size": args.size, "batch": batch,
               "ms": {n: v.median_ms for n, v in t.items()}, "quartiles_ms": {n: v.quartiles_ms for n, v in t.items()},
               "speedup_vs_torch_nchw": {n: base / v.median_ms for n, v in t.items()},
               "fused_pairs": {n: list(v) for n, v in pairs.items()}}
        results.append(row)
        print(f"\nMobileNet{args.model.upper()} x{args.width} {args.size}x{args.size} batch {batch} "
              f"({torch.get_num_threads()} threads)")
        print(f"  {'method':<12} {'median ms':>10} {'q1-q3 ms':>17} {'vs torch_nchw':>14}  fused pairs")
        for n, v in t.items():
            q1, q3 = v.quartiles_ms
            fp = f"{pairs[n][0]}/{pairs[n][1]}" if n in pairs else "-"
            print(f"  {n:<12} {v.median_ms:10.2f} {q1:8.2f}-{q3:<8.2f} {base / v.median_ms:13.2f}x  {fp}", flush=True)
    return results


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.size is None:
        args.size = 112 if args.quick else 224
    if args.repeats is None:
        args.repeats = 5 if args.quick else 15
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"mobilenet-e2e-{stamp}.json"
    path.write_text(json.dumps({"machine": machine_info("cpu"), "threads": torch.get_num_threads(),
                                "args": {k: v for k, v in vars(args).items() if k != "out"}, "results": results},
                               indent=1, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
