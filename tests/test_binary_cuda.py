"""CUDA implementation of the binary ops (bitpack, bitunpack, binary_linear, binary_conv2d) against float64 references.

Skipped without a CUDA device. References come from tests/binary_reference.py (written from the contract, never
from the kernels); weights are packed there too, on the CPU, so no CUDA op checks itself. Every XNOR case runs on
every kernel the device has, forced through SPARSECOMP_BINARY_CUDA_KERNEL (simt; mma_wide and mma_tall, the two
b1 tensor-core tile shapes, on sm_80+), on the same inputs.

Inputs contain exact zeros of both signs (sign(+-0) = +1) in x and in W; sizes are awkward on purpose: channels
per group 1, 31, 33, 64, 65, 129 (word tails, one and several words), odd H != W, output positions that end
mid-tile, output channels per group 3, 8 and 70 (one and two column tiles of 64).

Tolerances:
- XNOR: the +-1 dot is an integer computed exactly (int32 popcounts); the output is fl_T(fma_fp32(alpha, dot, bias))
  with alpha, bias exact in fp32, so |out - ref| <= u32 |ref| + u_T (1 + u32) |ref| + s_T (s_T: the subnormal
  spacing of T, for underflow). tol = 2 (u32 + u_T) |ref| + s_T. With alpha = 1 and no bias the output must be
  exactly the float64 integer conv rounded once to T (exact for float32).
- BinaryConnect: fp32 sums of n = taps * Cg signed inputs (no products), then one fma and one rounding to T:
  tol = 8 sqrt(n) u32 (l2 + |ref|) + 2 u_T |ref| + s_T, l2 the 2-norm of the terms (the random-walk bound of
  conftest.assert_within_bound for the fp32 sum, plus the final rounding).
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from binary_reference import (
    binary_conv2d_accumulator,
    binary_conv2d_l2,
    binary_conv2d_reference,
    binary_linear_accumulator,
    binary_linear_reference,
    pack_conv_weight,
    pack_reference,
    sign_pm1,
    unpack_reference,
    words,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
U32 = 2.0**-24
ENV = "SPARSECOMP_BINARY_CUDA_KERNEL"
GROUP_CHANNELS = [1, 31, 33, 64, 65, 129]
KERNEL_SIZES = [1, 3, 5]
# (stride, dilation, groups, padding, batch): the full cross product, run inside each test
CONV_COMBOS = list(itertools.product((1, 2), (1, 2), (1, 2), (0, 1, 2), (1, 3)))
OUT_PER_GROUP = [3, 8, 70]


@pytest.fixture(scope="module", autouse=True)
def native():
    """Imports the package only when a GPU is there, and needs its CUDA build."""
    import sparsecomp  # a GPU machine must be able to import it: no importorskip

    if not sparsecomp._C.built_with_cuda():
        pytest.skip("sparsecomp was built without CUDA")
    return sparsecomp


def xnor_kernels() -> list[str]:
    major, _ = torch.cuda.get_device_capability()
    return ["simt"] + (["mma_wide", "mma_tall"] if major >= 8 else [])


def unit_roundoff(dtype) -> float:
    return torch.finfo(dtype).eps / 2


def subnormal_spacing(dtype) -> float:
    fi = torch.finfo(dtype)
    return fi.smallest_normal * fi.eps


def with_zeros(shape, gen, dtype, device="cuda", scale=1.0) -> torch.Tensor:
    """N(0, scale^2) values in dtype with ~5% exact +0.0 and ~5% exact -0.0."""
    v = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    r = torch.rand(shape, generator=gen)
    v[r < 0.05] = 0.0
    v[(r >= 0.05) & (r < 0.10)] = -0.0
    return v.to(dtype).to(device)


def channel_params(out_channels, dtype, gen, with_bias=True):
    alpha = (torch.rand(out_channels, generator=gen, dtype=torch.float64) + 0.5).to(dtype).cuda()
    bias = torch.randn(out_channels, generator=gen, dtype=torch.float64).to(dtype).cuda() if with_bias else None
    return alpha, bias


def assert_xnor_close(out, ref, dtype, what):
    assert out.dtype == dtype, f"{what}: dtype {out.dtype} != {dtype}"
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    tol = 2 * (U32 + unit_roundoff(dtype)) * ref.abs() + subnormal_spacing(dtype)
    _assert_within(out, ref, tol, what)


def assert_connect_close(out, ref, l2, n_terms, dtype, what):
    assert out.dtype == dtype and out.shape == ref.shape, f"{what}: {out.dtype} {tuple(out.shape)}"
    tol = 8 * math.sqrt(max(n_terms, 1)) * U32 * (l2 + ref.abs()) + 2 * unit_roundoff(dtype) * ref.abs()
    _assert_within(out, ref, tol + subnormal_spacing(dtype), what)


def _assert_within(out, ref, tol, what):
    err = (out.double() - ref).abs()
    bad = ~(err <= tol)  # NaN in out counts as bad
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.numel()} elements off; first at {idx}: got {out[idx].item()!r}, "
            f"expected {ref[idx].item()!r}, tol {tol[idx].item():.3e}")


def run_kernels(monkeypatch, kernels, fn):
    """fn() under each forced XNOR kernel: {kernel: result}."""
    results = {}
    for k in kernels:
        monkeypatch.setenv(ENV, k)
        results[k] = fn()
    monkeypatch.delenv(ENV)
    return results


def conv_case(cg, k, combo_index, combo, dtype, gen):
    """Inputs of one conv case, or None when the output would be empty."""
    stride, dilation, groups, padding, n = combo
    h, w = 9, 11
    if (h + 2 * padding - dilation * (k - 1) - 1) < 0 or (w + 2 * padding - dilation * (k - 1) - 1) < 0:
        return None
    og = OUT_PER_GROUP[combo_index % len(OUT_PER_GROUP)]
    c, o = cg * groups, og * groups
    x = with_zeros((n, c, h, w), gen, dtype)
    layout = combo_index % 3  # NCHW, channels_last, non-contiguous (every other column of a wider tensor)
    if layout == 1:
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == 2:
        wide = with_zeros((n, c, h, 2 * w), gen, dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
    wt = with_zeros((o, cg, k, k), gen, torch.float32, device="cpu")
    alpha, bias = channel_params(o, dtype, gen, with_bias=combo_index % 2 == 0)
    return dict(x=x, w=wt, w_bits=pack_conv_weight(wt).cuda(), alpha=alpha, bias=bias, c=c, k=k, stride=stride,
                padding=padding, dilation=dilation, groups=groups,
                padding_mode="ones" if (padding > 0 and combo_index % 4 == 1) else "zeros",
                activation="relu" if combo_index % 5 == 2 else "none")


def call_conv(case, binarize=True, alpha=None, bias="case", activation=None):
    return torch.ops.sparsecomp.binary_conv2d(
        case["x"], case["w_bits"], case["alpha"] if alpha is None else alpha,
        case["bias"] if isinstance(bias, str) else bias, case["c"], [case["k"]] * 2, [case["stride"]] * 2,
        [case["padding"]] * 2, [case["dilation"]] * 2, case["groups"], binarize,
        case["padding_mode"] if binarize else "zeros", case["activation"] if activation is None else activation)


def conv_args(case):
    return ([case["stride"]] * 2, [case["padding"]] * 2, [case["dilation"]] * 2, case["groups"])


# --------------------------------------------------------------------------------------------------- bitpack


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("size", [1, 31, 32, 33, 63, 64, 65, 127, 128, 129, 200])
def test_bitpack_matches_reference(dtype, size, gen):
    for lead in [(), (3,), (2, 5)]:
        x = with_zeros((*lead, size), gen, dtype)
        x.view(-1)[:: max(1, x.numel() // 3)] = float("nan")  # NaN -> -1
        if x.numel() > 1:
            x.view(-1)[1] = float("inf")
            x.view(-1)[-1] = float("-inf")
        got = torch.ops.sparsecomp.bitpack(x)
        assert got.dtype == torch.int64 and got.is_contiguous() and got.device == x.device
        assert torch.equal(got.cpu(), pack_reference(x.cpu())), f"lead={lead}"
        # round trip: +1/-1 of the sign, exactly
        back = torch.ops.sparsecomp.bitunpack(got, size)
        assert back.dtype == torch.float32 and torch.equal(back, sign_pm1(x).float())


@pytest.mark.parametrize("dtype", DTYPES)
def test_bitpack_non_contiguous_and_empty(dtype, gen):
    base = with_zeros((70, 9), gen, dtype)
    x = base.t()  # [9, 70], stride (1, 9)
    assert torch.equal(torch.ops.sparsecomp.bitpack(x).cpu(), pack_reference(x.cpu()))
    assert torch.ops.sparsecomp.bitpack(torch.empty(0, 5, dtype=dtype, device="cuda")).shape == (0, 1)
    assert torch.ops.sparsecomp.bitpack(torch.empty(4, 0, dtype=dtype, device="cuda")).shape == (4, 0)


@pytest.mark.parametrize("size", [1, 63, 64, 65, 130])
def test_bitunpack_ignores_tail_bits(size, gen):
    packed = torch.randint(-(2**63), 2**63 - 1, (3, words(size)), generator=gen, dtype=torch.int64)
    got = torch.ops.sparsecomp.bitunpack(packed.cuda(), size)
    assert torch.equal(got.cpu().double(), unpack_reference(packed, size))


# ------------------------------------------------------------------------------------------------ binary_conv2d


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", KERNEL_SIZES)
@pytest.mark.parametrize("cg", GROUP_CHANNELS)
def test_xnor_conv_matches_float64(cg, k, dtype, gen, monkeypatch):
    kernels = xnor_kernels()
    for ci, combo in enumerate(CONV_COMBOS):
        case = conv_case(cg, k, ci, combo, dtype, gen)
        if case is None:
            continue
        what = (f"Cg={cg} k={k} {dtype} stride,dil,groups,pad,N={combo} mode={case['padding_mode']} "
                f"act={case['activation']} layout={ci % 3}")
        acc = binary_conv2d_accumulator(case["x"], case["w"].cuda(), *conv_args(case),
                                        padding_mode=case["padding_mode"])
        ref = binary_conv2d_reference(case["x"], case["w"].cuda(), case["alpha"], case["bias"], *conv_args(case),
                                      padding_mode=case["padding_mode"], activation=case["activation"])
        ones = torch.ones_like(case["alpha"])
        results = run_kernels(monkeypatch, kernels,
                              lambda: (call_conv(case), call_conv(case, alpha=ones, bias=None, activation="none")))
        for kern, (out, raw) in results.items():
            # the integer conv itself, exactly (rounded once to the output dtype)
            assert torch.equal(raw, acc.to(dtype)), f"{what} kernel={kern}: integer conv differs"
            assert_xnor_close(out, ref, dtype, f"{what} kernel={kern}")
            expect_cl = ci % 3 == 1 and not case["x"].is_contiguous()
            assert out.is_contiguous(memory_format=torch.channels_last if expect_cl else torch.contiguous_format)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("cg", GROUP_CHANNELS)
def test_binaryconnect_conv_matches_float64(cg, k, dtype, gen):
    for ci, combo in enumerate(CONV_COMBOS):
        case = conv_case(cg, k, ci, combo, dtype, gen)
        if case is None:
            continue
        what = f"Cg={cg} k={k} {dtype} stride,dil,groups,pad,N={combo} layout={ci % 3}"
        w = case["w"].cuda()
        ref = binary_conv2d_reference(case["x"], w, case["alpha"], case["bias"], *conv_args(case),
                                      binarize_input=False, activation=case["activation"])
        l2 = binary_conv2d_l2(case["x"], w, case["alpha"], case["bias"], *conv_args(case))
        out = call_conv(case, binarize=False)
        assert_connect_close(out, ref, l2, k * k * cg, dtype, what)


@pytest.mark.parametrize("groups", [1, 4])
def test_xnor_conv_many_tiles(groups, gen, monkeypatch):
    """Several row and column tiles and many K stages: 2 x 256 x 15 x 17 input, 3x3, 192 outputs per group."""
    n, cg, og, h, w = 2, 65 if groups > 1 else 256, 192, 15, 17
    x = with_zeros((n, cg * groups, h, w), gen, torch.float16)
    wt = with_zeros((og * groups, cg, 3, 3), gen, torch.float32, device="cpu")
    alpha, bias = channel_params(og * groups, torch.float16, gen)
    bits = pack_conv_weight(wt).cuda()
    ref = binary_conv2d_reference(x, wt.cuda(), alpha, bias, (1, 1), (1, 1), (1, 1), groups)
    results = run_kernels(monkeypatch, xnor_kernels(), lambda: torch.ops.sparsecomp.binary_conv2d(
        x, bits, alpha, bias, cg * groups, [3, 3], [1, 1], [1, 1], [1, 1], groups))
    for kern, out in results.items():
        assert_xnor_close(out, ref, torch.float16, f"groups={groups} kernel={kern}")


def test_xnor_conv_memory_formats_agree_bitwise(gen, monkeypatch):
    """NCHW, channels_last and a strided view are packed by different kernels; the results must be identical."""
    x = with_zeros((3, 33, 13, 10), gen, torch.float32)
    wt = with_zeros((20, 33, 3, 3), gen, torch.float32, device="cpu")
    alpha, bias = channel_params(20, torch.float32, gen)
    bits = pack_conv_weight(wt).cuda()

    def run(inp):
        return torch.ops.sparsecomp.binary_conv2d(inp, bits, alpha, bias, 33, [3, 3], [2, 1], [1, 2], [1, 1], 1)

    for kern in xnor_kernels():
        monkeypatch.setenv(ENV, kern)
        y = run(x)
        y_cl = run(x.contiguous(memory_format=torch.channels_last))
        y_strided = run(torch.stack([x, -x], dim=-1)[..., 0])  # x's values, element strides doubled
        assert y_cl.is_contiguous(memory_format=torch.channels_last) and not y_cl.is_contiguous()
        assert torch.equal(y, y_cl) and torch.equal(y, y_strided), kern


def test_xnor_conv_nan_input_is_minus_one(gen, monkeypatch):
    x = with_zeros((1, 40, 6, 7), gen, torch.float32)
    x[0, ::3, 2, :] = float("nan")
    wt = with_zeros((5, 40, 3, 3), gen, torch.float32, device="cpu")
    alpha = torch.ones(5, device="cuda")
    ref = binary_conv2d_accumulator(x, wt.cuda(), (1, 1), (1, 1), (1, 1), 1)
    for kern, out in run_kernels(monkeypatch, xnor_kernels(), lambda: torch.ops.sparsecomp.binary_conv2d(
            x, pack_conv_weight(wt).cuda(), alpha, None, 40, [3, 3], [1, 1], [1, 1], [1, 1], 1)).items():
        assert torch.equal(out.double(), ref), kern


def test_weight_tail_bits_are_ignored(gen, monkeypatch):
    """The CPU binding rejects set tail bits; CUDA cannot check them without a copy back, so its kernels mask them
    off: the results must be those of the clean weight."""
    x = with_zeros((2, 66, 7, 8), gen, torch.float32)
    clean = pack_conv_weight(with_zeros((6, 33, 3, 3), gen, torch.float32, device="cpu")).cuda()
    dirty = clean | ~((1 << 33) - 1)  # every bit past channel 33 of the (single) word of each tap
    alpha, bias = channel_params(6, torch.float32, gen)
    for binarize, mode in [(True, "zeros"), (True, "ones"), (False, "zeros")]:
        def run(bits):
            return torch.ops.sparsecomp.binary_conv2d(x, bits, alpha, bias, 66, [3, 3], [1, 1], [1, 1], [1, 1], 2,
                                                      binarize, mode)
        for kern in xnor_kernels():
            monkeypatch.setenv(ENV, kern)
            assert torch.equal(run(clean), run(dirty)), f"conv binarize={binarize} mode={mode} kernel={kern}"
    xl = with_zeros((70, 70), gen, torch.float32)
    clean = pack_reference(with_zeros((5, 70), gen, torch.float32, device="cpu")).cuda()
    dirty = clean.clone()
    dirty[:, -1] |= ~((1 << 6) - 1)  # 70 = 64 + 6 valid bits in the last word
    for binarize in (True, False):
        for kern in xnor_kernels():
            monkeypatch.setenv(ENV, kern)
            a = torch.ops.sparsecomp.binary_linear(xl, clean, alpha[:5], None, 70, binarize)
            assert torch.equal(a, torch.ops.sparsecomp.binary_linear(xl, dirty, alpha[:5], None, 70, binarize)), kern


def test_empty_batch_and_outputs():
    x = torch.empty(0, 8, 5, 5, device="cuda")
    bits = torch.zeros(4, 3, 3, 1, dtype=torch.int64, device="cuda")
    y = torch.ops.sparsecomp.binary_conv2d(x, bits, torch.ones(4, device="cuda"), None, 8, [3, 3], [1, 1], [0, 0],
                                           [1, 1], 1)
    assert y.shape == (0, 4, 3, 3)
    y = torch.ops.sparsecomp.binary_linear(torch.empty(0, 70, device="cuda"), torch.zeros(3, 2, dtype=torch.int64,
                                           device="cuda"), torch.ones(3, device="cuda"), None, 70)
    assert y.shape == (0, 3)
    y = torch.ops.sparsecomp.binary_linear(torch.randn(5, 70, device="cuda"), torch.zeros(0, 2, dtype=torch.int64,
                                           device="cuda"), torch.ones(0, device="cuda"), None, 70)
    assert y.shape == (5, 0)


# ------------------------------------------------------------------------------------------------ binary_linear


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_features", [1, 31, 64, 65, 129, 1000])
def test_binary_linear_matches_float64(in_features, dtype, gen, monkeypatch):
    kernels = xnor_kernels() + ["auto"]
    for m, o in [(1, 7), (3, 64), (64, 1), (130, 130), (257, 70)]:
        x = with_zeros((m, in_features), gen, dtype)
        if m % 2:  # a strided x (every other element of a wider tensor)
            x = torch.stack([x, -x], dim=-1)[..., 0]
        w = with_zeros((o, in_features), gen, torch.float32, device="cpu")
        bits = pack_reference(w).cuda()
        alpha, bias = channel_params(o, dtype, gen, with_bias=m != 64)
        for activation in ("none", "relu"):
            what = f"M={m} K={in_features} O={o} {dtype} act={activation}"
            ref = binary_linear_reference(x, w.cuda(), alpha, bias, activation=activation)
            results = run_kernels(monkeypatch, kernels, lambda: torch.ops.sparsecomp.binary_linear(
                x, bits, alpha, bias, in_features, True, activation))
            for kern, out in results.items():
                assert_xnor_close(out, ref, dtype, f"{what} kernel={kern}")
            # BinaryConnect: real activations
            ref = binary_linear_reference(x, w.cuda(), alpha, bias, binarize_input=False, activation=activation)
            l2 = ((x.double().square() @ torch.ones(in_features, o, dtype=torch.float64, device="cuda"))
                  * alpha.double().square() + (0 if bias is None else bias.double().square())).sqrt()
            out = torch.ops.sparsecomp.binary_linear(x, bits, alpha, bias, in_features, False, activation)
            assert_connect_close(out, ref, l2, in_features, dtype, f"{what} BinaryConnect")


def test_binary_linear_integer_dot_exact(gen, monkeypatch):
    x = with_zeros((77, 300), gen, torch.float32)
    w = with_zeros((90, 300), gen, torch.float32, device="cpu")
    acc = binary_linear_accumulator(x, w.cuda())
    for kern, out in run_kernels(monkeypatch, xnor_kernels(), lambda: torch.ops.sparsecomp.binary_linear(
            x, pack_reference(w).cuda(), torch.ones(90, device="cuda"), None, 300)).items():
        assert torch.equal(out.double(), acc), kern


def test_side_stream(gen):
    x = with_zeros((70, 100), gen, torch.float32)
    w = with_zeros((33, 100), gen, torch.float32, device="cpu")
    alpha, bias = channel_params(33, torch.float32, gen)
    bits = pack_reference(w).cuda()
    ref = binary_linear_reference(x, w.cuda(), alpha, bias)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        out = torch.ops.sparsecomp.binary_linear(x, bits, alpha, bias, 100)
    s.synchronize()
    assert_xnor_close(out, ref, torch.float32, "side stream")


# -------------------------------------------------------------------------------------------- CPU agreement


def _has_cpu_kernel(name: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"sparsecomp::{name}", "CPU")


def test_cuda_matches_cpu(gen, monkeypatch):
    """float32 on both backends: XNOR within 2 roundings of each other, BinaryConnect within its bound."""
    for name in ("bitpack", "binary_linear", "binary_conv2d"):
        if not _has_cpu_kernel(name):
            pytest.skip(f"no CPU kernel for sparsecomp::{name} in this build")
    x = with_zeros((3, 66, 11, 9), gen, torch.float32)
    assert torch.equal(torch.ops.sparsecomp.bitpack(x).cpu(), torch.ops.sparsecomp.bitpack(x.cpu()))
    wt = with_zeros((12, 33, 3, 3), gen, torch.float32, device="cpu")
    alpha, bias = channel_params(12, torch.float32, gen)
    bits = pack_conv_weight(wt)
    for binarize, mode in [(True, "zeros"), (True, "ones"), (False, "zeros")]:
        args = (66, [3, 3], [2, 1], [1, 2], [1, 2], 2, binarize, mode, "relu")
        cpu = torch.ops.sparsecomp.binary_conv2d(x.cpu(), bits, alpha.cpu(), bias.cpu(), *args)
        for kern, out in run_kernels(monkeypatch, xnor_kernels(), lambda: torch.ops.sparsecomp.binary_conv2d(
                x, bits.cuda(), alpha, bias, *args)).items():
            if binarize:
                tol = 4 * U32 * cpu.double().abs() + subnormal_spacing(torch.float32)
            else:
                l2 = binary_conv2d_l2(x.cpu(), wt, alpha.cpu(), bias.cpu(), (2, 1), (1, 2), (1, 2), 2)
                tol = 16 * math.sqrt(9 * 33) * U32 * (l2 + cpu.double().abs())
            _assert_within(out.cpu(), cpu.double(), tol, f"conv binarize={binarize} mode={mode} kernel={kern}")
    xl = with_zeros((5, 130), gen, torch.float32)
    wl = with_zeros((9, 130), gen, torch.float32, device="cpu")
    cpu = torch.ops.sparsecomp.binary_linear(xl.cpu(), pack_reference(wl), alpha[:9].cpu(), None, 130)
    out = torch.ops.sparsecomp.binary_linear(xl, pack_reference(wl).cuda(), alpha[:9], None, 130)
    _assert_within(out.cpu(), cpu.double(), 4 * U32 * cpu.double().abs(), "linear")


# ------------------------------------------------------------------------------------------- opcheck, errors


def test_opcheck(gen):
    ops = torch.ops.sparsecomp
    for dtype in (torch.float32, torch.float16):
        x = with_zeros((2, 10, 7, 6), gen, dtype)
        bits = pack_conv_weight(with_zeros((4, 5, 3, 3), gen, torch.float32, device="cpu")).cuda()
        alpha, bias = channel_params(4, dtype, gen)
        for inp in (x, x.contiguous(memory_format=torch.channels_last)):
            for binarize in (True, False):
                torch.library.opcheck(ops.binary_conv2d.default, (inp, bits, alpha, bias, 10, [3, 3], [1, 2], [1, 1],
                                                                  [1, 1], 2, binarize, "zeros", "relu"))
        torch.library.opcheck(ops.binary_conv2d.default, (x, bits, alpha, None, 10, [3, 3], [1, 1], [1, 1], [1, 1],
                                                          2, True, "ones", "none"))
        xl = with_zeros((5, 70), gen, dtype)
        wl = pack_reference(with_zeros((3, 70), gen, torch.float32, device="cpu")).cuda()
        for binarize in (True, False):
            torch.library.opcheck(ops.binary_linear.default, (xl, wl, alpha[:3], bias[:3], 70, binarize, "none"))
        torch.library.opcheck(ops.bitpack.default, (xl,))
    torch.library.opcheck(ops.bitunpack.default, (wl, 70))


def test_error_messages(gen, monkeypatch):
    ops = torch.ops.sparsecomp
    x = with_zeros((4, 70), gen, torch.float32)
    bits = torch.zeros(3, 2, dtype=torch.int64, device="cuda")
    alpha = torch.ones(3, device="cuda")
    with pytest.raises(RuntimeError, match=r"x must be float32, float16 or bfloat16"):
        ops.binary_linear(x.double(), bits, alpha.double(), None, 70)
    with pytest.raises(RuntimeError, match=r"alpha is on cpu"):
        ops.binary_linear(x, bits, alpha.cpu(), None, 70)
    with pytest.raises(RuntimeError, match=r"weight_bits must have shape"):
        ops.binary_linear(x, bits[:, :1], alpha, None, 70)
    with pytest.raises(RuntimeError, match=r"bias dtype"):
        ops.binary_linear(x, bits, alpha, alpha.half(), 70)
    with pytest.raises(RuntimeError, match=r"activation must be"):
        ops.binary_linear(x, bits, alpha, None, 70, True, "gelu")
    xc = with_zeros((1, 8, 5, 5), gen, torch.float32)
    cbits = torch.zeros(3, 3, 3, 1, dtype=torch.int64, device="cuda")
    conv = lambda *a: ops.binary_conv2d(xc, cbits, alpha, None, 8, [3, 3], [1, 1], [1, 1], [1, 1], 1, *a)  # noqa: E731
    with pytest.raises(RuntimeError, match=r"padding_mode='ones' needs binarize_input"):
        conv(False, "ones", "none")
    with pytest.raises(RuntimeError, match=r"padding_mode must be"):
        conv(True, "reflect", "none")
    monkeypatch.setenv(ENV, "fast")
    with pytest.raises(RuntimeError, match=r"SPARSECOMP_BINARY_CUDA_KERNEL must be"):
        conv(True, "zeros", "none")
    monkeypatch.delenv(ENV)
    with pytest.raises(RuntimeError, match=r"bitpack: on CUDA x must be"):
        ops.bitpack(torch.ones(3, 4, dtype=torch.int32, device="cuda"))
    with pytest.raises(RuntimeError, match=r"bitunpack: size="):
        ops.bitunpack(bits, 200)
