"""Named layer-shape presets for ``sparsecomp bench --shapes``: linear layers and convolutions as im2col GEMMs.

Every case is one GEMM ``y[N, out] = x[N, in] @ W[out, in]^T (+ b)`` with ``N = batch * positions``:
a linear layer has ``positions = 1``; a convolution lowered by im2col (what Caffe did, and what the SSL
paper's MKL / cuBLAS baselines multiply) has ``out = out_channels / groups``, ``in = in_channels / groups *
kh * kw`` and ``positions`` = output pixels per image. A grouped conv runs ``groups`` such GEMMs: the sweep
times one of them (every group has the same shape and sparsity, so the ratios are the layer's).

AlexNet conv shapes (Caffe's bvlc_alexnet, 227x227 input, the network of Wen et al. 2016, arXiv 1608.03665):

| layer | conv | output | groups | GEMM per group (out x in) | positions |
|---|---|---|---|---|---|
| conv1 | 96 x 3 x 11 x 11, stride 4 | 55 x 55 | 1 | 96 x 363 | 3025 |
| conv2 | 256 x 48 x 5 x 5, pad 2 | 27 x 27 | 2 | 128 x 1200 | 729 |
| conv3 | 384 x 256 x 3 x 3, pad 1 | 13 x 13 | 1 | 384 x 2304 | 169 |
| conv4 | 384 x 192 x 3 x 3, pad 1 | 13 x 13 | 2 | 192 x 1728 | 169 |
| conv5 | 256 x 192 x 3 x 3, pad 1 | 13 x 13 | 2 | 128 x 1728 | 169 |

at the sparsities SSL reached on them (the ones its CPU/GPU speedups were measured at): 67.6, 92.4, 97.2, 96.6,
94.3%.
MobileNet (v1, 224x224) 1x1 pointwise convs are plain GEMMs ``out x in`` over ``hw * hw`` positions.

Conv cases also carry their geometry, so the sparse sweep times them a second way, as convolutions of images
(one group's channels): torch ``F.conv2d`` (oneDNN) against sparsecomp ``SparseConv2d`` (its im2col included).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GemmCase:
    """One benchmarked layer as a GEMM; ``sparsity`` (if set) is the layer's own, replacing the grid's."""

    name: str
    out_features: int
    in_features: int
    positions: int = 1
    groups: int = 1
    sparsity: float | None = None
    conv: str = ""  # for conv cases, the layer in conv terms (documentation in tables and JSON)
    #: for conv cases, (in_channels per group, kernel, stride, padding, input height = width): the sweep then
    #: also times the layer as a conv on images (torch F.conv2d vs sparsecomp SparseConv2d, im2col included)
    geometry: tuple[int, int, int, int, int] | None = None

    @property
    def shape(self) -> str:
        return f"{self.out_features}x{self.in_features}"

    def gemm_rows(self, batch: int) -> int:
        return batch * self.positions


def linear(out_features: int, in_features: int, name: str | None = None) -> GemmCase:
    return GemmCase(name or f"{out_features}x{in_features}", out_features, in_features)


def _pointwise(c_in: int, c_out: int, hw: int) -> GemmCase:
    return GemmCase(f"pw {c_in}->{c_out}@{hw}", c_out, c_in, positions=hw * hw,
                    conv=f"1x1 conv {c_in}->{c_out} on {hw}x{hw}", geometry=(c_in, 1, 1, 0, hw))


SSL_ALEXNET_SPARSITY = {"conv1": 0.676, "conv2": 0.924, "conv3": 0.972, "conv4": 0.966, "conv5": 0.943}
#: the paper's measured speedups of these layers over dense (for reading our numbers against them)
SSL_ALEXNET_SPEEDUP = {"cpu": (0.80, 2.91, 4.84, 3.83, 2.76), "gpu": (0.25, 0.52, 1.38, 1.04, 1.36)}

PRESETS: dict[str, tuple[GemmCase, ...]] = {
    "square": (linear(4096, 4096),),
    "llm": (linear(4096, 4096), linear(4096, 11008), linear(11008, 4096)),
    "bert": (linear(768, 768), linear(768, 3072), linear(3072, 768)),
    "alexnet": (linear(4096, 9216, "fc6 4096x9216"), linear(4096, 4096, "fc7 4096x4096")),
    "alexnet-conv": (
        GemmCase("conv1", 96, 3 * 11 * 11, 55 * 55, 1, SSL_ALEXNET_SPARSITY["conv1"], "96x3x11x11/4 -> 55x55",
                 (3, 11, 4, 0, 227)),
        GemmCase("conv2", 128, 48 * 5 * 5, 27 * 27, 2, SSL_ALEXNET_SPARSITY["conv2"], "256x48x5x5 g2 -> 27x27",
                 (48, 5, 1, 2, 27)),
        GemmCase("conv3", 384, 256 * 3 * 3, 13 * 13, 1, SSL_ALEXNET_SPARSITY["conv3"], "384x256x3x3 -> 13x13",
                 (256, 3, 1, 1, 13)),
        GemmCase("conv4", 192, 192 * 3 * 3, 13 * 13, 2, SSL_ALEXNET_SPARSITY["conv4"], "384x192x3x3 g2 -> 13x13",
                 (192, 3, 1, 1, 13)),
        GemmCase("conv5", 128, 192 * 3 * 3, 13 * 13, 2, SSL_ALEXNET_SPARSITY["conv5"], "256x192x3x3 g2 -> 13x13",
                 (192, 3, 1, 1, 13)),
    ),
    "mobilenet": tuple(_pointwise(*layer) for layer in (
        (32, 64, 112), (64, 128, 56), (128, 128, 56), (128, 256, 28), (256, 256, 28), (256, 512, 14),
        (512, 512, 14), (512, 1024, 7), (1024, 1024, 7))),
}
#: batch sizes used when --batch is not given (conv presets: images, each a GEMM of thousands of rows)
PRESET_BATCHES = {"alexnet-conv": (1, 8), "mobilenet": (1, 8)}
PRESET_QUICK_BATCHES = {"alexnet-conv": (1,), "mobilenet": (1,)}


def describe_presets() -> str:
    return "; ".join(f"{name}: " + ", ".join(c.name for c in cases) for name, cases in PRESETS.items())
