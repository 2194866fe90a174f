"""Importance scores against hand computations and float64 references."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsecomp import prune
from sparsecomp.prune import importance
from prune_testing import data, mlp, train


def test_norms_by_hand():
    w = torch.tensor([[3.0, -4.0, 0.0], [1.0, 1.0, -1.0]])
    assert torch.equal(importance.magnitude(w), w.abs())
    assert torch.equal(importance.l1_norm(w), torch.tensor([7.0, 3.0]))
    assert torch.allclose(importance.l2_norm(w), torch.tensor([5.0, 3.0 ** 0.5]))
    conv = nn.Conv2d(2, 3, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(24.0).reshape(3, 2, 2, 2) - 12)
    ref = (conv.weight.detach().double().reshape(3, -1) ** 2).sum(1).sqrt()
    assert torch.allclose(importance.l2_norm(conv).double(), ref)


def test_taylor_is_abs_weight_times_gradient_summed_over_batches():
    model = train(mlp(seed=0), epochs=1)
    tr, _ = data()
    batches = [(tr.x[:40], tr.y[:40]), (tr.x[40:100], tr.y[40:100])]
    model.train()
    model[0].weight.grad = torch.full_like(model[0].weight, 7.0)  # must survive untouched
    scores = importance.taylor(model, F.cross_entropy, batches)
    assert model.training and torch.equal(model[0].weight.grad, torch.full_like(model[0].weight, 7.0))
    ref64 = {n: torch.zeros_like(m.weight, dtype=torch.float64) for n, m in prune.prunable_layers(model).items()}
    m64 = mlp(seed=0).double()
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    m64.eval()
    for x, y in batches:
        m64.zero_grad()
        F.cross_entropy(m64(x.double()), y).backward()
        for n, layer in prune.prunable_layers(m64).items():
            ref64[n] += (layer.weight * layer.weight.grad).abs().detach()
    for n in ref64:
        assert torch.allclose(scores[n].double(), ref64[n], rtol=1e-4, atol=1e-7), n


def test_gradient_pruning_removes_lowest_taylor_scores():
    model = train(mlp(seed=1), epochs=1)
    tr, _ = data()
    batch = (tr.x[:128], tr.y[:128])
    scores = importance.taylor(model, F.cross_entropy, batch)
    prune.gradient(model, 0.6, F.cross_entropy, batch, scope="layer")
    for name, layer in prune.prunable_layers(model).items():
        pruned = prune.get_mask(layer) == 0
        assert int(pruned.sum()) == int(0.6 * pruned.numel() + 0.5)
        assert scores[name][pruned].max() <= scores[name][~pruned].min()


def test_activation_counts_dead_relu_counts_zero():
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    torch.manual_seed(0)
    with torch.no_grad():
        model[0].bias[5] = -1e4  # neuron 5 never fires
    tr, _ = data()
    batches = list(tr.batches(100, shuffle=False))[:5]
    counts = importance.activation_counts(model, batches, ["1"])["1"]
    x = torch.cat([b[0] for b in batches])
    ref = (torch.relu(model[0](x)) != 0).sum(0)
    assert counts.dtype == torch.int64 and torch.equal(counts, ref)
    assert counts[5] == 0 and int(counts.argmin()) == 5 and bool((counts[torch.arange(16) != 5] > 0).all())


def test_activation_counts_conv_channels_count_positions():
    conv = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU())
    with torch.no_grad():
        conv[0].weight.zero_()
        conv[0].bias.copy_(torch.tensor([1.0, -1.0, 0.5]))
    x = torch.randn(4, 1, 8, 8)
    counts = importance.activation_counts(conv, x, ["1"])["1"]
    assert counts.tolist() == [4 * 64, 0, 4 * 64]


def test_activation_counts_rejects_unknown_and_unused_modules():
    model = mlp()
    with pytest.raises(ValueError, match="unknown"):
        importance.activation_counts(model, torch.randn(2, 64), ["nope"])
    with pytest.raises(ValueError, match="no batches"):
        importance.activation_counts(model, [], ["1"])
