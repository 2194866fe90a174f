"""CodebookLinear: from_dense, forward == F.linear(x, codebook[indices], b), trained quantization, state_dict."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsecomp.nn import CodebookLinear
from sparsecomp.quantize import cluster_model

from conftest import assert_within_bound, linear_l2, ref_linear


def _check(y, x, w, b):
    assert_within_bound(y, ref_linear(x, w, b), linear_l2(x, w, b), x.shape[-1] + 1, torch.float32)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_from_dense_forward_matches_dequantized(cpu_isa, bits, per_channel, gen):
    lin = nn.Linear(37, 11)
    m = CodebookLinear.from_dense(lin, bits=bits, per_channel=per_channel).eval()
    w = m.weight_matrix()
    assert m.bits == bits and m.codebook.shape == ((11, 1 << bits) if per_channel else (1 << bits,))
    assert len(torch.unique(w)) <= (11 << bits if per_channel else 1 << bits)
    for shape in [(0, 37), (1, 37), (5, 37), (2, 3, 37), (37,)]:
        x = torch.randn(shape, generator=gen)
        y = m(x)
        assert y.shape == (*shape[:-1], 11)
        _check(y.reshape(-1, 11), x.reshape(-1, 37), w, m.bias)
    _check(m.to_dense()(x.reshape(-1, 37)).detach(), x.reshape(-1, 37), w, m.bias)


def test_clustering_error_shrinks_with_bits(gen):
    lin = nn.Linear(64, 32)
    errs = [(CodebookLinear.from_dense(lin, bits=b).weight_matrix() - lin.weight).square().sum().item()
            for b in (1, 2, 4, 8)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-3 * errs[0]


def test_pruned_layer_keeps_exact_zeros(gen):
    lin = nn.Linear(50, 20)
    with torch.no_grad():
        lin.weight[torch.rand(20, 50, generator=gen) < 0.9] = 0
    m = CodebookLinear.from_dense(lin, bits=3)
    assert m.zero_code
    assert torch.equal(m.weight_matrix() == 0, lin.weight == 0)


def test_training_learns_codebook_with_summed_member_gradients(gen):
    lin = nn.Linear(20, 6)
    with torch.no_grad():
        lin.weight[:, ::4] = 0
    m = CodebookLinear.from_dense(lin, bits=3).train()
    x = torch.randn(9, 20, generator=gen)
    m(x).square().sum().backward()
    # reference: gradient of the dense weight, summed over the members of each entry
    w = m.weight_matrix().requires_grad_()
    F.linear(x, w, m.bias.detach()).square().sum().backward()
    idx = m.indices()
    want = torch.zeros(8).index_add_(0, idx.flatten(), w.grad.flatten())
    want[0] = 0  # the zero code is pinned
    torch.testing.assert_close(m.codebook.grad, want)
    before = m.indices().clone()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    opt.step()
    assert torch.equal(m.indices(), before) and m.codebook[0] == 0
    assert torch.equal(m.weight_matrix() == 0, lin.weight == 0)


def test_state_dict_roundtrip_and_validation(gen):
    m = CodebookLinear.from_dense(nn.Linear(30, 7), bits=5, per_channel=True)
    sd = m.state_dict()
    assert set(sd) == {"codebook", "packed_indices", "bias", "_extra_state"}
    fresh = CodebookLinear(30, 7, bits=5, per_channel=True)
    fresh.load_state_dict(sd)
    x = torch.randn(3, 30, generator=gen)
    assert torch.equal(fresh.eval()(x), m.eval()(x))
    bad = dict(sd, packed_indices=sd["packed_indices"][:, :-1])
    with pytest.raises(RuntimeError, match="packed_indices must be int32"):
        fresh.load_state_dict(bad)
    bad = dict(sd, codebook=sd["codebook"][:, :16])
    with pytest.raises(RuntimeError, match="codebook must be floating point of shape"):
        fresh.load_state_dict(bad)
    with pytest.raises(ValueError, match="configuration"):
        other = dict(sd, codebook=torch.zeros(7, 16), packed_indices=torch.zeros(7, 4, dtype=torch.int32))
        CodebookLinear(30, 7, bits=4, per_channel=True).load_state_dict(other)


def test_zero_code_checkpoint_must_keep_zero_entry():
    lin = nn.Linear(10, 4)
    with torch.no_grad():
        lin.weight[:, :5] = 0
    m = CodebookLinear.from_dense(lin, bits=2)
    sd = m.state_dict()
    sd["codebook"] = sd["codebook"].clone()
    sd["codebook"][0] = 1.0
    with pytest.raises(RuntimeError, match="entry 0 must be 0.0"):
        m.load_state_dict(sd)


def test_errors():
    with pytest.raises(ValueError, match="bits"):
        CodebookLinear(4, 4, bits=0)
    with pytest.raises(TypeError):
        CodebookLinear.from_dense(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="in_features=4"):
        CodebookLinear(4, 2)(torch.zeros(3, 5))


def test_cluster_model_replaces_linears_and_keeps_outputs_close(gen):
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Sequential(nn.Linear(32, 8)))
    x = torch.randn(10, 16, generator=gen)
    ref = model(x).detach()
    cluster_model(model, bits=8, progress=False)
    assert isinstance(model[0], CodebookLinear) and isinstance(model[2][0], CodebookLinear)
    torch.testing.assert_close(model.eval()(x), ref, rtol=0.05, atol=0.05)


def test_compile_fullgraph(gen):
    m = CodebookLinear.from_dense(nn.Linear(12, 5), bits=4).eval()
    x = torch.randn(3, 12, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(m, fullgraph=True, backend="eager")(x), m(x))
