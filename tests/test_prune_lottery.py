"""Lottery tickets: mask criteria on hand-checkable tensors, exact rewinding, re-inits, the IMP driver."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsecomp import prune
from prune_testing import accuracy, mlp, train

#                     0     1     2     3     4     5
INIT = torch.tensor([0.5, -1.0, 2.0, -1.9, 0.3, -0.4])
FINAL = torch.tensor([2.0, 1.5, -2.5, -2.2, 0.9, -1.1])
# |final|             2.0   1.5   2.5   2.2   0.9   1.1   -> top 3: 2, 3, 0
# |final| - |init|    1.5   0.5   0.5   0.3   0.6   0.7   -> top 3: 0, 5, 4
# same sign?          yes   no    no    yes   yes   yes   -> top 3 by |final| among 0, 3, 4, 5: 3, 0, 5
EXPECTED_KEPT = {"large_final": {0, 2, 3}, "magnitude_increase": {0, 4, 5}, "large_final_same_sign": {0, 3, 5}}


def one_layer(init: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(init.numel(), 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(init.reshape(1, -1))
    return layer


@pytest.mark.parametrize("criterion", prune.CRITERIA)
def test_each_criterion_keeps_what_it_claims(criterion):
    init, final = INIT.clone(), FINAL.clone()
    layer = one_layer(init)
    ticket = prune.Lottery(layer)
    with torch.no_grad():
        layer.weight.copy_(final.reshape(1, -1))
    ticket.prune(0.5, criterion)
    kept = set((prune.get_mask(layer).flatten() == 1).nonzero().flatten().tolist())
    assert kept == EXPECTED_KEPT[criterion]


def test_criterion_scores_values():
    s = prune.criterion_scores(FINAL, INIT, "magnitude_increase")
    assert torch.allclose(s, (FINAL.abs() - INIT.abs()).double())
    s = prune.criterion_scores(FINAL, INIT, "large_final_same_sign")
    assert s.tolist() == pytest.approx([2.0, -1.0, -1.0, 2.2, 0.9, 1.1])
    with pytest.raises(ValueError, match="criterion"):
        prune.criterion_scores(FINAL, INIT, "largest")


def test_same_sign_criterion_ranks_every_sign_flip_last():
    init = torch.tensor([1.0, 1.0, -1.0, 1.0])
    final = torch.tensor([-9.0, 0.001, 8.0, 0.002])  # flips are huge, survivors tiny
    layer = one_layer(init)
    ticket = prune.Lottery(layer)
    with torch.no_grad():
        layer.weight.copy_(final.reshape(1, -1))
    ticket.prune(0.5, "large_final_same_sign")
    assert prune.get_mask(layer).flatten().tolist() == [0, 1, 0, 1]


def test_rewind_restores_initial_values_exactly():
    model = mlp(seed=0)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    ticket = prune.Lottery(model)
    train(model, epochs=1)
    ticket.prune(0.6, "large_final")
    ticket.rewind()
    for name, layer in prune.prunable_layers(model).items():
        mask = prune.get_mask(layer)
        w = layer.weight.detach()
        assert torch.equal(w[mask == 1], init[f"{name}.weight"][mask == 1])  # survivors: bit-exact init
        assert bool((w[mask == 0] == 0).all())
        assert torch.equal(layer.bias.detach(), init[f"{name}.bias"])
    n = 64 * 48 + 48 * 32 + 32 * 10
    assert prune.sparsity(model) == math.floor(0.6 * n + 0.5) / n


def test_late_rewinding_to_iteration_k_snapshot():
    model = mlp(seed=1)
    ticket = prune.Lottery(model)
    train(model, epochs=1, seed=1)  # "iteration k"
    ticket.snapshot()
    at_k = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, epochs=1, seed=2)
    ticket.prune(0.5, "magnitude_increase", scope="layer")  # ranked against the rewind point, not the init
    scores = prune.criterion_scores(model[0].weight, at_k["0.weight"], "magnitude_increase")
    mask = prune.get_mask(model[0])
    assert scores[mask == 0].max() <= scores[mask == 1].min()
    ticket.rewind()
    w = model[0].weight.detach()
    assert torch.equal(w[mask == 1], at_k["0.weight"][mask == 1])


def test_constant_sign_preserving_reinit():
    model = mlp(seed=2)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    ticket = prune.Lottery(model)
    train(model, epochs=1)
    ticket.prune(0.5)
    ticket.rewind("constant")
    for name, layer in prune.prunable_layers(model).items():
        w0 = init[f"{name}.weight"]
        alpha = w0.double().std().item()
        mask = prune.get_mask(layer) == 1
        w = layer.weight.detach()
        expected = torch.where(w0 >= 0, alpha, -alpha).float()
        assert torch.equal(w[mask], expected[mask])
        assert bool((torch.sign(w[mask]) == torch.sign(w0[mask])).all())
        assert bool((w[~mask] == 0).all())


def test_random_reinit_control_draws_from_the_layer_init_values():
    model = mlp(seed=3)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    ticket = prune.Lottery(model)
    train(model, epochs=1)
    ticket.prune(0.5)
    ticket.rewind("random", generator=torch.Generator().manual_seed(0))
    for name, layer in prune.prunable_layers(model).items():
        w0 = init[f"{name}.weight"]
        mask = prune.get_mask(layer) == 1
        w = layer.weight.detach()
        pool = w0.flatten().tolist()
        for v in w[mask].tolist():  # every survivor value comes from the layer's init (without replacement)
            pool.remove(v)
        assert (w[mask] == w0[mask]).double().mean() < 0.05  # but not at its own position
    with pytest.raises(ValueError, match="reinit"):
        ticket.rewind("shuffle")


def test_lottery_driver_on_digits():
    model = mlp(seed=4)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    runs = []

    def train_fn(m):
        runs.append(prune.sparsity(m))
        train(m, epochs=2, seed=len(runs))

    history = prune.lottery(model, train_fn, rounds=2, rate=0.5, eval_fn=accuracy, progress=False)
    n = 64 * 48 + 48 * 32 + 32 * 10
    expected = [0.0, math.floor(0.5 * n + 0.5) / n, math.floor(0.75 * n + 0.5) / n]
    assert [row["sparsity"] for row in history] == expected == runs  # each run started from the rewound ticket
    assert all(row["metric"] > 0.85 for row in history)
    assert history[-1]["metric"] == accuracy(model)
    assert "metric" in str(history)
    # the final ticket started from init: its pruned weights are zero, the model trained from there
    assert prune.sparsity(model) == expected[-1]
    assert not torch.equal(model[0].weight.detach(), init["0.weight"])


def test_supermask_beats_chance_without_retraining_and_random_reinit_does_not():
    """Zhou et al.: the large_final_same_sign mask on the *initial* weights is already a classifier; the same
    mask on randomly re-drawn values is not (chance on digits: 0.1)."""
    model = mlp(seed=0)
    ticket = prune.Lottery(model)
    train(model, epochs=3)
    ticket.prune(0.8, "large_final_same_sign", scope="layer")
    ticket.rewind()
    supermask = accuracy(model)
    ticket.rewind("random", generator=torch.Generator().manual_seed(0))
    control = accuracy(model)
    assert supermask > 0.25 and control < 0.2
