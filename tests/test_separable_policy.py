"""should_fuse: the measured fused-vs-torch decision (sparsecomp/nn/_separable_policy.py) on the cases it was fit on."""
from __future__ import annotations

import pytest

from sparsecomp.nn._separable_policy import should_fuse


@pytest.mark.parametrize("n,c,o,hw,stride,channels_last,expected", [
    (1, 32, 64, 112, 1, False, True),      # large maps always fuse
    (32, 144, 24, 56, 2, True, True),
    (8, 512, 512, 14, 1, False, True),
    (1, 1024, 1024, 7, 1, True, False),    # channels_last, one 7x7 image, 1M-weight transpose per call
    (1, 960, 160, 7, 1, True, True),       # ... a smaller weight still wins
    (8, 1024, 1024, 7, 1, True, True),     # ... more images amortize it
    (8, 1024, 128, 7, 1, False, False),    # NCHW 7x7 batch > 1, narrowing pointwise: torch
    (8, 960, 160, 7, 1, False, False),
    (8, 1024, 1024, 7, 1, False, True),    # ... widening / wide pointwise: fused
    (8, 128, 512, 7, 1, False, True),
    (1, 512, 128, 7, 1, False, True),      # NCHW batch 1 fuses unless the output is much narrower
    (1, 960, 160, 7, 1, False, False),
    (8, 960, 160, 14, 2, False, False),    # stride 2 to 7x7 counts as a 7x7 map
    (32, 1024, 1024, 7, 1, True, False),   # batch 32 at 7x7: product-bound, a tie: torch
    (32, 960, 160, 7, 1, False, False),
    (32, 128, 512, 7, 1, False, True),     # ... unless the pointwise widens a lot
])
def test_measured_decisions(n, c, o, hw, stride, channels_last, expected):
    assert should_fuse(n, c, o, hw, hw, 3, stride, channels_last) is expected
