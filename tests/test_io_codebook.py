"""sparsecomp.io with codebook layers: CodebookLinear / CodebookConv2d saved with Huffman-coded indices (fixed width
when smaller), clustered sparse values as a palette, bit-exact reloads into dense and codebook skeletons, a
size report that adds up, and corrupt or mismatched files rejected without touching the target model."""
from __future__ import annotations

import os
import zlib

import pytest
import torch
from torch import nn

from sparsecomp.formats.codebook import pack_indices
from sparsecomp.io import CorruptFileError, ModelMismatchError, compressed_size_report, load_compressed, \
    read_state_dict, save_compressed
from sparsecomp.nn import CodebookConv2d, CodebookLinear, SparseLinear

from conftest import random_pruned
from test_io import bits, entry, split, tamper


def skeleton() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, groups=2, padding_mode="reflect", padding=1), nn.ReLU(), nn.Flatten(),  # 8->4
        nn.Linear(8 * 4 * 4, 60), nn.ReLU(),
        nn.Linear(60, 40, bias=False), nn.ReLU(),
        nn.Linear(40, 10))


def codebook_model(gen) -> nn.Sequential:
    """A pruned 4-bit conv (zero code), a dense-clustered grouped per-channel 3-bit conv, a pruned per-row 5-bit
    linear, a clustered then sparse-converted linear (few distinct values: a palette), a dense last layer."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    m = skeleton()
    with torch.no_grad():
        m[0].weight.copy_(random_pruned(8, 27, 0.6, generator=gen).reshape(8, 3, 3, 3))
        m[5].weight.copy_(random_pruned(60, 128, 0.9, generator=gen))
        m[7].weight.copy_(random_pruned(40, 60, 0.7, generator=gen))
    m[0] = CodebookConv2d.from_dense(m[0], bits=4)
    m[2] = CodebookConv2d.from_dense(m[2], bits=3, per_channel=True)
    m[5] = CodebookLinear.from_dense(m[5], bits=5, per_channel=True)
    m[7] = SparseLinear.from_dense(CodebookLinear.from_dense(m[7], bits=4).to_dense())
    return m.eval()


def tensors(model):
    return {k: v for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, torch.Tensor)}


def assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        if isinstance(sa[k], torch.Tensor):
            assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
            assert torch.equal(bits(sa[k]), bits(sb[k])), k
        else:
            assert sa[k] == sb[k], k
    assert [type(m) for m in a.modules()] == [type(m) for m in b.modules()]


def fingerprint(model):
    return ([(n, type(m)) for n, m in model.named_modules()],
            {k: (id(v), bits(v.detach()).clone()) for k, v in tensors(model).items()})


def expect_rejected(path, match, cls=CorruptFileError, into=None):
    into = skeleton() if into is None else into
    structure, before = fingerprint(into)
    with pytest.raises(cls, match=match):
        load_compressed(path, into=into)
    assert [(n, type(m)) for n, m in into.named_modules()] == structure, "module structure changed"
    now = tensors(into)
    for k, (ident, b) in before.items():
        assert id(now[k]) == ident and torch.equal(bits(now[k].detach()), b), f"{k} changed"


@pytest.fixture
def saved(tmp_path, gen):
    model = codebook_model(gen)
    path = tmp_path / "cb.scz"
    report = save_compressed(model, path, compress=False)  # parts uncompressed: the tamper tests rewrite them
    return model, path, report


@pytest.mark.parametrize("compress", [True, False], ids=["zlib", "plain"])
def test_round_trip_into_dense_skeleton_is_bit_exact(tmp_path, gen, compress):
    model = codebook_model(gen)
    path = tmp_path / "m.scz"
    report = save_compressed(model, path, compress=compress)
    into = load_compressed(path, into=skeleton()).eval()
    assert [type(into[i]) for i in (0, 2, 5, 7, 9)] == [CodebookConv2d, CodebookConv2d, CodebookLinear,
                                                        SparseLinear, nn.Linear]
    assert (into[0].bits, into[0].zero_code, into[2].per_channel, into[2].groups, into[2].padding_mode) == \
        (4, True, True, 2, "reflect")
    assert (into[5].bits, into[5].per_channel, into[5].zero_code) == (5, True, True) and into[7].bias is None
    assert_same(model, into)
    x = torch.randn(5, 3, 8, 8, generator=gen)
    with torch.no_grad():
        y = model(x)
        assert bool(torch.isfinite(y).all()) and torch.equal(y, into(x))
    again = tmp_path / "again.scz"
    save_compressed(into, again, compress=compress)
    assert again.read_bytes() == path.read_bytes()
    assert report.total_bytes == os.path.getsize(path)
    assert report.dense_params == sum(p.numel() for p in skeleton().parameters())


def test_encodings_and_size_report(saved):
    model, path, report = saved
    _, _, header, _ = split(path)
    enc = {e["name"]: e["enc"] for e in header["tensors"]}
    assert enc["0.packed_indices"] == enc["2.packed_indices"] == enc["5.packed_indices"] == "huffman"
    assert enc["7.values"] == "palette"  # 15 distinct nonzero values
    assert "0._extra_state" not in enc and header["modules"]["5"]["config"]["bits"] == 5
    # Huffman beats fixed width: the pruned layers store only the nonzeros' codes plus their gaps
    for name, m in (("0", model[0]), ("5", model[5]), ("2", model[2])):
        stored = sum(p["length"] for p in entry(header, f"{name}.packed_indices")["parts"].values())
        assert stored < m.packed_indices.numel() * 4, name
    palette = sum(p["length"] for p in entry(header, "7.values")["parts"].values())
    assert palette < model[7].values.numel()  # < 1 byte per value, 4 as raw fp32
    kinds = report.bytes_by_kind
    assert sum(kinds.values()) == report.total_bytes == os.path.getsize(path)
    assert kinds["codes"] > 0 and kinds["codebooks"] > 0 and kinds["indices"] > 0 and kinds["headers"] > 24
    assert compressed_size_report(path).bytes_by_kind == kinds
    assert compressed_size_report(model, compress=False).total_bytes == report.total_bytes
    rows = {name: kind for name, kind, _, _ in report.tensors}
    assert rows["5.codebook"] == "codebooks" and rows["5.packed_indices"] == "codes"
    assert "codes" in str(report) and "bits/weight" in str(report)


def test_fixed_width_when_huffman_is_larger(tmp_path, gen):
    """Uniformly random 8-bit indices: Huffman cannot win (its 256-entry length table is pure overhead)."""
    m = nn.Sequential(CodebookLinear(48, 20, bits=8))
    with torch.no_grad():
        m[0].codebook.normal_(generator=gen)
        m[0].packed_indices.copy_(pack_indices(torch.randint(0, 256, (20, 48), generator=gen), 8))
    save_compressed(m, tmp_path / "f.scz", compress=False)
    _, _, header, _ = split(tmp_path / "f.scz")
    assert entry(header, "0.packed_indices")["enc"] == "raw"
    back = load_compressed(tmp_path / "f.scz", into=nn.Sequential(nn.Linear(48, 20)))
    assert torch.equal(back[0].packed_indices, m[0].packed_indices)


def test_into_codebook_skeleton_loads_in_place(saved, gen):
    model, path, _ = saved
    into = skeleton()
    into[5] = CodebookLinear(128, 60, bits=5, per_channel=True, zero_code=True)
    kept = into[5]
    load_compressed(path, into=into)
    assert into[5] is kept
    assert_same(model, into.eval())
    other = skeleton()
    other[5] = CodebookLinear(128, 60, bits=4, per_channel=True, zero_code=True)
    expect_rejected(path, r"module '5'.*differs from the file", ModelMismatchError, into=other)
    narrow = skeleton()
    narrow[2] = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)  # zeros padding, the file's is reflect
    expect_rejected(path, r"module '2'.*does not match", ModelMismatchError, into=narrow)


def _rewrite(header, payload, name, part, mutate):
    p = entry(header, name)["parts"][part]
    assert p["codec"] == "none"
    blob = bytearray(payload[p["offset"]:p["offset"] + p["length"]])
    mutate(blob)
    payload[p["offset"]:p["offset"] + p["length"]] = blob
    p["crc32"] = zlib.crc32(bytes(blob))
    return payload


def test_corrupt_streams_with_valid_checksums(saved, tmp_path):
    _, path, _ = saved

    def count(blob):  # the declared symbol count (varint after the mode byte)
        blob[1] ^= 0x01

    for name, part, mutate, match in [
            ("0.packed_indices", "codes", count, "declares|symbols|positions"),
            ("0.packed_indices", "gaps", count, "positions|symbols|declared|truncated"),
            ("7.values", "codes", count, "declares"),
            ("7.values", "codes", lambda b: b.__setitem__(0, 9), "mode"),
    ]:
        bad = tamper(path, tmp_path, lambda h: None, lambda h, p: _rewrite(h, p, name, part, mutate))
        expect_rejected(bad, match)

    def pinned_nonzero(blob):  # codebook entry 0 of a pruned layer (per row: every 32nd float)
        blob[0:4] = torch.tensor([0.5]).numpy().tobytes()

    bad = tamper(path, tmp_path, lambda h: None, lambda h, p: _rewrite(h, p, "5.codebook", "data", pinned_nonzero))
    expect_rejected(bad, "module '5': codebook entry 0 must be 0.0")


def test_truncated_and_flipped_files(saved, tmp_path):
    _, path, _ = saved
    data = path.read_bytes()
    bad = tmp_path / "bad.scz"
    for n in (10, len(data) // 2, len(data) - 1):
        bad.write_bytes(data[:n])
        expect_rejected(bad, "truncated|magic")
    for pos in range(24, len(data), max(1, len(data) // 40)):
        flipped = bytearray(data)
        flipped[pos] ^= 0x5A
        bad.write_bytes(bytes(flipped))
        expect_rejected(bad, "checksum|header|truncated|longer|inflate")


@pytest.mark.parametrize("edit, match", [
    (lambda h: h["modules"]["5"]["config"].update(bits=9), "bits must be in 1..8"),
    (lambda h: h["modules"]["5"]["config"].update(bits=True), "bits must be an integer"),
    (lambda h: h["modules"]["0"]["config"].update(zero_code="yes"), "zero_code must be true/false"),
    (lambda h: h["modules"]["2"]["config"].update(groups=3), "divisible by groups"),
    (lambda h: h["modules"]["0"]["config"].pop("per_channel"), "exactly the fields"),
    (lambda h: entry(h, "5.packed_indices").update(bits=4), "row_words"),
    (lambda h: entry(h, "5.packed_indices").update(matrix=[60, 100]), "row_words"),
    (lambda h: entry(h, "5.packed_indices").pop("cap"), "exactly the fields"),
    (lambda h: entry(h, "7.values").update(dtype="int32"), "floating"),
    (lambda h: entry(h, "7.values")["parts"]["palette"].update(count=300), "palette holds"),
])
def test_tampered_headers(saved, tmp_path, edit, match):
    _, path, _ = saved
    expect_rejected(tamper(path, tmp_path, edit), match)


def test_other_bits_in_the_file_is_a_mismatch_not_a_crash(saved, tmp_path):
    """A consistent file for a 4-bit layer (config, entry and stream agree) loads only into a fitting model."""
    model, path, _ = saved
    m = codebook_model(torch.Generator().manual_seed(5))
    m[5] = CodebookLinear.from_dense(m[5].to_dense(), bits=4, per_channel=True)
    other = tmp_path / "other.scz"
    save_compressed(m, other)
    into = skeleton()
    into[5] = CodebookLinear(128, 60, bits=5, per_channel=True, zero_code=True)
    expect_rejected(other, "module '5'", ModelMismatchError, into=into)
    assert set(read_state_dict(other)) == set(tensors(m))

