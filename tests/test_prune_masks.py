"""Unstructured pruning: exact pruned counts, masks that survive optimizers, gradient masking, removal."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsecomp import prune
from prune_testing import accuracy, data, mlp, train


def expected_zeros(amount: float, n: int) -> int:
    return int(math.floor(amount * n + 0.5))


def weights(model):
    return {n: m.weight.detach().clone() for n, m in prune.prunable_layers(model).items()}


@pytest.mark.parametrize("amount", [0.0, 0.37, 0.5, 0.9, 1.0])
def test_global_magnitude_prunes_exact_count_of_smallest(amount):
    model = mlp(seed=1)
    before = weights(model)
    prune.magnitude(model, amount, scope="global")
    after = weights(model)
    total = sum(w.numel() for w in before.values())
    pruned = torch.cat([(after[n] == 0).flatten() for n in before])
    assert int(pruned.sum()) == expected_zeros(amount, total)
    mags = torch.cat([before[n].abs().flatten() for n in before])
    if 0 < amount < 1:  # every pruned |w| is <= every kept |w|, across layers
        assert mags[pruned].max() <= mags[~pruned].min()
    for n in before:  # kept weights are untouched
        keep = after[n] != 0
        assert torch.equal(after[n][keep], before[n][keep])


@pytest.mark.parametrize("amount", [0.25, 0.61, 0.95])
def test_layer_scope_prunes_exact_count_in_each_layer(amount):
    model = mlp(seed=2)
    before = weights(model)
    prune.magnitude(model, amount, scope="layer")
    for name, layer in prune.prunable_layers(model).items():
        zero = layer.weight.detach() == 0
        assert int(zero.sum()) == expected_zeros(amount, zero.numel()), name
        assert before[name].abs()[zero].max() <= before[name].abs()[~zero].min()
        assert torch.equal(prune.get_mask(layer) == 0, zero)


def test_pruning_again_keeps_earlier_zeros_and_never_unprunes():
    model = mlp(seed=3)
    prune.magnitude(model, 0.5)
    first = {n: m.clone() for n, m in prune.get_masks(model).items()}
    with torch.no_grad():  # make some pruned positions look important now: they must stay pruned
        for layer in prune.prunable_layers(model).values():
            layer.weight.add_(torch.randn_like(layer.weight) * 5)
    prune.magnitude(model, 0.8)
    second = prune.get_masks(model)
    total = sum(m.numel() for m in second.values())
    assert sum(int((m == 0).sum()) for m in second.values()) == expected_zeros(0.8, total)
    for n in first:
        assert bool((second[n][first[n] == 0] == 0).all())
    prune.magnitude(model, 0.3)  # below the current sparsity: nothing changes
    assert all(torch.equal(second[n], m) for n, m in prune.get_masks(model).items())


def _steps(model, opt, n, check=None, seed=0):
    tr, _ = data()
    g = torch.Generator().manual_seed(seed)
    done = 0
    while done < n:
        for x, y in tr.batches(64, generator=g):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if check is not None:
                check()  # right after the step, before any forward could re-zero
            done += 1
            if done == n:
                break


OPTIMIZERS = {
    "sgd-momentum-nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam-weight-decay": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "rmsprop-momentum": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.9),
}


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_masks_stay_zero_through_optimizer_steps(opt_name):
    model = mlp(seed=4)
    opt = OPTIMIZERS[opt_name](model.parameters())
    _steps(model, opt, 15)  # momentum / moment estimates now hold values for every weight
    prune.magnitude(model, 0.8)
    masks = prune.get_masks(model)
    layers = prune.prunable_layers(model)

    def check():
        for n, layer in layers.items():
            pruned = masks[f"{n}.weight"] == 0
            assert bool((layer.weight.detach()[pruned] == 0).all()), f"{n}: pruned weight moved"

    _steps(model, opt, 25, check=check, seed=1)
    assert accuracy(model) > 0.5  # and it still learns (chance: 0.1)


def test_without_masks_the_same_steps_do_move_zeroed_weights():
    """Control for the test above: zeroing weights by hand does not survive momentum."""
    model = mlp(seed=4)
    opt = OPTIMIZERS["adam-weight-decay"](model.parameters())
    _steps(model, opt, 15)
    with torch.no_grad():
        zero = model[0].weight.abs() < model[0].weight.abs().median()
        model[0].weight[zero] = 0
    _steps(model, opt, 1, seed=1)
    assert int((model[0].weight.detach()[zero] != 0).sum()) > 0


def test_gradient_of_pruned_weights_is_zero_and_others_unchanged():
    model = mlp(seed=5)
    prune.magnitude(model, 0.7)
    plain = copy.deepcopy(model)
    prune.remove(plain)  # same weights (zeros included), no hooks
    x, y = data()[0].x[:50], data()[0].y[:50]
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(plain(x), y).backward()
    for (name, layer), ref in zip(prune.prunable_layers(model).items(), prune.prunable_layers(plain).values()):
        pruned = prune.get_mask(layer) == 0
        assert bool((layer.weight.grad[pruned] == 0).all()), name
        assert bool((ref.weight.grad[pruned] != 0).any()), name  # the hook did something
        assert torch.equal(layer.weight.grad[~pruned], ref.weight.grad[~pruned]), name


def test_remove_leaves_a_plain_model_with_zeros():
    model = mlp(seed=6)
    fresh_keys = set(mlp(seed=0).state_dict())
    prune.magnitude(model, 0.6)
    assert set(model.state_dict()) == fresh_keys  # masks are not in the state_dict
    prune.remove(model)
    assert prune.get_masks(model) == {}
    assert prune.sparsity(model) == pytest.approx(expected_zeros(0.6, 64 * 48 + 48 * 32 + 32 * 10)
                                                  / (64 * 48 + 48 * 32 + 32 * 10))
    for layer in prune.prunable_layers(model).values():
        assert len(layer._forward_pre_hooks) == 0
        assert not layer.weight._backward_hooks
        assert not any(k.endswith("_mask") for k in layer._buffers)
    was_zero = {n: m.weight.detach() == 0 for n, m in prune.prunable_layers(model).items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _steps(model, opt, 2)
    moved = sum(int((m.weight.detach()[was_zero[n]] != 0).sum()) for n, m in prune.prunable_layers(model).items())
    assert moved > 0.9 * sum(int(z.sum()) for z in was_zero.values())  # the zeros are ordinary weights again


def test_state_dict_round_trip_and_freeze_zeros():
    model = mlp(seed=7)
    prune.magnitude(model, 0.75)
    fresh = mlp(seed=8)
    fresh.load_state_dict(model.state_dict())  # strict: no extra keys
    prune.freeze_zeros(fresh)
    assert all(torch.equal(a, b) for a, b in zip(prune.get_masks(model).values(), prune.get_masks(fresh).values()))
    opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    _steps(fresh, opt, 5)
    assert prune.sparsity(fresh) == pytest.approx(prune.sparsity(model))


def test_deep_copy_keeps_enforcing_and_is_independent():
    model = mlp(seed=9)
    prune.magnitude(model, 0.8)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    clone = copy.deepcopy(model)
    opt = torch.optim.Adam(clone.parameters(), lr=1e-2, weight_decay=1e-2)
    _steps(clone, opt, 5)
    masks = prune.get_masks(clone)
    for name, layer in prune.prunable_layers(clone).items():
        assert bool((layer.weight.detach()[masks[f"{name}.weight"] == 0] == 0).all())
        layer_in = torch.randn(3, layer.in_features)
        layer(layer_in).sum().backward()
        assert bool((layer.weight.grad[masks[f"{name}.weight"] == 0] == 0).all())  # hook re-installed on the copy
    assert all(torch.equal(original[k], v) for k, v in model.state_dict().items())


def test_layer_used_twice_in_one_forward_backpropagates():
    """The forward pre-hook must not rewrite a weight autograd already saved (version counter check)."""
    lin = nn.Linear(8, 8)
    prune.magnitude(lin, 0.5)
    x = torch.randn(4, 8, requires_grad=True)  # so the first call saves the weight for backward
    lin(lin(x)).sum().backward()  # would raise "modified by an inplace operation" otherwise
    assert bool((lin.weight.grad[prune.get_mask(lin) == 0] == 0).all())


def test_skip_by_name_pattern_and_type():
    model = mlp(seed=10)
    before = weights(model)
    prune.magnitude(model, 0.5, skip=["4"])
    assert torch.equal(model[4].weight, before["4"]) and prune.get_mask(model[4]) is None
    total = before["0"].numel() + before["2"].numel()
    assert int((model[0].weight == 0).sum() + (model[2].weight == 0).sum()) == expected_zeros(0.5, total)

    model = mlp(seed=10)
    prune.magnitude(model, 0.5, scope="layer", skip=["[02]"])  # fnmatch pattern
    assert prune.get_mask(model[0]) is None and prune.get_mask(model[2]) is None
    assert prune.get_mask(model[4]) is not None

    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 10))
    prune.magnitude(net, 0.5, skip=[nn.Conv2d])
    assert prune.get_mask(net[0]) is None and prune.get_mask(net[2]) is not None


def test_bad_arguments_are_named():
    model = mlp()
    with pytest.raises(ValueError, match="amount"):
        prune.magnitude(model, 1.5)
    with pytest.raises(ValueError, match="scope"):
        prune.magnitude(model, 0.5, scope="local")
    with pytest.raises(TypeError, match="skip"):
        prune.magnitude(model, 0.5, skip=[3])
    with pytest.raises(ValueError, match="no layer to prune"):
        prune.magnitude(model, 0.5, skip=[nn.Linear])
    with pytest.raises(ValueError, match="shape"):
        prune.apply_mask(model[0], torch.ones(3, 3))
    with pytest.raises(ValueError, match="only 0"):
        prune.apply_mask(model[0], torch.full_like(model[0].weight, 0.5))
    with pytest.raises(KeyError, match="not a parameter"):
        prune.set_masks(model, {"7.weight": torch.ones(1)})


def test_masked_training_end_to_end_keeps_accuracy():
    model = train(mlp(seed=11), epochs=3)
    dense = accuracy(model)
    prune.magnitude(model, 0.8)
    pruned = accuracy(model)
    train(model, epochs=3, lr=1e-2, seed=1)
    assert prune.sparsity(model) == pytest.approx(expected_zeros(0.8, 64 * 48 + 48 * 32 + 32 * 10)
                                                  / (64 * 48 + 48 * 32 + 32 * 10))
    assert accuracy(model) > max(dense - 0.02, pruned + 0.1)  # fine-tuning under the masks recovers


def test_pruned_weights_are_positive_zero_even_from_negative_weights():
    """Masks write +0.0: a -0.0 (what multiplying by the mask leaves) would be stored as a value by
    save_compressed."""
    layer = nn.Linear(8, 6)
    with torch.no_grad():
        layer.weight.copy_(-torch.rand(6, 8) - 0.5)  # all negative
        layer.weight[0, 0] = 0.0
    prune.magnitude(nn.Sequential(layer), amount=0.5, scope="layer")
    removed = prune.get_mask(layer, "weight") == 0
    w = layer.weight.detach()
    assert removed.sum().item() == 24
    assert torch.equal(w[removed], torch.zeros(24)) and not torch.signbit(w[removed]).any()
