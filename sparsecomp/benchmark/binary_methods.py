"""The layers and contenders of the binary-layer benchmark (issue 3), each built (untimed) into ``fn(i)``.

Callables take an input *index*: every method keeps its own copy of the pre-generated inputs in the memory
format it is timed in (NCHW or channels_last), converted before timing, so ``harness.measure`` hands all
methods the same sample ``i`` and no layout conversion is ever timed.

Families (what a method computes) and their methods:
- ``fp32``: torch ``F.conv2d`` / ``F.linear`` in float32 (oneDNN / MKL), the baseline every ratio divides;
- ``binary``: ``torch.ops.sparsecomp.binary_conv2d`` / ``binary_linear`` with ``binarize_input=True``
  (XNOR-popcount). The op packs the float activations itself, so packing is part of its time;
- ``binary_connect``: the same ops with ``binarize_input=False`` (real activations, +-1 weights);
- ``binary_avx2``: ``binary`` with the AVX2 code path forced by ``sparsecomp._C.set_cpu_isa('avx2')`` (set and
  restored around every call, so that small overhead is charged to it, not to the others).
Conv methods come in two layouts, ``<family>`` (NCHW) and ``<family>_cl`` (channels_last, weight included
for fp32); a family's reported time is its faster layout, so each gets the input layout it prefers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

Fn = Callable[[int], torch.Tensor]

FAMILIES = ("fp32", "binary", "binary_connect", "binary_avx2")
LABELS = {"fp32": "torch fp32", "binary": "XNOR binary", "binary_connect": "BinaryConnect",
          "binary_avx2": "XNOR binary, AVX2 path"}
LAYOUTS = {"": "nchw", "_cl": "channels_last"}


@dataclass(frozen=True)
class ConvLayer:
    name: str
    c_in: int
    c_out: int
    hw: int
    stride: int = 1
    kernel: int = 3
    padding: int = 1

    @property
    def key(self) -> str:
        """The name without '@', '->', '/' (for pytest -k and shell arguments): '64->128@56/2' -> '64to128_56_s2'."""
        return self.name.replace("->", "to").replace("@", "_").replace("/", "_s")

    @property
    def out_hw(self) -> int:
        return (self.hw + 2 * self.padding - self.kernel) // self.stride + 1

    def describe(self) -> str:
        k, hw = self.kernel, self.hw
        return f"{k}x{k} {self.c_in}->{self.c_out} {hw}x{hw} s{self.stride} p{self.padding}"


@dataclass(frozen=True)
class LinearLayer:
    name: str
    in_features: int
    out_features: int

    @property
    def key(self) -> str:
        return self.name

    def describe(self) -> str:
        return f"linear {self.out_features}x{self.in_features}"


# The binary ResNet-18 layer suite of issue 3: the 3x3 convs of each stage and the stride-2 stage entries.
# "256@14" is also the headline 3x3 256->256 14x14 layer.
RESNET18 = (
    ConvLayer("64@56", 64, 64, 56),
    ConvLayer("128@28", 128, 128, 28),
    ConvLayer("256@14", 256, 256, 14),
    ConvLayer("512@7", 512, 512, 7),
    ConvLayer("64->128@56/2", 64, 128, 56, stride=2),
    ConvLayer("128->256@28/2", 128, 256, 28, stride=2),
    ConvLayer("256->512@14/2", 256, 512, 14, stride=2),
)
HEADLINE_CONV = "256@14"
LINEAR_LAYERS = (LinearLayer("4096x4096", 4096, 4096),)
CONV_BATCHES = (1, 8)
LINEAR_BATCHES = (1, 64)

# issue 3's targets on a 2-core AVX-512 CPU (printed next to the measurements, never used to pick anything)
TARGETS = {
    "headline_conv": 10.0,      # 3x3 256->256 14x14, batch 1 and 8
    "resnet_geomean": 8.0,      # per batch
    "resnet_min": 4.0,          # no layer below
    "avx2_geomean": 5.0,        # the AVX2-only path over the ResNet-18 suite
    "linear_b1": 15.0,
    "linear_b64": 8.0,
    "weight_memory": 31.0,      # 3x3x256x256 layer
}


def tolerance(family: str) -> tuple[float, float]:
    """(rtol, atol) against float64 for outputs of order 1: binary outputs are exact integers times alpha."""
    return (1e-5, 1e-5) if family in ("binary", "binary_avx2") else (1e-4, 1e-4)


def sign_pm1(t: torch.Tensor) -> torch.Tensor:
    """+1 where t >= 0 else -1 (torch.sign(0) = 0 is not the binary sign)."""
    return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


# ------------------------------------------------------------------------------------------------ weights
@dataclass
class BinaryParams:
    """A float layer and its binary form: weight_bits packed along input channels, alpha = mean |W[o]|."""

    weight: torch.Tensor
    bias: torch.Tensor
    alpha: torch.Tensor
    weight_bits: torch.Tensor


def _binarize(weight: torch.Tensor, bias: torch.Tensor) -> BinaryParams:
    import sparsecomp  # noqa: F401  registers torch.ops.sparsecomp

    alpha = weight.abs().flatten(1).mean(1)
    # conv weight [O, C, kh, kw] -> [O, kh, kw, C] so channels are packed last (the ops' layout)
    channels_last = weight.permute(0, 2, 3, 1).contiguous() if weight.dim() == 4 else weight
    bits = torch.ops.sparsecomp.bitpack(channels_last)
    return BinaryParams(weight, bias, alpha, bits)


def random_conv(layer: ConvLayer, seed: int = 0) -> BinaryParams:
    """Weights scaled like nn.Conv2d's init (outputs of order 1), with their packed binary form."""
    g = torch.Generator().manual_seed(seed)
    fan_in = layer.c_in * layer.kernel ** 2
    weight = torch.randn(layer.c_out, layer.c_in, layer.kernel, layer.kernel, generator=g) / math.sqrt(fan_in)
    return _binarize(weight, 0.1 * torch.randn(layer.c_out, generator=g))


def random_linear(layer: LinearLayer, seed: int = 0) -> BinaryParams:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(layer.out_features, layer.in_features, generator=g) / math.sqrt(layer.in_features)
    return _binarize(weight, 0.1 * torch.randn(layer.out_features, generator=g))


def weight_memory(params: BinaryParams) -> dict:
    """Bytes of the fp32 weight vs the packed bits (and bits + the float32 alpha); bias is the same in both."""
    fp32 = params.weight.numel() * params.weight.element_size()
    bits = params.weight_bits.numel() * params.weight_bits.element_size()
    alpha = params.alpha.numel() * params.alpha.element_size()
    return {"fp32_bytes": fp32, "bits_bytes": bits, "alpha_bytes": alpha, "ratio_bits": fp32 / bits,
            "ratio_bits_alpha": fp32 / (bits + alpha)}


# ------------------------------------------------------------------------------------------------- inputs
def conv_inputs(layer: ConvLayer, batch: int, count: int, seed: int) -> dict[str, list[torch.Tensor]]:
    """``count`` N(0, 1) inputs per layout: {"nchw": [...], "channels_last": [...]} (same values)."""
    g = torch.Generator().manual_seed(seed)
    nchw = [torch.randn(batch, layer.c_in, layer.hw, layer.hw, generator=g) for _ in range(count)]
    return {"nchw": nchw, "channels_last": [x.contiguous(memory_format=torch.channels_last) for x in nchw]}


def linear_inputs(layer: LinearLayer, batch: int, count: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, layer.in_features, generator=g) for _ in range(count)]


# ------------------------------------------------------------------------------------------------ methods
def cpu_isa_available(isa: str) -> bool:
    from sparsecomp import _C

    order = ("scalar", "avx2", "avx512")
    return order.index(isa) <= order.index(_C.cpu_isa_detected())


def under_isa(isa: str, fn: Fn) -> Fn:
    """``fn`` with sparsecomp's CPU code path forced to ``isa`` during the call (restored after)."""
    from sparsecomp import _C

    def run(i: int) -> torch.Tensor:
        previous = _C.cpu_isa()
        _C.set_cpu_isa(isa)
        try:
            return fn(i)
        finally:
            _C.set_cpu_isa(previous)

    return run


def family_of(method: str) -> str:
    return method[:-3] if method.endswith("_cl") else method


def layout_of(method: str) -> str:
    return "channels_last" if method.endswith("_cl") else "nchw"


def make_conv_methods(layer: ConvLayer, p: BinaryParams, inputs: dict[str, list[torch.Tensor]],
                      avx2: bool = True) -> dict[str, Fn]:
    """{method: fn(i)} over both layouts; ``binary_avx2*`` only if ``avx2`` and the CPU has AVX2."""
    op = torch.ops.sparsecomp.binary_conv2d
    k, s, pad = [layer.kernel] * 2, [layer.stride] * 2, [layer.padding] * 2
    fns: dict[str, Fn] = {}
    for suffix, layout in LAYOUTS.items():
        xs = inputs[layout]
        weight = p.weight.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else p.weight
        fns["fp32" + suffix] = lambda i, xs=xs, w=weight: F.conv2d(xs[i], w, p.bias, layer.stride, layer.padding)
        fns["binary" + suffix] = lambda i, xs=xs: op(xs[i], p.weight_bits, p.alpha, p.bias, layer.c_in, k, s, pad,
                                                     [1, 1], 1, True, "zeros", "none")
        fns["binary_connect" + suffix] = lambda i, xs=xs: op(xs[i], p.weight_bits, p.alpha, p.bias, layer.c_in, k,
                                                             s, pad, [1, 1], 1, False, "zeros", "none")
        if avx2 and cpu_isa_available("avx2"):
            fns["binary_avx2" + suffix] = under_isa("avx2", fns["binary" + suffix])
    return fns


def make_linear_methods(layer: LinearLayer, p: BinaryParams, inputs: list[torch.Tensor],
                        avx2: bool = True) -> dict[str, Fn]:
    op = torch.ops.sparsecomp.binary_linear
    k = layer.in_features
    fns: dict[str, Fn] = {
        "fp32": lambda i: F.linear(inputs[i], p.weight, p.bias),
        "binary": lambda i: op(inputs[i], p.weight_bits, p.alpha, p.bias, k, True, "none"),
        "binary_connect": lambda i: op(inputs[i], p.weight_bits, p.alpha, p.bias, k, False, "none"),
    }
    if avx2 and cpu_isa_available("avx2"):
        fns["binary_avx2"] = under_isa("avx2", fns["binary"])
    return fns


# ---------------------------------------------------------------------------------------------- references
def conv_reference(family: str, layer: ConvLayer, p: BinaryParams, x: torch.Tensor) -> torch.Tensor:
    """float64 output of a family on x; binary: alpha * conv2d(sign(x), sign(W)) + b, zero padding adds 0."""
    x64, w64, b64 = x.double(), p.weight.double(), p.bias.double()
    if family == "fp32":
        return F.conv2d(x64, w64, b64, layer.stride, layer.padding)
    xs = x64 if family == "binary_connect" else sign_pm1(x64)
    y = F.conv2d(xs, sign_pm1(w64), None, layer.stride, layer.padding)
    return y * p.alpha.double().reshape(1, -1, 1, 1) + b64.reshape(1, -1, 1, 1)


def linear_reference(family: str, p: BinaryParams, x: torch.Tensor) -> torch.Tensor:
    x64, w64, b64 = x.double(), p.weight.double(), p.bias.double()
    if family == "fp32":
        return F.linear(x64, w64, b64)
    xs = x64 if family == "binary_connect" else sign_pm1(x64)
    return (xs @ sign_pm1(w64).T) * p.alpha.double() + b64
