"""sparsecomp.io: bit-exact round trips of models mixing dense, pruned-dense and sparse layers; rejection of
truncated, tampered and mismatched files without touching the target model; no unpickling; size reports."""
from __future__ import annotations

import json
import os
import pickle
import struct
import zlib

import pytest
import torch
from torch import nn

from sparsecomp.io import (MAGIC, CorruptFileError, ModelMismatchError, compressed_size_report, load_compressed,
                           read_state_dict, save_compressed)
from sparsecomp.nn import BinaryConv2d, BinaryLinear, SparseConv2d, SparseLinear

from conftest import random_pruned

PREAMBLE = struct.Struct("<8sIIQ")


class Extras(nn.Module):
    """Buffers of every allowed dtype, with awkward values."""

    def __init__(self):
        super().__init__()
        self.register_buffer("f16", torch.tensor([1.5, -0.0, float("inf"), 6.1e-5], dtype=torch.float16))
        self.register_buffer("bf16", torch.tensor([[3.0, -2.5], [float("nan"), 0.0]], dtype=torch.bfloat16))
        self.register_buffer("flags", torch.tensor([True, False, True]))
        self.register_buffer("small", torch.tensor([-128, 0, 127], dtype=torch.int8))
        self.register_buffer("u8", torch.tensor([0, 255], dtype=torch.uint8))
        self.register_buffer("i16", torch.tensor([-32768, 7], dtype=torch.int16))
        self.register_buffer("i32", torch.tensor([5, 3, 1 << 30], dtype=torch.int32))
        self.register_buffer("steps", torch.tensor(123456789012, dtype=torch.int64))
        self.register_buffer("f64", torch.tensor([1e-300, -1e300], dtype=torch.float64))
        self.register_buffer("ramp", torch.arange(0, 3000, 3, dtype=torch.int64))  # delta-encodable
        self.register_buffer("empty", torch.zeros(0, 4))

    def forward(self, x):
        return x


def skeleton() -> nn.Sequential:
    """The dense architecture, as a user builds it before loading."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 8 * 8, 70), nn.ReLU(),
        nn.Linear(70, 33), nn.ReLU(),
        nn.Linear(33, 10), Extras())


def compressed_model(gen) -> nn.Sequential:
    """Dense conv + BN, a SparseConv2d, a SparseLinear, a pruned-but-unconverted Linear (with -0.0 and NaN in
    it), a dense Linear, and buffers of every dtype."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    m = skeleton()
    with torch.no_grad():
        m[1].running_mean.normal_()
        m[1].running_var.uniform_(0.5, 2)
        m[1].num_batches_tracked.fill_(17)
        m[3].weight.copy_(random_pruned(8, 6 * 9, 0.8, generator=gen).reshape(8, 6, 3, 3))
        m[6].weight.copy_(random_pruned(70, 512, 0.9, generator=gen))
        w = random_pruned(33, 70, 0.85, generator=gen)
        w[0, 1], w[2, 3] = -0.0, float("nan")
        m[8].weight.copy_(w)
    m[3] = SparseConv2d.from_dense(m[3])
    m[6] = SparseLinear.from_dense(m[6])
    return m.eval()


def bits(t: torch.Tensor) -> torch.Tensor:
    """Tensor reinterpreted as integers, so that equality is bitwise (NaN == NaN, -0.0 != 0.0)."""
    if t.is_floating_point():
        return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
        assert torch.equal(bits(sa[k]), bits(sb[k])), k
    assert [type(m) for m in a.modules()] == [type(m) for m in b.modules()]


def fingerprint(model: nn.Module):
    """Everything a failed load must leave unchanged: module types, tensor identities and bits."""
    return ([(n, type(m)) for n, m in model.named_modules()],
            {k: (id(v), bits(v.detach()).clone()) for k, v in model.state_dict(keep_vars=True).items()})


def assert_untouched(model: nn.Module, before) -> None:
    structure, tensors = before
    assert [(n, type(m)) for n, m in model.named_modules()] == structure, "module structure changed"
    now = model.state_dict(keep_vars=True)
    assert set(now) == set(tensors)
    for k, (ident, b) in tensors.items():
        v = now[k].detach()
        assert id(now[k]) == ident, f"{k} replaced"
        assert v.shape == b.shape and torch.equal(bits(v), b), f"{k} changed"


@pytest.fixture
def saved(tmp_path, gen):
    model = compressed_model(gen)
    path = tmp_path / "model.scz"
    report = save_compressed(model, path)
    return model, path, report


# ============================================================================================ round trips

@pytest.mark.parametrize("compress", [True, False], ids=["zlib", "plain"])
def test_round_trip_into_dense_skeleton_is_bit_exact(tmp_path, gen, compress):
    model = compressed_model(gen)
    path = tmp_path / "m.scz"
    save_compressed(model, path, compress=compress)
    into = skeleton().eval()
    assert load_compressed(path, into=into) is into
    assert isinstance(into[3], SparseConv2d) and isinstance(into[6], SparseLinear)
    assert type(into[8]) is nn.Linear  # pruned-but-dense stays dense
    assert_same_state(model, into)
    x = torch.randn(5, 1, 8, 8, generator=gen)
    with torch.no_grad():
        for m in (model, into):
            m[8].weight[2, 3] = 0.5  # the planted NaN would make every output NaN
        y = model(x)
        assert bool(torch.isfinite(y).all()) and torch.equal(y, into(x))
    assert not [f for f in os.listdir(tmp_path) if f != "m.scz"], "temporary files left behind"


def test_round_trip_into_converted_skeleton_resizes_sparse_layers(saved, gen):
    model, path, _ = saved
    into = skeleton()
    # already converted, with another nonzero count: the loader resizes values/col_idx
    into[6] = SparseLinear.from_dense(into[6])
    into[3] = SparseConv2d.from_dense(into[3])
    assert into[6].nnz != model[6].nnz
    load_compressed(path, into=into)
    assert_same_state(model, into.eval())


def test_state_dict_without_model_and_encodings(saved):
    model, path, report = saved
    state = read_state_dict(path)
    for k, v in model.state_dict().items():
        assert torch.equal(bits(state[k]), bits(v)), k
    enc = {name: e for name, _, e, _ in report.tensors}
    assert enc["6.row_ptr"] == "delta" and enc["3.row_ptr"] == "delta" and enc["11.ramp"] == "delta"
    assert enc["8.weight"] == "bitmap"  # the pruned dense Linear: mask + values
    assert enc["10.weight"] == "raw"


def shuffled_row(sp: SparseLinear) -> SparseLinear:
    """The same matrix with the first two stored entries of row 0 swapped: valid, but not in canonical order."""
    assert int(sp.row_ptr[1]) >= 2
    with torch.no_grad():
        sp.values[[0, 1]] = sp.values[[1, 0]].clone()
    sp.col_idx[[0, 1]] = sp.col_idx[[1, 0]].clone()
    return sp


def test_sparse_indices_stored_as_mask_only_when_exact(tmp_path, gen):
    model = compressed_model(gen)
    report = save_compressed(model, tmp_path / "a.scz")
    enc = {name: e for name, _, e, _ in report.tensors}
    assert enc["6.col_idx"] == "colmask" and enc["3.col_idx"] == "colmask"
    # a non-canonical order cannot be rebuilt from a mask: stored raw, and the order round-trips
    dense_out = model[6].to_dense()
    model[6] = shuffled_row(model[6])
    assert torch.equal(model[6].to_dense().weight, dense_out.weight)
    report = save_compressed(model, tmp_path / "b.scz")
    assert {name: e for name, _, e, _ in report.tensors}["6.col_idx"] == "raw"
    into = skeleton()
    load_compressed(tmp_path / "b.scz", into=into)
    assert_same_state(model, into)
    # very sparse layers keep 16-bit indices (smaller than a 1-bit-per-weight mask below 1/16 density)
    lin = nn.Linear(400, 300)
    with torch.no_grad():
        lin.weight.copy_(random_pruned(300, 400, 0.97, generator=gen))
    report = save_compressed(SparseLinear.from_dense(lin), tmp_path / "c.scz")
    assert {name: e for name, _, e, _ in report.tensors}["col_idx"] == "raw"
    back = SparseLinear(400, 300)
    load_compressed(tmp_path / "c.scz", into=back)
    assert torch.equal(back.weight_matrix(), lin.weight.detach())


def test_pruned_dense_weights_are_stored_compactly(tmp_path, gen):
    lin = nn.Linear(300, 200, bias=False)
    with torch.no_grad():
        lin.weight.copy_(random_pruned(200, 300, 0.9, generator=gen))
    report = save_compressed(lin, tmp_path / "l.scz", compress=False)
    nnz = int((lin.weight != 0).sum())
    # 1 bit per weight + 4 bytes per nonzero (+ header), instead of 4 bytes per weight
    assert report.total_bytes - report.bytes_by_kind["headers"] == 200 * 300 // 8 + 4 * nnz
    assert os.path.getsize(tmp_path / "l.scz") == report.total_bytes
    assert report.ratio > 5


# ============================================================================================ size report

def test_size_report(saved):
    model, path, report = saved
    assert report.total_bytes == os.path.getsize(path)
    assert sum(report.bytes_by_kind.values()) == report.total_bytes
    assert report.bytes_by_kind["values"] > 0 and report.bytes_by_kind["indices"] > 0
    assert report.bytes_by_kind["headers"] > PREAMBLE.size
    # weights of the equivalent dense model = the parameters of the dense skeleton
    assert report.dense_params == sum(p.numel() for p in skeleton().parameters())
    assert report.bits_per_weight == pytest.approx(8 * report.total_bytes / report.dense_params)
    again = compressed_size_report(path)
    assert again.bytes_by_kind == report.bytes_by_kind and again.total_bytes == report.total_bytes
    in_memory = compressed_size_report(model)
    assert in_memory.total_bytes == report.total_bytes
    text = str(report)
    assert "bits/weight" in text and "values" in text and "indices" in text
    kinds = {name: kind for name, kind, _, _ in report.tensors}
    assert kinds["6.values"] == "values" and kinds["6.col_idx"] == "indices" and kinds["10.weight"] == "dense"


# ============================================================================================ corrupt files

def split(path):
    data = path.read_bytes()
    magic, version, crc, hlen = PREAMBLE.unpack_from(data)
    header = json.loads(zlib.decompress(data[24:24 + hlen]))
    return magic, version, header, data[24 + hlen:]


def write(path, header, payload, magic=MAGIC, version=1, raw_header: bytes | None = None):
    hb = raw_header if raw_header is not None else zlib.compress(json.dumps(header).encode())
    path.write_bytes(PREAMBLE.pack(magic, version, zlib.crc32(hb), len(hb)) + hb + payload)


def expect_rejected(path, match, cls=CorruptFileError):
    """The load fails with ``cls`` matching ``match`` and the target model is left exactly as it was."""
    into = skeleton()
    before = fingerprint(into)
    with pytest.raises(cls, match=match):
        load_compressed(path, into=into)
    assert_untouched(into, before)
    assert issubclass(cls, ValueError)


def test_truncated_files_are_rejected(saved, tmp_path):
    _, path, _ = saved
    data = path.read_bytes()
    hlen = PREAMBLE.unpack_from(data)[3]
    cut = tmp_path / "cut.scz"
    for n in (0, 5, 8, 23, 24, 24 + hlen // 2, 24 + hlen, 24 + hlen + 1, (len(data) + 24 + hlen) // 2,
              len(data) - 1):
        cut.write_bytes(data[:n])
        expect_rejected(cut, "truncated|magic")
    cut.write_bytes(data + b"\0")
    expect_rejected(cut, "longer than its header says")


def test_every_flipped_byte_is_detected(saved, tmp_path):
    _, path, _ = saved
    data = bytearray(path.read_bytes())
    bad = tmp_path / "bad.scz"
    positions = sorted({*range(0, 24), *range(24, len(data), max(1, len(data) // 150)), len(data) - 1})
    into = skeleton()  # one target for all attempts: each must leave it untouched
    before = fingerprint(into)
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 0x5A
        bad.write_bytes(bytes(flipped))
        with pytest.raises(CorruptFileError,
                           match="magic|version|checksum|truncated|longer|header|inflate") as err:
            load_compressed(bad, into=into)
        assert_untouched(into, before)
        if pos >= 24 + PREAMBLE.unpack_from(data)[3]:
            assert "checksum" in str(err.value) and "part" in str(err.value), (pos, err.value)


def test_wrong_magic_and_version(saved, tmp_path):
    _, path, _ = saved
    magic, version, header, payload = split(path)
    bad = tmp_path / "bad.scz"
    write(bad, header, payload, magic=b"PK\x03\x04\0\0\0\0")
    expect_rejected(bad, "not a sparsecomp file")
    write(bad, header, payload, version=2)
    expect_rejected(bad, "unsupported format version 2")
    bad.write_bytes(pickle.dumps({"weight": [1, 2, 3]}))
    expect_rejected(bad, "not a sparsecomp file|truncated")


def tamper(path, tmp_path, edit, payload_edit=None):
    """Rewrites the header (and payload) with *valid* checksums, so the semantic checks must catch it."""
    _, _, header, payload = split(path)
    edit(header)
    if payload_edit is not None:
        payload = payload_edit(header, bytearray(payload))
    out = tmp_path / "tampered.scz"
    write(out, header, bytes(payload))
    return out


def entry(header, name):
    return next(e for e in header["tensors"] if e["name"] == name)


@pytest.mark.parametrize("edit, match", [
    (lambda h: entry(h, "10.weight").update(dtype="complex64"), "dtype 'complex64' is not allowed"),
    (lambda h: entry(h, "10.weight").update(dtype="object"), "not allowed"),
    (lambda h: entry(h, "10.weight").update(shape=[10, 34]), "elements but shape"),
    (lambda h: entry(h, "10.weight").update(shape=[10, -33]), "integer >= 0"),
    (lambda h: entry(h, "10.weight").update(shape=[10, 33.0]), "integer >= 0"),
    (lambda h: entry(h, "10.weight").update(shape=[2**40, 2**40]), "elements but shape"),
    (lambda h: entry(h, "10.weight")["parts"]["data"].update(length=1), "offset|bytes stored|cover"),
    (lambda h: entry(h, "10.weight")["parts"]["data"].update(offset=0), "offset"),
    (lambda h: entry(h, "10.weight").update(enc="pickle"), "unknown encoding"),
    (lambda h: entry(h, "8.weight")["parts"]["mask"].update(count=1), "mask bytes"),
    (lambda h: entry(h, "6.col_idx").update(matrix=[70, 511]), "mask bytes"),
    (lambda h: entry(h, "6.col_idx").update(matrix=[70, "512"]), "matrix"),
    (lambda h: entry(h, "6.col_idx").pop("matrix"), "exactly the fields"),
    (lambda h: h.update(payload_bytes=h["payload_bytes"] + 1), "truncated"),
    (lambda h: h.update(extra=1), "exactly the fields"),
    (lambda h: h["tensors"].append(dict(h["tensors"][0])), "appears twice"),
    (lambda h: h["modules"]["6"].update(kind="os.system"), "unknown kind"),
    (lambda h: h["modules"]["6"]["config"].update(in_features="512"), "in_features"),
    (lambda h: h.update(format="safetensors"), "format"),
])
def test_tampered_headers_are_rejected(saved, tmp_path, edit, match):
    _, path, _ = saved
    expect_rejected(tamper(path, tmp_path, edit), match)


def test_malformed_header_json_is_rejected(saved, tmp_path):
    _, path, _ = saved
    _, _, header, payload = split(path)
    bad = tmp_path / "bad.scz"
    text = json.dumps(header)
    for raw, match in [(text.replace('"format"', '"format":"x","format"', 1), "duplicate JSON key"),
                       (text.replace('"dense_params":', '"dense_params":NaN,"x":', 1), "invalid JSON constant"),
                       (text[:-1], "not valid JSON"), ("[1, 2]", "exactly the fields")]:
        write(bad, None, payload, raw_header=zlib.compress(raw.encode()))
        expect_rejected(bad, match)
    write(bad, None, payload, raw_header=b"not zlib at all")
    expect_rejected(bad, "inflated")


def test_bad_payload_with_valid_checksums_is_rejected(saved, tmp_path):
    _, path, _ = saved

    def recrc(header, payload, name, part, mutate):
        """Mutates one uncompressed part in place and fixes its checksum."""
        p = entry(header, name)["parts"][part]
        assert p["codec"] == "none"
        blob = bytearray(payload[p["offset"]:p["offset"] + p["length"]])
        mutate(blob)
        payload[p["offset"]:p["offset"] + p["length"]] = blob
        p["crc32"] = zlib.crc32(bytes(blob))
        return payload

    model, _, _ = saved
    plain = tmp_path / "plain.scz"
    save_compressed(model, plain, compress=False)

    # row pointers that run backwards: the sparse structure check catches it before anything is copied
    def break_row_ptr(blob):
        blob[3] = 0xFF
    bad = tamper(plain, tmp_path, lambda h: None, lambda h, p: recrc(h, p, "6.row_ptr", "deltas", break_row_ptr))
    expect_rejected(bad, "invalid sparse weight")

    # a column mask with more entries than the stored values / with bits past the matrix
    def extra_col(blob):
        blob[0] |= 0xFF
        blob[1] |= 0xFF
    bad = tamper(plain, tmp_path, lambda h: None, lambda h, p: recrc(h, p, "6.col_idx", "mask", extra_col))
    expect_rejected(bad, "mask marks")

    # a column index beyond the layer's width (indices stored raw: a non-canonical order, see below)
    odd = compressed_model(torch.Generator().manual_seed(1))
    odd[6] = shuffled_row(odd[6])
    save_compressed(odd, plain, compress=False)

    def big_col(blob):
        blob[0:2] = struct.pack("<H", 4000)
    bad = tamper(plain, tmp_path, lambda h: None, lambda h, p: recrc(h, p, "6.col_idx", "data", big_col))
    expect_rejected(bad, "col_idx holds a column")

    # a bool stored as 2
    def bad_bool(blob):
        blob[0] = 2
    bad = tamper(plain, tmp_path, lambda h: None, lambda h, p: recrc(h, p, "11.flags", "data", bad_bool))
    expect_rejected(bad, "bool values must be 0 or 1")

    # mask and values disagree on the nonzero count
    def extra_bit(blob):
        blob[:] = b"\xff" * len(blob)
    bad = tamper(plain, tmp_path, lambda h: None, lambda h, p: recrc(h, p, "8.weight", "mask", extra_bit))
    expect_rejected(bad, "mask")


def test_zlib_bomb_is_bounded(saved, tmp_path):
    """A zlib part inflating past its declared size is rejected (inflation stops at the declared size)."""
    _, path, _ = saved

    def swap(header, payload):
        e = entry(header, "10.weight")["parts"]["data"]
        bomb = zlib.compress(b"\0" * (e["count"] * 4 * 50))
        others = [p for t in header["tensors"] for p in t["parts"].values()]
        others.sort(key=lambda p: p["offset"])
        out = bytearray()
        for p in others:
            blob = payload[p["offset"]:p["offset"] + p["length"]] if p is not e else bomb
            p["offset"], p["length"], p["crc32"] = len(out), len(blob), zlib.crc32(blob)
            if p is e:
                p["codec"] = "zlib"
            out += blob
        header["payload_bytes"] = len(out)
        return out

    expect_rejected(tamper(path, tmp_path, lambda h: None, swap), "inflated size")


# ============================================================================================ mismatched models

def test_mismatched_models_are_rejected_untouched(saved):
    _, path, _ = saved
    other = skeleton()
    other[8] = nn.Linear(70, 34)
    other[10] = nn.Linear(34, 10)
    before = fingerprint(other)
    with pytest.raises(ModelMismatchError, match="SparseLinear|shape"):
        load_compressed(path, into=other)
    assert_untouched(other, before)
    # the sparse layer's place holds something else
    wrong = skeleton()
    wrong[6] = nn.Identity()
    before = fingerprint(wrong)
    with pytest.raises(ModelMismatchError, match="module '6': into has a Identity"):
        load_compressed(path, into=wrong)
    assert_untouched(wrong, before)
    # a dense layer of the wrong width where the file has a SparseLinear
    narrow = skeleton()
    narrow[6] = nn.Linear(512, 71)
    before = fingerprint(narrow)
    with pytest.raises(ModelMismatchError, match="does not match"):
        load_compressed(path, into=narrow)
    assert_untouched(narrow, before)
    # dtype mismatch
    doubled = skeleton().double()
    before = fingerprint(doubled)
    with pytest.raises(ModelMismatchError, match="dtype"):
        load_compressed(path, into=doubled)
    assert_untouched(doubled, before)
    # extra/missing entries
    smaller = skeleton()[:11]
    with pytest.raises(ModelMismatchError, match="names differ"):
        load_compressed(path, into=smaller)
    with pytest.raises(TypeError, match="into must be an nn.Module"):
        load_compressed(path, into={"a": 1})


def test_loader_never_unpickles(saved, monkeypatch):
    _, path, _ = saved

    def forbidden(*args, **kwargs):
        raise AssertionError("the loader must not unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    into = skeleton()
    load_compressed(path, into=into)
    compressed_size_report(path)
    read_state_dict(path)


# ============================================================================================ save errors

def test_save_rejects_unsupported_state(tmp_path):
    class WithExtraState(nn.Linear):
        def get_extra_state(self):
            return {"anything": 1}

    with pytest.raises(TypeError, match="only tensors"):
        save_compressed(WithExtraState(2, 2), tmp_path / "x.scz")
    m = nn.Module()
    m.register_buffer("z", torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(TypeError, match="complex64"):
        save_compressed(m, tmp_path / "x.scz")
    with pytest.raises(TypeError, match="nn.Module"):
        save_compressed({"w": torch.zeros(1)}, tmp_path / "x.scz")
    assert not os.listdir(tmp_path)


# ============================================================================================ binary layers

def binary_skeleton() -> nn.Sequential:
    """The dense architecture the binary model below is loaded into."""
    return nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.Conv2d(6, 6, 3, stride=2, padding=2, dilation=2, groups=2), nn.ReLU(), nn.Flatten(),  # 9x9 -> 5x5
        nn.Linear(6 * 5 * 5, 70),
        nn.Linear(70, 33, bias=False),
        nn.Linear(33, 10))


def binary_model(gen) -> nn.Sequential:
    """Binary layers of every stored variant: a folded BatchNorm (``scale``, frozen signs), a grouped strided
    dilated conv with +1 padding and its latent weight kept, a fused ReLU, real-valued inputs without bias
    (latent kept); the last layer stays dense."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    m = binary_skeleton()
    bn = nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.normal_()  # negative gammas give negative alphas
        bn.bias.normal_()
    m[0] = BinaryConv2d.from_float(m[0], bn=bn)
    m[2] = BinaryConv2d.from_float(m[2], padding_mode="ones", keep_latent=True)
    m[5] = BinaryLinear.from_float(m[5], activation="relu")
    m[6] = BinaryLinear.from_float(m[6], binarize_input=False, keep_latent=True)
    return m.eval()


@pytest.fixture
def binary_saved(tmp_path, gen):
    model = binary_model(gen)
    path = tmp_path / "binary.scz"
    save_compressed(model, path, compress=False)  # parts uncompressed: the tamper tests rewrite them
    return model, path


@pytest.mark.parametrize("compress", [True, False], ids=["zlib", "plain"])
def test_binary_round_trip_into_dense_skeleton_is_bit_exact(tmp_path, gen, compress):
    model = binary_model(gen)
    path = tmp_path / "b.scz"
    report = save_compressed(model, path, compress=compress)
    into = binary_skeleton()
    assert load_compressed(path, into=into) is into
    into.eval()
    assert [type(into[i]) for i in (0, 2, 5, 6, 7)] == [BinaryConv2d, BinaryConv2d, BinaryLinear, BinaryLinear,
                                                        nn.Linear]
    assert into[0].scale is not None and into[0].weight is None and into[0].bias is not None
    assert into[2].weight is not None and into[2].keep_latent and into[2].padding_mode == "ones"
    assert (into[2].groups, into[2].stride, into[2].dilation, into[2].padding) == (2, (2, 2), (2, 2), (2, 2))
    assert into[5].activation == "relu" and into[6].bias is None and not into[6].binarize_input
    assert_same_state(model, into)
    assert torch.equal(into[2].weight, model[2].weight)  # the latent weight came back too
    x = torch.randn(7, 4, 9, 9, generator=gen)
    with torch.no_grad():
        y = model(x)
        assert bool(torch.isfinite(y).all()) and torch.equal(y, into(x))
    # saving the reloaded model writes the same bytes: nothing was lost or re-derived
    again = tmp_path / "again.scz"
    save_compressed(into, again, compress=compress)
    assert again.read_bytes() == path.read_bytes()
    assert report.dense_params == sum(p.numel() for p in binary_skeleton().parameters())
    packed = sum(model[i].weight_bits.numel() * 8 for i in (0, 2, 5, 6))
    assert report.bytes_by_kind["packed_bits"] == packed if not compress else 0 < report.bytes_by_kind[
        "packed_bits"] <= packed


def test_binary_file_into_binary_skeleton_loads_in_place(binary_saved):
    model, path = binary_saved
    into = binary_skeleton()
    # constructor arguments as in the file; optional members (scale, latent weight) different: they follow the file
    into[0] = BinaryConv2d.from_float(into[0])
    into[2] = BinaryConv2d.from_float(into[2], padding_mode="ones", keep_latent=True)
    into[5] = BinaryLinear.from_float(into[5], activation="relu")
    into[6] = BinaryLinear.from_float(into[6], binarize_input=False, keep_latent=True)
    modules = [into[i] for i in (0, 2, 5, 6)]
    assert into[0].scale is None and into[0].weight is not None
    load_compressed(path, into=into)
    assert [into[i] for i in (0, 2, 5, 6)] == modules, "existing binary modules must be loaded in place"
    assert into[0].scale is not None and into[0].weight is None
    assert_same_state(model, into.eval())
    x = torch.randn(3, 4, 9, 9)
    with torch.no_grad():
        assert torch.equal(model(x), into(x))
    # a differing constructor argument is another model
    other = binary_skeleton()
    other[5] = BinaryLinear.from_float(other[5])  # activation none, the file's is relu
    before = fingerprint(other)
    with pytest.raises(ModelMismatchError, match="module '5'.*differs from the file"):
        load_compressed(path, into=other)
    assert_untouched(other, before)


def _rewrite_part(header, payload, name, part, mutate):
    """Mutates one uncompressed part in place and fixes its checksum (so only the semantic checks can object)."""
    p = entry(header, name)["parts"][part]
    assert p["codec"] == "none"
    blob = bytearray(payload[p["offset"]:p["offset"] + p["length"]])
    mutate(blob)
    payload[p["offset"]:p["offset"] + p["length"]] = blob
    p["crc32"] = zlib.crc32(bytes(blob))
    return payload


def expect_binary_rejected(path, match, cls=CorruptFileError):
    into = binary_skeleton()
    before = fingerprint(into)
    with pytest.raises(cls, match=match):
        load_compressed(path, into=into)
    assert_untouched(into, before)


def test_corrupt_packed_bits_are_rejected(binary_saved, tmp_path):
    _, path = binary_saved

    def tail_bit(blob):  # 150 inputs: bits 22..63 of each row's third word are padding; set bit 40 of row 0's
        blob[2 * 8 + 5] |= 1

    bad = tamper(path, tmp_path, lambda h: None, lambda h, p: _rewrite_part(h, p, "5.weight_bits", "data", tail_bit))
    expect_binary_rejected(bad, r"module '5': invalid packed bits.*tail bits")

    def conv_tail_bit(blob):  # 3 channels per group: bits 3..63 of every word are padding
        blob[7] |= 0x80  # the sign bit of the first word

    bad = tamper(path, tmp_path, lambda h: None,
                 lambda h, p: _rewrite_part(h, p, "2.weight_bits", "data", conv_tail_bit))
    expect_binary_rejected(bad, r"module '2': invalid packed bits.*tail bits")

    def flip_sign(blob):  # an in-range bit: valid bits, but no longer the stored latent weight's signs
        blob[0] ^= 1

    bad = tamper(path, tmp_path, lambda h: None, lambda h, p: _rewrite_part(h, p, "6.weight_bits", "data", flip_sign))
    expect_binary_rejected(bad, r"module '6': weight_bits are not the signs of the stored latent weight")
    # the same flip where no latent weight is stored is a valid (different) model: it loads
    ok = tamper(path, tmp_path, lambda h: None, lambda h, p: _rewrite_part(h, p, "5.weight_bits", "data", flip_sign))
    into = load_compressed(ok, into=binary_skeleton())
    assert int(into[5].weight_bits[0, 0] & 1) != int(binary_saved[0][5].weight_bits[0, 0] & 1)
    # packed bits of the wrong shape never reach the module
    bad = tamper(path, tmp_path, lambda h: entry(h, "5.weight_bits").update(shape=[70, 2]))
    expect_binary_rejected(bad, "elements but shape|shape")


@pytest.mark.parametrize("edit, match", [
    (lambda h: h["modules"]["5"]["config"].update(activation="tanh"), "activation must be"),
    (lambda h: h["modules"]["5"]["config"].update(in_features=0), "integer >= 1"),
    (lambda h: h["modules"]["5"]["config"].update(latent="yes"), "latent must be true/false"),
    (lambda h: h["modules"]["5"]["config"].pop("scale"), "exactly the fields"),
    (lambda h: h["modules"]["6"]["config"].update(keep_latent=False), "only with keep_latent"),
    (lambda h: h["modules"]["2"]["config"].update(groups=4), "divisible by groups"),
    (lambda h: h["modules"]["2"]["config"].update(padding_mode="reflect"), "padding_mode"),
    (lambda h: h["modules"]["2"]["config"].update(binarize_input=False), "cannot build BinaryConv2d"),
])
def test_tampered_binary_configs_are_rejected(binary_saved, tmp_path, edit, match):
    _, path = binary_saved
    expect_binary_rejected(tamper(path, tmp_path, edit), match)


def test_binary_file_into_mismatched_dense_skeleton(binary_saved):
    _, path = binary_saved
    for index, layer in ((5, nn.Linear(150, 71)), (2, nn.Conv2d(6, 6, 3, stride=2, padding=2, dilation=2)),
                         (0, nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"))):
        into = binary_skeleton()
        into[index] = layer
        before = fingerprint(into)
        with pytest.raises(ModelMismatchError, match=f"module '{index}'.*does not match"):
            load_compressed(path, into=into)
        assert_untouched(into, before)
