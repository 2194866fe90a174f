"""When the fused depthwise -> pointwise CPU op (ops.dwpw_conv2d) beats torch's two convolutions.

Measured with bench/sweep_separable.py and a grid around 7x7 (3x3 depthwise, ReLU6, 1 thread, AVX-512 Xeon,
torch 2.13 eager, minimum of interleaved repeats; the machine was shared, so ratios within ~5% are ties):

- Large feature maps (14x14 and up) win in both layouts at every batch (1.1x-3x): the depthwise result never
  makes its round trip through memory and the depthwise stage is cheaper than torch's.
- channels_last at batch 1 with 7x7 maps and a large weight (C * O >= 256K, e.g. 512->512, 1024->1024) ties
  (0.92x-1.01x packing the weight on every call, 1.03x-1.08x transposing the pixels instead): the product is
  all there is, and it is only as fast as torch's.
- NCHW with more than one image at 7x7 loses when the pointwise layer is narrow relative to its input
  (1024->128 0.85x, 512->128 0.90x, 960->160 0.83x, 512->512 0.97x) and wins when it widens (128->512 1.16x,
  512->1024 1.04x, 1024->1024 1.09x): its per-image 49-pixel tiles leave the micro-GEMM's vectors 77% full, and
  only a wide output amortizes that against torch's batched 1x1 convolution. At batch 1 the same holds for
  outputs much narrower than the input (1024->128 0.94x, 960->160 0.86x-1.02x; 512->128 1.18x still wins).

- At batch 32 and 7x7 both layouts are bound by the pointwise product, where the kernel only ties with torch's
  batched 1x1 convolution (1024->1024 0.89x-1.10x, 960->160 0.81x-1.05x over repeated runs).

Elsewhere torch's two convolutions are used (DepthwiseSeparableConv2d says which in extra_repr).
"""
from __future__ import annotations

SMALL_MAP = 7 * 7          # output pixels per image at or below which the small-map rules apply
LARGE_WEIGHT = 512 * 512   # C * O from which the per-call weight transpose of channels_last costs too much


def _out_size(size: int, k: int, stride: int) -> int:
    return (size + 2 * (k // 2) - k) // stride + 1  # 'same' padding, the MobileNet convention


def should_fuse(n: int, c: int, o: int, h: int, w: int, k: int, stride: int, channels_last: bool) -> bool:
    """True when the fused CPU kernel is expected to be at least as fast as conv2d(groups=C) + conv2d(1x1).

    ``n, c, h, w``: the input's batch, channels and size; ``o``: output channels; ``k``: depthwise kernel size.
    """
    pixels = _out_size(h, k, stride) * _out_size(w, k, stride)
    if pixels > SMALL_MAP:
        return True
    if n >= 32 and o < 4 * c:
        return False
    if channels_last:
        return n * pixels > SMALL_MAP or c * o < LARGE_WEIGHT
    return o >= 1024 or o >= 4 * c or (n == 1 and 4 * o >= c)
