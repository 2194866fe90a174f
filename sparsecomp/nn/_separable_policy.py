"""When the fused depthwise -> pointwise op (ops.dwpw_conv2d) beats torch's two convolutions on CPU.

Placeholder until measured: always fuse.
"""
from __future__ import annotations


def should_fuse(n: int, c: int, o: int, h: int, w: int, k: int, stride: int, channels_last: bool) -> bool:
    """True when the fused CPU kernel is expected to be at least as fast as conv2d(groups=C) + conv2d(1x1)."""
    return True
