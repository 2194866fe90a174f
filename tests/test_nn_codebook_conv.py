"""CodebookConv2d: forward == float64 conv2d with the dequantized weight (geometry, groups, padding modes,
layouts, batch 0), pruned zeros stay exact, trained centroids get the summed member gradients, compile,
state_dict round trip and rejection of corrupt state."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsecomp.nn import CodebookConv2d

from conftest import assert_within_bound


def reference(m: CodebookConv2d, x: torch.Tensor):
    """float64 conv2d with the module's dequantized weight, and the 2-norm of each output's terms."""
    conv = m.to_dense().double()
    w = conv.weight.detach()
    xp = x.double()
    mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
    xp = F.pad(xp, conv._reversed_padding_repeated_twice, mode=mode)
    ref = F.conv2d(xp, w, None, m.stride, 0, m.dilation, m.groups)
    sq = F.conv2d(xp.square(), w.square(), None, m.stride, 0, m.dilation, m.groups)
    if m.bias is not None:
        b = m.bias.detach().double().view(1, -1, 1, 1)
        ref, sq = ref + b, sq + b.square()
    return ref, sq.sqrt()


def check(m, x, y=None):
    y = m(x) if y is None else y
    ref, l2 = reference(m, x)
    assert_within_bound(y, ref, l2, m._cols + 1, torch.float32)
    return y


# (in, out, kernel, stride, padding, dilation, groups, padding_mode, bias)
GEOMETRIES = [
    (3, 5, 3, 1, 1, 1, 1, "zeros", True),
    (7, 6, (3, 2), (2, 1), (1, 0), 1, 1, "zeros", False),
    (4, 9, 3, 1, "same", 2, 1, "zeros", True),
    (6, 4, 5, 2, 2, 1, 2, "zeros", True),
    (6, 6, 3, 1, 1, 1, 6, "zeros", True),  # depthwise
    (5, 3, 3, 1, 1, 1, 1, "reflect", True),
    (5, 3, (2, 3), 1, (1, 2), 1, 1, "circular", False),
    (4, 5, 2, 1, "same", 1, 1, "replicate", True),  # asymmetric "same" padding
    (10, 7, 1, 1, 0, 1, 1, "zeros", True),  # pointwise: direct reshape
    (10, 6, 1, 2, 0, 1, 2, "zeros", True),  # 1x1 strided, grouped
    (3, 4, 3, 1, "valid", 1, 1, "zeros", True),
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "-".join(map(str, g)))
@pytest.mark.parametrize("bits, per_channel", [(3, False), (4, True), (5, False)])
def test_forward_matches_float64_conv(geometry, bits, per_channel, gen):
    cin, cout, k, s, p, d, g, mode, bias = geometry
    conv = nn.Conv2d(cin, cout, k, s, p, d, g, bias=bias, padding_mode=mode)
    m = CodebookConv2d.from_dense(conv, bits=bits, per_channel=per_channel).eval()
    assert m.bits == bits and m.codebook.shape == ((cout, 1 << bits) if per_channel else (1 << bits,))
    x = torch.randn(3, cin, 11, 9, generator=gen)
    y = check(m, x)
    assert y.is_contiguous() and y.shape == conv(x).shape
    y_cl = check(m, x.contiguous(memory_format=torch.channels_last))
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y_cl, y)
    one = m(x[1])  # unbatched [C, H, W]
    assert one.shape == y.shape[1:]
    check(m, x[1:2], one.unsqueeze(0))
    y0 = m(x[:0])
    assert y0.shape == (0, *y.shape[1:])
    # the module's dense twin computes the same function
    torch.testing.assert_close(m.to_dense()(x), y, rtol=1e-5, atol=1e-5)


def test_odd_sizes_and_poisoned_input(gen):
    """17 input channels x 3x3 (K = 153, not a multiple of any pack width), one row, huge values elsewhere
    in the batch do not leak into other samples."""
    conv = nn.Conv2d(17, 13, 3, padding=1)
    m = CodebookConv2d.from_dense(conv, bits=7).eval()
    x = torch.randn(2, 17, 1, 23, generator=gen)
    y = check(m, x)
    x2 = x.clone()
    x2[1] = 1e30
    assert torch.equal(m(x2)[0], y[0])


def test_pruned_conv_keeps_exact_zeros(gen):
    conv = nn.Conv2d(8, 6, 3, groups=2)
    with torch.no_grad():
        conv.weight[torch.rand(conv.weight.shape, generator=gen) < 0.8] = 0
    m = CodebookConv2d.from_dense(conv, bits=3)
    assert m.zero_code
    assert torch.equal(m.to_dense().weight == 0, conv.weight == 0)
    check(m.eval(), torch.randn(2, 8, 7, 7, generator=gen))


@pytest.mark.parametrize("per_channel", [False, True])
def test_centroid_gradients_are_summed_member_gradients(per_channel, gen):
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    with torch.no_grad():
        conv.weight[:, :, 0] = 0  # pruned: zero code pinned
    m = CodebookConv2d.from_dense(conv, bits=3, per_channel=per_channel).train()
    x = torch.randn(3, 4, 5, 6, generator=gen, requires_grad=True)
    m(x).square().sum().backward()
    w = m.to_dense().weight.detach().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    F.conv2d(x_ref, w, m.bias.detach(), 1, 1, 1, 2).square().sum().backward()
    idx = m.indices()
    gw = w.grad.reshape(6, -1)
    if per_channel:
        want = torch.zeros(6, 8).scatter_add_(1, idx, gw)
        want[:, 0] = 0
    else:
        want = torch.zeros(8).index_add_(0, idx.flatten(), gw.flatten())
        want[0] = 0
    torch.testing.assert_close(m.codebook.grad, want)
    torch.testing.assert_close(x.grad, x_ref.grad)
    before = idx.clone()
    torch.optim.SGD(m.parameters(), lr=0.05).step()
    assert torch.equal(m.indices(), before) and bool((m.codebook[..., 0] == 0).all())
    assert torch.equal(m.to_dense().weight == 0, conv.weight == 0)


def test_compile_fullgraph(gen):
    m = CodebookConv2d.from_dense(nn.Conv2d(3, 4, 3, padding=1, groups=1), bits=4).eval()
    x = torch.randn(2, 3, 6, 5, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(m, fullgraph=True, backend="eager")(x), m(x))


def test_state_dict_round_trip_and_corrupt_state(gen):
    m = CodebookConv2d.from_dense(nn.Conv2d(5, 4, 3, groups=1), bits=5, per_channel=True)
    sd = m.state_dict()
    assert set(sd) == {"codebook", "packed_indices", "bias", "_extra_state"}
    fresh = CodebookConv2d(5, 4, 3, bits=5, per_channel=True)
    fresh.load_state_dict(sd)
    x = torch.randn(2, 5, 6, 6, generator=gen)
    assert torch.equal(fresh.eval()(x), m.eval()(x))
    for bad, match in [(dict(sd, packed_indices=sd["packed_indices"][:, :-1]), "packed_indices must be int32"),
                       (dict(sd, packed_indices=sd["packed_indices"].long()), "packed_indices must be int32"),
                       (dict(sd, codebook=sd["codebook"][:, :16]), "codebook must be floating point of shape"),
                       (dict(sd, codebook=sd["codebook"].int()), "codebook must be floating point")]:
        target = CodebookConv2d(5, 4, 3, bits=5, per_channel=True)
        before = {k: v.clone() for k, v in target.state_dict().items() if isinstance(v, torch.Tensor)}
        with pytest.raises(RuntimeError, match=match):
            target.load_state_dict(bad)
        assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())
    unpinned = dict(sd, codebook=sd["codebook"].clone())
    unpinned["codebook"][:, 0] = 0  # shapes and entry 0 fit, the configuration (zero_code) does not
    with pytest.raises(ValueError, match="configuration"):
        CodebookConv2d(5, 4, 3, bits=5, per_channel=True, zero_code=True).load_state_dict(unpinned)
    pruned = nn.Conv2d(5, 4, 3)
    with torch.no_grad():
        pruned.weight[:, 0] = 0
    z = CodebookConv2d.from_dense(pruned, bits=2)
    zsd = z.state_dict()
    zsd["codebook"] = zsd["codebook"].clone()
    zsd["codebook"][0] = 0.5
    with pytest.raises(RuntimeError, match="entry 0 must be 0.0"):
        z.load_state_dict(zsd)


def test_errors():
    with pytest.raises(ValueError, match="bits"):
        CodebookConv2d(2, 2, 3, bits=9)
    with pytest.raises(ValueError, match="divisible by groups"):
        CodebookConv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="padding_mode"):
        CodebookConv2d(2, 2, 3, padding_mode="ones")
    with pytest.raises(TypeError, match="nn.Conv2d"):
        CodebookConv2d.from_dense(nn.Linear(3, 3))
    m = CodebookConv2d(3, 2, 3).eval()
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        m(torch.zeros(1, 4, 5, 5))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        m(torch.zeros(1, 3, 2, 5))


def test_cluster_model_replaces_convs(gen):
    from sparsecomp.nn import CodebookLinear, SparseConv2d
    from sparsecomp.quantize import cluster_model

    pruned = nn.Conv2d(4, 4, 3, padding=1)
    with torch.no_grad():
        pruned.weight[:, :2] = 0
    model = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), SparseConv2d.from_dense(pruned), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 3))
    x = torch.randn(2, 2, 7, 7, generator=gen)
    ref = model(x).detach()
    cluster_model(model, bits=8, progress=False, skip=("3",))
    assert [type(m) for m in model] == [CodebookConv2d, CodebookConv2d, nn.Flatten, nn.Linear]
    assert model[1].zero_code and torch.equal(model[1].to_dense().weight == 0, pruned.weight == 0)
    torch.testing.assert_close(model.eval()(x), ref, rtol=0.05, atol=0.05)
    assert not isinstance(model[3], CodebookLinear)
