"""should_fuse: the measured fused-vs-torch decision (sparsecomp/nn/_separable_policy.py) on the cases it was fit on."""
from __future__ import annotations

import pytest

from sparsecomp.nn._separable_policy import should_fuse


@pytest.mark.parametrize("n,c,o,hw,stride,channels_last,expected", [
    (1, 32, 64, 112, 1, False, True),      # maps larger than 7x7 always fuse
    (32, 144, 24, 56, 2, True, True),
    (32, 1024, 1024, 14, 1, False, True),
    (1, 1024, 1024, 7, 1, True, True),     # 7x7, large weight: a win at batch 1 ...
    (8, 1024, 1024, 7, 1, True, True),     # ... and at 8 in channels_last ...
    (8, 1024, 1024, 7, 1, False, False),   # ... but not from NCHW at 8 (layout copies) ...
    (32, 1024, 1024, 7, 1, False, False),  # ... a tie at 32 (NCHW narrowing runs the channels_last kernel)
    (1, 512, 512, 7, 1, False, True),
    (1, 960, 160, 7, 1, False, True),      # 7x7, small weight: fused at every batch
    (32, 960, 160, 7, 1, True, True),
    (8, 1024, 128, 14, 2, False, True),    # stride 2 to 7x7 counts as a 7x7 map
    (1, 128, 1024, 7, 1, False, True),     # widening NCHW keeps the NCHW kernel: fused below batch 32
    (32, 128, 1024, 7, 1, False, False),
])
def test_measured_decisions(n, c, o, hw, stride, channels_last, expected):
    assert should_fuse(n, c, o, hw, hw, 3, stride, channels_last) is expected
