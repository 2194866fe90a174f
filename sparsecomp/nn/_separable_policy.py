"""When the fused depthwise -> pointwise CPU op (ops.dwpw_conv2d) beats torch's two convolutions.

Measured with bench/sweep_separable.py and a grid around 7x7 (3x3 depthwise, ReLU6, 1 thread, AVX-512 Xeon,
torch 2.13 eager, interleaved repeats; the machine was shared, so ratios within ~5-10% are ties):

- Maps larger than 7x7 win in both layouts at every batch (1.1x-3x): the depthwise result never makes its round
  trip through memory, and the depthwise stage itself is cheaper than torch's.
- 7x7 maps are all pointwise product, where the kernel is only about as fast as torch's 1x1 convolution. They
  run the channels_last kernel (NCHW inputs whose output is not wider than the input are converted to it):
  it wins where the weight is small next to the pixels (960->160 1.09x-1.35x at every batch). With a large
  weight (C * O >= 256K, e.g. 1024->1024) it still wins at batch 1 (2 threads: 1.11x-1.16x from NCHW,
  1.68x in channels_last; 1 thread: ties at 1.01x-1.06x), wins in channels_last at batch 8 (1.13x-1.14x) but
  loses from NCHW there (0.95x, the layout copies), and ties at batch 32 (0.93x-1.18x across runs). Widening
  NCHW layers (O > C) keep the NCHW kernel: 128->1024 wins at batch 1 (1.2x-1.6x), ties at 8 (1.00x-1.16x)
  and loses at 32 (0.82x).

Elsewhere torch's two convolutions are used (DepthwiseSeparableConv2d says which in extra_repr).
"""
from __future__ import annotations

SMALL_MAP = 7 * 7          # output pixels per image at or below which the small-map rules apply
LARGE_WEIGHT = 512 * 512   # C * O from which a batched 7x7 layer is a tie or a loss
LARGE_BATCH = 32


def _out_size(size: int, k: int, stride: int) -> int:
    return (size + 2 * (k // 2) - k) // stride + 1  # 'same' padding, the MobileNet convention


def should_fuse(n: int, c: int, o: int, h: int, w: int, k: int, stride: int, channels_last: bool) -> bool:
    """True when the fused CPU kernel is expected to be at least as fast as conv2d(groups=C) + conv2d(1x1).

    ``n, c, h, w``: the input's batch, channels and size; ``o``: output channels; ``k``: depthwise kernel size.
    """
    pixels = _out_size(h, k, stride) * _out_size(w, k, stride)
    if pixels > SMALL_MAP:
        return True
    if channels_last:
        return c * o < LARGE_WEIGHT or n < LARGE_BATCH
    if o <= c:  # NCHW run through the channels_last kernel: the layout copies eat the batched win of a large weight
        return c * o < LARGE_WEIGHT or n == 1
    return n < LARGE_BATCH
