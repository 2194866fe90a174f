"""Structured pruning: layers physically shrink, outputs are preserved when the removed neurons are dead."""
from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsecomp import prune
from prune_testing import accuracy, cnn, data, mlp, train


def close(a, b):
    return torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_linear_chain_zero_neurons_removed_outputs_kept():
    model = mlp(seed=0, hidden=(40, 20))
    dead1, dead2 = [3, 7, 11, 30], [0, 19]
    with torch.no_grad():
        model[0].weight[dead1] = 0
        model[0].bias[dead1] = 0
        model[2].weight[dead2] = 0
        model[2].bias[dead2] = 0
    x = data()[1].x
    before = model(x)
    report = prune.neurons(model, 0.1, (x,), importance="l2")  # 10% of 40 = 4, of 20 = 2
    assert [r["removed"] for r in report.rows] == [dead1, dead2]
    assert all(r["exact"] for r in report.rows)
    shapes = (model[0].out_features, model[2].in_features, model[2].out_features, model[4].in_features)
    assert shapes == (36, 36, 18, 18)
    assert model[0].weight.shape == (36, 64) and model[0].bias.shape == (36,)
    assert model[2].weight.shape == (18, 36) and model[4].weight.shape == (10, 18)
    assert "4" in report.unprunable  # the classifier's outputs are the model's outputs
    assert close(model(x), before)


@functools.lru_cache(maxsize=None)
def _trained_cnn():
    return train(cnn(seed=1), images=True, max_steps=12)  # a few steps: BatchNorm statistics, some accuracy


def _conv_model_with_dead_channels():
    model = copy.deepcopy(_trained_cnn())
    model.eval()
    with torch.no_grad():
        # conv0 channels 2, 9: zero filters and a BatchNorm that maps 0 to 0 -> exactly zero downstream
        model[0].weight[[2, 9]] = 0
        model[0].bias[[2, 9]] = 0
        model[1].bias[[2, 9]] = 0
        model[1].running_mean[[2, 9]] = 0
        # conv3 channels 1, 4, 13, 14: zero filters, BatchNorm shift left as trained: a constant after BN+ReLU
        # that reaches the Linear through pool + flatten (folded into its bias)
        model[3].weight[[1, 4, 13, 14]] = 0
        model[3].bias[[1, 4, 13, 14]] = 0
        model[4].bias[[1, 4]] = 0.5
    return model


def test_conv_bn_conv_flatten_linear_shrinks_every_dependent_shape():
    model = _conv_model_with_dead_channels()
    x = data(images=True)[1].x
    report = prune.neurons(model, 0.25, (x,), importance="l2", skip=["8"])  # 12 -> 9, 16 -> 12
    removed = {r["layer"]: r["removed"] for r in report.rows}
    assert len(removed["0"]) == 3 and {2, 9} <= set(removed["0"])  # zero filters have the lowest norm
    assert removed["3"] == [1, 4, 13, 14]
    assert model[0].out_channels == 9 and model[0].weight.shape == (9, 1, 3, 3)
    assert model[1].num_features == 9 and model[1].running_var.shape == (9,) and model[1].weight.shape == (9,)
    assert model[3].in_channels == 9 and model[3].out_channels == 12 and model[3].weight.shape == (12, 9, 3, 3)
    assert model[4].num_features == 12 and model[4].running_mean.shape == (12,)
    assert model[8].in_features == 12 * 16 and model[8].weight.shape == (32, 12 * 16)


def test_conv_dead_channels_only_exact():
    model = _conv_model_with_dead_channels()
    x = data(images=True)[1].x
    before = model(x)
    scores = {"0": torch.ones(12), "3": torch.ones(16)}
    scores["0"][[2, 9]] = 0
    scores["3"][[1, 4, 13, 14]] = 0
    report = prune.neurons(model, 0.17, (x,), importance=scores, skip=["8"])  # 12 * .17 -> 2, 16 * .17 -> 3
    assert {r["layer"]: r["removed"] for r in report.rows} == {"0": [2, 9], "3": [1, 4, 13]}
    assert all(r["exact"] for r in report.rows)
    assert close(model(x), before)
    assert report.max_abs_diff < 1e-4


def test_constant_channel_without_compensation_changes_outputs():
    """Control for the bias folding: the same removal without it is visibly wrong."""
    model = _conv_model_with_dead_channels()
    x = data(images=True)[1].x
    before = model(x)
    scores = {"3": torch.ones(16)}
    scores["3"][[1, 4]] = 0
    report = prune.neurons(model, 0.125, (x,), importance=scores, compensate=False, skip=["0", "8"])
    assert report.rows[0]["removed"] == [1, 4] and report.rows[0]["exact"] is False
    assert not close(model(x), before)


def test_dead_relu_neuron_is_pruned_first_by_activation_count():
    model = train(mlp(seed=2, hidden=(32,)), epochs=2)
    with torch.no_grad():
        model[0].bias[13] = -1e4  # never fires on any input of the data set
    tr, te = data()
    counts = prune.importance.activation_counts(model, tr.batches(256, shuffle=False), ["1"])["1"]
    dead = (counts == 0).nonzero().flatten().tolist()  # 13, and any neuron training left dead
    assert 13 in dead and len(dead) < 8
    before = model(te.x)
    report = prune.neurons(model, len(dead) / 32, (te.x,), importance="activation",
                           data=tr.batches(256, shuffle=False))
    assert report.rows[0]["removed"] == dead and report.rows[0]["exact"]
    assert model[0].out_features == 32 - len(dead) and model[2].in_features == 32 - len(dead)
    assert close(model(te.x), before)


def test_gradient_importance_and_global_scope_on_trained_cnn():
    model = copy.deepcopy(_trained_cnn())
    acc = accuracy(model, images=True)
    tr, te = data(images=True)
    batches = (b for i, b in enumerate(tr.batches(256, shuffle=False)) if i < 2)  # a one-shot generator
    report = prune.neurons(model, 0.25, (te.x[:8],), importance="gradient", scope="global", loss_fn=F.cross_entropy,
                           data=batches)
    total_before = sum(r["before"] for r in report.rows)
    total_removed = sum(r["before"] - r["after"] for r in report.rows)
    assert total_removed == round(0.25 * (12 + 16 + 32))  # global count is exact over all producers
    assert total_before == 12 + 16 + 32 or total_before < 12 + 16 + 32  # layers with nothing removed are not rows
    n_params = sum(p.numel() for p in model.parameters())
    train(model, images=True, lr=3e-3, seed=5, max_steps=12)  # the shrunk model trains as a normal dense model
    assert accuracy(model, images=True) > acc - 0.05
    assert n_params < sum(p.numel() for p in cnn().parameters())


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(8, 6)
        self.head_a = nn.Linear(6, 3)
        self.head_b = nn.Sequential(nn.Dropout(0.1), nn.Linear(6, 2))

    def forward(self, x):
        h = F.relu(self.trunk(x))
        return self.head_a(h), self.head_b(h * 2.0)


def test_fan_out_branch_shrinks_every_consumer():
    torch.manual_seed(0)
    model = TwoHeads()
    with torch.no_grad():
        model.trunk.weight[[1, 4]] = 0
        model.trunk.bias[[1, 4]] = -1.0  # dead after ReLU
    x = torch.randn(5, 8)
    a, b = model.eval()(x)
    report = prune.neurons(model, 2 / 6, (x,))
    assert report.rows[0]["layer"] == "trunk" and report.rows[0]["removed"] == [1, 4]
    assert model.head_a.in_features == 4 and model.head_b[1].in_features == 4
    a2, b2 = model(x)
    assert close(a, a2) and close(b, b2)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.block = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)
        self.fixed = nn.Linear(4, 8)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        h = h + torch.relu(self.block(h))
        return self.out(h)


class HardCodedView(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 64, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(-1, 4 * 64))


def test_unsupported_graphs_are_left_alone_with_a_reason():
    model = Residual()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    report = prune.neurons(model, 0.5, (torch.randn(3, 8),))
    assert report.rows == []
    assert "another tensor" in report.unprunable["inp"] and "another tensor" in report.unprunable["block"]
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    report = prune.neurons(HardCodedView(), 0.5, (torch.randn(2, 1, 8, 8),))
    assert report.rows == [] and "hard-codes" in report.unprunable["conv"]


def test_min_keep_and_masks_follow_the_shrink():
    model = mlp(seed=4, hidden=(10,))
    prune.magnitude(model, 0.5)
    x = torch.randn(4, 64)
    prune.neurons(model, 1.0, (x,), min_keep=3)
    assert model[0].out_features == 3 and model[2].in_features == 3
    for layer in (model[0], model[2]):
        mask = prune.get_mask(layer)
        assert mask.shape == layer.weight.shape
        assert bool((layer.weight.detach()[mask == 0] == 0).all())
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(x).sum().backward()
    opt.step()
    assert bool((model[2].weight.detach()[prune.get_mask(model[2]) == 0] == 0).all())


def test_bad_arguments():
    model = mlp()
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match="importance"):
        prune.neurons(model, 0.5, (x,), importance="bogus")
    with pytest.raises(ValueError, match="loss_fn and data"):
        prune.neurons(model, 0.5, (x,), importance="gradient")
    with pytest.raises(ValueError, match="min_keep"):
        prune.neurons(model, 0.5, (x,), min_keep=0)
    with pytest.raises(ValueError, match="amount"):
        prune.neurons(model, -0.1, (x,))


def test_gradient_importance_removes_lowest_taylor_rows():
    model = train(mlp(seed=5, hidden=(24,)), epochs=1)
    tr, te = data()
    batch = (tr.x[:200], tr.y[:200])
    rows = prune.importance.taylor(model, F.cross_entropy, batch)["0"].double().sum(1)
    report = prune.neurons(model, 0.25, (te.x[:4],), importance="gradient", loss_fn=F.cross_entropy, data=batch)
    assert report.rows[0]["removed"] == sorted(torch.argsort(rows)[:6].tolist())


def test_global_scope_compares_mean_normalized_scores():
    model = mlp(seed=6, hidden=(4, 4))
    scores = {"0": torch.tensor([1.0, 1.0, 1.0, 5.0]), "2": torch.tensor([10.0, 30.0, 30.0, 30.0])}
    # normalized by layer mean: "0" -> .5 .5 .5 2.5, "2" -> .4 1.2 1.2 1.2; the 3 lowest: "2"[0], "0"[0], "0"[1]
    report = prune.neurons(model, 3 / 8, (torch.randn(2, 64),), importance=scores, scope="global")
    assert {r["layer"]: r["removed"] for r in report.rows} == {"0": [0, 1], "2": [0]}
