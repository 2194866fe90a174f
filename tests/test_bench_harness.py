"""Tests of the benchmark engine sparsecomp.benchmark (timing harness, sparse sweep, RESULTS.md writer)."""
from __future__ import annotations

import json
import math
import time

import pytest
import torch

from sparsecomp.benchmark import results as make_results
from sparsecomp.benchmark import sparse as sweep_sparse
from sparsecomp.benchmark.harness import ResultMismatch, Timing, check_same_result, crossover, measure


# --------------------------------------------------------------------------------------------- crossover
def test_crossover_always_faster_is_lowest_sparsity():
    assert crossover([0.3, 0.5, 0.9], [1.2, 1.5, 3.0]) == 0.3


def test_crossover_never_faster_is_none():
    assert crossover([0.3, 0.5, 0.9], [0.2, 0.5, 0.9]) is None


def test_crossover_interpolates_between_grid_points():
    # 0.8 at s=0.5 and 1.2 at s=0.7: the line reaches 1 halfway
    assert crossover([0.3, 0.5, 0.7, 0.9], [0.5, 0.8, 1.2, 2.0]) == pytest.approx(0.6)


def test_crossover_uses_last_slower_point_when_it_dips_in_the_middle():
    assert crossover([0.3, 0.5, 0.7, 0.9], [1.1, 0.9, 1.1, 1.5]) == pytest.approx(0.6)


def test_crossover_is_none_when_slower_again_at_high_sparsity():
    # faster in the middle but not at the top: it does not *stay* faster (documented in crossover)
    assert crossover([0.3, 0.5, 0.7, 0.99], [0.5, 1.5, 2.0, 0.8]) is None


def test_crossover_exactly_one_counts_as_break_even():
    assert crossover([0.3, 0.5], [0.5, 1.0]) == pytest.approx(0.5)


def test_crossover_sorts_and_skips_missing_points():
    assert crossover([0.7, 0.3, 0.5, 0.9], [1.2, 0.5, None, math.nan]) == pytest.approx(0.3 + 0.4 * 0.5 / 0.7)
    assert crossover([0.3, 0.5], [None, None]) is None


def test_crossover_rejects_bad_tables():
    with pytest.raises(ValueError, match="2 sparsities but 1"):
        crossover([0.3, 0.5], [1.0])
    with pytest.raises(ValueError, match="distinct"):
        crossover([0.5, 0.5], [1.0, 2.0])


# ----------------------------------------------------------------------------------------------- measure
def test_measure_excludes_setup_and_returns_medians():
    def make_slow_to_build():
        time.sleep(0.3)  # setup: building the callable is not timed
        return lambda x: x + 1

    fns = {"built_slowly": make_slow_to_build(), "sleeps_when_run": lambda x: time.sleep(0.01)}
    timings = measure(fns, [torch.zeros(2), torch.ones(2)], repeats=5, warmup=1)
    assert set(timings) == {"built_slowly", "sleeps_when_run"}
    assert all(isinstance(t, Timing) and len(t.samples_s) == 5 for t in timings.values())
    assert timings["built_slowly"].median_s < 0.01
    assert 0.009 < timings["sleeps_when_run"].median_s < 0.1
    assert timings["sleeps_when_run"].median_ms == pytest.approx(timings["sleeps_when_run"].median_s * 1e3)


def test_measure_does_not_time_the_before_sample_hook():
    calls = []
    timings = measure({"a": lambda x: x, "b": lambda x: x}, [1], repeats=3, warmup=0,
                      before_sample=lambda: (calls.append(1), time.sleep(0.02)))
    assert len(calls) == 6
    assert all(t.median_s < 0.01 for t in timings.values())


def test_measure_interleaves_methods_and_rotates_inputs():
    log = []
    fns = {name: (lambda x, name=name: log.append((name, x))) for name in "abc"}
    measure(fns, [0, 1, 2], repeats=4, warmup=1)
    warm, timed = log[:9], log[9:]
    assert sorted(warm) == sorted((n, x) for n in "abc" for x in range(3))  # every method on every input
    rounds = [timed[i:i + 3] for i in range(0, 12, 3)]
    assert [[n for n, _ in r] for r in rounds] == [list("abc"), list("bca"), list("cab"), list("abc")]
    assert [{x for _, x in r} for r in rounds] == [{0}, {1}, {2}, {0}]  # same input for all in a round


def test_measure_batches_fast_calls_into_longer_samples():
    timings = measure({"noop": lambda x: x}, [1], repeats=3, warmup=0, min_sample_s=1e-3)
    assert timings["noop"].calls_per_sample > 1


def test_measure_rejects_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        measure({}, [1])
    with pytest.raises(ValueError, match="empty"):
        measure({"a": lambda x: x}, [])
    with pytest.raises(ValueError, match="repeats"):
        measure({"a": lambda x: x}, [1], repeats=0)


# ------------------------------------------------------------------------------------- check_same_result
def test_check_same_result_accepts_close_outputs():
    ref = torch.randn(3, 4, dtype=torch.float64)
    check_same_result({"a": ref.float(), "b": ref + 1e-7}, ref, rtol=1e-5, atol=1e-5)


def test_check_same_result_names_the_wrong_method():
    ref = torch.randn(3, 4, dtype=torch.float64)
    bad = ref.clone()
    bad[1, 2] += 1.0
    with pytest.raises(ResultMismatch, match=r"wrong: 1 of 12 elements differ; worst at \(1, 2\)") as err:
        check_same_result({"right": ref.clone(), "wrong": bad}, ref, rtol=1e-5, atol=1e-5)
    assert "right" not in str(err.value)


def test_check_same_result_rejects_wrong_shape_and_nan():
    ref = torch.zeros(2, 3)
    with pytest.raises(ResultMismatch, match=r"shape \(3, 2\)"):
        check_same_result({"t": torch.zeros(3, 2)}, ref, rtol=0, atol=0)
    with pytest.raises(ResultMismatch, match="nan"):
        check_same_result({"n": torch.full((2, 3), math.nan)}, ref, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------------------- sweep CLI
@pytest.mark.parametrize("argv, message", [
    (["--sparsity", "1.0"], "sparsity must be in [0, 1)"),
    (["--sparsity", "-0.1"], "sparsity must be in [0, 1)"),
    (["--sparsity", "half"], "sparsity must be a number"),
    (["--sparsity", "0.5,0.5"], "duplicate sparsity"),
    (["--shapes", "4096by4096"], "shape must be OUTxIN"),
    (["--shapes", "0x16"], "shape must be OUTxIN"),
    (["--batch", "0"], "batch must be a positive integer"),
    (["--repeats", "0"], "must be a positive integer"),
    (["--dtype", "int8"], "invalid choice"),
    (["--device", "tpu"], "invalid choice"),
])
def test_sweep_rejects_bad_arguments(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        sweep_sparse.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when CUDA is missing")
def test_sweep_rejects_cuda_without_a_gpu(capsys):
    with pytest.raises(SystemExit):
        sweep_sparse.main(["--device", "cuda"])
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err


def test_quick_grid_yields_to_explicit_flags():
    args = sweep_sparse.parse_args(["--quick", "--batch", "2"])
    assert args.batch == [2]
    assert args.sparsity == sweep_sparse.QUICK_GRID["sparsity"]


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("sweep")
    assert sweep_sparse.main(["--shapes", "64x48", "--batch", "1,3", "--sparsity", "0.5,0.9", "--repeats", "3",
                              "--warmup", "1", "--min-sample-ms", "0", "--bsr", "--out", str(out)]) == 0
    return out


def test_tiny_sweep_writes_results_and_plot(tiny_sweep, capsys):
    for name in ("results.json", "results.csv", "speedup_vs_sparsity.png"):
        assert (tiny_sweep / name).stat().st_size > 0, name
    results = json.loads((tiny_sweep / "results.json").read_text())
    assert [(r["batch"], r["sparsity"]) for r in results["rows"]] == [(1, 0.5), (3, 0.5), (1, 0.9), (3, 0.9)]
    for row in results["rows"]:
        assert row["ms"]["dense"] > 0 and row["ms"]["sparsecomp"] > 0 and row["ms"]["torch_csr"] > 0
        assert row["speedup"]["sparsecomp"] == pytest.approx(row["ms"]["dense"] / row["ms"]["sparsecomp"])
        assert row["nnz"] == round(0.5 * 64 * 48) if row["sparsity"] == 0.5 else round(0.1 * 64 * 48)
        assert row["csr_variant"] in ("csr_linear", "csr_mm")
    assert {(c["batch"], c["method"]) for c in results["crossover"]} == {
        (b, m) for b in (1, 3) for m in sweep_sparse.CROSSOVER_METHODS}
    csv_lines = (tiny_sweep / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith("case,shape,")


def test_make_results_writes_and_refreshes_one_section(tiny_sweep, tmp_path):
    md, plot = tmp_path / "RESULTS.md", tmp_path / "sparse_cpu_speedup.png"
    argv = [str(tiny_sweep / "results.json"), "--results-md", str(md), "--copy-plot", "--plot-dest", str(plot)]
    assert make_results.main(argv) == 0
    assert make_results.main(argv) == 0  # a rerun replaces its section instead of adding one
    text = md.read_text()
    assert text.count("<!-- BEGIN sparse_linear cpu-float32-") == 1 and text.count("<!-- END sparse_linear") == 1
    assert "| 64x48 | 64x48 | 3 | 3 | 0.9 |" in text and "](sparse_cpu_speedup.png)" in text
    assert plot.stat().st_size > 0
    other = make_results.upsert_section(text, "<!-- BEGIN other -->\nx\n<!-- END other -->\n", "other")
    assert other.count("<!-- BEGIN") == 2
