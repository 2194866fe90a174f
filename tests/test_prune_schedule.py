"""Iterative pruning schedule: reaches the target, stops at the metric-drop limit, consistent history."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from sparsecomp import prune
from prune_testing import accuracy, mlp, train

N_WEIGHTS = 64 * 48 + 48 * 32 + 32 * 10


def zeros_for(level: float) -> int:
    return int(math.floor(level * N_WEIGHTS + 0.5))


def test_sparsity_levels():
    assert prune.sparsity_levels(0.0, 0.25, 1.0) == [0.25, 0.5, 0.75, 1.0]
    assert prune.sparsity_levels(0.0, 0.1, 0.9)[-1] == 0.9 and len(prune.sparsity_levels(0.0, 0.1, 0.9)) == 9
    assert prune.sparsity_levels(0.0, 0.3, 0.8) == pytest.approx([0.3, 0.6, 0.8])
    assert prune.sparsity_levels(0.0, 0.5, 0.9, "geometric") == pytest.approx([0.5, 0.75, 0.875, 0.9])
    assert prune.sparsity_levels(0.5, 0.1, 0.5) == []
    with pytest.raises(ValueError, match="step"):
        prune.sparsity_levels(0.0, 0.0, 0.5)
    with pytest.raises(ValueError, match="schedule"):
        prune.sparsity_levels(0.0, 0.1, 0.5, "cubic")


def test_iterative_reaches_target_with_real_fine_tuning(capsys):
    model = train(mlp(seed=0), epochs=3)
    calls = []

    def fine_tune(m):
        calls.append(prune.sparsity(m))
        train(m, epochs=1, lr=3e-3, seed=len(calls))

    history = prune.iterative(model, fine_tune, accuracy, step=0.3, target=0.8, progress=True)
    assert [row["round"] for row in history] == [0, 1, 2, 3]
    assert [row["target"] for row in history] == pytest.approx([0.0, 0.3, 0.6, 0.8])
    for row in history[1:]:  # measured sparsity is the exact count, and fine-tuning saw the pruned model
        assert row["sparsity"] == zeros_for(row["target"]) / N_WEIGHTS
        assert row["kept"] is True and row["drop"] == pytest.approx(history[0]["metric"] - row["metric"])
    assert calls == [row["sparsity"] for row in history[1:]]
    assert prune.sparsity(model) == zeros_for(0.8) / N_WEIGHTS
    assert history[-1]["metric"] == accuracy(model) and history[-1]["metric"] > history[0]["metric"] - 0.03
    err = capsys.readouterr().err
    assert "prune" in err and "3/3" in err  # tqdm progress bar
    text = str(history)
    assert text.splitlines()[0].split() == ["round", "target", "sparsity", "metric", "drop", "kept", "seconds"]
    assert len(text.splitlines()) == 2 + len(history)


def test_iterative_stops_at_drop_limit_and_restores_last_good_model():
    model = mlp(seed=1)
    scripted = iter([0.90, 0.89, 0.88, 0.70, 0.95])
    states = []

    def fine_tune(m):
        with torch.no_grad():  # a deterministic change the restore must undo
            for p in m.parameters():
                p.mul_(1.01)
        states.append({k: v.clone() for k, v in m.state_dict().items()})

    history = prune.iterative(model, fine_tune, lambda m: next(scripted), step=0.2, target=0.8, max_drop=0.05,
                              progress=False)
    assert [row["round"] for row in history] == [0, 1, 2, 3]  # round 3 dropped 0.20 > 0.05: stop
    assert [row["kept"] for row in history] == [True, True, True, False]
    assert history[3]["drop"] == pytest.approx(0.20)
    assert prune.sparsity(model) == zeros_for(0.4) / N_WEIGHTS  # back to round 2's sparsity...
    assert all(torch.equal(v, states[1][k]) for k, v in model.state_dict().items())  # ...and weights
    masks = prune.get_masks(model)
    assert sum(int((m == 0).sum()) for m in masks.values()) == zeros_for(0.4)  # masks restored too
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 64)).sum().backward()
    opt.step()
    assert prune.sparsity(model) == zeros_for(0.4) / N_WEIGHTS


def test_iterative_without_restore_keeps_the_failed_round():
    model = mlp(seed=2)
    scripted = iter([0.9, 0.5])
    history = prune.iterative(model, lambda m: None, lambda m: next(scripted), step=0.5, target=1.0,
                              max_drop=0.1, restore=False, progress=False)
    assert len(history) == 2 and history[1]["kept"] is True
    assert prune.sparsity(model) == zeros_for(0.5) / N_WEIGHTS


def test_iterative_with_custom_structured_prune_fn_restores_shapes():
    model = mlp(seed=3)
    x = torch.randn(8, 64)
    scripted = iter([0.9, 0.88, 0.1])
    shapes = []

    def prune_fn(m, level):
        prune.neurons(m, 0.25, (x,))
        shapes.append(m[0].weight.shape)

    history = prune.iterative(model, lambda m: None, lambda m: next(scripted), step=0.5, target=1.0,
                              max_drop=0.05, prune_fn=prune_fn, progress=False)
    assert len(history) == 3 and not history[2]["kept"]
    assert model[0].weight.shape == shapes[0] and model[0].out_features == shapes[0][0]
    assert model(x).shape == (8, 10)


def test_iterative_argument_checks():
    model = mlp()
    with pytest.raises(ValueError, match="max_drop"):
        prune.iterative(model, lambda m: None, lambda m: 1.0, max_drop=-1)
    with pytest.raises(ValueError, match="finite"):
        prune.iterative(model, lambda m: None, lambda m: float("nan"), progress=False)
    with pytest.raises(TypeError, match="callables"):
        prune.iterative(model, None, lambda m: 1.0)
    snapshot = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="target"):
        prune.iterative(model, lambda m: None, lambda m: 1.0, target=2.0)
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())
