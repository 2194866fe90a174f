"""sparsecomp.dynamic.EarlyExit on early-exit models trained on the digits data set: thresholds, budgets, exit
histograms, skipped computation and the cost model."""
from __future__ import annotations

import collections

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsecomp import datasets
from sparsecomp.dynamic import EarlyExit, Slimmable, module_macs
from sparsecomp.nn import SparseLinear


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny layers: one thread is as fast as two, and far faster than two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp_backbone():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 32), nn.ReLU(),
                         nn.Linear(32, 10))


def cnn_backbone():
    torch.manual_seed(0)
    return nn.Sequential(collections.OrderedDict([
        ("conv1", nn.Conv2d(1, 8, 3, padding=1)), ("act1", nn.ReLU()),
        ("conv2", nn.Conv2d(8, 16, 3, padding=1)), ("act2", nn.ReLU()), ("pool", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(16, 16, 3, padding=1)), ("act3", nn.ReLU()),
        ("flat", nn.Flatten()), ("fc", nn.Linear(16 * 4 * 4, 10))]))


def train_exits(model: EarlyExit, train, epochs, lr=3e-3):
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for x, y in train.batches(64, generator=g):
            opt.zero_grad()
            model.loss(model(x), y).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def mlp_exits():
    train, test = datasets.digits()
    model = EarlyExit(mlp_backbone(), exits_after=[1, 3], example_input=train.x[:2])
    return train_exits(model, train, epochs=15), train, test


@pytest.fixture(scope="module")
def cnn_exits():
    train, test = datasets.digits(images=True)
    model = EarlyExit(cnn_backbone(), exits_after=["act1", "act2"], example_input=train.x[:2])
    return train_exits(model, train, epochs=4), train, test


@pytest.fixture(params=["mlp", "cnn"])
def trained(request):
    return request.getfixturevalue(f"{request.param}_exits")


def count_rows(model: EarlyExit):
    """Forward hooks on every backbone layer and head: rows (samples) each one processed."""
    rows = collections.Counter()
    handles = []
    for name, m in [*model.backbone.named_children(), *[(f"head{k}", h) for k, h in enumerate(model.heads)]]:
        handles.append(m.register_forward_hook(
            lambda mod, inp, out, name=name: rows.update({name: inp[0].shape[0]})))
    return rows, handles


def confidences(model, x):
    with torch.no_grad():
        outs = model(x)
    return outs, [torch.softmax(z, 1).amax(1) for z in outs[:-1]]


# ============================================================================================ structure and training

def test_exit_costs_are_the_counted_macs():
    m = EarlyExit(mlp_backbone(), exits_after=["1", 3], example_input=torch.zeros(3, 64))
    layers = [64 * 48, 48 * 40, 40 * 32, 32 * 10]
    heads = [48 * 10, 40 * 10]
    total = sum(layers)
    assert m.exit_names == ["1", "3", "final"]
    expected = [(layers[0] + heads[0]) / total, (layers[0] + layers[1] + sum(heads)) / total,
                (total + sum(heads)) / total]
    assert m.exit_costs == pytest.approx(expected, rel=1e-12)
    by_layers = EarlyExit(mlp_backbone(), exits_after=[3, 1], example_input=torch.zeros(1, 64), cost="layers")
    assert by_layers.exit_costs == pytest.approx([2 / 7, 4 / 7, 1.0])
    # conv MACs: out elements * in_channels * kernel area; the default head pools to 4x4 then classifies
    c = EarlyExit(cnn_backbone(), exits_after=["act1"], example_input=torch.zeros(2, 1, 8, 8))
    convs = [64 * 8 * 9, 64 * 16 * 8 * 9, 16 * 16 * 16 * 9, 256 * 10]
    head = 8 * 16 * 10
    assert c.exit_costs == pytest.approx([(convs[0] + head) / sum(convs), (sum(convs) + head) / sum(convs)])


def test_module_macs_counts_sparse_nonzeros():
    lin = nn.Linear(20, 7)
    with torch.no_grad():
        lin.weight[:, 5:] = 0
    sp = SparseLinear.from_dense(lin)
    out = sp(torch.zeros(3, 20))
    assert module_macs(sp, out) == 3 * sp.nnz == 3 * 7 * 5
    assert module_macs(lin, lin(torch.zeros(3, 20))) == 3 * 7 * 20
    assert module_macs(nn.ReLU(), out) == 0


def test_forward_and_loss_are_the_weighted_sum(gen):
    m = EarlyExit(mlp_backbone(), exits_after=[1, 3], example_input=torch.zeros(1, 64), exit_weights=[0.3, 0.5, 1.0])
    x, y = torch.randn(9, 64, generator=gen), torch.randint(0, 10, (9,), generator=gen)
    outs = m(x)
    assert len(outs) == 3 and all(o.shape == (9, 10) for o in outs)
    torch.testing.assert_close(outs[-1], m.backbone(x), rtol=0, atol=0)
    torch.testing.assert_close(outs[0], m.heads[0](m.backbone[:2](x)), rtol=0, atol=0)
    expected = sum(w * F.cross_entropy(o, y) for w, o in zip([0.3, 0.5, 1.0], outs))
    torch.testing.assert_close(m.loss(outs, y), expected, rtol=1e-6, atol=0)
    # gradients reach every head and the backbone
    m.loss(outs, y).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_all_exits_learn(trained):
    model, _, test = trained
    outs, _ = confidences(model, test.x)
    accs = [(z.argmax(1) == test.y).float().mean().item() for z in outs]
    assert accs[-1] > 0.9 and min(accs) > 0.5, accs


# ============================================================================================ threshold inference

def test_threshold_zero_exits_everything_at_the_first_head(trained):
    model, _, test = trained
    rows, handles = count_rows(model)
    try:
        res = model.infer(test.x, threshold=0.0)
    finally:
        for h in handles:
            h.remove()
    n = test.y.shape[0]
    assert res.histogram == [n, 0, 0] and bool((res.exit_index == 0).all())
    outs, _ = confidences(model, test.x)
    torch.testing.assert_close(res.logits, outs[0], rtol=0, atol=0)
    first_segment = list(model.backbone._modules)[:model.boundaries[0] + 1]
    assert set(rows) == {*first_segment, "head0"}, rows  # nothing after the first head ran
    assert res.mean_compute == pytest.approx(model.exit_costs[0])


def test_threshold_above_one_runs_the_whole_backbone(trained):
    model, _, test = trained
    res = model.infer(test.x, threshold=1.01)
    assert res.histogram == [0, 0, test.y.shape[0]]
    with torch.no_grad():
        torch.testing.assert_close(res.logits, model.backbone(test.x), rtol=0, atol=0)
    assert res.mean_compute == pytest.approx(model.exit_costs[-1])


@pytest.mark.parametrize("threshold", [0.6, 0.9, 0.99])
def test_threshold_exits_and_skipped_computation(trained, threshold):
    model, _, test = trained
    n = test.y.shape[0]
    rows, handles = count_rows(model)
    try:
        res = model.infer(test.x, threshold=threshold)
    finally:
        for h in handles:
            h.remove()
    assert sum(res.histogram) == n
    assert res.histogram == torch.bincount(res.exit_index, minlength=3).tolist()
    outs, conf = confidences(model, test.x)
    # each sample left at the first head that was confident enough (skip the few within rounding of the threshold)
    clear = torch.ones(n, dtype=torch.bool)
    for c in conf:
        clear &= (c.double() - threshold).abs() > 1e-5
    for k in range(model.num_exits):
        exited_here = res.exit_index == k
        assert bool((conf[k][exited_here & clear] >= threshold).all())
        assert bool((conf[k][(res.exit_index > k) & clear] < threshold).all())
    for k, z in enumerate(outs):
        sel = res.exit_index == k
        torch.testing.assert_close(res.logits[sel], z[sel], rtol=1e-5, atol=1e-5)
    # deeper segments ran only on the samples still active: counted rows per layer
    names = list(model.backbone._modules)
    bounds = [-1, *model.boundaries, len(names) - 1]
    for k in range(len(bounds) - 1):
        still = int((res.exit_index >= k).sum())
        for name in names[bounds[k] + 1:bounds[k + 1] + 1]:
            assert rows.get(name, 0) == still, (name, rows)
        if k < model.num_exits:
            assert rows.get(f"head{k}", 0) == still
    expected = sum(h * c for h, c in zip(res.histogram, model.exit_costs)) / n
    assert res.mean_compute == pytest.approx(expected, rel=1e-12)
    assert sum(1 for h in res.histogram if h) >= 2, res.histogram  # a real mix of exits on trained models
    assert "mean compute" in res.report()


# ============================================================================================ budget

@pytest.mark.parametrize("where", [0.1, 0.4, 0.7])
def test_calibrated_threshold_meets_the_budget(trained, where):
    model, train, test = trained
    cal = train.x[:400]
    # budgets between the cheapest (all leave at the first head) and the dearest (all run to the end) plan
    budget = model.exit_costs[0] + where * (model.exit_costs[-1] - model.exit_costs[0])
    tau = model.calibrate(cal, budget)
    assert model.threshold == tau
    res = model.infer(cal)  # uses the stored threshold
    assert res.mean_compute <= budget + 1e-12
    # optimal: the next larger threshold that changes the exits on the calibration set breaks the budget. tau lies
    # below the smallest confidence that exits (larger[0]); the next distinct choice sits above it.
    _, conf = confidences(model, cal)
    cand = torch.unique(torch.stack(conf).double())
    larger = cand[cand > tau]
    assert larger.numel() >= 1 and tau > float(cand[cand < tau].max() if (cand < tau).any() else 0.0)
    nxt = float((larger[0] + larger[1]) / 2) if larger.numel() >= 2 else float("inf")
    assert model.infer(cal, threshold=nxt).mean_compute > budget
    # on held-out data the budget holds on average (same distribution): loose sanity bound only
    held = model.infer(test.x)
    assert held.mean_compute <= budget + 0.1
    acc = (held.logits.argmax(1) == test.y).float().mean().item()
    assert acc > 0.8, acc


def test_budget_limits(mlp_exits):
    model, train, _ = mlp_exits
    with pytest.raises(ValueError, match="below the cost of the first exit"):
        model.calibrate(train.x[:50], model.exit_costs[0] / 2)
    assert model.calibrate(train.x[:50], model.exit_costs[-1]) == float("inf")
    assert model.infer(train.x[:50]).histogram == [0, 0, 50]
    low = model.calibrate(train.x[:50], model.exit_costs[0])
    assert model.infer(train.x[:50], low).histogram == [50, 0, 0]
    with pytest.raises(ValueError, match="budget must be"):
        model.calibrate(train.x[:50], 0)


# ============================================================================================ errors

def test_errors():
    ex = torch.zeros(1, 64)
    with pytest.raises(TypeError, match="nn.Sequential"):
        EarlyExit(nn.Linear(64, 10), [0], example_input=ex)
    with pytest.raises(ValueError, match="no layer named 'x'"):
        EarlyExit(mlp_backbone(), ["x"], example_input=ex)
    with pytest.raises(ValueError, match="last layer"):
        EarlyExit(mlp_backbone(), [6], example_input=ex)
    with pytest.raises(ValueError, match="twice"):
        EarlyExit(mlp_backbone(), [1, "1"], example_input=ex)
    with pytest.raises(ValueError, match="out of range"):
        EarlyExit(mlp_backbone(), [9], example_input=ex)
    with pytest.raises(ValueError, match="non-empty"):
        EarlyExit(mlp_backbone(), [], example_input=ex)
    with pytest.raises(ValueError, match="exit_weights"):
        EarlyExit(mlp_backbone(), [1], example_input=ex, exit_weights=[1.0])
    with pytest.raises(ValueError, match="expected"):
        EarlyExit(mlp_backbone(), [1], example_input=ex, head_factory=lambda shape, k: nn.Linear(shape[0], k + 1))
    with pytest.raises(ValueError, match="cost='layers'"):
        EarlyExit(nn.Sequential(nn.Identity(), nn.Identity()), [0], example_input=torch.zeros(1, 10))
    m = EarlyExit(mlp_backbone(), [1], example_input=ex)
    with pytest.raises(RuntimeError, match="eval mode"):
        m.infer(ex, threshold=0.5)
    m.eval()
    with pytest.raises(ValueError, match="no threshold"):
        m.infer(ex)
    with pytest.raises(ValueError, match="threshold must be"):
        m.infer(ex, threshold=float("nan"))
    empty = m.infer(torch.zeros(0, 64), threshold=0.5)
    assert empty.histogram == [0, 0] and empty.logits.shape == (0, 10)


# ============================================================================================ width multiplier

def slim_mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Dropout(0.0), nn.Linear(96, 64), nn.GELU(),
                         nn.Linear(64, 10))


def test_slimmable_widths_match_exported_models(gen):
    s = Slimmable(slim_mlp(), widths=[0.25, 0.5, 1.0]).eval()
    x = torch.randn(7, 64, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(s(x), s.model(x), rtol=0, atol=0)  # full width = the original model
        for w, hidden in ((0.25, (24, 16)), (0.5, (48, 32)), (1.0, (96, 64))):
            s.set_width(w)
            small = s.export()
            dims = [(m.in_features, m.out_features) for m in small if isinstance(m, nn.Linear)]
            assert dims == [(64, hidden[0]), hidden, (hidden[1], 10)]
            torch.testing.assert_close(s(x), small(x), rtol=1e-6, atol=1e-6)
            # the slice really is the leading units: a float64 reference from the original weights
            m = s.model
            h = torch.relu(x.double() @ m[0].weight[:hidden[0]].double().T + m[0].bias[:hidden[0]].double())
            h = F.gelu(h @ m[3].weight[:hidden[1], :hidden[0]].double().T + m[3].bias[:hidden[1]].double())
            ref = h @ m[5].weight[:, :hidden[1]].double().T + m[5].bias.double()
            torch.testing.assert_close(s(x).double(), ref, rtol=1e-5, atol=1e-5)
            assert s.macs() == 64 * hidden[0] + hidden[0] * hidden[1] + hidden[1] * 10
            assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in m.parameters()) or w == 1.0


def test_slimmable_training_makes_every_width_accurate():
    train, test = datasets.digits()
    s = Slimmable(slim_mlp(), widths=[0.25, 0.5, 1.0])
    opt = torch.optim.Adam(s.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        for x, y in train.batches(64, generator=g):
            opt.zero_grad()
            s.loss(x, y).backward()
            opt.step()
    s.eval()
    accs = {}
    with torch.no_grad():
        for w in s.widths:
            accs[w] = (s.set_width(w)(test.x).argmax(1) == test.y).float().mean().item()
    assert s.width == 1.0 and min(accs.values()) > 0.85 and accs[1.0] > 0.93, accs


def test_slimmable_errors():
    with pytest.raises(TypeError, match="Linear stacks only"):
        Slimmable(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="expects"):
        Slimmable(nn.Sequential(nn.Linear(4, 5), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="including 1.0"):
        Slimmable(slim_mlp(), widths=[0.5])
    with pytest.raises(ValueError, match="at least 2"):
        Slimmable(nn.Sequential(nn.Linear(4, 2)))
    s = Slimmable(slim_mlp())
    with pytest.raises(ValueError, match="width must be one of"):
        s.set_width(0.3)
