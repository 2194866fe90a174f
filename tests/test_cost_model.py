"""Cost model (sparsecomp.benchmark.cost_model) on synthetic tables, its use by convert, and RowSparse modules.

No timing is asserted: tables and timers are synthetic, so every expected choice follows from the numbers here.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import sparsecomp as sc
from sparsecomp.benchmark.cost_model import LayerGemm, TableCostModel, load
from sparsecomp.nn import RowSparseConv2d, RowSparseLinear, SparseConv2d, SparseLinear


def row(out_f, in_f, batch, sparsity, dense, sparse, structured=None, positions=1):
    ms = {"dense": dense, "sparsecomp": sparse, "structured": structured, "torch_csr": None}
    return {"out_features": out_f, "in_features": in_f, "batch": batch, "gemm_rows": batch * positions,
            "sparsity": sparsity, "ms": ms,
            "speedup": {k: (None if v is None else dense / v) for k, v in ms.items() if k != "dense"}}


def table(**kw):
    """A 1000x1000 table: sparse pays from 0.7 at batch 1 and from 0.9 at batch 100; structured = 1/(1-s)."""
    rows = []
    for batch, dense, sparse_by_s in ((1, 1.0, {0.5: 1.6, 0.7: 1.0, 0.9: 0.4}),
                                      (100, 10.0, {0.5: 30.0, 0.7: 20.0, 0.9: 8.0})):
        for s, t in sparse_by_s.items():
            rows.append(row(1000, 1000, batch, s, dense, t, structured=dense * (1 - s)))
    return {"meta": {"machine": {"device": "cpu"}, "args": {"dtype": "float32"}}, "rows": rows, **kw}


# --------------------------------------------------------------------------------------------- predictions
def test_dense_time_scales_with_the_multiply_count():
    model = TableCostModel.from_results(table())
    assert model.predict(LayerGemm(1000, 1000, 1, 0.0))["dense"] == pytest.approx(1.0)
    assert model.predict(LayerGemm(2000, 1000, 1, 0.0))["dense"] == pytest.approx(2.0)
    # between batch 1 (1.0 ms per row) and batch 100 (0.1 ms per row): log-rows interpolation of ms per row
    assert model.predict(LayerGemm(1000, 1000, 10, 0.0))["dense"] == pytest.approx(10 * 0.55)


def test_sparse_speedup_interpolates_in_sparsity_and_refuses_to_extrapolate_down():
    model = TableCostModel.from_results(table())
    p = model.predict(LayerGemm(1000, 1000, 1, 0.8))
    assert p["dense"] / p["sparse"] == pytest.approx((1 / 1.0 + 1 / 0.4) / 2)  # halfway between 0.7 and 0.9
    assert "sparse" not in model.predict(LayerGemm(1000, 1000, 1, 0.3))  # below the lowest measured: unknown
    top = model.predict(LayerGemm(1000, 1000, 1, 0.99))
    assert top["dense"] / top["sparse"] == pytest.approx(2.5)  # above the highest: the highest's speedup


def test_choice_follows_the_table_per_batch_with_margin():
    model = TableCostModel.from_results(table())
    assert model.choose(LayerGemm(1000, 1000, 1, 0.9))[0] == "sparse"
    assert model.choose(LayerGemm(1000, 1000, 1, 0.5))[0] == "dense"  # slower at 0.5
    assert model.choose(LayerGemm(1000, 1000, 100, 0.8))[0] == "dense"  # batch 100 pays only from 0.9
    assert model.choose(LayerGemm(1000, 1000, 100, 0.9))[0] == "sparse"
    assert model.choose(LayerGemm(1000, 1000, 1, 0.7), margin=0.05)[0] == "dense"  # exactly break-even


def test_structured_uses_the_zero_row_fraction_and_wins_when_faster():
    model = TableCostModel.from_results(table())
    # 90% sparse but no zero rows: structured does not apply
    assert "structured" not in model.predict(LayerGemm(1000, 1000, 100, 0.9, zero_row_fraction=0.0))
    best, p = model.choose(LayerGemm(1000, 1000, 100, 0.9, zero_row_fraction=0.9))
    assert best == "structured" and p["structured"] == pytest.approx(1.0)  # 10 ms x (1 - 0.9)
    assert model.choose(LayerGemm(1000, 1000, 100, 0.9, zero_row_fraction=0.9), allowed=("sparse",))[0] == "sparse"


def test_2_4_only_on_cuda_and_only_for_2_4_weights():
    rows = [dict(row(1000, 1000, 1, s, 1.0, 2.0), speedup={"sparsecomp": 0.5, "semi_structured_24": 1.5})
            for s in (0.5, 0.9)]
    model = TableCostModel(rows, device="cuda")
    assert "semi_structured_24" not in model.predict(LayerGemm(1000, 1000, 1, 0.5, is_2_4=True, device="cpu"))
    assert "semi_structured_24" not in model.predict(LayerGemm(1000, 1000, 1, 0.5, is_2_4=False, device="cuda"))
    assert model.choose(LayerGemm(1000, 1000, 1, 0.5, is_2_4=True, device="cuda"))[0] == "semi_structured_24"


def test_nearest_shape_is_used_for_ratios():
    rows = table()["rows"] + [row(64, 64, b, s, 1.0, 0.1) for b in (1, 100) for s in (0.5, 0.9)]
    model = TableCostModel(rows)
    assert model.choose(LayerGemm(70, 60, 1, 0.5))[0] == "sparse"  # the 64x64 table: 10x at any sparsity
    assert model.choose(LayerGemm(900, 1100, 1, 0.5))[0] == "dense"  # the 1000x1000 table: slower at 0.5


def test_load_accepts_path_dict_model_and_rejects_others(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(table()))
    assert isinstance(load(path), TableCostModel) and isinstance(load(str(path)), TableCostModel)
    assert load(table()).choose(LayerGemm(1000, 1000, 1, 0.9))[0] == "sparse"
    with pytest.raises(ValueError, match="not a file"):
        load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="results.json"):
        load({"rows_missing": []})
    with pytest.raises(ValueError, match="no rows with a dense time"):
        load({"rows": []})
    with pytest.raises(TypeError, match="cost_model must be"):
        load(3)


# ------------------------------------------------------------------------------------------ row-sparse modules
def test_row_sparse_linear_is_exact_and_round_trips():
    torch.manual_seed(0)
    lin = nn.Linear(13, 11).double()
    with torch.no_grad():
        lin.weight[[0, 4, 5, 10]] = 0
    rs = RowSparseLinear.from_dense(lin)
    assert rs.rows.tolist() == [1, 2, 3, 6, 7, 8, 9] and rs.weight.shape == (7, 13)
    x = torch.randn(2, 3, 13, dtype=torch.float64)
    torch.testing.assert_close(rs(x), lin(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rs.to_dense().weight, lin.weight)
    no_bias = nn.Linear(13, 11, bias=False).double()
    with torch.no_grad():
        no_bias.weight[3] = 0
    torch.testing.assert_close(RowSparseLinear.from_dense(no_bias)(x), no_bias(x), rtol=1e-12, atol=1e-12)


def test_row_sparse_conv_is_exact():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, stride=2, padding=1).double()
    with torch.no_grad():
        conv.weight[[1, 4]] = 0
    rs = RowSparseConv2d.from_dense(conv)
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    torch.testing.assert_close(rs(x), conv(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="groups=1"):
        RowSparseConv2d.from_dense(nn.Conv2d(4, 4, 3, groups=2))


# -------------------------------------------------------------------------------------------- convert
def _kind(module):
    if isinstance(module, (SparseLinear, SparseConv2d)):
        return "sparse"
    if isinstance(module, (RowSparseLinear, RowSparseConv2d)):
        return "structured"
    return "dense"


def fake_timer(seconds: dict, calls: list):
    def timer(module, x):
        calls.append(_kind(module))
        return seconds[_kind(module)]
    return timer


def row_pruned_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 8))
    with torch.no_grad():
        model[0].weight[:36] = 0  # 90% zero, all of it whole rows
        w = model[2].weight
        w[torch.rand_like(w) < 0.9] = 0  # 90% zero, scattered
    return model


def test_convert_probe_times_structured_and_picks_the_fastest():
    model, calls = row_pruned_mlp(), []
    x = torch.randn(5, 64)
    fast, report = sc.convert(model, (x,), cost_model="probe", timer=fake_timer(
        {"dense": 1.0, "sparse": 0.6, "structured": 0.2}, calls), repeats=3, verbose=False, return_report=True)
    rows = {r.name: r for r in report.layers}
    assert rows["0"].chosen == "structured" and isinstance(fast[0], RowSparseLinear)
    assert rows["0"].chosen_ms == pytest.approx(200.0) and set(rows["0"].measured_ms) == {"dense", "sparse",
                                                                                            "structured"}
    assert rows["2"].chosen == "sparse" and set(rows["2"].measured_ms) == {"dense", "sparse"}  # no zero rows
    torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)


def test_convert_with_a_table_times_only_layers_predicted_to_change(tmp_path):
    model, calls = row_pruned_mlp(), []
    x = torch.randn(1, 64)
    # layer 2 (8x40, 90% sparse) and layer 0 (40x64) both map to this table's shape by ratio
    rows = [row(40, 64, 1, s, 1.0, t, structured=0.1) for s, t in ((0.5, 2.0), (0.8, 1.5), (0.95, 1.2))]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"meta": {}, "rows": rows}))
    fast, report = sc.convert(model, (x,), cost_model=path, timer=fake_timer(
        {"dense": 1.0, "sparse": 2.0, "structured": 0.5}, calls), repeats=2, verbose=False, return_report=True)
    by = {r.name: r for r in report.layers}
    assert by["0"].chosen == "structured" and by["0"].predicted_ms and by["0"].measured_ms  # predicted, verified
    assert by["2"].chosen == "dense" and not by["2"].measured_ms and "predicted by" in by["2"].note
    assert set(calls) == {"dense", "structured"}  # the sparse form was never timed: predicted slower
    torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)


def test_convert_table_prediction_is_overruled_by_the_measurement():
    model, calls = row_pruned_mlp(), []
    x = torch.randn(1, 64)
    rows = [row(40, 64, 1, s, 1.0, 0.1, structured=0.1) for s in (0.5, 0.95)]  # predicts 10x for everything
    fast, report = sc.convert(model, (x,), cost_model={"rows": rows}, timer=fake_timer(
        {"dense": 1.0, "sparse": 3.0, "structured": 3.0}, calls), repeats=2, verbose=False, return_report=True)
    assert report.replaced == []  # measured slower: kept dense, never slower than before
    assert all(type(m) in (nn.Linear, nn.ReLU) for m in fast)
    unverified = sc.convert(model, (x,), cost_model={"rows": rows}, verify=False, verbose=False, timer=fake_timer(
        {"dense": 1.0, "sparse": 3.0, "structured": 3.0}, calls))
    assert not isinstance(unverified[0], nn.Linear) and unverified.sparsecomp_report.layers[0].note.startswith(
        "predicted by")


def test_convert_cost_model_arguments():
    model = row_pruned_mlp()
    x = torch.randn(1, 64)
    with pytest.raises(ValueError, match="prefer='speed'"):
        sc.convert(model, (x,), prefer="size", cost_model="probe")
    with pytest.raises(ValueError, match="not a file"):
        sc.convert(model, (x,), cost_model="no/such/results.json")
    with pytest.raises(TypeError, match="cost_model must be"):
        sc.convert(model, (x,), cost_model=1.5)
    gpu_table = {"meta": {"machine": {"device": "cuda"}}, "rows": [row(40, 64, 1, 0.5, 1.0, 0.5)]}
    with pytest.raises(ValueError, match="measured on cuda but layer '0' runs on cpu"):
        sc.convert(model, (x,), cost_model=gpu_table, verbose=False)
