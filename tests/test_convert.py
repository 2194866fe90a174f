"""sparsecomp.convert: measured per-layer choice (fake timer), size mode, real run, original untouched."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sparsecomp as sc
from sparsecomp import prune
from sparsecomp.convert import ConvertReport
from sparsecomp.nn import SparseConv2d, SparseLinear
from prune_testing import cnn, data, mlp, train


def pruned_mlp(amount=0.9, seed=0):
    model = mlp(seed=seed, hidden=(48, 32))
    prune.magnitude(model, amount, scope="layer")
    return model


def fake_timer(table: dict, calls: list | None = None):
    """Seconds per call by (kind, out_features): which layer is timed, dense or sparse, is all it needs."""
    def timer(module, x):
        kind = "sparse" if isinstance(module, (SparseLinear, SparseConv2d)) else "dense"
        out = module.out_features if hasattr(module, "out_features") else module.out_channels
        if calls is not None:
            calls.append((kind, out))
        return table[(kind, out)]
    return timer


def test_speed_mode_replaces_only_layers_measured_faster():
    model = pruned_mlp()
    x = data()[1].x[:32]
    times = {("dense", 48): 1.0, ("sparse", 48): 0.5,      # faster: replaced
             ("dense", 32): 1.0, ("sparse", 32): 1.5,      # slower: kept
             ("dense", 10): 1.0, ("sparse", 10): 0.97}     # within the 5% margin: kept
    fast, report = sc.convert(model, (x,), timer=fake_timer(times), verbose=False, return_report=True)
    assert isinstance(report, ConvertReport) and fast.sparsecomp_report is report
    assert [type(m).__name__ for m in fast] == ["SparseLinear", "ReLU", "Linear", "ReLU", "Linear"]
    assert report.replaced == ["0"]
    rows = {r.name: r for r in report.layers}
    assert rows["0"].chosen == "sparse" and rows["0"].chosen_ms == pytest.approx(500.0)
    assert rows["2"].chosen == "dense" and rows["2"].note == "sparse not faster"
    assert rows["4"].chosen == "dense"
    for r in report.layers:  # never slower than dense, by construction
        assert r.chosen_ms <= r.dense_ms
        assert r.sparsity == pytest.approx(0.9, abs=1e-3)
    assert rows["0"].chosen_bytes == fast[0].sparse_nbytes() + 48 * 4 < rows["0"].dense_bytes
    assert torch.allclose(fast(x), model(x), rtol=1e-5, atol=1e-5)


def test_timer_calls_are_interleaved_and_repeated():
    model = pruned_mlp()
    calls = []
    times = {(k, o): 1.0 for k in ("dense", "sparse") for o in (48, 32, 10)}
    sc.convert(model, (torch.randn(4, 64),), timer=fake_timer(times, calls), repeats=3, verbose=False)
    first = [c for c in calls if c[1] == 48]
    assert first == [("dense", 48), ("sparse", 48), ("sparse", 48), ("dense", 48), ("dense", 48), ("sparse", 48)]


def test_size_mode_and_min_sparsity():
    model = pruned_mlp()
    prune.remove(model)
    with torch.no_grad():  # layer 2 made dense: below min_sparsity, never timed
        model[2].weight.add_(1.0)
    calls = []
    times = {(k, o): (2.0 if k == "sparse" else 1.0) for k in ("dense", "sparse") for o in (48, 32, 10)}
    fast, report = sc.convert(model, (torch.randn(4, 64),), prefer="size", min_sparsity=0.5,
                              timer=fake_timer(times, calls), verbose=False, return_report=True)
    assert report.replaced == ["0", "4"]  # smaller although slower: prefer="size"
    assert {o for _, o in calls} == {48, 10}
    rows = {r.name: r for r in report.layers}
    assert rows["2"].dense_ms is None and "min_sparsity" in rows["2"].note
    assert all(rows[n].chosen_bytes < rows[n].dense_bytes for n in ("0", "4"))


def test_original_model_untouched():
    model = pruned_mlp()
    state = copy.deepcopy(model.state_dict())
    masks = prune.get_masks(model)
    types = [type(m) for m in model.modules()]
    times = {(k, o): (0.1 if k == "sparse" else 1.0) for k in ("dense", "sparse") for o in (48, 32, 10)}
    fast = sc.convert(model, (torch.randn(4, 64),), timer=fake_timer(times), verbose=False)
    assert fast is not model and [type(m) for m in model.modules()] == types
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, masks[k]) for k, v in prune.get_masks(model).items())  # still masked
    assert not hasattr(model, "sparsecomp_report")
    assert prune.get_masks(fast) == {}  # the copy's masks were made permanent
    opt = torch.optim.Adam(model.parameters(), lr=0.1)  # the original still trains under its masks
    model(torch.randn(4, 64)).sum().backward()
    opt.step()
    for name, layer in prune.prunable_layers(model).items():
        assert bool((layer.weight[masks[f"{name}.weight"] == 0] == 0).all())


def test_compressed_and_unsupported_layers_are_kept():
    lin = nn.Linear(16, 16)
    with torch.no_grad():
        lin.weight[lin.weight.abs() < 0.2] = 0
    model = nn.Sequential(SparseLinear.from_dense(lin), nn.Unflatten(1, (1, 4, 4)),
                          nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, groups=2))
    with torch.no_grad():
        for conv in (model[2], model[3]):
            conv.weight.mul_((torch.rand_like(conv.weight) > 0.9).float())
    times = {("dense", 4): 1.0, ("sparse", 4): 0.1}
    fast, report = sc.convert(model, (torch.randn(3, 16),), timer=fake_timer(times), min_sparsity=0.5,
                              verbose=False, return_report=True)
    rows = {r.name: r for r in report.layers}
    assert rows["0"].chosen == "kept" and type(fast[0]) is SparseLinear
    assert rows["2"].chosen == "sparse" and type(fast[2]) is SparseConv2d
    assert rows["3"].chosen == "dense" and "groups" in rows["3"].note and type(fast[3]) is nn.Conv2d


def test_unused_layer_and_shared_layer():
    shared = nn.Linear(8, 8)
    with torch.no_grad():
        shared.weight.mul_((torch.rand_like(shared.weight) > 0.9).float())
    unused = nn.Linear(8, 8)
    with torch.no_grad():
        unused.weight.zero_()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.unused = shared, shared, unused

        def forward(self, x):
            return self.b(self.a(x))

    times = {("dense", 8): 1.0, ("sparse", 8): 0.1}
    x = torch.randn(2, 8)
    net = Net()
    fast, report = sc.convert(net, (x,), timer=fake_timer(times), verbose=False, return_report=True)
    assert fast.a is fast.b and isinstance(fast.a, SparseLinear)  # replaced under both names
    assert {r.name: r.note for r in report.layers}["unused"] == "not run by example_inputs"
    assert torch.allclose(fast(x), net(x), atol=1e-6)


def test_real_run_outputs_match_and_table_is_printed(capsys):
    model = train(cnn(seed=0), images=True, max_steps=3).eval()  # a few steps: non-trivial BatchNorm stats
    prune.magnitude(model, 0.85, scope="layer", skip=["0"])
    x = data(images=True)[1].x[:64]
    ref = model(x)
    small = sc.convert(model, (x,), prefer="size", repeats=3)
    out = capsys.readouterr().out
    for word in ("layer", "kind", "shape", "sparsity", "dense ms", "chosen ms", "chosen B", "Conv2d", "Linear",
                 "replaced 3/4"):
        assert word in out, word
    assert [type(m).__name__ for m in small if isinstance(m, (nn.Conv2d, nn.Linear, SparseConv2d, SparseLinear))] \
        == ["Conv2d", "SparseConv2d", "SparseLinear", "SparseLinear"]
    assert torch.allclose(small(x), ref, rtol=1e-4, atol=1e-4)
    assert small.sparsecomp_report.max_abs_diff < 1e-4
    fast, report = sc.convert(model, (x,), prefer="speed", repeats=3, verbose=False, return_report=True)
    for r in report.layers:  # whatever this machine measured, nothing chosen is slower than its dense time
        assert r.chosen_ms is None or r.chosen_ms <= r.dense_ms
    assert torch.allclose(fast(x), ref, rtol=1e-4, atol=1e-4)


def test_bad_arguments():
    model = pruned_mlp()
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match="prefer"):
        sc.convert(model, (x,), prefer="memory")
    with pytest.raises(ValueError, match="min_sparsity"):
        sc.convert(model, (x,), min_sparsity=2)
    with pytest.raises(ValueError, match="repeats"):
        sc.convert(model, (x,), repeats=0)
    with pytest.raises(TypeError, match="example_inputs"):
        sc.convert(model, "x")
    with pytest.raises(TypeError, match="model"):
        sc.convert("model", (x,))
