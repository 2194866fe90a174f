"""The binary CNN example on the scikit-learn digits must learn, and be evaluated on the packed kernels.

Stated margins: chance is 0.10; the binary model (float first conv and head, two BinaryConv2d with binarized
activations) must reach >= 0.90 test accuracy and stay within 5 points of the same network in float. Measured
on this machine (seeds 0..3, 6 epochs): binary 0.976..0.989, float 0.993..0.996, gap 0.7..2.0 points.
"""
from __future__ import annotations

import sparsecomp.ops
from sparsecomp.datasets import digits
from sparsecomp.examples import binary_digits


def test_binary_digits_learns_and_evaluates_packed(monkeypatch, capsys):
    calls = []
    real = sparsecomp.ops.binary_conv2d

    def counting(*args, **kwargs):
        calls.append(args[0].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(sparsecomp.ops, "binary_conv2d", counting)
    out = binary_digits.main(["--seed", "0"])
    printed = capsys.readouterr().out
    binary, fp = out["binary_accuracy"], out["float_accuracy"]
    assert binary >= 0.90, out
    assert fp >= 0.95, out
    assert fp - binary <= 0.05, out
    # the binary accuracy was measured in eval mode on the packed kernel: both binary convs ran on the test set
    n_test = digits(images=True)[1].y.shape[0]
    assert calls.count(n_test) == 2, calls
    assert f"binary accuracy {binary:.3f} vs float {fp:.3f}" in printed
    # 1-bit weights: the binary model's conv/linear weights are several times smaller in total (its float first
    # conv and head are kept), and its two binary convs ~30x smaller than in float
    details = out["details"]
    assert details["binary"]["weight_bytes"] * 8 < details["float"]["weight_bytes"]
