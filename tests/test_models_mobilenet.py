"""MobileNetV1/V2 builders: published parameter counts, shapes, the fused model equal to its plain torch version
at eval, and a few training steps on the digits data."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsecomp.datasets import digits
from sparsecomp.models import mobilenet_v1, mobilenet_v1_digits, mobilenet_v2, mobilenet_v2_digits, to_torch
from sparsecomp.nn import DepthwiseSeparableConv2d
from sparsecomp.nn import separable as separable_mod


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_published_parameter_counts():
    # torchvision's mobilenet_v2() has 3,504,872 parameters; Keras' MobileNet (alpha 1.0) 4,231,976 trainable ones.
    assert n_params(mobilenet_v2()) == 3_504_872
    assert n_params(mobilenet_v1()) == 4_231_976


@pytest.mark.parametrize("builder, blocks", [(mobilenet_v1, 13), (mobilenet_v2, 17)])
def test_shapes_and_structure(builder, blocks):
    m = builder(width_mult=0.25, num_classes=7).eval()
    seps = [x for x in m.modules() if isinstance(x, DepthwiseSeparableConv2d)]
    assert len(seps) == blocks
    assert all(s.bn is not None and s.pw_bn is not None and s.kernel_size == 3 for s in seps)
    with torch.no_grad():
        assert m(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert sum(s.stride == 2 for s in seps) == 4  # with the stem: 32x down-sampling


@pytest.mark.parametrize("builder", [mobilenet_v1_digits, mobilenet_v2_digits])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_equals_torch_at_eval(builder, dtype, gen, monkeypatch):
    monkeypatch.setattr(separable_mod, "should_fuse", lambda *a: True)  # every pair through the fused op
    model = builder().to(dtype)
    for bn in (x for x in model.modules() if isinstance(x, nn.BatchNorm2d)):  # non-trivial folding
        with torch.no_grad():
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
    model.eval()
    plain = to_torch(model).eval()
    assert not any(isinstance(x, DepthwiseSeparableConv2d) for x in plain.modules())
    unfused = builder(fused=False).to(dtype)
    unfused.load_state_dict(model.state_dict())  # same keys: the reference from the same weights
    unfused.eval()
    x = torch.randn(5, 1, 8, 8, generator=gen, dtype=dtype)
    with torch.no_grad():
        seps = [m for m in model.modules() if isinstance(m, DepthwiseSeparableConv2d)]
        assert all(s.path_for(torch.empty(1, s.in_channels, 4, 4, dtype=dtype))[0] == "fused" for s in seps)
        out = model(x)
        tol = 1e-10 if dtype == torch.float64 else 1e-4
        scale = out.abs().max().item()
        torch.testing.assert_close(out, plain(x), rtol=tol, atol=tol * scale)
        torch.testing.assert_close(out, unfused(x), rtol=tol, atol=tol * scale)


def test_digits_model_trains():
    """Training mode runs the torch path with batch-statistics BN: it can fit a batch of digits."""
    train, _ = digits(images=True)
    torch.manual_seed(0)
    model = mobilenet_v2_digits(width_mult=0.5).train()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x, y = train.x[:32], train.y[:32]
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("kwargs, match", [(dict(width_mult=0), "width_mult"), (dict(num_classes=0), "num_classes"),
                                           (dict(input_size=-1), "input_size"), (dict(fused="x"), "fused")])
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mobilenet_v2(**kwargs)
