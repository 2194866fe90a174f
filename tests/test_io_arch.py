"""sparsecomp.io with the layers sparsecomp.convert and sparsecomp.arch produce: RowSparseLinear / RowSparseConv2d,
LowRankLinear and DepthwiseSeparableConv2d (BatchNorm state included) saved and reloaded bit-exactly into dense
skeletons and into skeletons holding those layers; corrupt configs and rows, and mismatched skeletons, rejected
without touching the target model."""
from __future__ import annotations

import zlib

import pytest
import torch
from torch import nn

import sparsecomp as sc
from sparsecomp.io import CorruptFileError, ModelMismatchError, compressed_size_report, load_compressed, \
    save_compressed
from sparsecomp.models import mobilenet_v1_digits
from sparsecomp.nn import DepthwiseSeparableConv2d, LowRankLinear, RowSparseConv2d, RowSparseLinear

from test_io import assert_same_state, assert_untouched, entry, fingerprint, split, tamper, write


def assert_same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert torch.equal(ya, yb), (ya - yb).abs().max()


def save_load(model: nn.Module, into: nn.Module, path) -> nn.Module:
    save_compressed(model, path)
    out = load_compressed(path, into=into)
    assert out is into
    return out


# ============================================================================================ row-sparse

def rows_skeleton() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
        nn.Conv2d(12, 9, 3, stride=2, bias=False), nn.ReLU(), nn.Flatten(),  # 7x7 -> 3x3
        nn.Linear(9 * 9, 20), nn.ReLU(),
        nn.Linear(20, 6, bias=False), nn.ReLU(),
        nn.Linear(6, 5))


def rows_model(gen, zero=((0, 3, 4, 11), (1, 2, 8), (0, 5, 19), (0, 1, 2, 3, 4, 5))) -> nn.Sequential:
    """Layers with whole output rows zeroed, as RowSparse modules (the last one keeps no row at all)."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    m = rows_skeleton().eval()
    with torch.no_grad():
        for index, rows in zip((0, 2, 5, 7), zero):
            m[index].weight[list(rows)] = 0
    for index in (0, 2):
        m[index] = RowSparseConv2d.from_dense(m[index])
    for index in (5, 7):
        m[index] = RowSparseLinear.from_dense(m[index])
    return m


@pytest.mark.parametrize("compress", [True, False], ids=["zlib", "plain"])
def test_row_sparse_round_trip_into_dense_skeleton(tmp_path, gen, compress):
    model = rows_model(gen)
    assert model[7].rows.numel() == 0
    path = tmp_path / "rows.scz"
    save_compressed(model, path, compress=compress)
    into = load_compressed(path, into=rows_skeleton().eval())
    assert [type(into[i]) for i in (0, 2, 5, 7)] == [RowSparseConv2d, RowSparseConv2d, RowSparseLinear,
                                                      RowSparseLinear]
    assert_same_state(model, into)
    assert not any(m.training for m in into.modules())  # built in place of eval layers: eval
    assert_same_outputs(model, into, torch.randn(4, 3, 7, 7, generator=gen))
    report = compressed_size_report(path)
    dense = sum(p.numel() for p in rows_skeleton().parameters())
    assert report.dense_params == dense  # a RowSparseConv2d's inner conv is not counted twice
    assert report.bytes_by_kind["indices"] > 0  # the kept rows


def test_row_sparse_skeleton_with_other_rows_is_rebuilt_from_the_file(tmp_path, gen):
    model = rows_model(gen)
    path = tmp_path / "rows.scz"
    save_compressed(model, path)
    other = rows_model(gen, zero=((1,), (1, 2, 8), (7,), ()))  # other kept counts except at index 2
    kept_in_place = other[2]
    into = load_compressed(path, into=other)
    assert into[2] is kept_in_place  # same rows count: loaded in place
    assert_same_state(model, into)
    assert_same_outputs(model, into, torch.randn(2, 3, 7, 7, generator=gen))


def test_convert_probe_output_saves_and_reloads(tmp_path, gen):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 8)).eval()
    with torch.no_grad():
        model[0].weight[:30] = 0  # whole rows: the structured candidate applies
        w = model[2].weight
        w[torch.rand(w.shape, generator=gen) < 0.9] = 0
    x = torch.randn(5, 64, generator=gen)

    def timer(module, inp):  # a fixed ranking instead of wall-clock times: the test does not depend on load
        return {RowSparseLinear: 0.2, sc.nn.SparseLinear: 0.5}.get(type(module), 1.0)

    fast = sc.convert(model, (x,), cost_model="probe", timer=timer, repeats=1, verbose=False)
    assert isinstance(fast[0], RowSparseLinear) and isinstance(fast[2], sc.nn.SparseLinear)
    into = nn.Sequential(nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 8)).eval()
    save_load(fast, into, tmp_path / "converted.scz")
    assert type(into[0]) is RowSparseLinear and type(into[2]) is sc.nn.SparseLinear
    assert_same_state(fast, into)
    assert_same_outputs(fast, into, x)


def test_corrupt_rows_are_rejected(tmp_path, gen):
    path = tmp_path / "rows.scz"
    save_compressed(rows_model(gen), path)

    def set_rows(rows):
        def payload_edit(header, payload):  # re-encode 5.rows raw with the given values and valid checksums
            e = entry(header, "5.rows")
            p = next(iter(e["parts"].values()))
            data = torch.tensor(rows, dtype=torch.int64).numpy().astype("<i8").tobytes()
            start, old = p["offset"], p["length"]
            new = payload[:start] + data + payload[start + old:]
            e.update(enc="raw", shape=[len(rows)],
                     parts={"data": {"dtype": "int64", "count": len(rows), "codec": "none", "offset": start,
                                     "length": len(data), "crc32": zlib.crc32(data)}})
            shift = len(data) - old
            for other in header["tensors"]:
                for q in other["parts"].values():
                    if q["offset"] > start:
                        q["offset"] += shift
            header["payload_bytes"] += shift
            return new
        return (lambda header: None), payload_edit

    kept = rows_model(gen)[5].rows.tolist()
    for rows in ([kept[1], kept[0], *kept[2:]], [kept[0], kept[0], *kept[2:]], [*kept[:-1], 20],
                 [-1, *kept[1:]]):
        bad = tamper(path, tmp_path, *set_rows(rows))
        into = rows_skeleton()
        before = fingerprint(into)
        with pytest.raises(CorruptFileError, match=r"module '5': rows must be strictly increasing indices in "
                                                   r"\[0, 20\)"):
            load_compressed(bad, into=into)
        assert_untouched(into, before)


# ============================================================================================ low rank

def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 32, bias=False), nn.ReLU(), nn.Linear(32, 10))


def test_low_rank_model_reloads_into_fresh_dense_skeleton(tmp_path, gen):
    torch.manual_seed(1)
    teacher = mlp().eval()
    student, rep = sc.arch.low_rank(teacher, rank=5, min_features=8, report=False)
    assert [type(m) for m in student] == [LowRankLinear, nn.ReLU, LowRankLinear, nn.ReLU, LowRankLinear]
    path = tmp_path / "lr.scz"
    into = save_load(student, mlp().eval(), path)
    assert_same_state(student, into)
    assert [m.rank for m in into if isinstance(m, LowRankLinear)] == [5, 5, 5]
    assert into[2].bias is None
    assert_same_outputs(student, into, torch.randn(3, 48, generator=gen))
    assert compressed_size_report(path).dense_params == sum(p.numel() for p in mlp().parameters())
    # a skeleton that already holds LowRankLinear layers of the same ranks loads in place
    same = sc.arch.low_rank(mlp(), rank=5, min_features=8, report=False)[0].eval()
    layer = same[0]
    load_compressed(path, into=same)
    assert same[0] is layer
    assert_same_outputs(student, same, torch.randn(3, 48, generator=gen))
    # another rank is another model
    other = sc.arch.low_rank(mlp(), rank=4, min_features=8, report=False)[0]
    before = fingerprint(other)
    with pytest.raises(ModelMismatchError, match="module '0'.*differs from the file"):
        load_compressed(path, into=other)
    assert_untouched(other, before)


# ============================================================================================ separable

def cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding="same"), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 32, 5, stride=2, padding=2, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


@pytest.mark.parametrize("init", ["fit", "fresh"])
def test_separable_model_reloads_into_fresh_dense_skeleton(tmp_path, gen, init):
    torch.manual_seed(2)
    teacher = cnn().eval()
    student, _ = sc.arch.separable(teacher, init=init, report=False)
    assert [type(student[i]) for i in (0, 2, 5)] == [nn.Conv2d, DepthwiseSeparableConv2d, DepthwiseSeparableConv2d]
    path = tmp_path / "sep.scz"
    into = save_load(student, cnn().eval(), path)
    assert_same_state(student, into)
    assert not into[2].training and into[5].pw_bias is None
    x = torch.randn(3, 1, 9, 9, generator=gen)
    assert_same_outputs(student, into, x)
    assert compressed_size_report(path).dense_params == sum(p.numel() for p in cnn().parameters())
    # a training skeleton gets training modules
    train = load_compressed(path, into=cnn().train())
    assert train[2].training and train[5].training


def trained_stats(model: nn.Module, gen) -> nn.Module:
    """Random BN running statistics and counters, as after training."""
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.normal_(generator=gen)
            bn.running_var.uniform_(0.5, 2.0, generator=gen)
            bn.weight.normal_(generator=gen)
            bn.bias.normal_(generator=gen)
            bn.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
    return model


def test_mobilenet_round_trip_keeps_batchnorm_state(tmp_path, gen):
    torch.manual_seed(3)
    model = trained_stats(mobilenet_v1_digits(width_mult=0.5), gen).eval()
    path = tmp_path / "mbv1.scz"
    into = save_load(model, mobilenet_v1_digits(width_mult=0.5).eval(), path)
    assert_same_state(model, into)  # running_mean / running_var / num_batches_tracked included
    x = torch.randn(5, 1, 8, 8, generator=gen)
    assert_same_outputs(model, into, x)
    # a skeleton built with fused=False keeps its own choice: the same function through torch convs
    torch_path = load_compressed(path, into=mobilenet_v1_digits(width_mult=0.5, fused=False).eval())
    blocks = [m for m in torch_path.modules() if isinstance(m, DepthwiseSeparableConv2d)]
    assert blocks and all(b.fused is False for b in blocks)
    with torch.no_grad():
        torch.testing.assert_close(torch_path(x), model(x), rtol=1e-4, atol=1e-5)


def test_separable_from_modules_with_custom_batchnorm(tmp_path, gen):
    """A block whose BNs are not the defaults (eps, momentum None, no affine), with a depthwise bias and
    activations, reloaded in place of the dense conv of the same shape."""
    torch.manual_seed(4)
    dw = nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=8)
    pw = nn.Conv2d(8, 12, 1, bias=False)
    bn = nn.BatchNorm2d(8, eps=1e-3, momentum=None, affine=False)
    pw_bn = nn.BatchNorm2d(12, eps=0.25)
    trained_stats(nn.Sequential(pw_bn), gen)
    with torch.no_grad():
        bn.running_mean.normal_(generator=gen)
        bn.running_var.uniform_(0.5, 2.0, generator=gen)
        bn.num_batches_tracked.fill_(5)
    block = DepthwiseSeparableConv2d.from_modules(dw, pw, bn, "hardswish", pw_bn, nn.ReLU6())
    model = nn.Sequential(block, nn.Flatten()).eval()
    into = nn.Sequential(nn.Conv2d(8, 12, 5, stride=2, padding=2, bias=False), nn.Flatten()).eval()
    path = tmp_path / "block.scz"
    save_load(model, into, path)
    got = into[0]
    assert type(got) is DepthwiseSeparableConv2d and got.dw_bias is not None
    assert got.bn.eps == 1e-3 and got.bn.momentum is None and not got.bn.affine and got.pw_bn.eps == 0.25
    assert (got.mid_activation, got.activation) == ("hardswish", "relu6")
    assert_same_state(model, into)
    assert_same_outputs(model, into, torch.randn(2, 8, 11, 11, generator=gen))


def test_separable_into_mismatched_skeletons(tmp_path, gen):
    torch.manual_seed(5)
    student, _ = sc.arch.separable(cnn(), report=False)
    path = tmp_path / "sep.scz"
    save_compressed(student.eval(), path)
    for index, layer, match in (
            (2, nn.Conv2d(16, 24, 3, padding=1, dilation=2), "module '2'.*does not match"),
            (2, nn.Conv2d(16, 24, 3, padding=1, groups=2), "module '2'.*does not match"),
            (5, nn.Conv2d(24, 32, 5, stride=2, padding=2, bias=True), "module '5'.*does not match"),
            (5, DepthwiseSeparableConv2d(24, 32, 5, 2, 2, bias=False, bn=True), "module '5'.*differs from the file"),
            (5, nn.Linear(24, 32), "module '5': into has a Linear")):
        into = cnn()
        into[index] = layer
        before = fingerprint(into)
        with pytest.raises(ModelMismatchError, match=match):
            load_compressed(path, into=into)
        assert_untouched(into, before)


@pytest.mark.parametrize("edit, match", [
    (lambda h: h["modules"]["2"]["config"].update(activation="tanh"), "activation must be one of"),
    (lambda h: h["modules"]["2"]["config"].update(fused="yes"), "fused must be"),
    (lambda h: h["modules"]["2"]["config"].update(fused=1), "fused must be"),
    (lambda h: h["modules"]["2"]["config"].update(padding=[1]), "padding must be a list of 2"),
    (lambda h: h["modules"]["2"]["config"].update(kernel_size=0), "kernel_size must be an integer >= 1"),
    (lambda h: h["modules"]["2"]["config"].update(bn={"eps": -1.0, "momentum": 0.1, "affine": True}),
     "bn eps must be a finite positive"),
    (lambda h: h["modules"]["2"]["config"].update(pw_bn={"eps": 1e-5, "momentum": 0.1}), "exactly the fields"),
    (lambda h: h["modules"]["2"]["config"].update(bn=True), "exactly the fields"),
    (lambda h: h["modules"]["2"]["config"].pop("dw_bias"), "exactly the fields"),
    (lambda h: h["modules"]["0"].update(kind="LowRankLinear"), "LowRankLinear config"),
])
def test_tampered_separable_configs_are_rejected(tmp_path, edit, match):
    torch.manual_seed(6)
    student, _ = sc.arch.separable(cnn(), report=False)
    path = tmp_path / "sep.scz"
    student[0] = RowSparseConv2d.from_dense(student[0])
    save_compressed(student.eval(), path)
    into = cnn()
    before = fingerprint(into)
    with pytest.raises(CorruptFileError, match=match):
        load_compressed(tamper(path, tmp_path, edit), into=into)
    assert_untouched(into, before)


def test_config_the_constructor_refuses_is_rejected(tmp_path):
    """fused=True with a kernel the fused op lacks passes the header checks; building the module refuses it."""
    torch.manual_seed(7)
    student, _ = sc.arch.separable(cnn(), report=False)
    path = tmp_path / "sep.scz"
    save_compressed(student.eval(), path)
    bad = tamper(path, tmp_path, lambda h: h["modules"]["2"]["config"].update(fused=True, kernel_size=9,
                                                                               padding=[4, 4]))
    into = cnn()
    into[2] = nn.Conv2d(16, 24, 9, padding=4)
    before = fingerprint(into)
    with pytest.raises(CorruptFileError, match="module '2': cannot build DepthwiseSeparableConv2d.*fused=True needs"):
        load_compressed(bad, into=into)
    assert_untouched(into, before)


@pytest.mark.parametrize("edit, match", [
    (lambda h: h["modules"]["5"]["config"].update(kept=21), "kept=21 > out_features=20"),
    (lambda h: h["modules"]["5"]["config"].update(kept=-1), "kept must be an integer >= 0"),
    (lambda h: h["modules"]["0"]["config"].update(kept=True), "kept must be an integer"),
    (lambda h: h["modules"]["0"]["config"].update(dilation=[1, 0]), "dilation must be an integer >= 1"),
    (lambda h: h["modules"]["0"]["config"].update(padding_mode="mirror"), "padding_mode invalid"),
    (lambda h: h["modules"]["7"]["config"].update(bias=None), "bias must be true/false"),
    (lambda h: h["modules"]["5"].update(kind="LowRankLinear", config={"in_features": 81, "out_features": 20,
                                                                     "rank": 30, "bias": True}), "rank=30 >"),
])
def test_tampered_row_sparse_configs_are_rejected(tmp_path, gen, edit, match):
    path = tmp_path / "rows.scz"
    save_compressed(rows_model(gen), path)
    into = rows_skeleton()
    before = fingerprint(into)
    with pytest.raises(CorruptFileError, match=match):
        load_compressed(tamper(path, tmp_path, edit), into=into)
    assert_untouched(into, before)


def test_kept_count_must_match_the_stored_rows(tmp_path, gen):
    """A config whose kept count disagrees with the stored tensors: the shapes no longer fit the built module."""
    path = tmp_path / "rows.scz"
    save_compressed(rows_model(gen), path)
    _, _, header, payload = split(path)
    header["modules"]["5"]["config"]["kept"] -= 1
    bad = tmp_path / "bad.scz"
    write(bad, header, payload)
    into = rows_skeleton()
    before = fingerprint(into)
    with pytest.raises(ModelMismatchError, match="'5.(rows|weight)': file shape"):
        load_compressed(bad, into=into)
    assert_untouched(into, before)
