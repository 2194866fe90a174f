"""torch.ops.sparsecomp bitpack / bitunpack / binary_linear / binary_conv2d on CPU, against float64 references.

The references (tests/binary_reference.py) follow the contract only. Weights are packed by the reference
packer, not by the op's bitpack, so a layout bug in bitpack cannot hide one in the kernels (and vice versa).

Conv grid of issue 3: C_in (per group) x kernel x stride x dilation x groups x padding x N x odd H/W. The full
product is ~10^5 cases, so a deterministic pseudo-random sample walks every axis through a fresh shuffle of
its values (every value of every axis appears, in varied combinations), plus hand-written edge cases. Every
conv/linear check runs under each CPU code path (``cpu_isa``).

"Exact": with alpha = 1 and bias = 0 the output must equal the integer accumulator bit for bit. With random
alpha and bias it must be within 1e-5 of |alpha * acc| + |bias| (the float64 value's own terms).
BinaryConnect (binarize_input=False) sums real activations in float32: checked with the dot-product bound
of conftest.assert_within_bound.
"""
from __future__ import annotations

import functools
import random
import zlib
from dataclasses import dataclass

import pytest
import torch

from binary_reference import (
    binary_conv2d_accumulator,
    binary_conv2d_l2,
    binary_linear_accumulator,
    pack_conv_weight,
    pack_reference,
    pack_reference_python,
    sign_pm1,
    unpack_reference,
    words,
)
from conftest import assert_within_bound

bitpack = torch.ops.sparsecomp.bitpack
bitunpack = torch.ops.sparsecomp.bitunpack
binary_linear = torch.ops.sparsecomp.binary_linear
binary_conv2d = torch.ops.sparsecomp.binary_conv2d

RTOL = 1e-5
NAN = float("nan")
INF = float("inf")


# ----------------------------------------------------------------------------------------------- helpers
def with_zeros(t: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """``t`` with a random ``fraction`` of its entries set to exactly 0.0 (sign +1, unlike torch.sign)."""
    t = t.clone()
    t[torch.rand(t.shape, generator=gen) < fraction] = 0.0
    return t


def neg_nan() -> float:
    """A NaN with its sign bit set (a kernel reading the sign bit would call it -1 too, but +NaN it would not)."""
    return torch.tensor([NAN]).neg().item()


def first_index(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def assert_exact(out: torch.Tensor, acc: torch.Tensor, what: str) -> None:
    """out (float32) equals the float64 integer accumulator exactly."""
    assert out.dtype == torch.float32, f"{what}: dtype {out.dtype}"
    assert tuple(out.shape) == tuple(acc.shape), f"{what}: shape {tuple(out.shape)} != {tuple(acc.shape)}"
    bad = out.double() != acc
    if bool(bad.any()):
        i = first_index(bad)
        raise AssertionError(f"{what}: {int(bad.sum())}/{bad.numel()} elements differ from the integer reference; "
                             f"first at {i}: got {out[i].item()!r}, expected {acc[i].item()!r}")


def assert_scaled(out, acc, alpha, bias, activation, what, channel_dim=1) -> None:
    """out ~= act(alpha * acc + bias) within RTOL * (|alpha * acc| + |bias|)."""
    shape = [1] * acc.dim()
    shape[channel_dim] = -1
    scaled = acc * alpha.double().reshape(shape)
    b = bias.double().reshape(shape) if bias is not None else torch.zeros(shape, dtype=torch.float64)
    ref = scaled + b
    if activation == "relu":
        ref = ref.clamp_min(0)
    assert out.dtype == torch.float32 and tuple(out.shape) == tuple(ref.shape), f"{what}: {out.dtype} {out.shape}"
    tol = RTOL * (scaled.abs() + b.abs())
    err = (out.double() - ref).abs()
    bad = ~(err <= tol)  # NaN in out is bad
    if bool(bad.any()):
        i = first_index(bad)
        raise AssertionError(f"{what}: {int(bad.sum())}/{bad.numel()} elements off; first at {i}: got "
                             f"{out[i].item()!r}, expected {ref[i].item()!r} (acc {acc[i].item()!r}), "
                             f"tol {tol[i].item():.3g}")


def scaled_l2_linear(x, alpha, bias):
    """2-norm of the terms alpha[o] * x[m, k] * (+-1) (+ bias[o]) of each BinaryConnect linear output."""
    sq = x.double().square().sum(1, keepdim=True) * alpha.double().square()
    if bias is not None:
        sq = sq + bias.double().square()
    return sq.sqrt()


def channels_last_expected(x: torch.Tensor) -> bool:
    """The contract's output memory-format rule."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


# ================================================================================== bitpack / bitunpack
SPECIALS = [0.0, -0.0, INF, -INF, NAN, -1.0, 1.0, 1e-45, -1e-45, -3.0]
SPECIAL_SIGNS = [1, 1, 1, -1, -1, -1, 1, 1, -1, -1]


def test_reference_packer_matches_python_ints(gen):
    """The torch reference packer agrees with a one-element-at-a-time Python-int packer (tests the test)."""
    for c in (1, 63, 64, 65, 130):
        x = with_zeros(torch.randn(3, c, generator=gen), 0.2, gen)
        x[0, 0] = neg_nan()
        expected = torch.tensor([pack_reference_python(row.tolist()) for row in x], dtype=torch.int64)
        assert torch.equal(pack_reference(x), expected)
        assert torch.equal(unpack_reference(expected, c), sign_pm1(x))


def test_bitpack_known_words(cpu_isa):
    """Literal expectations, independent of any packer: all-positive 70 -> [-1 (64 ones), 0b111111]."""
    assert bitpack(torch.ones(70)).tolist() == [-1, 63]
    assert bitpack(-torch.ones(70)).tolist() == [0, 0]
    x = -torch.ones(130)
    x[[0, 5, 63, 64, 129]] = 2.0
    assert bitpack(x).tolist() == [1 | (1 << 5) | -(1 << 63), 1, 1 << 1]
    assert bitpack(torch.zeros(3)).tolist() == [7]  # exact zeros are +1


def test_bitpack_special_values(cpu_isa):
    """+-0 -> +1, +Inf -> +1, -Inf -> -1, NaN of either sign -> -1, denormals by their sign."""
    vals = torch.tensor(SPECIALS)
    vals[5] = neg_nan()  # replace -1.0 by a negative NaN (still -1)
    signs = torch.tensor(SPECIAL_SIGNS, dtype=torch.float64)
    assert vals[1].view(torch.int32) < 0 and vals[5].view(torch.int32) < 0  # -0.0 and -NaN carry the sign bit
    for reps in (1, 7, 13):  # at every position of a word and across words / vector lanes
        x = vals.repeat(reps)
        unpacked = bitunpack(bitpack(x), x.numel())
        assert torch.equal(unpacked.double(), signs.repeat(reps)), f"reps={reps}: {unpacked.tolist()}"


@pytest.mark.parametrize("lead", [(), (3,), (2, 3), (0,), (4, 0)], ids=str)
def test_bitpack_layout_every_size(cpu_isa, lead, gen):
    """Every C in 0..260 and some larger: exact layout, int64 output, tail bits zero, int32-word view."""
    for c in list(range(0, 261)) + [511, 512, 513, 1000, 4113]:
        if lead and c > 300 and c % 2:  # keep the big sizes for the 1-D / 2-D shapes
            continue
        x = with_zeros(torch.randn(*lead, c, generator=gen), 0.2, gen)
        p = bitpack(x)
        assert p.dtype == torch.int64 and tuple(p.shape) == (*lead, words(c)), f"C={c}: {p.dtype} {tuple(p.shape)}"
        assert torch.equal(p, pack_reference(x)), f"C={c} lead={lead}"
        if c % 64 and p.numel():  # tail bits past element C-1 are zero
            assert bool(((p[..., -1] >> (c % 64)) == 0).all()), f"C={c}: tail bits set"
        if c and p.numel():  # the same layout read as int32 words: bit i of word v = element 32v+i
            w32 = p.contiguous().view(torch.int32)
            e = torch.arange(c)
            bits = (w32[..., e // 32] >> (e % 32)) & 1
            assert torch.equal(bits.bool(), x >= 0), f"C={c}: int32 view"


def test_bitpack_non_contiguous(cpu_isa, gen):
    x = with_zeros(torch.randn(5, 130, generator=gen), 0.1, gen)
    views = {"transposed": x.t().contiguous().t(), "column-strided": torch.stack([x, -x], 2)[:, :, 0],
             "row-sliced": torch.cat([x, x], 0)[::2], "expanded": x[:1].expand(4, 130)}
    for name, v in views.items():
        assert not v.is_contiguous(), name
        assert torch.equal(bitpack(v), pack_reference(v)), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_bitpack_other_float_dtypes(dtype, gen):
    """Contract: any float dtype, float32 at least. Others must be packed right or refused naming x's dtype."""
    x = with_zeros(torch.randn(3, 77, generator=gen), 0.2, gen).to(dtype)
    x[0, :3] = torch.tensor([-0.0, NAN, -INF], dtype=dtype)
    try:
        p = bitpack(x)
    except RuntimeError as err:
        msg = str(err)
        assert "x" in msg and ("dtype" in msg or "float" in msg.lower()), f"unclear error: {msg}"
        return
    assert torch.equal(p, pack_reference(x))


def random_words(shape, gen):
    p = torch.randint(-2**63, 2**63 - 1, shape, generator=gen, dtype=torch.int64)
    p.view(-1)[0] = -1  # all 64 bits set
    p.view(-1)[-1] = -2**63  # only the sign bit
    return p


def test_bitunpack_random_words(cpu_isa, gen):
    """All 64 bits (incl. the sign bit) of random words; sizes filling the last word fully or partly."""
    for n_words in (1, 2, 3, 5, 17):
        p = random_words((4, n_words), gen)
        for size in {64 * n_words, 64 * n_words - 1, 64 * (n_words - 1) + 1, 64 * n_words - 33}:
            out = bitunpack(p, size)
            assert out.dtype == torch.float32 and tuple(out.shape) == (4, size)
            assert torch.equal(out.double(), unpack_reference(p, size)), f"words={n_words} size={size}"


def test_bitunpack_needs_exactly_the_words_of_size(gen):
    """Contract: the last dim of packed holds exactly ceil(size / 64) words; other sizes are rejected."""
    p = random_words((4, 3), gen)
    for size in (129, 150, 192):
        out = bitunpack(p, size)
        assert tuple(out.shape) == (4, size) and torch.equal(out.double(), unpack_reference(p, size)), size
    for size in (0, 1, 64, 128, 193):
        with pytest.raises(RuntimeError, match="size"):
            bitunpack(p, size)
    with pytest.raises(RuntimeError, match="size must be >= 0"):
        bitunpack(p, -1)


def test_bit_round_trips(cpu_isa, gen):
    for shape in ((1,), (64,), (65,), (3, 129), (2, 2, 200)):
        x = with_zeros(torch.randn(shape, generator=gen), 0.2, gen)
        c = shape[-1]
        assert torch.equal(bitunpack(bitpack(x), c).double(), sign_pm1(x)), shape
        # words -> +-1 -> words: identity once the tail bits are cleared
        p = random_words((*shape[:-1], words(c)), gen)
        assert torch.equal(bitpack(bitunpack(p, c)), pack_reference(unpack_reference(p, c))), shape
        assert torch.equal(bitpack(bitunpack(p, 64 * words(c))), p), shape


def test_bitunpack_non_contiguous(gen):
    p = torch.randint(-2**63, 2**63 - 1, (6, 4), generator=gen, dtype=torch.int64)
    v = p.t().contiguous().t()
    assert not v.is_contiguous()
    assert torch.equal(bitunpack(v, 250).double(), unpack_reference(p, 250))


def test_bitpack_bitunpack_errors():
    with pytest.raises(RuntimeError, match=r"\bsize\b"):
        bitunpack(torch.zeros(2, 2, dtype=torch.int64), 129)
    with pytest.raises(RuntimeError, match=r"\bsize\b"):
        bitunpack(torch.zeros(2, 2, dtype=torch.int64), -1)
    with pytest.raises(RuntimeError, match=r"\bpacked\b"):
        bitunpack(torch.zeros(2, 2, dtype=torch.int32), 10)
    with pytest.raises(RuntimeError, match=r"\bpacked\b"):
        bitunpack(torch.zeros(2, 2), 10)
    with pytest.raises(RuntimeError, match=r"\bx\b"):
        bitpack(torch.zeros(2, 5, dtype=torch.int32))
    with pytest.raises(RuntimeError, match=r"\bx\b"):
        bitpack(torch.tensor(1.0))  # 0-D: no last dim


# ========================================================================================= binary_linear
LINEAR_K = [1, 63, 64, 65, 4096 + 17]
LINEAR_M = [0, 1, 2, 3, 5, 8, 33]
LINEAR_O = [1, 3, 8, 17, 64, 65]


def linear_data(m, k, o, gen, zero_fraction=0.15):
    x = with_zeros(torch.randn(m, k, generator=gen), zero_fraction, gen)
    w = with_zeros(torch.randn(o, k, generator=gen), zero_fraction, gen)
    if o > 1:
        w[-1] = 0.0  # an all-zero row: every weight +1
    alpha = torch.randn(o, generator=gen)
    bias = torch.randn(o, generator=gen)
    return x, w, pack_reference(w), alpha, bias


@pytest.mark.parametrize("k", LINEAR_K)
def test_binary_linear_matches_reference(cpu_isa, k, gen):
    for m in LINEAR_M:
        for o in LINEAR_O:
            x, w, wb, alpha, bias = linear_data(m, k, o, gen)
            acc = binary_linear_accumulator(x, w)
            ctx = f"isa={cpu_isa} M={m} K={k} O={o}"
            y = binary_linear(x, wb, torch.ones(o), None, k)
            assert y.is_contiguous(), ctx
            assert_exact(y, acc, f"{ctx} alpha=1 no bias")
            assert_exact(binary_linear(x, wb, torch.ones(o), torch.zeros(o), k), acc, f"{ctx} alpha=1 bias=0")
            act = "relu" if (m + o) % 2 else "none"
            y = binary_linear(x, wb, alpha, bias, k, True, act)
            assert_scaled(y, acc, alpha, bias, act, f"{ctx} act={act}")


@pytest.mark.parametrize("k", LINEAR_K)
def test_binary_linear_binary_connect(cpu_isa, k, gen):
    """binarize_input=False: real x times +-1 weights."""
    for m in LINEAR_M:
        for o in (1, 8, 17, 65):
            x, w, wb, alpha, bias = linear_data(m, k, o, gen)
            for bias_i, act in ((bias, "none"), (None, "relu")):
                y = binary_linear(x, wb, alpha, bias_i, k, False, act)
                ref = binary_linear_accumulator(x, w, False) * alpha.double()
                if bias_i is not None:
                    ref = ref + bias_i.double()
                if act == "relu":
                    ref = ref.clamp_min(0)
                assert y.dtype == torch.float32
                assert_within_bound(y, ref, scaled_l2_linear(x, alpha, bias_i), k + 2.0, torch.float32,
                                    what=f"isa={cpu_isa} M={m} K={k} O={o} act={act}")


@pytest.mark.parametrize("m", [64, 65, 130])
def test_binary_linear_batch_tiles(cpu_isa, m, gen):
    """Batches past typical register/thread tile widths, ragged last tiles."""
    x, w, wb, alpha, bias = linear_data(m, 200, 37, gen)
    assert_exact(binary_linear(x, wb, torch.ones(37), None, 200), binary_linear_accumulator(x, w), f"M={m}")


def test_binary_linear_nan_zero_inputs(cpu_isa, gen):
    """Binarized: NaN (either sign) -> -1, +-0 -> +1, +-Inf by sign; output finite."""
    x, w, wb, _, _ = linear_data(4, 130, 9, gen)
    x[0, :4] = torch.tensor([NAN, neg_nan(), -0.0, 0.0])
    x[1, 64:67] = torch.tensor([INF, -INF, NAN])
    x[2] = -0.0
    x[3] = NAN
    y = binary_linear(x, wb, torch.ones(9), None, 130)
    assert_exact(y, binary_linear_accumulator(x, w), "special values")


def test_binary_linear_non_contiguous(cpu_isa, gen):
    x, w, wb, alpha, bias = linear_data(9, 150, 20, gen)
    expected = binary_linear(x, wb, alpha, bias, 150)
    views = {"transposed": x.t().contiguous().t(),
             "column-sliced": torch.cat([torch.randn(9, 3, generator=gen), x], 1)[:, 3:],
             "column-strided": torch.stack([x, -x], 2)[:, :, 0], "row-strided": torch.stack([x, -x], 1)[:, 0]}
    for name, v in views.items():
        assert not v.is_contiguous() and torch.equal(v, x), name
        assert torch.equal(binary_linear(v, wb, alpha, bias, 150), expected), name
        assert torch.equal(binary_linear(v, wb, alpha, bias, 150, False),
                           binary_linear(x, wb, alpha, bias, 150, False)), name
    # strided weight_bits / alpha / bias
    swb = torch.stack([wb, torch.zeros_like(wb)], 2)[:, :, 0]
    salpha = torch.stack([alpha, alpha], 1)[:, 0]
    sbias = torch.stack([bias, bias], 1)[:, 0]
    assert not (swb.is_contiguous() or salpha.is_contiguous() or sbias.is_contiguous())
    assert torch.equal(binary_linear(x, swb, salpha, sbias, 150), expected)


# ========================================================================================= binary_conv2d
C_PER_GROUP = [1, 3, 31, 32, 33, 63, 64, 65, 127, 128, 129, 256]
KERNELS = [1, 3, 5]
STRIDES = [1, 2]
DILATIONS = [1, 2]
GROUPS = [1, 2]
PADDINGS = [0, 1, 2]
BATCHES = [1, 3]
SIZES = [1, 3, 5, 7, 9, 11, 13, 17]  # odd H / W
OUT_PER_GROUP = [1, 2, 5, 8, 16, 17, 33]
MAX_MACS = 2.5e7  # keeps each float64 reference conv around 10 ms


def out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


@dataclass(frozen=True)
class ConvCase:
    n: int
    cg: int  # input channels per group
    og: int  # output channels per group
    groups: int
    h: int
    w: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @property
    def in_channels(self):
        return self.cg * self.groups

    @property
    def out_channels(self):
        return self.og * self.groups

    @property
    def out_hw(self):
        return tuple(out_size(*a) for a in zip((self.h, self.w), self.kernel, self.stride, self.padding,
                                                self.dilation))

    @property
    def macs(self):
        oh, ow = self.out_hw
        return self.n * self.out_channels * oh * ow * self.cg * self.kernel[0] * self.kernel[1]

    @property
    def id(self):
        pair = lambda t: f"{t[0]}x{t[1]}" if t[0] != t[1] else str(t[0])  # noqa: E731
        return (f"n{self.n}-c{self.cg}g{self.groups}-o{self.og}-hw{self.h}x{self.w}-k{pair(self.kernel)}"
                f"-s{pair(self.stride)}-p{pair(self.padding)}-d{pair(self.dilation)}")


def _streams(n_cases: int, rng: random.Random, values: list) -> list:
    """Fresh shuffles of ``values`` back to back: every value appears, in varying company."""
    out = []
    while len(out) < n_cases:
        block = list(values)
        rng.shuffle(block)
        out += block
    return out[:n_cases]


def sampled_grid(n_cases: int = 48, seed: int = 3) -> list[ConvCase]:
    rng = random.Random(seed)
    ax = {name: _streams(n_cases, rng, vals) for name, vals in (
        ("c", C_PER_GROUP), ("k", KERNELS), ("s", STRIDES), ("d", DILATIONS), ("g", GROUPS), ("p", PADDINGS),
        ("n", BATCHES), ("h", SIZES), ("w", SIZES), ("o", OUT_PER_GROUP),
        ("k2", KERNELS), ("s2", STRIDES), ("d2", DILATIONS), ("p2", PADDINGS))}
    # groups follow the channel count: the j-th occurrence of a C value gets GROUPS[j % 2], so every per-group
    # channel count (odd ones included) meets both groups=1 and groups=2
    seen: dict[int, int] = {}
    for i, c in enumerate(ax["c"]):
        ax["g"][i] = GROUPS[seen.get(c, 0) % len(GROUPS)]
        seen[c] = seen.get(c, 0) + 1
    cases = []
    for i in range(n_cases):
        asym = i % 3 == 2  # a third of the cases use different kernel/stride/padding/dilation along W
        kw, sw, dw, pw = (ax["k2"][i], ax["s2"][i], ax["d2"][i], ax["p2"][i]) if asym else \
            (ax["k"][i], ax["s"][i], ax["d"][i], ax["p"][i])
        kh, sh, dh, ph = ax["k"][i], ax["s"][i], ax["d"][i], ax["p"][i]
        h, w, og = ax["h"][i], ax["w"][i], ax["o"][i]
        while out_size(h, kh, sh, ph, dh) < 1:
            h += 2
        while out_size(w, kw, sw, pw, dw) < 1:
            w += 2
        case = ConvCase(ax["n"][i], ax["c"][i], og, ax["g"][i], h, w, (kh, kw), (sh, sw), (ph, pw), (dh, dw))
        while case.macs > MAX_MACS and case.og > 1:  # big channel counts get fewer outputs, not fewer axes
            case = ConvCase(**{**case.__dict__, "og": max(1, case.og // 2)})
        cases.append(case)
    return cases


GRID = sampled_grid()

EDGE_CASES = [
    ConvCase(1, 1, 1, 1, 1, 1, (1, 1), (1, 1), (0, 0), (1, 1)),    # C=1, 1x1 everything
    ConvCase(3, 1, 4, 1, 1, 1, (3, 3), (1, 1), (1, 1), (1, 1)),    # H=W=1, padding 1: only the centre tap
    ConvCase(1, 65, 3, 1, 1, 1, (5, 5), (2, 2), (2, 2), (1, 1)),   # H=W=1, padding 2, stride 2 -> 1x1
    ConvCase(1, 3, 5, 1, 1, 1, (3, 3), (1, 1), (2, 2), (2, 2)),    # H=W=1, dilated kernel over padding only + centre
    ConvCase(2, 33, 6, 1, 3, 3, (5, 5), (1, 1), (2, 2), (1, 1)),   # kernel larger than input, padded
    ConvCase(1, 64, 2, 1, 3, 3, (5, 5), (1, 1), (1, 1), (1, 1)),   # kernel larger than input -> 1x1 output
    ConvCase(1, 129, 7, 1, 5, 5, (5, 5), (1, 1), (0, 0), (1, 1)),  # output exactly 1x1, no padding
    ConvCase(1, 1, 2, 2, 7, 5, (3, 3), (1, 1), (1, 1), (1, 1)),    # groups=2 with one channel per group
    ConvCase(3, 63, 1, 2, 9, 9, (1, 1), (2, 2), (0, 0), (1, 1)),   # stride larger than kernel
    ConvCase(2, 31, 5, 1, 7, 13, (1, 5), (2, 1), (0, 2), (2, 1)),  # rectangular everything
    ConvCase(1, 256, 64, 1, 15, 15, (3, 3), (1, 1), (1, 1), (1, 1)),  # a ResNet-like layer, many output tiles
    ConvCase(3, 128, 9, 2, 11, 11, (3, 3), (2, 2), (1, 1), (1, 1)),   # grouped, strided, 2 words per group
]


def conv_id(case: ConvCase) -> str:
    return case.id


def case_seed(case: ConvCase, salt: str = "") -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32((case.id + salt).encode()))


@functools.lru_cache(maxsize=None)
def conv_data(case: ConvCase, zero_fraction: float = 0.15):
    """(x, w, weight_bits, alpha, bias, integer accumulator) of a case; the same data for every ISA."""
    g = case_seed(case)
    x = with_zeros(torch.randn(case.n, case.in_channels, case.h, case.w, generator=g), zero_fraction, g)
    w = with_zeros(torch.randn(case.out_channels, case.cg, *case.kernel, generator=g), zero_fraction, g)
    if case.out_channels > 1:
        w[-1] = 0.0  # an all-+1 filter: its output counts exactly the in-frame taps' signs
    alpha = torch.randn(case.out_channels, generator=g)
    bias = torch.randn(case.out_channels, generator=g)
    acc = binary_conv2d_accumulator(x, w, case.stride, case.padding, case.dilation, case.groups)
    return x, w, pack_conv_weight(w), alpha, bias, acc


def run_conv(case: ConvCase, x, wb, alpha, bias, binarize_input=True, padding_mode="zeros", activation="none"):
    return binary_conv2d(x, wb, alpha, bias, case.in_channels, list(case.kernel), list(case.stride),
                         list(case.padding), list(case.dilation), case.groups, binarize_input, padding_mode,
                         activation)


def check_conv_binarized(case: ConvCase, isa: str, memory_format=torch.contiguous_format):
    x, w, wb, alpha, bias, acc = conv_data(case)
    x = x.contiguous(memory_format=memory_format)
    o = case.out_channels
    ctx = f"isa={isa} {case.id} fmt={memory_format}"
    y = run_conv(case, x, wb, torch.ones(o), None)
    assert_exact(y, acc, f"{ctx} alpha=1 no bias")
    fmt = torch.channels_last if channels_last_expected(x) else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt), f"{ctx}: output strides {y.stride()}, expected {fmt}"
    assert_exact(run_conv(case, x, wb, torch.ones(o), torch.zeros(o)), acc, f"{ctx} alpha=1 bias=0")
    for act in ("none", "relu"):
        assert_scaled(run_conv(case, x, wb, alpha, bias, activation=act), acc, alpha, bias, act, f"{ctx} act={act}")


@pytest.mark.parametrize("case", GRID, ids=conv_id)
def test_binary_conv2d_grid(cpu_isa, case):
    check_conv_binarized(case, cpu_isa)


@pytest.mark.parametrize("case", EDGE_CASES, ids=conv_id)
def test_binary_conv2d_edge_cases(cpu_isa, case):
    check_conv_binarized(case, cpu_isa)


def test_grid_covers_every_axis_value():
    """The sample really holds every value of every axis of the issue's grid (guards the sampler)."""
    seen = {
        "C_in": {c.cg for c in GRID}, "kernel": {k for c in GRID for k in c.kernel},
        "stride": {s for c in GRID for s in c.stride}, "dilation": {d for c in GRID for d in c.dilation},
        "groups": {c.groups for c in GRID}, "padding": {p for c in GRID for p in c.padding}, "N": {c.n for c in GRID},
    }
    wanted = {"C_in": C_PER_GROUP, "kernel": KERNELS, "stride": STRIDES, "dilation": DILATIONS, "groups": GROUPS,
              "padding": PADDINGS, "N": BATCHES}
    for axis, values in wanted.items():
        assert seen[axis] == set(values), axis
    assert all(c.h % 2 and c.w % 2 for c in GRID)
    for groups in GROUPS:  # every per-group channel count with every groups value
        assert {c.cg for c in GRID if c.groups == groups} == set(C_PER_GROUP), groups


CL_CASES = [c for c in GRID if c.cg > 1 and c.h * c.w > 1][::4] + EDGE_CASES[-2:]


@pytest.mark.parametrize("case", CL_CASES, ids=conv_id)
def test_binary_conv2d_channels_last(cpu_isa, case):
    check_conv_binarized(case, cpu_isa, torch.channels_last)


def test_binary_conv2d_output_memory_format_rule(gen):
    """channels_last out iff x is channels_last-contiguous and not NCHW-contiguous."""
    case = ConvCase(2, 5, 3, 1, 7, 7, (3, 3), (1, 1), (1, 1), (1, 1))
    x, w, wb, alpha, bias, acc = conv_data(case)
    y = run_conv(case, x.contiguous(memory_format=torch.channels_last), wb, alpha, bias)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    y = run_conv(case, x, wb, alpha, bias)
    assert y.is_contiguous()
    # neither format (a strided view): NCHW out
    xs = torch.cat([x, x], 3)[:, :, :, ::2]
    assert not xs.is_contiguous() and not xs.is_contiguous(memory_format=torch.channels_last)
    assert run_conv(case, xs, wb, alpha, bias).is_contiguous()
    # both formats at once (C = 1): NCHW out
    one = ConvCase(2, 1, 3, 1, 7, 7, (3, 3), (1, 1), (1, 1), (1, 1))
    x1, _, wb1, a1, b1, acc1 = conv_data(one)
    x1 = x1.contiguous(memory_format=torch.channels_last)
    assert x1.is_contiguous() and x1.is_contiguous(memory_format=torch.channels_last)
    y1 = run_conv(one, x1, wb1, torch.ones(3), None)
    assert y1.is_contiguous()
    assert_exact(y1, acc1, "C=1 channels_last")


@pytest.mark.parametrize("fmt", ["nchw", "channels_last"])
def test_binary_conv2d_non_contiguous_input(cpu_isa, fmt, gen):
    case = ConvCase(2, 70, 5, 1, 9, 11, (3, 3), (2, 1), (1, 2), (1, 1))
    x, w, wb, alpha, bias, acc = conv_data(case)
    base = x if fmt == "nchw" else x.contiguous(memory_format=torch.channels_last)
    n, c, h, wd = x.shape
    big = torch.randn(n + 1, c + 3, h + 2, wd * 2, generator=gen)
    big = big if fmt == "nchw" else big.contiguous(memory_format=torch.channels_last)
    window = big[1:, 2:c + 2, 1:h + 1, ::2]
    window.copy_(x)
    views = {"window": window, "hw-transposed": x.transpose(2, 3).contiguous().transpose(2, 3),
             "base": base}
    bc_ref = binary_conv2d_accumulator(x, w, case.stride, case.padding, case.dilation, 1, False) \
        * alpha.double().reshape(1, -1, 1, 1) + bias.double().reshape(1, -1, 1, 1)
    l2 = binary_conv2d_l2(x, w, alpha, bias, case.stride, case.padding, case.dilation, 1)
    for name, v in views.items():
        assert torch.equal(v, x), name
        ctx = f"isa={cpu_isa} {fmt} {name}"
        assert_exact(run_conv(case, v, wb, torch.ones(5), None), acc, ctx)
        assert_within_bound(run_conv(case, v, wb, alpha, bias, False), bc_ref, l2, 70 * 9 + 2.0, torch.float32,
                            what=ctx + " BinaryConnect")


@pytest.mark.parametrize("fmt", ["nchw", "channels_last"])
def test_binary_conv2d_empty_batch(cpu_isa, fmt):
    case = ConvCase(1, 33, 4, 1, 7, 5, (3, 3), (2, 1), (1, 1), (1, 1))
    _, _, wb, alpha, bias, _ = conv_data(case)
    x = torch.randn(0, 33, 7, 5)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    for binarize in (True, False):
        y = run_conv(case, x, wb, alpha, bias, binarize)
        assert tuple(y.shape) == (0, 4, *case.out_hw) and y.dtype == torch.float32


ONES_CASES = [c for c in GRID if max(c.padding) > 0][::3] + [EDGE_CASES[1], EDGE_CASES[3], EDGE_CASES[4]]


@pytest.mark.parametrize("case", ONES_CASES, ids=conv_id)
def test_binary_conv2d_padding_ones(cpu_isa, case):
    """'ones': padded taps count as +1 inputs (= an unpadded conv of s(x) padded with +1)."""
    x, w, wb, alpha, bias, _ = conv_data(case)
    acc = binary_conv2d_accumulator(x, w, case.stride, case.padding, case.dilation, case.groups, True, "ones")
    ctx = f"isa={cpu_isa} {case.id} padding_mode=ones"
    assert_exact(run_conv(case, x, wb, torch.ones(case.out_channels), None, padding_mode="ones"), acc, ctx)
    y = run_conv(case, x.contiguous(memory_format=torch.channels_last), wb, alpha, bias, padding_mode="ones",
                 activation="relu")
    assert_scaled(y, acc, alpha, bias, "relu", ctx + " channels_last relu")


BC_CASES = GRID[::3] + EDGE_CASES[:6]


@pytest.mark.parametrize("case", BC_CASES, ids=conv_id)
def test_binary_conv2d_binary_connect(cpu_isa, case):
    """binarize_input=False: real activations times +-1 weights, zero padding adds 0."""
    x, w, wb, alpha, bias, _ = conv_data(case)
    acc = binary_conv2d_accumulator(x, w, case.stride, case.padding, case.dilation, case.groups, False)
    l2 = binary_conv2d_l2(x, w, alpha, bias, case.stride, case.padding, case.dilation, case.groups)
    n_terms = case.cg * case.kernel[0] * case.kernel[1] + 2.0
    for fmt, act in ((torch.contiguous_format, "none"), (torch.channels_last, "relu")):
        y = run_conv(case, x.contiguous(memory_format=fmt), wb, alpha, bias, False, activation=act)
        ref = acc * alpha.double().reshape(1, -1, 1, 1) + bias.double().reshape(1, -1, 1, 1)
        if act == "relu":
            ref = ref.clamp_min(0)
        assert_within_bound(y, ref, l2, n_terms, torch.float32, what=f"isa={cpu_isa} {case.id} {fmt} {act}")


def test_binary_conv2d_nan_and_signed_zero_inputs(cpu_isa):
    """Binarized conv: NaN -> -1, -0.0 -> +1, like the packer."""
    case = ConvCase(2, 70, 3, 1, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1))
    x, w, wb, _, _, _ = conv_data(case)
    x = x.clone()
    x[0, :, 2, 2] = NAN
    x[0, 3:9, 0, :] = neg_nan()
    x[1, :, 1, :] = -0.0
    acc = binary_conv2d_accumulator(x, w, case.stride, case.padding, case.dilation, case.groups)
    assert_exact(run_conv(case, x, wb, torch.ones(3), None), acc, "NaN / -0.0")


def test_binary_conv2d_does_not_modify_inputs():
    case = EDGE_CASES[-1]
    x, w, wb, alpha, bias, _ = conv_data(case)
    saved = [t.clone() for t in (x, wb, alpha, bias)]
    y = run_conv(case, x, wb, alpha, bias)
    for t, s in zip((x, wb, alpha, bias), saved):
        assert torch.equal(t, s)
    assert y.data_ptr() != x.data_ptr()


# ======================================================================================== thread count
def test_outputs_independent_of_thread_count(gen):
    """1 vs 2 threads: bitwise identical outputs, binarized and BinaryConnect, linear and conv."""
    case = ConvCase(3, 129, 20, 1, 15, 13, (3, 3), (1, 1), (1, 1), (1, 1))
    x, w, wb, alpha, bias, acc = conv_data(case)
    xl, _, wbl, al, bl = linear_data(33, 4113, 70, gen)
    calls = {
        "conv": lambda: run_conv(case, x, wb, alpha, bias),
        "conv_cl": lambda: run_conv(case, x.contiguous(memory_format=torch.channels_last), wb, alpha, bias),
        "conv_bc": lambda: run_conv(case, x, wb, alpha, bias, False),
        "linear": lambda: binary_linear(xl, wbl, al, bl, 4113),
        "linear_bc": lambda: binary_linear(xl, wbl, al, bl, 4113, False),
        "linear_m1": lambda: binary_linear(xl[:1], wbl, al, bl, 4113),
    }
    before = torch.get_num_threads()
    try:
        results = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results[threads] = {name: fn() for name, fn in calls.items()}
    finally:
        torch.set_num_threads(before)
    for name in calls:
        assert torch.equal(results[1][name], results[2][name]), f"{name}: differs between 1 and 2 threads"
    assert_scaled(results[1]["conv"], acc, alpha, bias, "none", "conv 1 thread")


# ============================================================================================== opcheck
def test_opcheck_bitpack_bitunpack(gen):
    torch.library.opcheck(bitpack, (torch.randn(3, 5, 70, generator=gen),))
    torch.library.opcheck(bitpack, (torch.randn(130, generator=gen),))
    p = torch.randint(-2**63, 2**63 - 1, (4, 2), generator=gen, dtype=torch.int64)
    torch.library.opcheck(bitunpack, (p, 100))
    torch.library.opcheck(bitunpack, (p, 128))


def test_opcheck_binary_linear(gen):
    x, w, wb, alpha, bias = linear_data(5, 70, 6, gen)
    torch.library.opcheck(binary_linear, (x, wb, alpha, bias, 70, True, "none"))
    torch.library.opcheck(binary_linear, (x, wb, alpha, None, 70, False, "relu"))
    torch.library.opcheck(binary_linear, (x[:1], wb, alpha, bias, 70, True, "relu"))


def conv_opcheck_args():
    case = ConvCase(2, 33, 3, 2, 7, 5, (3, 3), (2, 1), (1, 1), (1, 2))
    x, w, wb, alpha, bias, _ = conv_data(case)
    return x, (wb, alpha, bias, case.in_channels, list(case.kernel), list(case.stride), list(case.padding),
               list(case.dilation), case.groups)


def test_opcheck_binary_conv2d():
    x, args = conv_opcheck_args()
    torch.library.opcheck(binary_conv2d, (x, *args, True, "zeros", "none"))
    torch.library.opcheck(binary_conv2d, (x.contiguous(memory_format=torch.channels_last), *args, True, "ones",
                                          "relu"))
    torch.library.opcheck(binary_conv2d, (x, *args[:2], None, *args[3:], False, "zeros", "none"))


def test_opcheck_schema_defaults(gen):
    """Called without the arguments that have schema defaults (as torch.ops users and torch.compile do): the
    fake kernels must accept that too."""
    x, w, wb, alpha, bias = linear_data(5, 70, 6, gen)
    torch.library.opcheck(binary_linear, (x, wb, alpha, bias, 70))
    xc, args = conv_opcheck_args()
    torch.library.opcheck(binary_conv2d, (xc, *args))


# =============================================================================================== errors
def linear_args(gen):
    x, w, wb, alpha, bias = linear_data(3, 100, 4, gen)
    return dict(x=x, weight_bits=wb, alpha=alpha, bias=bias, in_features=100, binarize_input=True,
                activation="none")


def call_linear(a):
    return binary_linear(a["x"], a["weight_bits"], a["alpha"], a["bias"], a["in_features"], a["binarize_input"],
                         a["activation"])


LINEAR_ERRORS = {
    "x_float64": (lambda a: a.update(x=a["x"].double()), r"\bx\b"),
    "x_float16": (lambda a: a.update(x=a["x"].half()), r"\bx\b"),
    "all_float64": (lambda a: a.update(x=a["x"].double(), alpha=a["alpha"].double(), bias=a["bias"].double()),
                    r"\bx\b"),
    "all_float16": (lambda a: a.update(x=a["x"].half(), alpha=a["alpha"].half(), bias=a["bias"].half()), r"\bx\b"),
    "x_3d": (lambda a: a.update(x=a["x"].unsqueeze(0)), r"\bx\b"),
    "x_1d": (lambda a: a.update(x=a["x"][0]), r"\bx\b"),
    "x_columns": (lambda a: a.update(x=a["x"][:, :99]), r"\bx\b|in_features"),
    "in_features_negative": (lambda a: a.update(in_features=-1), r"in_features|\bx\b"),
    "weight_bits_int32": (lambda a: a.update(weight_bits=a["weight_bits"].int()), r"weight_bits"),
    "weight_bits_float": (lambda a: a.update(weight_bits=a["weight_bits"].float()), r"weight_bits"),
    "weight_bits_1d": (lambda a: a.update(weight_bits=a["weight_bits"][0]), r"weight_bits"),
    "weight_bits_too_few_words": (lambda a: a.update(weight_bits=a["weight_bits"][:, :1]), r"weight_bits"),
    "weight_bits_too_many_words": (lambda a: a.update(weight_bits=torch.cat([a["weight_bits"]] * 2, 1)),
                                   r"weight_bits"),
    "alpha_length": (lambda a: a.update(alpha=a["alpha"][:3]), r"alpha"),
    "alpha_2d": (lambda a: a.update(alpha=a["alpha"].unsqueeze(0)), r"alpha"),
    "alpha_float64": (lambda a: a.update(alpha=a["alpha"].double()), r"alpha"),
    "bias_length": (lambda a: a.update(bias=a["bias"][:3]), r"bias"),
    "bias_2d": (lambda a: a.update(bias=a["bias"].unsqueeze(0)), r"bias"),
    "bias_float64": (lambda a: a.update(bias=a["bias"].double()), r"bias"),
    "activation": (lambda a: a.update(activation="gelu"), r"activation"),
    "activation_case": (lambda a: a.update(activation="ReLU "), r"activation"),
}


@pytest.mark.parametrize("case", list(LINEAR_ERRORS))
def test_binary_linear_argument_errors(case, gen):
    a = linear_args(gen)
    assert call_linear(a).shape == (3, 4)  # the unmodified arguments are valid
    mutate, pattern = LINEAR_ERRORS[case]
    mutate(a)
    with pytest.raises(RuntimeError, match=pattern):
        call_linear(a)


def conv_args():
    case = ConvCase(2, 35, 3, 2, 7, 7, (3, 3), (1, 1), (1, 1), (1, 1))  # in 70, out 6, groups 2
    x, w, wb, alpha, bias, _ = conv_data(case)
    return dict(x=x, weight_bits=wb, alpha=alpha, bias=bias, in_channels=70, kernel_size=[3, 3], stride=[1, 1],
                padding=[1, 1], dilation=[1, 1], groups=2, binarize_input=True, padding_mode="zeros",
                activation="none")


def call_conv(a):
    return binary_conv2d(a["x"], a["weight_bits"], a["alpha"], a["bias"], a["in_channels"], a["kernel_size"],
                         a["stride"], a["padding"], a["dilation"], a["groups"], a["binarize_input"],
                         a["padding_mode"], a["activation"])


def _set(**kw):
    return lambda a: a.update(**kw)


CONV_ERRORS = {
    "x_float64": (lambda a: a.update(x=a["x"].double()), r"\bx\b"),
    "x_bfloat16": (lambda a: a.update(x=a["x"].bfloat16()), r"\bx\b"),
    "all_bfloat16": (lambda a: a.update(x=a["x"].bfloat16(), alpha=a["alpha"].bfloat16(),
                                        bias=a["bias"].bfloat16()), r"\bx\b"),
    "x_3d": (lambda a: a.update(x=a["x"][0]), r"\bx\b"),
    "x_5d": (lambda a: a.update(x=a["x"].unsqueeze(0)), r"\bx\b"),
    "x_channels": (lambda a: a.update(x=a["x"][:, :68]), r"\bx\b|in_channels"),
    "weight_bits_int32": (lambda a: a.update(weight_bits=a["weight_bits"].int()), r"weight_bits"),
    "weight_bits_3d": (lambda a: a.update(weight_bits=a["weight_bits"][:, 0]), r"weight_bits"),
    "weight_bits_words": (lambda a: a.update(weight_bits=torch.cat([a["weight_bits"]] * 2, 3)), r"weight_bits"),
    "weight_bits_kernel_h": (lambda a: a.update(weight_bits=a["weight_bits"][:, :2]), r"weight_bits|kernel_size"),
    "weight_bits_kernel_w": (lambda a: a.update(weight_bits=a["weight_bits"][:, :, :1]), r"weight_bits|kernel_size"),
    "kernel_size_mismatch": (_set(kernel_size=[3, 5]), r"weight_bits|kernel_size"),
    "alpha_length": (lambda a: a.update(alpha=a["alpha"][:5]), r"alpha"),
    "alpha_float64": (lambda a: a.update(alpha=a["alpha"].double()), r"alpha"),
    "bias_length": (lambda a: a.update(bias=a["bias"][:5]), r"bias"),
    "bias_float64": (lambda a: a.update(bias=a["bias"].double()), r"bias"),
    "in_channels_not_divisible": (lambda a: a.update(x=a["x"][:, :69], in_channels=69), r"groups|in_channels"),
    "out_channels_not_divisible": (lambda a: a.update(weight_bits=a["weight_bits"][:5], alpha=a["alpha"][:5],
                                                      bias=a["bias"][:5]), r"groups|out_channels|weight_bits"),
    "groups_zero": (_set(groups=0), r"groups"),
    "kernel_size_zero": (lambda a: a.update(kernel_size=[0, 3], weight_bits=a["weight_bits"][:, :0]),
                         r"kernel_size"),
    "stride_zero": (_set(stride=[1, 0]), r"stride"),
    "stride_negative": (_set(stride=[-1, 1]), r"stride"),
    "dilation_zero": (_set(dilation=[0, 1]), r"dilation"),
    "padding_negative": (_set(padding=[1, -1]), r"padding"),
    "output_empty": (_set(padding=[0, 0], dilation=[4, 1]), r"output|does not fit"),  # 7 < 4*2+1: no row
    "padding_mode": (_set(padding_mode="reflect"), r"padding_mode"),
    "activation": (_set(activation="tanh"), r"activation"),
    "ones_without_binarize": (_set(padding_mode="ones", binarize_input=False), r"padding_mode|binarize_input"),
}


@pytest.mark.parametrize("case", list(CONV_ERRORS))
def test_binary_conv2d_argument_errors(case):
    a = conv_args()
    assert call_conv(a).shape == (2, 6, 7, 7)  # the unmodified arguments are valid
    mutate, pattern = CONV_ERRORS[case]
    mutate(a)
    with pytest.raises(RuntimeError, match=pattern):
        call_conv(a)
