"""CUDA kernel of dwpw_conv2d (csrc/cuda/kernels/dwpw.cuh) against a float64 CPU reference (conv2d(groups=C) ->
scale/shift -> act -> conv2d 1x1 -> act) in fp32, fp16 and bf16. Skipped without a GPU or without the CUDA
kernel (an extension built without CUDA)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sparsecomp  # noqa: F401  registers torch.ops.sparsecomp
from sparsecomp.nn import DepthwiseSeparableConv2d


def _has_cuda_kernel() -> bool:
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key("sparsecomp::dwpw_conv2d", "CUDA"))
    except RuntimeError:
        return False


pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.skipif(not _has_cuda_kernel(), reason="sparsecomp was built without the CUDA dwpw_conv2d kernel"),
]

OP = torch.ops.sparsecomp.dwpw_conv2d
ACTS = {"none": lambda t: t, "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def reference(x, dw, scale, shift, mid_act, pw, bias, act, stride, padding, absolute=False):
    """float64 on the CPU; ``absolute``: sums of absolute values without activations (scale of rounding errors)."""
    d = (lambda t: None if t is None else t.detach().double().cpu().abs()) if absolute else \
        (lambda t: None if t is None else t.detach().double().cpu())
    y = F.conv2d(d(x), d(dw), None, stride, padding, 1, x.shape[1])
    if scale is not None:
        y = y * d(scale).view(1, -1, 1, 1)
    if shift is not None:
        y = y + d(shift).view(1, -1, 1, 1)
    y = y if absolute else ACTS[mid_act](y)
    y = F.conv2d(y, d(pw).reshape(pw.shape[0], pw.shape[1], 1, 1), d(bias))
    return y if absolute else ACTS[act](y)


def check(out, args, dtype):
    ref = reference(*args)
    assert out.dtype == dtype and out.shape == ref.shape
    out64 = out.double().cpu()
    assert torch.isfinite(out64).all()
    x, dw, pw = args[0], args[1], args[5]
    n = dw.shape[-1] ** 2 + pw.shape[1] + 3
    u32, ut = torch.finfo(torch.float32).eps / 2, torch.finfo(dtype).eps / 2
    # fp32 accumulation error (random-walk bound, see tests/conftest.py) + one rounding of the output to dtype.
    tol = 16 * n ** 0.5 * u32 * reference(*args, absolute=True) + 2 * ut * ref.abs() + 1e-30
    err = (out64 - ref).abs()
    assert bool((err <= tol).all()), f"max err/tol = {(err / tol).max().item():.3g} at {(err / tol).argmax().item()}"


def make_args(n, c, o, h, w, k, stride, padding, mid_act, act, dtype, gen, scale=True, shift=True, bias=True,
              pw_2d=False):
    dev = "cuda"
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float32).to(dev, dtype)  # noqa: E731
    x = r(n, c, h, w) * 3
    dw = r(c, 1, k, k)
    pw = r(o, c) if pw_2d else r(o, c, 1, 1)
    return [x, dw, r(c) if scale else None, r(c) if shift else None, mid_act, pw, r(o) if bias else None, act,
            list(stride), list(padding)]


# (n, c, o, h, w, k, stride, padding, mid_act, act): odd sizes, channel counts across the 16-channel chunk and
# the 64-output block, images smaller than / not multiple of the 8x8 tile, every kernel size and activation.
CASES = [
    (1, 1, 1, 1, 1, 3, (1, 1), (1, 1), "none", "none"),
    (2, 3, 5, 5, 5, 3, (2, 2), (1, 1), "relu", "relu"),
    (1, 17, 65, 33, 9, 3, (1, 1), (1, 1), "relu6", "hardswish"),
    (3, 32, 24, 14, 14, 5, (2, 2), (2, 2), "hardswish", "none"),
    (2, 40, 130, 7, 7, 7, (1, 1), (3, 3), "relu", "relu6"),
    (1, 16, 64, 12, 17, 7, (2, 1), (3, 0), "none", "relu"),
    (2, 144, 24, 28, 28, 3, (1, 1), (1, 1), "relu6", "none"),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_float64_reference(case, dtype, gen):
    n, c, o, h, w, k, stride, padding, mid_act, act = CASES[case]
    args = make_args(n, c, o, h, w, k, stride, padding, mid_act, act, dtype, gen)
    check(OP(*args), args, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_layouts(dtype, layout, gen):
    args = make_args(2, 24, 40, 11, 26, 3, (1, 1), (1, 1), "relu", "none", dtype, gen)
    x = args[0]
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    else:
        x = x[..., ::2]
    args[0] = x
    out = OP(*args)
    check(out, args, dtype)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_optional_operands_and_2d_pointwise_weight(gen):
    args = make_args(2, 9, 11, 6, 6, 5, (1, 1), (2, 2), "relu", "relu", torch.float32, gen, scale=False,
                     shift=False, bias=False, pw_2d=True)
    check(OP(*args), args, torch.float32)
    args = make_args(2, 9, 11, 6, 6, 5, (1, 1), (2, 2), "relu", "relu", torch.float32, gen, scale=False)
    check(OP(*args), args, torch.float32)


def test_empty_batch(gen):
    args = make_args(1, 4, 6, 5, 5, 3, (1, 1), (1, 1), "none", "none", torch.float32, gen)
    args[0] = args[0][:0]
    assert OP(*args).shape == (0, 6, 5, 5)


def test_rejects_float64_and_mixed_devices(gen):
    args = make_args(1, 4, 6, 5, 5, 3, (1, 1), (1, 1), "none", "none", torch.float32, gen)
    a64 = [t.double() if isinstance(t, torch.Tensor) else t for t in args]
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        OP(*a64)
    mixed = list(args)
    mixed[5] = mixed[5].cpu()
    with pytest.raises(RuntimeError, match="pw_weight"):
        OP(*mixed)


def test_opcheck(gen):
    args = make_args(2, 6, 10, 7, 7, 3, (2, 2), (1, 1), "relu6", "hardswish", torch.float32, gen)
    torch.library.opcheck(OP.default, tuple(args))


@pytest.mark.parametrize("dtype", DTYPES)
def test_module_fused_true_on_cuda(dtype, gen):
    m = DepthwiseSeparableConv2d(24, 40, 3, 2, 1, mid_activation="relu6", activation="relu", bn=True, pw_bn=True,
                                 fused=True).to("cuda", dtype).eval()
    x = torch.randn(2, 24, 15, 15, generator=gen).to("cuda", dtype)
    with torch.no_grad():
        assert m.path_for(x)[0] == "fused"
        out = m(x)
        m.fused = False
        ref = m(x)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol * ref.float().abs().max().item())
