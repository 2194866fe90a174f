"""Canonical Huffman: exact round trips on adversarial streams, rate vs entropy, header size, corrupt input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsecomp.quantize import entropy_bits, huffman_decode, huffman_encode
from sparsecomp.quantize.huffman import canonical_codes, code_lengths


def _roundtrip(s):
    want = np.asarray(s, dtype=np.int64).reshape(-1)
    modes = (None, False, True) if want.size == 0 or want.max() < 256 else (None, False)
    for pairs in modes:
        data = huffman_encode(s, pairs=pairs)
        out = huffman_decode(data)
        assert out.dtype == np.int64 and np.array_equal(out, want), pairs
    return huffman_encode(s)


@pytest.mark.parametrize("stream", [
    [], [0], [7], [5] * 1000, [0, 1], [1, 0, 1, 1], list(range(16)) * 9, list(range(256)) * 3, [65535, 0, 65535],
    [3] * 999 + [4],
], ids=["empty", "zero", "one_symbol", "repeated", "two", "two_skewed", "equiprobable16", "equiprobable256",
        "extreme_symbols", "one_rare"])
def test_roundtrip_adversarial(stream):
    _roundtrip(stream)


def test_roundtrip_random_lengths_and_alphabets():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 8, 9, 63, 64, 65, 1000):
        for alphabet in (2, 3, 16, 200):
            _roundtrip(rng.integers(0, alphabet, n))


def test_fibonacci_counts_hit_the_length_limit():
    fib = [1, 1]
    while len(fib) < 27:
        fib.append(fib[-1] + fib[-2])
    s = np.repeat(np.arange(27), fib)  # optimal Huffman would need 26-bit codes
    rng = np.random.default_rng(1)
    rng.shuffle(s)
    assert code_lengths(np.bincount(s)).max() <= 24
    _roundtrip(s)


def test_tensor_input_and_empty_header_is_small():
    assert len(huffman_encode(torch.zeros(0, dtype=torch.int64))) <= 2
    assert len(huffman_encode(torch.full((10**6,), 3))) <= 6
    _roundtrip(torch.randint(0, 16, (100,)).numpy())
    assert np.array_equal(huffman_decode(huffman_encode(torch.tensor([[1, 2], [3, 1]]))), [1, 2, 3, 1])


def test_equiprobable_costs_exactly_log2():
    s = np.random.default_rng(0).permutation(np.tile(np.arange(16), 1000))
    data = huffman_encode(s)  # single symbols win: pairs would add a 128-byte table for nothing
    assert data[0] == 2
    header = len(data) - 16000 * 4 // 8
    assert header <= 12  # mode, n, alphabet, 8 bytes of 4-bit lengths


@pytest.mark.parametrize("bits", [3, 4, 5])
def test_within_two_percent_of_entropy(bits):
    # Cluster indices of a Gaussian weight quantized with a linear codebook: the case Huffman is used for.
    rng = np.random.default_rng(bits)
    k = 1 << bits
    w = rng.standard_normal(200_000)
    edges = np.linspace(w.min(), w.max(), k + 1)[1:-1]
    s = np.searchsorted(edges, w)
    data = huffman_encode(s)
    assert len(data) * 8 <= 1.02 * entropy_bits(s)
    _roundtrip(s)


def test_canonical_codes_are_prefix_free():
    lengths = code_lengths(np.array([50, 20, 20, 5, 3, 1, 1, 0, 9]))
    codes = canonical_codes(lengths)
    words = [format(int(c), f"0{int(l)}b") for c, l in zip(codes, lengths) if l]
    assert len(set(words)) == len(words)
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    assert sum(2.0 ** -int(l) for l in lengths if l) <= 1.0


def test_errors_and_corrupt_streams():
    with pytest.raises(ValueError, match="symbols must lie"):
        huffman_encode([-1, 2])
    with pytest.raises(ValueError, match="symbols must lie"):
        huffman_encode([1 << 16])
    with pytest.raises(TypeError):
        huffman_encode(np.array([0.5]))
    with pytest.raises(ValueError, match="pairs=True"):
        huffman_encode([0, 300], pairs=True)
    with pytest.raises(ValueError):
        huffman_decode(b"")
    with pytest.raises(ValueError):
        huffman_decode(b"\x09\x01")
    data = huffman_encode(np.arange(16).repeat(10), pairs=False)
    with pytest.raises(ValueError, match="truncated"):
        huffman_decode(data[:-5])
