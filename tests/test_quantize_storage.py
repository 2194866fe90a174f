"""Layer storage (Huffman gaps + indices + codebook + bias) round trips exactly; the example runs end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sparsecomp.nn import CodebookLinear
from sparsecomp.quantize.huffman import huffman_encode
from sparsecomp.quantize.storage import _gaps, _positions, decode_indices, decode_layer, encode_indices, encode_layer


@pytest.mark.parametrize("cap", [1, 2, 7, 255])
def test_gap_coding_roundtrip(cap):
    rng = np.random.default_rng(cap)
    for n, density in ((1, 1.0), (50, 0.5), (1000, 0.02), (300, 0.0)):
        pos = np.flatnonzero(rng.random(n) < density)
        assert np.array_equal(_positions(_gaps(pos, cap), cap), pos)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("pruned", [False, True])
def test_layer_roundtrip(per_channel, pruned, gen):
    lin = nn.Linear(45, 13)
    if pruned:
        with torch.no_grad():
            lin.weight[torch.rand(13, 45, generator=gen) < 0.85] = 0
    layer = CodebookLinear.from_dense(lin, bits=3, per_channel=per_channel)
    blob, size = encode_layer(layer, bias_dtype=torch.float32)
    assert size.total == len(blob)
    back = decode_layer(blob)
    assert torch.equal(back.weight_matrix(), layer.weight_matrix())
    assert torch.equal(back.bias, layer.bias) and back.zero_code == pruned
    if pruned:  # sparse positions cost far less than a full index stream
        assert size.gaps + size.indices < 13 * 45 * 3 / 8


def test_fp16_bias_and_corrupt_blob(gen):
    layer = CodebookLinear.from_dense(nn.Linear(8, 3), bits=2)
    blob, size = encode_layer(layer)
    assert size.bias == 6
    torch.testing.assert_close(decode_layer(blob).bias, layer.bias.detach().half().float())
    with pytest.raises(ValueError):
        decode_layer(blob[:5])


def test_deep_compression_example_smoke(capsys):
    from sparsecomp.examples.deep_compression import main

    out = main(["--epochs", "2", "--rounds", "1"])
    assert out["exact"] and out["ratio"] > 20
    assert "Huffman-coded" in capsys.readouterr().out


def test_index_streams_roundtrip_and_validation():
    rng = np.random.default_rng(0)
    idx = np.where(rng.random(500) < 0.9, 0, rng.integers(1, 8, 500))
    gaps, cap, codes = encode_indices(idx, zero_code=True)
    assert cap > 0 and np.array_equal(decode_indices(gaps, codes, 500, cap, 3), idx)
    dense = rng.integers(0, 8, 77)
    g0, cap0, c0 = encode_indices(dense, zero_code=False)
    assert cap0 == 0 and np.array_equal(decode_indices(g0, c0, 77, 0, 3), dense)
    with pytest.raises(ValueError, match="out of range"):
        decode_indices(g0, c0, 77, 0, 2)
    with pytest.raises(ValueError, match="positions"):
        decode_indices(gaps, codes, 400, cap, 3)  # the matrix is smaller than the positions
    with pytest.raises(ValueError, match="code 0 stored"):
        decode_indices(gaps, huffman_encode(np.zeros(int((idx != 0).sum()), dtype=np.int64)), 500, cap, 3)
    with pytest.raises(ValueError, match="at most 77"):
        decode_indices(g0, huffman_encode(np.zeros(78, dtype=np.int64)), 77, 0, 3)
    with pytest.raises(ValueError, match="gaps given"):
        decode_indices(gaps, c0, 77, 0, 3)
