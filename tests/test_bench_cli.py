"""`sparsecomp bench ...`: argument validation, presets, the suite registry, wrong results caught before timing,
crossover tables, the plot, and the RESULTS.md writer leaving other sections alone. Tiny grids only."""
from __future__ import annotations

import argparse
import json
import sys
import types

import pytest
import torch

from sparsecomp import benchmark, cli
from sparsecomp.benchmark import presets, results
from sparsecomp.benchmark import sparse as sweep
from sparsecomp.benchmark import sparse_methods as methods
from sparsecomp.benchmark.crossover import crossovers, format_crossover
from sparsecomp.benchmark.harness import ResultMismatch


def bench(argv):
    return cli.main(["bench", *argv])


# ------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("argv, message", [
    (["sparse", "--shapes", "4096by4096"], "shape must be OUTxIN"),
    (["sparse", "--shapes", "resnet"], "or a preset (square, llm, bert, alexnet, alexnet-conv, mobilenet)"),
    (["sparse", "--shapes", "0x8"], "positive integers"),
    (["sparse", "--shapes", "llm,4096x4096"], "listed twice"),
    (["sparse", "--sparsity", "1"], "sparsity must be in [0, 1)"),
    (["sparse", "--sparsity", "-0.2"], "sparsity must be in [0, 1)"),
    (["sparse", "--sparsity", "lots"], "sparsity must be a number"),
    (["sparse", "--batch", "1,x"], "batch must be a positive integer"),
    (["sparse", "--batch", ""], "empty batch list"),
    (["sparse", "--threads", "0"], "must be a positive integer"),
    (["sparse", "--repeats", "two"], "must be a positive integer"),
    (["sparse", "--dtype", "int8"], "invalid choice"),
    (["sparse", "--flush-mb", "-1"], "--flush-mb must be >= 0"),
    (["binary", "--dtype", "float16"], "invalid choice"),
    (["binary", "--device", "cuda"], "the binary suite times the CPU kernels"),
    (["binary", "--cases", "nope"], "unknown or repeated case"),
    (["binary", "--batch", "1", "--conv-batch", "2"], "give one or the other"),
    (["codebook", "--bits", "9"], "bits must be in 1..8"),
    (["codebook", "--device", "cuda"], "CPU kernel only"),
    (["nonesuch"], "invalid choice"),
])
def test_bad_arguments_exit_2_with_a_clear_message(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        bench(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when CUDA is missing")
@pytest.mark.parametrize("suite", ["sparse", "all"])
def test_cuda_without_a_gpu_is_refused(capsys, suite):
    with pytest.raises(SystemExit):
        bench([suite, "--device", "cuda"] if suite == "sparse" else ["sparse", "--device", "cuda", "--quick"])
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- presets
def test_alexnet_conv_preset_is_caffe_alexnet_as_im2col_gemms():
    convs = {c.name: c for c in presets.PRESETS["alexnet-conv"]}
    # (out/groups, in/groups * kh * kw, output pixels, groups)
    assert {n: (c.out_features, c.in_features, c.positions, c.groups) for n, c in convs.items()} == {
        "conv1": (96, 363, 3025, 1), "conv2": (128, 1200, 729, 2), "conv3": (384, 2304, 169, 1),
        "conv4": (192, 1728, 169, 2), "conv5": (128, 1728, 169, 2)}
    assert [c.sparsity for c in convs.values()] == [0.676, 0.924, 0.972, 0.966, 0.943]


@pytest.mark.parametrize("case", [c for c in presets.PRESETS["alexnet-conv"] + presets.PRESETS["mobilenet"]],
                         ids=lambda c: c.name)
def test_conv_geometry_matches_the_gemm_shape(case):
    c_in, k, stride, padding, hw = case.geometry
    out_hw = (hw + 2 * padding - k) // stride + 1
    assert (case.in_features, case.positions) == (c_in * k * k, out_hw * out_hw)
    # and the im2col rows the sweep builds are exactly the conv's output pixels
    images, cols = methods.conv_inputs(case.geometry, 2, 1, 0, torch.float32, "cpu")
    assert cols[0].shape == (case.gemm_rows(2), case.in_features)


def test_plan_uses_layer_sparsity_and_preset_batches_unless_given():
    args = sweep.parse_args(["--shapes", "alexnet-conv,bert"])
    plan = {case.name: (sparsities, batches) for _, case, sparsities, batches in sweep.plan(args)}
    assert plan["conv3"] == ([0.972], [1, 8]) and plan["768x3072"][1] == [1, 16, 128]
    assert plan["768x768"][0] == sweep.FULL_GRID["sparsity"]
    args = sweep.parse_args(["--shapes", "alexnet-conv", "--sparsity", "0.5", "--batch", "2", "--quick"])
    plan = {case.name: (sparsities, batches) for _, case, sparsities, batches in sweep.plan(args)}
    assert plan["conv1"] == ([0.5, 0.676], [2])  # explicit --sparsity adds grid points to the layer's own


# -------------------------------------------------------------------------------------- correctness gate
def test_a_wrong_method_is_caught_before_timing():
    weight, bias = methods.random_layer(24, 40, seed=1)
    pruned = methods.prune_to(weight, methods.magnitude_order(weight), 0.7)
    args = sweep.parse_args(["--repeats", "1", "--warmup", "0", "--inputs", "1"])
    with torch.no_grad():
        fns, skipped = sweep.build_for_sparsity(pruned, bias, weight, 0.7)
        point = sweep.bench_point(fns, skipped, pruned, bias, weight, 3, args)  # the real methods agree
        assert point["ms"]["sparsecomp"] > 0
        timed = []
        # a plausible bug: the bias forgotten (right shape, wrong values)
        fns["sparsecomp"] = lambda x: (timed.append(1), torch.nn.functional.linear(x, pruned))[1]
        with pytest.raises(ResultMismatch, match="sparsecomp"):
            sweep.bench_point(fns, skipped, pruned, bias, weight, 3, args)
    assert len(timed) == 1  # called once for the check, never timed


def test_a_wrong_conv_method_is_caught(monkeypatch):
    case = presets.PRESETS["mobilenet"][-1]  # 1x1 1024->1024 on 7x7
    weight, bias = methods.random_layer(case.out_features, case.in_features, seed=2)
    pruned = methods.prune_to(weight, methods.magnitude_order(weight), 0.9)
    args = sweep.parse_args(["--repeats", "1", "--warmup", "0", "--inputs", "1"])
    real = methods.make_conv_methods

    def off_by_one_pixel(*a):  # right shape, outputs shifted by one pixel
        fns = real(*a)
        dense = fns["dense_conv2d"]
        return {**fns, "sparsecomp_conv2d": lambda x: dense(x).roll(1, dims=-1)}

    with torch.no_grad():
        fns, skipped = sweep.build_for_sparsity(pruned, bias, weight, 0.9, bsr=False)
        sweep.bench_point(fns, skipped, pruned, bias, weight, case.gemm_rows(1), args, case.geometry, 1)
        monkeypatch.setattr(methods, "make_conv_methods", off_by_one_pixel)
        with pytest.raises(ResultMismatch, match="sparsecomp_conv2d"):
            sweep.bench_point(fns, skipped, pruned, bias, weight, case.gemm_rows(1), args, case.geometry, 1)


# ----------------------------------------------------------------------------------------- crossovers
def _rows(case, batch, speedups):
    return [{"case": case, "shape": "8x8", "batch": batch, "sparsity": s, "speedup": {"sparsecomp": v}}
            for s, v in speedups.items()]


def test_crossovers_per_case_and_batch():
    rows = (_rows("a", 1, {0.5: 0.5, 0.7: 1.5, 0.9: 3.0}) + _rows("a", 16, {0.5: 1.2, 0.7: 2.0, 0.9: 3.0})
            + _rows("b", 1, {0.5: 0.2, 0.9: 0.9}) + _rows("c", 1, {0.97: 2.0}))
    found = {(c["case"], c["batch"]): c for c in crossovers(rows, ["sparsecomp"])}
    assert found["a", 1]["sparsity"] == pytest.approx(0.6) and format_crossover(found["a", 1]) == "0.600"
    assert format_crossover(found["a", 16]) == "<= 0.5"
    assert found["b", 1]["sparsity"] is None and format_crossover(found["b", 1]) == "none"
    assert format_crossover(found["c", 1]) == "<= 0.97"  # one sparsity (an AlexNet layer): faster there


# ---------------------------------------------------------------------------------- tiny run via the CLI
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("bench")
    assert bench(["sparse", "--shapes", "32x16,mobilenet", "--batch", "1", "--sparsity", "0.5,0.9", "--repeats",
                  "2", "--warmup", "0", "--min-sample-ms", "0", "--threads", "1", "--out", str(out)]) == 0
    return out


def test_tiny_run_writes_table_json_and_plot(tiny_run):
    data = json.loads((tiny_run / "results.json").read_text())
    assert data["meta"]["command"].startswith("sparsecomp bench sparse --shapes 32x16,mobilenet")
    cases = list(dict.fromkeys(r["case"] for r in data["rows"]))
    assert cases[0] == "32x16" and len(cases) == 1 + len(presets.PRESETS["mobilenet"])
    pw = next(r for r in data["rows"] if r["case"] == "pw 32->64@112")
    assert pw["gemm_rows"] == 112 * 112 and pw["shape"] == "64x32"
    assert pw["conv_ms"]["dense_conv2d"] > 0 and pw["conv_speedup"] == pytest.approx(
        pw["conv_ms"]["dense_conv2d"] / pw["conv_ms"]["sparsecomp_conv2d"])  # checked against the reference first
    assert {(c["case"], c["method"]) for c in data["crossover"]} >= {("32x16", "sparsecomp"), ("32x16", "structured")}
    png = (tiny_run / "speedup_vs_sparsity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_plot_has_one_panel_per_batch(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    from sparsecomp.benchmark.plot import plot_speedup

    rows = [{"case": "8x8", "shape": "8x8", "batch": b, "sparsity": s,
             "speedup": {"sparsecomp": s * 2, "torch_csr": s, "structured": 1 / (1 - s)}}
            for b in (1, 4, 16) for s in (0.5, 0.9)]
    meta = {"args": {"dtype": "float32"}, "machine": {"device": "cpu", "cpu_model": "x", "threads": 1, "torch": "t"}}
    path = plot_speedup(rows, meta, tmp_path / "p.png")
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width > 2.5 * height  # three panels side by side


# ------------------------------------------------------------------------------------------- RESULTS.md
def test_results_writer_replaces_only_its_own_section(tiny_run, tmp_path):
    md = tmp_path / "RESULTS.md"
    before = "# results\n\n## Binary layers\nhand-written | 1.0x |\n\n"
    after = "\n## Separable\n<!-- BEGIN separable -->\nkept\n<!-- END separable -->\n"
    md.write_text(before + after)
    argv = [str(tiny_run / "results.json"), "--results-md", str(md), "--copy-plot"]
    assert results.main(argv) == 0
    first = md.read_text()
    assert first.startswith(before.rstrip("\n")) and after.strip() in first
    key = results.section_key(json.loads((tiny_run / "results.json").read_text())["meta"])
    assert key.endswith("-32x16-mobilenet")
    # a rerun replaces the section in place; text around it stays byte for byte
    section_start = first.index(f"<!-- BEGIN {key} -->")
    md.write_text(first[:section_start] + f"<!-- BEGIN {key} -->\nstale\n<!-- END {key} -->\n" + "tail text\n")
    assert results.main(argv) == 0
    second = md.read_text()
    assert second.count(f"<!-- BEGIN {key} -->") == 1 and "stale" not in second
    assert second.startswith(first[:section_start]) and second.endswith("tail text\n")
    assert (tmp_path / "sparse_cpu_32x16_mobilenet_speedup.png").stat().st_size > 0
    with pytest.raises(ValueError, match="unbalanced"):
        results.upsert_section(f"<!-- BEGIN {key} -->\n", "x", key)


# --------------------------------------------------------------------------------------------- registry
def test_a_suite_plugs_in_with_one_registry_entry(monkeypatch, capsys, tmp_path):
    ran = []
    fake = types.ModuleType("fake_separable_suite")
    fake.HELP = "a plugged-in suite"

    def add_arguments(p, default_out):
        from sparsecomp.benchmark.args import add_common

        add_common(p, default_out=default_out)
        p.add_argument("--width", type=int, default=3)

    def finalize(args, parser):
        if args.width < 1:
            parser.error("--width must be positive")
        return args

    def run(args, command, progress=True):
        ran.append((args.width, args.quick, args.out, command))
        return 0

    fake.add_arguments, fake.finalize, fake.run = add_arguments, finalize, run
    monkeypatch.setitem(sys.modules, "fake_separable_suite", fake)
    monkeypatch.setattr(benchmark, "SUITES", {"separable": "fake_separable_suite"})
    assert bench(["separable", "--width", "5", "--out", str(tmp_path)]) == 0
    assert ran[-1] == (5, False, str(tmp_path), f"sparsecomp bench separable --width 5 --out {tmp_path}")
    assert bench(["all", "--quick", "--out", str(tmp_path)]) == 0
    assert ran[-1][:3] == (3, True, str(tmp_path / "separable"))
    with pytest.raises(SystemExit):
        bench(["separable", "--width", "0"])
    assert "--width must be positive" in capsys.readouterr().err


def test_every_registered_suite_has_the_protocol():
    for name in benchmark.SUITES:
        module = benchmark.load(name)
        parser = argparse.ArgumentParser()
        module.add_arguments(parser, "out")
        assert isinstance(module.HELP, str) and callable(module.finalize) and callable(module.run)
        args = module.finalize(parser.parse_args(["--quick"]), parser)
        assert args.quick and args.repeats >= 1
    with pytest.raises(KeyError, match="unknown benchmark suite"):
        benchmark.load("nope")
