"""Safe, compact save/load of compressed models: ``save_compressed`` / ``load_compressed`` and a size report.

Why an own format: ``torch.save`` pickles, and unpickling a file can run arbitrary code. This loader only
parses JSON and copies little-endian numbers into tensors; nothing in the file is ever executed, and only
the module types of a fixed registry (``_KINDS``: SparseLinear, SparseConv2d, BinaryLinear, BinaryConv2d,
CodebookLinear, CodebookConv2d, RowSparseLinear, RowSparseConv2d, LowRankLinear, DepthwiseSeparableConv2d) can be
built from it.

File layout (all integers little-endian)::

    offset 0   8 bytes   magic b"SPARSECZ"
           8   uint32    format version (1)
          12   uint32    crc32 of the H header bytes
          16   uint64    header length H
          24   H bytes   header: zlib-deflated UTF-8 JSON (below; deflated because its per-tensor records are
                         repetitive, and small models are the ones whose file a big header would inflate)
        24+H   payload   the tensors' parts, back to back in header order; the file ends exactly there

The header holds ``payload_bytes``, ``dense_params`` (weights of the equivalent dense model, for bits per
weight), ``modules`` (compressed module kinds by name, with their constructor arguments, so a dense skeleton
can be loaded into) and ``tensors``: for each state_dict entry its ``name``, ``dtype`` (from an allowlist),
``shape`` and ``enc`` with the ``parts`` that hold it. Each part records offset,
stored length, crc32, element dtype, element count and codec (``none`` or ``zlib``). Encodings (all lossless,
bit-exact, chosen per tensor only when smaller than raw):

- ``raw``: the elements (part ``data``);
- ``delta``: a non-decreasing non-negative int64/int32 vector (e.g. CSR row pointers) as its first differences
  in the smallest unsigned type that holds them (part ``deltas``);
- ``colmask``: the ``col_idx`` of a SparseLinear/SparseConv2d as the 1-bit-per-weight nonzero mask of its
  [rows, cols] weight (``matrix`` in the entry; part ``mask``), smaller than 16-bit indices above 1/16 density.
  Used only when the indices are in canonical order (row-major, ascending, no duplicates, as ``from_dense``
  makes them), so that rebuilding them from the mask is exact; ``row_ptr`` is stored on its own (``delta``);
- ``bitmap``: a floating tensor with many all-zero-bit elements (a pruned but unconverted weight) as a
  1-bit-per-element mask (part ``mask``, LSB first) plus the other elements (part ``values``). ``-0.0`` and NaN
  are not all-zero bits, so they are stored as values and round-trip exactly;
- ``huffman``: the ``packed_indices`` of a CodebookLinear/CodebookConv2d as the Huffman-coded index streams of
  sparsecomp.quantize.storage (``encode_indices``): for a pruned layer (``zero_code``) the gaps between nonzero
  codes (part ``gaps``) and those codes (part ``codes``), otherwise every code; the entry adds ``matrix``
  [rows, cols], ``bits`` and the gap ``cap``. Used only when smaller than the fixed-width packed words (``raw``);
  the layer's ``_extra_state`` (bits, per_channel, zero_code) is its module config, not a stored tensor;
- ``palette``: a floating tensor with at most 256 distinct values (bit patterns) as those values (part
  ``palette``, sorted) plus a Huffman stream of each element's value number (part ``codes``): what clustered
  weights kept as sparse values or dense weights (codebook entries) cost.

Every part may additionally be zlib-deflated when that saves >= 5% (``compress=True``).

Reloading: ``load_compressed(path, into=model)`` where ``model`` has the saved architecture. At the names the
header lists as SparseLinear / SparseConv2d / BinaryLinear / BinaryConv2d, ``into`` may hold either that
compressed module (any nonzero count; for binary layers with or without a latent weight / folded BatchNorm
scale, which follow the file) or the original ``nn.Linear`` / ``nn.Conv2d`` of the same shape, which is then
replaced by a compressed module built from the header. So the usual round trip is: build the dense model as in
training, ``load_compressed`` into it. Binary layers are stored as they are (``weight_bits`` int64 words,
``alpha``, optional ``scale`` and ``bias``, the latent ``weight`` only if it was kept); their packed bits are
validated (shape, zero tail bits, equal to the latent weight's signs where one is stored) before any copy.

The same holds for the layers ``sparsecomp.convert`` and ``sparsecomp.arch`` produce: RowSparseLinear /
RowSparseConv2d (dense counterpart ``nn.Linear`` / ``nn.Conv2d`` with groups 1; ``rows`` validated as strictly
increasing output indices; an existing one with another number of kept rows is rebuilt from the file),
LowRankLinear (``nn.Linear``) and DepthwiseSeparableConv2d (an ``nn.Conv2d`` with groups 1, square kernel and
stride, dilation 1, zero padding, as ``arch.separable`` replaces; its config carries each BatchNorm's eps,
momentum and affine, and the running statistics travel in the state_dict). A module built in place of a dense
layer takes that layer's training mode; an existing DepthwiseSeparableConv2d keeps its own ``fused`` setting.
"""
from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .formats.codebook import pack_indices, row_words
from .formats.packed_bits import pack_signs, validate_packed
from .formats.sparse import TILE_COLS, TiledCSR, num_col_tiles
from .nn import (BinaryConv2d, BinaryLinear, CodebookConv2d, CodebookLinear, DepthwiseSeparableConv2d, LowRankLinear,
                 RowSparseConv2d, RowSparseLinear, SparseConv2d, SparseLinear)
from .nn._activation import ACTIVATIONS
from .quantize.huffman import huffman_decode, huffman_encode
from .quantize.storage import decode_indices, encode_indices

__all__ = ["save_compressed", "load_compressed", "compressed_size_report", "read_state_dict", "SizeReport",
           "CorruptFileError", "ModelMismatchError", "MAGIC", "VERSION"]

MAGIC = b"SPARSECZ"
VERSION = 1
_PREAMBLE = struct.Struct("<8sIIQ")  # magic, version, header crc32, header length
_MAX_HEADER = 64 << 20  # inflated header bytes accepted (about 300k tensors)


class CorruptFileError(ValueError):
    """The file is not a valid sparsecomp file (truncated, tampered, wrong magic/version, bad header)."""


class ModelMismatchError(ValueError):
    """The file is valid but does not fit the ``into`` model (names, shapes, dtypes or module kinds)."""


# name -> (torch dtype, little-endian numpy dtype of the stored bits). bfloat16 travels as its uint16 bits.
_DTYPES = {
    "float32": (torch.float32, "<f4"), "float64": (torch.float64, "<f8"), "float16": (torch.float16, "<f2"),
    "bfloat16": (torch.bfloat16, "<u2"), "int8": (torch.int8, "<i1"), "uint8": (torch.uint8, "<u1"),
    "int16": (torch.int16, "<i2"), "int32": (torch.int32, "<i4"), "int64": (torch.int64, "<i8"),
    "bool": (torch.bool, "<u1"),
}
_STORAGE_ONLY = {"uint16": "<u2", "uint32": "<u4"}  # element types of parts (delta encoding) only
_DTYPE_NAMES = {dt: name for name, (dt, _) in _DTYPES.items()}
_INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # same-width integers, to test bits
_ENCODINGS = {"raw": ("data",), "delta": ("deltas",), "bitmap": ("mask", "values"), "colmask": ("mask",),
              "huffman": ("gaps", "codes"), "palette": ("palette", "codes")}
_ENTRY_EXTRA = {"colmask": {"matrix"}, "huffman": {"matrix", "bits", "cap"}}  # header fields beyond the common ones
_PALETTE_MAX = 256  # distinct values a palette-coded tensor may have


# ====================================================================================== module kinds

def _pair_list(v):
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def _linear_config(m: SparseLinear) -> dict:
    return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}


def _conv_config(m: SparseConv2d) -> dict:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
            "stride": list(m.stride), "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
            "dilation": list(m.dilation), "bias": m.bias is not None, "padding_mode": m.padding_mode}


def _dense_linear_config(m: nn.Linear) -> dict:
    return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}


def _dense_conv_config(m: nn.Conv2d) -> dict | None:
    if m.groups != 1:
        return None
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": _pair_list(m.kernel_size),
            "stride": _pair_list(m.stride), "padding": m.padding if isinstance(m.padding, str) else
            _pair_list(m.padding), "dilation": _pair_list(m.dilation), "bias": m.bias is not None,
            "padding_mode": m.padding_mode}


def _expect_pair(v, what: str, low: int) -> None:
    if not isinstance(v, list) or len(v) != 2:
        raise CorruptFileError(f"{what} must be a list of 2 integers, got {v!r}")
    for x in v:
        _expect_int(x, what, low=low)


def _expect_conv_geometry(c: dict, what: str, groups: bool = False) -> None:
    """kernel_size / stride / dilation (pairs >= 1), padding (a pair >= 0 or 'same' / 'valid'), and with ``groups``
    channel counts divisible by it: what every conv kind's config shares."""
    for k, low in (("kernel_size", 1), ("stride", 1), ("dilation", 1), ("padding", 0)):
        if not (k == "padding" and c[k] in ("same", "valid")):
            _expect_pair(c[k], f"{what} {k}", low)
    if groups and (c["in_channels"] % c["groups"] or c["out_channels"] % c["groups"]):
        raise CorruptFileError(f"{what}: channels {c['in_channels']}, {c['out_channels']} not divisible by groups "
                               f"{c['groups']}")


def _check_linear_config(c: dict) -> None:
    _expect_keys(c, {"in_features", "out_features", "bias"}, "SparseLinear config")
    for k in ("in_features", "out_features"):
        _expect_int(c[k], f"SparseLinear {k}")
    if not isinstance(c["bias"], bool):
        raise CorruptFileError("SparseLinear bias must be true/false")


def _check_conv_config(c: dict) -> None:
    _expect_keys(c, {"in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "bias",
                     "padding_mode"}, "SparseConv2d config")
    for k in ("in_channels", "out_channels"):
        _expect_int(c[k], f"SparseConv2d {k}")
    _expect_conv_geometry(c, "SparseConv2d")
    if not isinstance(c["bias"], bool) or c["padding_mode"] not in ("zeros", "reflect", "replicate", "circular"):
        raise CorruptFileError("SparseConv2d bias/padding_mode invalid")


# Binary layers: the config holds the constructor arguments plus which optional members the state_dict has
# ("latent": the float latent weight, saved only with keep_latent; "scale": a folded BatchNorm gain). Those two
# follow the file when loading into an existing binary module (its loader adapts), so they are "flexible".
_BINARY_FLAGS = ("bias", "binarize_input", "keep_latent", "latent", "scale")
_BINARY_FLEXIBLE = ("latent", "scale")


def _binary_flags(m) -> dict:
    return {"bias": m.bias is not None, "binarize_input": m.binarize_input, "activation": m.activation,
            "keep_latent": m.keep_latent, "latent": m.keep_latent and m.weight is not None,
            "scale": m.scale is not None}


def _binary_linear_config(m: BinaryLinear) -> dict:
    return {"in_features": m.in_features, "out_features": m.out_features, **_binary_flags(m)}


def _binary_conv_config(m: BinaryConv2d) -> dict:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
            "stride": list(m.stride), "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
            "dilation": list(m.dilation), "groups": m.groups, "padding_mode": m.padding_mode, **_binary_flags(m)}


def _dense_binary_linear_config(m: nn.Linear) -> dict:
    """What a dense nn.Linear must share with a BinaryLinear to be replaced by it (its shape)."""
    return {"in_features": m.in_features, "out_features": m.out_features}


def _dense_binary_conv_config(m: nn.Conv2d) -> dict | None:
    if m.padding_mode != "zeros":
        return None  # binary convs pad with zeros (or +1): another padding is another function
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": _pair_list(m.kernel_size),
            "stride": _pair_list(m.stride), "padding": m.padding if isinstance(m.padding, str) else
            _pair_list(m.padding), "dilation": _pair_list(m.dilation), "groups": m.groups}


def _check_binary_flags(c: dict, what: str) -> None:
    for k in _BINARY_FLAGS:
        if not isinstance(c[k], bool):
            raise CorruptFileError(f"{what} {k} must be true/false")
    if c["activation"] not in ("none", "relu"):
        raise CorruptFileError(f"{what} activation must be 'none' or 'relu', got {c['activation']!r}")
    if c["latent"] and not c["keep_latent"]:
        raise CorruptFileError(f"{what}: a latent weight is stored only with keep_latent")


def _check_binary_linear_config(c: dict) -> None:
    _expect_keys(c, {"in_features", "out_features", "activation", *_BINARY_FLAGS}, "BinaryLinear config")
    for k in ("in_features", "out_features"):
        _expect_int(c[k], f"BinaryLinear {k}", low=1)
    _check_binary_flags(c, "BinaryLinear")


def _check_binary_conv_config(c: dict) -> None:
    what = "BinaryConv2d"
    _expect_keys(c, {"in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                     "padding_mode", "activation", *_BINARY_FLAGS}, f"{what} config")
    for k in ("in_channels", "out_channels", "groups"):
        _expect_int(c[k], f"{what} {k}", low=1)
    _expect_conv_geometry(c, what, groups=True)
    if c["padding_mode"] not in ("zeros", "ones"):
        raise CorruptFileError(f"{what} padding_mode must be 'zeros' or 'ones', got {c['padding_mode']!r}")
    _check_binary_flags(c, what)


def _binary_members(module, c: dict):
    """A freshly built binary module with the optional members the file's state_dict has (values come later)."""
    if not c["latent"]:
        module.weight = None  # packed bits only: frozen signs, as the saved module had
    if c["scale"]:
        module.scale = torch.ones_like(module.alpha)
    return module


def _build_binary_linear(c: dict, device, dtype) -> BinaryLinear:
    return _binary_members(BinaryLinear(c["in_features"], c["out_features"], c["bias"], c["binarize_input"],
                                        c["activation"], c["keep_latent"], device=device, dtype=dtype), c)


def _build_binary_conv(c: dict, device, dtype) -> BinaryConv2d:
    padding = c["padding"] if isinstance(c["padding"], str) else tuple(c["padding"])
    return _binary_members(BinaryConv2d(c["in_channels"], c["out_channels"], tuple(c["kernel_size"]),
                                        tuple(c["stride"]), padding, tuple(c["dilation"]), c["groups"], c["bias"],
                                        c["binarize_input"], c["padding_mode"], c["activation"], c["keep_latent"],
                                        device=device, dtype=dtype), c)


# Codebook layers: the config holds the constructor arguments; the module's extra state (bits, per_channel,
# zero_code) is part of it, so the state_dict entry "_extra_state" is not stored as a tensor.
_CODEBOOK_FLAGS = ("bias", "per_channel", "zero_code")


def _codebook_flags(m) -> dict:
    return {"bias": m.bias is not None, "bits": m.bits, "per_channel": m.per_channel, "zero_code": m.zero_code}


def _codebook_linear_config(m: CodebookLinear) -> dict:
    return {"in_features": m.in_features, "out_features": m.out_features, **_codebook_flags(m)}


def _codebook_conv_config(m: CodebookConv2d) -> dict:
    return {**_dense_conv_geometry(m), **_codebook_flags(m)}


def _dense_conv_geometry(m) -> dict:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": _pair_list(m.kernel_size),
            "stride": _pair_list(m.stride), "padding": m.padding if isinstance(m.padding, str) else
            _pair_list(m.padding), "dilation": _pair_list(m.dilation), "groups": m.groups,
            "padding_mode": m.padding_mode}


def _dense_codebook_conv_config(m: nn.Conv2d) -> dict:
    return {**_dense_conv_geometry(m), "bias": m.bias is not None}


def _check_codebook_flags(c: dict, what: str) -> None:
    for k in _CODEBOOK_FLAGS:
        if not isinstance(c[k], bool):
            raise CorruptFileError(f"{what} {k} must be true/false")
    _expect_int(c["bits"], f"{what} bits", low=1)
    if c["bits"] > 8:
        raise CorruptFileError(f"{what} bits must be in 1..8, got {c['bits']}")


def _check_codebook_linear_config(c: dict) -> None:
    _expect_keys(c, {"in_features", "out_features", "bits", *_CODEBOOK_FLAGS}, "CodebookLinear config")
    for k in ("in_features", "out_features"):
        _expect_int(c[k], f"CodebookLinear {k}", low=1)
    _check_codebook_flags(c, "CodebookLinear")


def _check_codebook_conv_config(c: dict) -> None:
    what = "CodebookConv2d"
    _expect_keys(c, {"in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                     "padding_mode", "bits", *_CODEBOOK_FLAGS}, f"{what} config")
    for k in ("in_channels", "out_channels", "groups"):
        _expect_int(c[k], f"{what} {k}", low=1)
    _expect_conv_geometry(c, what, groups=True)
    if c["padding_mode"] not in ("zeros", "reflect", "replicate", "circular"):
        raise CorruptFileError(f"{what} padding_mode invalid: {c['padding_mode']!r}")
    _check_codebook_flags(c, what)


def _build_codebook_linear(c: dict, device, dtype) -> CodebookLinear:
    return CodebookLinear(c["in_features"], c["out_features"], c["bits"], c["per_channel"], c["bias"],
                          c["zero_code"], device=device, dtype=dtype)


def _build_codebook_conv(c: dict, device, dtype) -> CodebookConv2d:
    padding = c["padding"] if isinstance(c["padding"], str) else tuple(c["padding"])
    return CodebookConv2d(c["in_channels"], c["out_channels"], tuple(c["kernel_size"]), tuple(c["stride"]), padding,
                          tuple(c["dilation"]), c["groups"], c["bias"], c["padding_mode"], c["bits"],
                          c["per_channel"], c["zero_code"], device=device, dtype=dtype)


# Architecture layers (sparsecomp.arch, sparsecomp.convert's structured choice). Their configs hold the constructor
# arguments, so the file alone says which module to build in place of the dense layer it replaced.

# RowSparseLinear / RowSparseConv2d: "kept" is the number of stored rows (the length of ``rows``); an existing
# module of the kind with another count is replaced by one built from the file, as the nonzeros of a sparse one are
# resized.
def _row_sparse_linear_config(m: RowSparseLinear) -> dict:
    return {**_dense_linear_config(m), "kept": m.rows.numel()}


def _row_sparse_conv_config(m: RowSparseConv2d) -> dict:
    return {**_dense_conv_config(m.conv), "out_channels": m.out_channels, "bias": m.bias is not None,
            "kept": m.rows.numel()}


def _check_row_sparse_linear_config(c: dict) -> None:
    _expect_keys(c, {"in_features", "out_features", "bias", "kept"}, "RowSparseLinear config")
    for k in ("in_features", "out_features"):
        _expect_int(c[k], f"RowSparseLinear {k}", low=1)
    if not isinstance(c["bias"], bool):
        raise CorruptFileError("RowSparseLinear bias must be true/false")
    if _expect_int(c["kept"], "RowSparseLinear kept") > c["out_features"]:
        raise CorruptFileError(f"RowSparseLinear kept={c['kept']} > out_features={c['out_features']}")


def _check_row_sparse_conv_config(c: dict) -> None:
    what = "RowSparseConv2d"
    _expect_keys(c, {"in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "bias",
                     "padding_mode", "kept"}, f"{what} config")
    for k in ("in_channels", "out_channels"):
        _expect_int(c[k], f"{what} {k}", low=1)
    _expect_conv_geometry(c, what)
    if not isinstance(c["bias"], bool) or c["padding_mode"] not in ("zeros", "reflect", "replicate", "circular"):
        raise CorruptFileError(f"{what} bias/padding_mode invalid")
    if _expect_int(c["kept"], f"{what} kept") > c["out_channels"]:
        raise CorruptFileError(f"{what} kept={c['kept']} > out_channels={c['out_channels']}")


def _build_row_sparse_linear(c: dict, device, dtype) -> RowSparseLinear:
    return RowSparseLinear(c["in_features"], c["out_features"], torch.arange(c["kept"]), c["bias"], device=device,
                           dtype=dtype)


def _build_row_sparse_conv(c: dict, device, dtype) -> RowSparseConv2d:
    # Built on the meta device: the full-size conv it is made from is only a template (no memory, no init); the
    # values, rows included, come from the file.
    padding = c["padding"] if isinstance(c["padding"], str) else tuple(c["padding"])
    template = nn.Conv2d(c["in_channels"], c["out_channels"], tuple(c["kernel_size"]), tuple(c["stride"]), padding,
                         tuple(c["dilation"]), bias=c["bias"], padding_mode=c["padding_mode"], device="meta",
                         dtype=dtype)
    return RowSparseConv2d(template, torch.arange(c["kept"])).to_empty(device=device)


def _validate_rows(rowsparse: dict, state: dict) -> None:
    """The kept rows index the output (index_copy): in range and strictly increasing (no duplicate scatter)."""
    for name, m in rowsparse.items():
        rows = state[(f"{name}." if name else "") + "rows"]
        size = m.out_features if isinstance(m, RowSparseLinear) else m.out_channels
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= size or bool((rows[1:] <= rows[:-1]).any())):
            raise CorruptFileError(f"module {name!r}: rows must be strictly increasing indices in [0, {size})")


# LowRankLinear: U [out, rank] and V [rank, in] are plain parameters; the SVD's kept_energy is a report, not saved.
def _low_rank_config(m: LowRankLinear) -> dict:
    return {"in_features": m.in_features, "out_features": m.out_features, "rank": m.rank, "bias": m.bias is not None}


def _check_low_rank_config(c: dict) -> None:
    _expect_keys(c, {"in_features", "out_features", "rank", "bias"}, "LowRankLinear config")
    for k in ("in_features", "out_features", "rank"):
        _expect_int(c[k], f"LowRankLinear {k}", low=1)
    if c["rank"] > min(c["in_features"], c["out_features"]):
        raise CorruptFileError(f"LowRankLinear rank={c['rank']} > min(in_features, out_features)")
    if not isinstance(c["bias"], bool):
        raise CorruptFileError("LowRankLinear bias must be true/false")


# DepthwiseSeparableConv2d: constructor arguments (padding resolved to two ints) plus, per BatchNorm, null or its
# eps / momentum / affine (from_modules copies a user's BN, so these need not be the defaults; eps changes the output).
# "fused" is a run-time choice, not data: an existing module keeps its own.
_SEPARABLE_KEYS = {"in_channels", "out_channels", "kernel_size", "stride", "padding", "bias", "dw_bias",
                   "mid_activation", "activation", "fused", "bn", "pw_bn"}


def _bn_config(bn, what: str) -> dict | None:
    if bn is None:
        return None
    if type(bn) is not nn.BatchNorm2d or not bn.track_running_stats or bn.running_mean is None:
        raise TypeError(f"{what} must be an nn.BatchNorm2d tracking running statistics to be saved, got {bn!r}")
    return {"eps": float(bn.eps), "momentum": None if bn.momentum is None else float(bn.momentum),
            "affine": bn.affine}


def _separable_config(m: DepthwiseSeparableConv2d) -> dict:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": m.kernel_size,
            "stride": m.stride, "padding": list(m.padding), "bias": m.pw_bias is not None,
            "dw_bias": m.dw_bias is not None, "mid_activation": m.mid_activation, "activation": m.activation,
            "fused": m.fused, "bn": _bn_config(m.bn, "bn"), "pw_bn": _bn_config(m.pw_bn, "pw_bn")}


def _dense_separable_config(m: nn.Conv2d) -> dict | None:
    """The conv ``arch.separable`` replaces: groups 1, square kernel and stride, dilation 1, zero padding."""
    (k, k2), (s, s2) = m.kernel_size, m.stride
    if m.groups != 1 or k != k2 or s != s2 or tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros":
        return None
    if isinstance(m.padding, str):
        if m.padding == "same" and k % 2 == 0:
            return None  # torch pads an even kernel asymmetrically: no DepthwiseSeparableConv2d padding does that
        padding = [k // 2, k // 2] if m.padding == "same" else [0, 0]
    else:
        padding = list(m.padding)
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": k, "stride": s,
            "padding": padding, "bias": m.bias is not None}


def _check_bn_config(b, what: str) -> None:
    if b is None:
        return
    _expect_keys(b, {"eps", "momentum", "affine"}, what)
    for k in ("eps", "momentum"):
        v = b[k]
        if k == "momentum" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (
                k == "eps" and v == 0):
            raise CorruptFileError(f"{what} {k} must be a finite {'positive' if k == 'eps' else 'non-negative'} "
                                   f"number, got {v!r}")
    if not isinstance(b["affine"], bool):
        raise CorruptFileError(f"{what} affine must be true/false")


def _check_separable_config(c: dict) -> None:
    what = "DepthwiseSeparableConv2d"
    _expect_keys(c, _SEPARABLE_KEYS, f"{what} config")
    for k in ("in_channels", "out_channels", "kernel_size", "stride"):
        _expect_int(c[k], f"{what} {k}", low=1)
    _expect_pair(c["padding"], f"{what} padding", 0)
    for k in ("bias", "dw_bias"):
        if not isinstance(c[k], bool):
            raise CorruptFileError(f"{what} {k} must be true/false")
    for k in ("mid_activation", "activation"):
        if c[k] not in ACTIVATIONS:
            raise CorruptFileError(f"{what} {k} must be one of {ACTIVATIONS}, got {c[k]!r}")
    if not (c["fused"] == "auto" or isinstance(c["fused"], bool)):
        raise CorruptFileError(f"{what} fused must be 'auto', true or false, got {c['fused']!r}")
    _check_bn_config(c["bn"], f"{what} bn")
    _check_bn_config(c["pw_bn"], f"{what} pw_bn")


def _build_separable(c: dict, device, dtype) -> DepthwiseSeparableConv2d:
    m = DepthwiseSeparableConv2d(c["in_channels"], c["out_channels"], c["kernel_size"], c["stride"],
                                 tuple(c["padding"]), c["bias"], c["mid_activation"], c["activation"], c["fused"],
                                 dw_bias=c["dw_bias"], device=device, dtype=dtype)
    for attr, channels in (("bn", c["in_channels"]), ("pw_bn", c["out_channels"])):
        b = c[attr]
        if b is not None:
            setattr(m, attr, nn.BatchNorm2d(channels, b["eps"], b["momentum"], b["affine"], device=device,
                                            dtype=dtype))
    return m


def _separable_dense_params(c: dict) -> int:
    """The k x k conv it stands for, plus its own biases and BN affine parameters."""
    bn = sum(2 * n for b, n in ((c["bn"], c["in_channels"]), (c["pw_bn"], c["out_channels"]))
             if b is not None and b["affine"])
    return (c["out_channels"] * c["in_channels"] * c["kernel_size"] ** 2 + (c["out_channels"] if c["bias"] else 0)
            + (c["in_channels"] if c["dw_bias"] else 0) + bn)


@dataclass(frozen=True)
class _Kind:
    cls: type
    dense_cls: type
    config: object  # module -> dict
    dense_config: object  # dense module -> dict or None (not convertible); its keys must equal the file's
    check: object  # dict -> None, raises CorruptFileError
    build: object  # (dict, device, dtype) -> module
    dense_params: object  # dict -> int
    flexible: tuple = ()  # config keys an existing module of this kind may differ in (its loader adapts)
    resizable: tuple = ()  # config keys where an existing module that differs is replaced by a build from the file
    runtime: tuple = ()  # config keys that are run-time choices: an existing module keeps its own


_KINDS = {
    "SparseLinear": _Kind(
        SparseLinear, nn.Linear, _linear_config, _dense_linear_config, _check_linear_config,
        lambda c, device, dtype: SparseLinear(c["in_features"], c["out_features"], c["bias"], device=device,
                                              dtype=dtype),
        lambda c: c["in_features"] * c["out_features"] + (c["out_features"] if c["bias"] else 0)),
    "SparseConv2d": _Kind(
        SparseConv2d, nn.Conv2d, _conv_config, _dense_conv_config, _check_conv_config,
        lambda c, device, dtype: SparseConv2d(c["in_channels"], c["out_channels"], tuple(c["kernel_size"]),
                                              tuple(c["stride"]), c["padding"] if isinstance(c["padding"], str)
                                              else tuple(c["padding"]), tuple(c["dilation"]), c["bias"],
                                              c["padding_mode"], device=device, dtype=dtype),
        lambda c: c["in_channels"] * c["out_channels"] * math.prod(c["kernel_size"])
        + (c["out_channels"] if c["bias"] else 0)),
    "BinaryLinear": _Kind(
        BinaryLinear, nn.Linear, _binary_linear_config, _dense_binary_linear_config, _check_binary_linear_config,
        _build_binary_linear,
        lambda c: c["in_features"] * c["out_features"] + (c["out_features"] if c["bias"] else 0),
        _BINARY_FLEXIBLE),
    "BinaryConv2d": _Kind(
        BinaryConv2d, nn.Conv2d, _binary_conv_config, _dense_binary_conv_config, _check_binary_conv_config,
        _build_binary_conv,
        lambda c: c["out_channels"] * (c["in_channels"] // c["groups"]) * math.prod(c["kernel_size"])
        + (c["out_channels"] if c["bias"] else 0),
        _BINARY_FLEXIBLE),
    "CodebookLinear": _Kind(
        CodebookLinear, nn.Linear, _codebook_linear_config, _dense_linear_config, _check_codebook_linear_config,
        _build_codebook_linear,
        lambda c: c["in_features"] * c["out_features"] + (c["out_features"] if c["bias"] else 0)),
    "CodebookConv2d": _Kind(
        CodebookConv2d, nn.Conv2d, _codebook_conv_config, _dense_codebook_conv_config, _check_codebook_conv_config,
        _build_codebook_conv,
        lambda c: c["out_channels"] * (c["in_channels"] // c["groups"]) * math.prod(c["kernel_size"])
        + (c["out_channels"] if c["bias"] else 0)),
    "RowSparseLinear": _Kind(
        RowSparseLinear, nn.Linear, _row_sparse_linear_config, _dense_linear_config, _check_row_sparse_linear_config,
        _build_row_sparse_linear,
        lambda c: c["in_features"] * c["out_features"] + (c["out_features"] if c["bias"] else 0),
        resizable=("kept",)),
    "RowSparseConv2d": _Kind(
        RowSparseConv2d, nn.Conv2d, _row_sparse_conv_config, _dense_conv_config, _check_row_sparse_conv_config,
        _build_row_sparse_conv,
        lambda c: c["in_channels"] * c["out_channels"] * math.prod(c["kernel_size"])
        + (c["out_channels"] if c["bias"] else 0),
        resizable=("kept",)),
    "LowRankLinear": _Kind(
        LowRankLinear, nn.Linear, _low_rank_config, _dense_linear_config, _check_low_rank_config,
        lambda c, device, dtype: LowRankLinear(c["in_features"], c["out_features"], c["rank"], c["bias"],
                                               device=device, dtype=dtype),
        lambda c: c["in_features"] * c["out_features"] + (c["out_features"] if c["bias"] else 0)),
    "DepthwiseSeparableConv2d": _Kind(
        DepthwiseSeparableConv2d, nn.Conv2d, _separable_config, _dense_separable_config, _check_separable_config,
        _build_separable, _separable_dense_params, runtime=("fused",)),
}
_SPARSE_KINDS = ("SparseLinear", "SparseConv2d")
_CODEBOOK_KINDS = ("CodebookLinear", "CodebookConv2d")
_ROW_SPARSE_KINDS = ("RowSparseLinear", "RowSparseConv2d")


def _kind_of(module: nn.Module) -> str | None:
    for name, kind in _KINDS.items():
        if type(module) is kind.cls:
            return name
    return None


# ====================================================================================== header checks

def _expect_int(v, what: str, low: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise CorruptFileError(f"{what} must be an integer >= {low}, got {v!r}")
    return v


def _expect_keys(d, keys: set, what: str) -> None:
    if not isinstance(d, dict) or set(d) != keys:
        got = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise CorruptFileError(f"{what} must have exactly the fields {sorted(keys)}, got {got}")


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise CorruptFileError(f"header: duplicate JSON key {k!r}")
        out[k] = v
    return out


def _reject_constant(name):
    raise CorruptFileError(f"header: invalid JSON constant {name}")


# ====================================================================================== encoding

def _to_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    elif t.dtype == torch.bool:
        t = t.to(torch.uint8)
    arr = t.numpy()
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _part(data: bytes, dtype: str, count: int, compress: bool) -> dict:
    codec = "none"
    if compress and len(data) >= 64:
        packed = zlib.compress(data, 6)
        if len(packed) <= 0.95 * len(data):
            data, codec = packed, "zlib"
    return {"dtype": dtype, "count": count, "codec": codec, "_bytes": data}


def _flat_positions(col_idx: torch.Tensor, row_ptr: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Row-major positions (row * cols + col) of a tiled-CSR matrix's stored entries, in storage order."""
    tiles = num_col_tiles(cols)
    seg = torch.repeat_interleave(torch.arange(rows * tiles), row_ptr[1:] - row_ptr[:-1])
    col = (seg % tiles) * TILE_COLS + (col_idx.to(torch.int64) & 0xFFFF)
    return torch.div(seg, tiles, rounding_mode="floor") * cols + col


def _encode_colmask(col_idx: torch.Tensor, row_ptr: torch.Tensor, shape, compress: bool) -> dict | None:
    rows, cols = shape
    col_idx, row_ptr = col_idx.detach().cpu(), row_ptr.detach().cpu()
    try:
        TiledCSR(torch.empty(col_idx.numel()), col_idx, row_ptr, (rows, cols)).validate()
    except ValueError:
        return None  # not a valid structure: stored raw, rejected at load as before
    flat = _flat_positions(col_idx, row_ptr, rows, cols)
    # exact only in canonical order: strictly increasing positions = sorted, no duplicates
    if (rows * cols + 7) // 8 >= 2 * col_idx.numel() or bool((flat[1:] <= flat[:-1]).any()):
        return None
    mask = torch.zeros(rows * cols, dtype=torch.bool)
    mask[flat] = True
    packed = np.packbits(mask.numpy(), bitorder="little").tobytes()
    return {"mask": _part(packed, "uint8", len(packed), compress)}


def _decode_colmask(mask: np.ndarray, matrix, count: int, name: str) -> torch.Tensor:
    rows, cols = matrix
    bits = np.unpackbits(mask, bitorder="little")
    if bits[rows * cols:].any():
        raise CorruptFileError(f"tensor {name!r}: mask has bits set past its {rows}x{cols} matrix")
    flat = np.flatnonzero(bits[:rows * cols])
    if flat.size != count:
        raise CorruptFileError(f"tensor {name!r}: mask marks {flat.size} entries, shape says {count}")
    return torch.from_numpy((flat % cols % TILE_COLS).astype(np.uint16).view(np.int16))


def _encode_codes(m, compress: bool) -> tuple[dict, dict] | None:
    """The ``huffman`` parts of a codebook module's ``packed_indices``: its indices as the Huffman-coded streams
    of sparsecomp.quantize.storage (gaps between the nonzero codes of a pruned layer, then the codes), and the
    entry's extra fields; None when repacking would not give the same bits back (nonzero padding bits)."""
    idx = m.indices().detach().cpu()
    if not torch.equal(pack_indices(idx, m.bits), m.packed_indices.detach().cpu()):
        return None
    gaps, cap, codes = encode_indices(idx.reshape(-1).numpy(), m.zero_code)
    return ({"gaps": _part(gaps, "uint8", len(gaps), compress), "codes": _part(codes, "uint8", len(codes), compress)},
            {"matrix": [m._rows, m._cols], "bits": m.bits, "cap": cap})


def _size(parts: dict) -> int:
    return sum(len(p["_bytes"]) for p in parts.values())


def _encode_palette(t: torch.Tensor, compress: bool) -> dict | None:
    """A floating tensor with at most _PALETTE_MAX distinct values (bit patterns, so -0.0 and NaNs stay exact) as
    its sorted distinct values plus a Huffman stream of each element's value number. What clustered weights
    stored as sparse values (a codebook's entries) or as a dense weight cost."""
    ints = t.view(_INT_VIEW[t.element_size()]).flatten()
    if torch.unique(ints[:4 * _PALETTE_MAX]).numel() > _PALETTE_MAX:  # cheap early exit for ordinary weights
        return None
    values, codes = torch.unique(ints, return_inverse=True)
    if values.numel() > _PALETTE_MAX:
        return None
    stream = huffman_encode(codes)
    return {"palette": _part(_to_bytes(values.view(t.dtype)), _DTYPE_NAMES[t.dtype], values.numel(), compress),
            "codes": _part(stream, "uint8", len(stream), compress)}


def _encode(t: torch.Tensor, compress: bool) -> tuple[str, dict]:
    """(encoding, {part name: part}) of one tensor: delta where it applies, else the smallest of raw / bitmap /
    palette."""
    name = _DTYPE_NAMES[t.dtype]
    t = t.detach().cpu().contiguous()
    n, item = t.numel(), t.element_size()
    raw_size = n * item
    if t.dtype in (torch.int64, torch.int32) and t.dim() == 1 and n >= 2:
        v = t.to(torch.int64)
        if int(v[0]) >= 0 and bool((v[1:] >= v[:-1]).all()):
            deltas = torch.diff(v, prepend=v.new_zeros(1))
            top = int(deltas.max())
            store = next((s for s, lim, size in (("uint8", 1 << 8, 1), ("uint16", 1 << 16, 2),
                                                 ("uint32", 1 << 32, 4)) if top < lim and size < item), None)
            if store is not None:
                np_dt = _STORAGE_ONLY.get(store, "<u1")
                data = deltas.numpy().astype(np_dt).tobytes()
                return "delta", {"deltas": _part(data, store, n, compress)}
    best = None
    if t.is_floating_point() and n >= 16:
        nonzero = t.view(_INT_VIEW[item]).flatten() != 0  # bit test: -0.0 and NaN count as nonzero
        nnz = int(nonzero.sum())
        if (n + 7) // 8 + nnz * item < raw_size:
            mask = np.packbits(nonzero.numpy(), bitorder="little").tobytes()
            best = "bitmap", {"mask": _part(mask, "uint8", len(mask), compress),
                              "values": _part(_to_bytes(t.flatten()[nonzero]), name, nnz, compress)}
    if best is None:
        best = "raw", {"data": _part(_to_bytes(t), name, n, compress)}
    if t.is_floating_point() and n >= 64:
        palette = _encode_palette(t, compress)
        if palette is not None and _size(palette) < _size(best[1]):
            best = "palette", palette
    return best


def _dense_params(model: nn.Module, modules: dict) -> int:
    """Weights of the equivalent dense model: compressed modules count their full dense shape."""
    compressed = set(modules)

    def inside(owner: str) -> bool:  # owned by a compressed module or one of its submodules (a RowSparseConv2d's
        while True:                  # conv, a separable conv's BNs): the kind's count covers those
            if owner in compressed:
                return True
            if not owner:
                return False
            owner = owner.rpartition(".")[0]

    total = 0
    for name, p in model.named_parameters():
        if not inside(name.rpartition(".")[0]) and p.is_floating_point():
            total += p.numel()
    return total + sum(_KINDS[m["kind"]].dense_params(m["config"]) for m in modules.values())


def _serialize(model: nn.Module, compress: bool) -> tuple[bytes, list[bytes], dict]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    state = model.state_dict()
    modules = {}
    for name, m in model.named_modules():
        kind = _kind_of(m)
        if kind is not None:
            modules[name] = {"kind": kind, "config": _KINDS[kind].config(m)}
    structures = {}  # col_idx key -> (col_idx, row_ptr, weight shape) of the sparse modules
    coded = {}  # packed_indices key -> codebook module
    for name, m in model.named_modules():
        p = f"{name}." if name else ""
        if name in modules and modules[name]["kind"] in _SPARSE_KINDS:
            structures[p + "col_idx"] = (m.col_idx, m.row_ptr, m._weight_shape)
        if name in modules and modules[name]["kind"] in _CODEBOOK_KINDS:
            coded[p + "packed_indices"] = m
            state.pop(p + "_extra_state", None)  # bits / per_channel / zero_code travel in the module config
    entries, blobs, offset = [], [], 0
    for key, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state_dict entry {key!r} is a {type(t).__name__}; only tensors can be saved")
        if t.dtype not in _DTYPE_NAMES:
            raise TypeError(f"state_dict entry {key!r} has dtype {t.dtype}; supported: {sorted(_DTYPES)}")
        if t.layout != torch.strided:
            raise TypeError(f"state_dict entry {key!r} has layout {t.layout}; only dense tensors can be saved")
        extra, parts = {}, None
        if key in structures:
            parts = _encode_colmask(*structures[key], compress)
            enc, extra = "colmask", {"matrix": list(structures[key][2])}
        if parts is None:
            enc, parts = _encode(t, compress)
            extra = {}
        if key in coded:  # Huffman-coded indices, unless the fixed-width (packed) form is smaller
            huff = _encode_codes(coded[key], compress)
            if huff is not None and _size(huff[0]) < _size(parts):
                enc, (parts, extra) = "huffman", huff
        for part in parts.values():
            data = part.pop("_bytes")
            part.update(offset=offset, length=len(data), crc32=zlib.crc32(data))
            blobs.append(data)
            offset += len(data)
        entries.append({"name": key, "dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape), "enc": enc,
                        "parts": parts, **extra})
    header = {"format": "sparsecomp", "payload_bytes": offset, "dense_params": _dense_params(model, modules),
              "modules": modules, "tensors": entries}
    header_bytes = zlib.compress(json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8"), 9)
    preamble = _PREAMBLE.pack(MAGIC, VERSION, zlib.crc32(header_bytes), len(header_bytes))
    return preamble + header_bytes, blobs, header


def save_compressed(model: nn.Module, path, compress: bool = True) -> "SizeReport":
    """Writes ``model.state_dict()`` (plus the compressed-module table) to ``path`` in the sparsecomp format
    and returns its :class:`SizeReport`. The file is written to a temporary name and renamed, so an
    interrupted save never leaves a half-written file at ``path``."""
    head, blobs, header = _serialize(model, compress)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".sparsecomp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            for b in blobs:
                f.write(b)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return SizeReport.from_header(header, len(head))


# ====================================================================================== reading

def _load(path) -> tuple[bytes, dict, int]:
    """File bytes, validated header and payload start; errors name the file."""
    with open(os.fspath(path), "rb") as f:
        data = f.read()
    try:
        header, start = _parse(data)
    except CorruptFileError as err:
        raise CorruptFileError(f"{os.fspath(path)}: {err}") from None
    return data, header, start


def _parse(data: bytes) -> tuple[dict, int]:
    """Validated header and the payload's start offset; checks everything but the parts' contents."""
    if len(data) < _PREAMBLE.size:
        raise CorruptFileError(f"file is truncated: {len(data)} bytes, shorter than the {_PREAMBLE.size}-byte "
                               f"preamble")
    magic, version, header_crc, header_len = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise CorruptFileError(f"not a sparsecomp file: magic {magic!r} != {MAGIC!r}")
    if version != VERSION:
        raise CorruptFileError(f"unsupported format version {version} (this sparsecomp reads version {VERSION})")
    start = _PREAMBLE.size + header_len
    if start > len(data):
        raise CorruptFileError(f"file is truncated: the header needs {header_len} bytes, {len(data) - 24} remain")
    header_bytes = data[_PREAMBLE.size:start]
    if zlib.crc32(header_bytes) != header_crc:
        raise CorruptFileError("header checksum mismatch: the header was modified or damaged")
    d = zlib.decompressobj()
    try:
        text = d.decompress(header_bytes, _MAX_HEADER)
    except zlib.error as err:
        raise CorruptFileError(f"header cannot be inflated: {err}") from None
    if not d.eof or d.unused_data:
        raise CorruptFileError(f"header is not one complete zlib stream of at most {_MAX_HEADER} bytes")
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates,
                            parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CorruptFileError(f"header is not valid JSON: {err}") from None
    _expect_keys(header, {"format", "payload_bytes", "dense_params", "modules", "tensors"}, "header")
    if header["format"] != "sparsecomp":
        raise CorruptFileError(f"header format {header['format']!r} != 'sparsecomp'")
    payload = _expect_int(header["payload_bytes"], "payload_bytes")
    _expect_int(header["dense_params"], "dense_params")
    if len(data) != start + payload:
        what = "truncated" if len(data) < start + payload else "longer than its header says"
        raise CorruptFileError(f"file is {what}: {len(data)} bytes, expected {start + payload}")
    _check_modules(header["modules"])
    _check_tensors(header["tensors"], payload)
    return header, start


def _check_modules(modules) -> None:
    if not isinstance(modules, dict):
        raise CorruptFileError("header modules must be an object")
    for name, m in modules.items():
        _expect_keys(m, {"kind", "config"}, f"module {name!r}")
        if m["kind"] not in _KINDS:
            raise CorruptFileError(f"module {name!r}: unknown kind {m['kind']!r} (known: {sorted(_KINDS)})")
        _KINDS[m["kind"]].check(m["config"])


def _check_tensors(tensors, payload: int) -> None:
    if not isinstance(tensors, list):
        raise CorruptFileError("header tensors must be a list")
    names, offset = set(), 0
    for e in tensors:
        _expect_keys(e, {"name", "dtype", "shape", "enc", "parts"} | (
            _ENTRY_EXTRA.get(e.get("enc"), set()) if isinstance(e, dict) and isinstance(e.get("enc"), str) else set()),
            "tensor entry")
        name = e["name"]
        if not isinstance(name, str) or name in names:
            raise CorruptFileError(f"tensor name {name!r} is not a string or appears twice")
        names.add(name)
        if e["dtype"] not in _DTYPES:
            raise CorruptFileError(f"tensor {name!r}: dtype {e['dtype']!r} is not allowed (allowed: "
                                   f"{sorted(_DTYPES)})")
        if not isinstance(e["shape"], list) or len(e["shape"]) > 16:
            raise CorruptFileError(f"tensor {name!r}: shape must be a list of at most 16 dims")
        for d in e["shape"]:
            _expect_int(d, f"tensor {name!r} shape entry")
        if e["enc"] not in _ENCODINGS:
            raise CorruptFileError(f"tensor {name!r}: unknown encoding {e['enc']!r}")
        parts = e["parts"]
        _expect_keys(parts, set(_ENCODINGS[e["enc"]]), f"tensor {name!r} parts")
        numel = math.prod(e["shape"])
        item = np.dtype(_DTYPES[e["dtype"]][1]).itemsize
        _check_coded_entry(e, name)
        for pname in _ENCODINGS[e["enc"]]:  # fixed order = the order they were written
            p = parts[pname]
            what = f"tensor {name!r} part {pname!r}"
            _expect_keys(p, {"dtype", "count", "codec", "offset", "length", "crc32"}, what)
            for k in ("count", "offset", "length", "crc32"):
                _expect_int(p[k], f"{what} {k}")
            if p["codec"] not in ("none", "zlib"):
                raise CorruptFileError(f"{what}: unknown codec {p['codec']!r}")
            if p["offset"] != offset:
                raise CorruptFileError(f"{what}: offset {p['offset']} != {offset} (parts must be contiguous)")
            offset += p["length"]
            if offset > payload:
                raise CorruptFileError(f"{what}: ends at {offset}, past the payload's {payload} bytes")
            allowed = {"raw": {"data": e["dtype"]}, "bitmap": {"mask": "uint8", "values": e["dtype"]},
                       "colmask": {"mask": "uint8"}, "huffman": {"gaps": "uint8", "codes": "uint8"},
                       "palette": {"palette": e["dtype"], "codes": "uint8"},
                       "delta": {"deltas": ("uint8", "uint16", "uint32")}}[e["enc"]][pname]
            if p["dtype"] not in (allowed if isinstance(allowed, tuple) else (allowed,)):
                raise CorruptFileError(f"{what}: element dtype {p['dtype']!r} not allowed here")
            if e["enc"] == "raw" and p["count"] != numel:
                raise CorruptFileError(f"{what}: {p['count']} elements but shape {e['shape']} needs {numel}")
            if e["enc"] == "delta":
                if e["dtype"] not in ("int64", "int32") or len(e["shape"]) != 1 or p["count"] != numel:
                    raise CorruptFileError(f"{what}: delta encoding needs a 1-D int tensor of {numel} elements")
            if e["enc"] == "colmask":
                m = e["matrix"]
                if not isinstance(m, list) or len(m) != 2 or e["dtype"] != "int16" or len(e["shape"]) != 1:
                    raise CorruptFileError(f"{what}: colmask needs a 1-D int16 tensor and a [rows, cols] matrix")
                rows, cols = (_expect_int(v, f"{what} matrix") for v in m)
                if p["count"] != (rows * cols + 7) // 8 or numel > rows * cols:
                    raise CorruptFileError(f"{what}: {p['count']} mask bytes for a {rows}x{cols} matrix of "
                                           f"{numel} entries")
            if e["enc"] == "bitmap":
                if not e["dtype"].startswith(("float", "bfloat")):
                    raise CorruptFileError(f"{what}: bitmap encoding needs a floating dtype")
                if pname == "mask" and p["count"] != (numel + 7) // 8:
                    raise CorruptFileError(f"{what}: {p['count']} mask bytes, shape {e['shape']} needs "
                                           f"{(numel + 7) // 8}")
                if pname == "values" and p["count"] > numel:
                    raise CorruptFileError(f"{what}: more values than elements")
            if p["codec"] == "none":
                size = p["count"] * (item if p["dtype"] == e["dtype"] else np.dtype(
                    _STORAGE_ONLY.get(p["dtype"], "<u1")).itemsize)
                if p["length"] != size:
                    raise CorruptFileError(f"{what}: {p['length']} bytes stored, {size} expected for "
                                           f"{p['count']} x {p['dtype']}")
    if offset != payload:
        raise CorruptFileError(f"the parts cover {offset} bytes but the payload has {payload}")


def _check_coded_entry(e: dict, name: str) -> None:
    """Header checks of the codebook encodings (the streams themselves are validated when decoded)."""
    if e["enc"] == "huffman":
        m, bits, cap = e["matrix"], e["bits"], e["cap"]
        if not isinstance(m, list) or len(m) != 2:
            raise CorruptFileError(f"tensor {name!r}: huffman needs a [rows, cols] matrix")
        rows, cols = (_expect_int(v, f"tensor {name!r} matrix") for v in m)
        _expect_int(bits, f"tensor {name!r} bits", low=1)
        _expect_int(cap, f"tensor {name!r} cap")
        if bits > 8 or e["dtype"] != "int32" or e["shape"] != [rows, row_words(cols, bits)]:
            raise CorruptFileError(f"tensor {name!r}: huffman-coded indices must be int32 [rows, row_words(cols, "
                                   f"bits)] = {[rows, row_words(cols, min(bits, 8))]}, got {e['dtype']} "
                                   f"{e['shape']} with bits={bits}")
    elif e["enc"] == "palette":
        if not e["dtype"].startswith(("float", "bfloat")):
            raise CorruptFileError(f"tensor {name!r}: palette encoding needs a floating dtype")
        count = e["parts"]["palette"].get("count") if isinstance(e["parts"].get("palette"), dict) else None
        if isinstance(count, int) and not 1 <= count <= _PALETTE_MAX:
            raise CorruptFileError(f"tensor {name!r}: a palette holds 1..{_PALETTE_MAX} values, got {count}")


def _read_part(data: bytes, start: int, p: dict, what: str) -> np.ndarray:
    blob = data[start + p["offset"]:start + p["offset"] + p["length"]]
    if zlib.crc32(blob) != p["crc32"]:
        raise CorruptFileError(f"{what}: checksum mismatch, the data was modified or damaged")
    np_dt = np.dtype(_DTYPES[p["dtype"]][1] if p["dtype"] in _DTYPES else _STORAGE_ONLY.get(p["dtype"], "<u1"))
    size = p["count"] * np_dt.itemsize
    if p["codec"] == "zlib":
        d = zlib.decompressobj()
        try:
            raw = d.decompress(blob, size)  # max_length: a bomb cannot inflate past the declared size
        except zlib.error as err:
            raise CorruptFileError(f"{what}: cannot inflate: {err}") from None
        if len(raw) != size or d.unconsumed_tail or d.unused_data or not d.eof:
            raise CorruptFileError(f"{what}: inflated size does not match {p['count']} x {p['dtype']}")
        blob = raw
    return np.frombuffer(blob, dtype=np_dt).astype(np_dt.newbyteorder("="))  # copy: aligned, writable, native


def _tensor(arr: np.ndarray, dtype_name: str, what: str) -> torch.Tensor:
    if dtype_name == "bfloat16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    if dtype_name == "bool":
        if arr.size and arr.max() > 1:
            raise CorruptFileError(f"{what}: bool values must be 0 or 1")
        return torch.from_numpy(arr).to(torch.bool)
    return torch.from_numpy(arr)


def _stream_count(stream: np.ndarray, numel: int) -> None:
    """A Huffman stream must declare exactly ``numel`` symbols (checked before it is decoded and allocated)."""
    if stream.size < 2:
        raise ValueError("truncated stream header")
    n, shift, pos = 0, 0, 1
    while True:
        if pos >= stream.size or shift > 63:
            raise ValueError("truncated stream header")
        byte = int(stream[pos])
        n |= (byte & 0x7F) << shift
        shift, pos = shift + 7, pos + 1
        if not byte & 0x80:
            break
    if n != numel:
        raise ValueError(f"the stream declares {n} symbols, the tensor has {numel} elements")


def _decode(data: bytes, start: int, e: dict) -> torch.Tensor:
    name, parts = e["name"], e["parts"]
    arrays = {p: _read_part(data, start, parts[p], f"tensor {name!r} part {p!r}") for p in _ENCODINGS[e["enc"]]}
    shape = tuple(e["shape"])
    if e["enc"] == "raw":
        t = _tensor(arrays["data"], e["dtype"], f"tensor {name!r}")
    elif e["enc"] == "colmask":
        t = _decode_colmask(arrays["mask"], e["matrix"], math.prod(shape), name)
    elif e["enc"] == "delta":
        t = torch.from_numpy(np.cumsum(arrays["deltas"].astype(np.int64))).to(_DTYPES[e["dtype"]][0])
    elif e["enc"] == "huffman":
        rows, cols = e["matrix"]
        try:
            idx = decode_indices(arrays["gaps"].tobytes(), arrays["codes"].tobytes(), rows * cols, e["cap"],
                                 e["bits"])
        except (ValueError, IndexError) as err:
            raise CorruptFileError(f"tensor {name!r}: {err}") from None
        t = pack_indices(torch.from_numpy(idx).reshape(rows, cols), e["bits"])
    elif e["enc"] == "palette":
        values = _tensor(arrays["palette"], e["dtype"], f"tensor {name!r}")
        numel = math.prod(shape)
        try:
            _stream_count(arrays["codes"], numel)
            codes = huffman_decode(arrays["codes"].tobytes())
        except (ValueError, IndexError) as err:
            raise CorruptFileError(f"tensor {name!r}: palette codes: {err}") from None
        if codes.size != numel or (codes.size and codes.max() >= values.numel()):
            raise CorruptFileError(f"tensor {name!r}: {codes.size} palette codes (max "
                                   f"{codes.max() if codes.size else None}) for {numel} elements and "
                                   f"{values.numel()} values")
        t = values[torch.from_numpy(codes)]
    else:
        numel = math.prod(shape)
        bits = np.unpackbits(arrays["mask"], bitorder="little")
        if bits[numel:].any():
            raise CorruptFileError(f"tensor {name!r}: mask has bits set past its {numel} elements")
        nz = torch.from_numpy(bits[:numel].astype(bool))
        values = _tensor(arrays["values"], e["dtype"], f"tensor {name!r}")
        if int(nz.sum()) != values.numel():
            raise CorruptFileError(f"tensor {name!r}: mask marks {int(nz.sum())} elements but {values.numel()} "
                                   f"values are stored")
        t = torch.zeros(numel, dtype=values.dtype)
        t[nz] = values
    return t.reshape(shape)


def _decode_all(path, data: bytes, start: int, header: dict) -> OrderedDict:
    try:
        return OrderedDict((e["name"], _decode(data, start, e)) for e in header["tensors"])
    except CorruptFileError as err:
        raise CorruptFileError(f"{os.fspath(path)}: {err}") from None


def read_state_dict(path) -> OrderedDict:
    """The validated state_dict stored in ``path`` (CPU tensors), without a model. (Sparse index arrays are
    checked only when loaded into a model, which knows their matrix shapes.)"""
    data, header, start = _load(path)
    return _decode_all(path, data, start, header)


# ====================================================================================== loading into a model

def _build(kind: _Kind, name: str, config: dict, device, dtype) -> nn.Module:
    try:
        return kind.build(config, device, dtype)
    except (TypeError, ValueError) as err:  # a config the checks let through but the constructor refuses
        raise CorruptFileError(f"module {name!r}: cannot build {kind.cls.__name__} from {config}: {err}") from None


def _device_dtype(module: nn.Module):
    t = next((t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()), None)
    return (None, None) if t is None else (t.device, t.dtype)


def _plan_swaps(into: nn.Module, modules: dict) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """(swaps, prototypes): fresh compressed modules for the names where ``into`` still holds the dense layer (or a
    module of the kind that differs in a resizable config key), and the modules whose state_dict the file must match
    (the swaps, plus a fresh build from the file for existing modules of a kind with flexible optional members; the
    others are ``into``'s own). A swap takes the training mode of the module it replaces (BatchNorm inside a
    separable conv computes differently in each)."""
    swaps, prototypes = {}, {}
    for name, m in modules.items():
        kind = _KINDS[m["kind"]]
        try:
            current = into.get_submodule(name)
        except AttributeError:
            raise ModelMismatchError(f"into has no module {name!r}; the file has a {m['kind']} there") from None
        replace = False
        if type(current) is kind.cls:
            try:
                config = kind.config(current)
            except TypeError as err:
                raise ModelMismatchError(f"module {name!r}: {err}") from None
            loose = (*kind.flexible, *kind.resizable, *kind.runtime)
            mine = {k: v for k, v in config.items() if k not in loose}
            theirs = {k: v for k, v in m["config"].items() if k not in loose}
            if mine != theirs:
                raise ModelMismatchError(f"module {name!r}: into's {m['kind']} {config} differs from "
                                         f"the file's {m['config']}")
            replace = any(config[k] != m["config"][k] for k in kind.resizable)
            if kind.flexible and not replace:
                prototypes[name] = _build(kind, name, m["config"], *_device_dtype(current))
        elif isinstance(current, kind.dense_cls):
            dense = kind.dense_config(current)
            if dense is None or any(m["config"].get(k, object()) != v for k, v in dense.items()):
                raise ModelMismatchError(f"module {name!r}: into's {type(current).__name__} does not match the "
                                         f"file's {m['kind']} {m['config']}")
            replace = True
        else:
            raise ModelMismatchError(f"module {name!r}: into has a {type(current).__name__}, the file has a "
                                     f"{m['kind']} (or its dense {kind.dense_cls.__name__}) there")
        if replace:
            if name == "":
                raise ModelMismatchError(f"into itself must be a {m['kind']} like the file's {m['config']} (a root "
                                         f"module cannot be replaced)")
            new = _build(kind, name, m["config"], *_device_dtype(current))
            new.train(current.training)
            swaps[name] = prototypes[name] = new
    return swaps, prototypes


def _expected_state(into: nn.Module, prototypes: dict, modules: dict) -> dict[str, torch.Tensor]:
    expected = {k: v for k, v in into.state_dict().items()
                if not any(k.startswith(p + ".") for p in prototypes)}
    for prefix, module in prototypes.items():
        expected.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    for name, m in modules.items():  # a codebook layer's extra state is its config, not a stored tensor
        if m["kind"] in _CODEBOOK_KINDS:
            expected.pop((f"{name}." if name else "") + "_extra_state", None)
    return expected


def _check_against(into: nn.Module, prototypes: dict, header: dict) -> tuple[dict, dict, dict, dict]:
    """Names, dtypes and shapes of the file (from its header, before any payload is decoded, so a mismatched
    file allocates nothing) against ``into`` with the planned swaps; returns the sparse, binary, codebook and
    row-sparse modules (or their prototypes) by name."""
    expected = _expected_state(into, prototypes, header["modules"])
    entries = {e["name"]: e for e in header["tensors"]}
    missing, unexpected = sorted(set(expected) - set(entries)), sorted(set(entries) - set(expected))
    if missing or unexpected:
        parts = [f"{what} {names[:8]}{'...' if len(names) > 8 else ''}"
                 for what, names in (("missing from the file:", missing), ("not in into:", unexpected)) if names]
        raise ModelMismatchError(f"state_dict names differ; {'; '.join(parts)}")
    sparse, binary, codebook, rowsparse = {}, {}, {}, {}
    for name, m in into.named_modules():
        m = prototypes.get(name, m)
        if isinstance(m, (SparseLinear, SparseConv2d)):
            sparse[name] = m
        elif isinstance(m, (BinaryLinear, BinaryConv2d)):
            binary[name] = m
        elif isinstance(m, (CodebookLinear, CodebookConv2d)):
            codebook[name] = m
        elif isinstance(m, (RowSparseLinear, RowSparseConv2d)):
            rowsparse[name] = m
    # values/col_idx of sparse modules have the file's nonzero count (the module resizes), at most rows * cols
    resizable = {(f"{n}." if n else "") + k: math.prod(m._weight_shape) for n, m in sparse.items()
                 for k in ("values", "col_idx")}
    for key, want in expected.items():
        e = entries[key]
        if not isinstance(want, torch.Tensor):
            raise ModelMismatchError(f"{key!r}: into holds a non-tensor state entry")
        dtype = _DTYPES[e["dtype"]][0]
        if dtype != want.dtype:
            raise ModelMismatchError(f"{key!r}: file dtype {dtype} != into's {want.dtype}")
        shape = tuple(e["shape"])
        if key in resizable:
            if len(shape) != 1 or shape[0] > resizable[key]:
                raise ModelMismatchError(f"{key!r}: file shape {shape} is not a vector of at most "
                                         f"{resizable[key]} nonzeros")
        elif shape != tuple(want.shape):
            raise ModelMismatchError(f"{key!r}: file shape {shape} != into's {tuple(want.shape)}")
    return sparse, binary, codebook, rowsparse


def _validate_sparse(sparse: dict, state: dict) -> None:
    for name, m in sparse.items():  # the kernels address memory through these: validate before any copy
        p = f"{name}." if name else ""
        try:
            TiledCSR(state[p + "values"], state[p + "col_idx"], state[p + "row_ptr"], m._weight_shape).validate()
        except ValueError as err:
            raise CorruptFileError(f"module {name!r}: invalid sparse weight: {err}") from None


def _validate_binary(binary: dict, state: dict) -> None:
    """Packed bits the popcount kernels can trust (tail bits zero: a set one would add a phantom +1 weight to
    every output) and, where a latent weight is stored, bits that are its signs."""
    for name, m in binary.items():
        p = f"{name}." if name else ""
        bits = state[p + "weight_bits"]
        try:
            validate_packed(bits, m._weight_shape)
        except (TypeError, ValueError) as err:
            raise CorruptFileError(f"module {name!r}: invalid packed bits: {err}") from None
        latent = state.get(p + "weight")
        if latent is not None and not torch.equal(pack_signs(latent), bits):
            raise CorruptFileError(f"module {name!r}: weight_bits are not the signs of the stored latent weight")


def _validate_codebook(codebook: dict, state: dict) -> None:
    """Codebook layers: the pinned zero entry of a pruned layer's codebook is 0.0 (else pruned weights would
    come back nonzero); then the module's configuration joins the state as its extra state."""
    for name, m in codebook.items():
        p = f"{name}." if name else ""
        if m.zero_code and bool((state[p + "codebook"][..., 0] != 0).any()):
            raise CorruptFileError(f"module {name!r}: codebook entry 0 must be 0.0 (zero_code: pruned weights)")
        state[p + "_extra_state"] = m.get_extra_state()


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def load_compressed(path, into: nn.Module) -> nn.Module:
    """Loads a file written by :func:`save_compressed` into ``into`` and returns ``into``.

    Everything is validated before ``into`` is touched: magic, version, header checksum and schema, dtype
    allowlist, shapes against part sizes, total file length, every part's checksum, sparse index structure,
    packed sign bits, and names/shapes/dtypes against ``into``. Dense ``nn.Linear``/``nn.Conv2d`` layers at
    names the file stores compressed are replaced by the compressed module (see the module docstring). On any error
    ``into`` is left exactly as it was and a :class:`CorruptFileError` (bad file) or
    :class:`ModelMismatchError` (valid file, other model), both ``ValueError``, is raised.
    """
    if not isinstance(into, nn.Module):
        raise TypeError(f"into must be an nn.Module (the model skeleton to load into), got {type(into).__name__}")
    data, header, start = _load(path)
    swaps, prototypes = _plan_swaps(into, header["modules"])
    sparse, binary, codebook, rowsparse = _check_against(into, prototypes, header)
    state = _decode_all(path, data, start, header)
    _validate_sparse(sparse, state)
    _validate_rows(rowsparse, state)
    _validate_binary(binary, state)
    _validate_codebook(codebook, state)
    # Transaction: the checks above make failure here unexpected (a custom module's own loader check); if it
    # happens anyway, put the replaced modules and the old values back.
    originals = {name: into.get_submodule(name) for name in swaps}
    snapshot = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in into.state_dict().items()}
    try:
        for name, module in swaps.items():
            _set_submodule(into, name, module)
        into.load_state_dict(state, strict=True)
    except Exception as err:
        for name, module in originals.items():
            _set_submodule(into, name, module)
        into.load_state_dict(snapshot, strict=True)
        raise ModelMismatchError(f"loading into the model failed: {err}") from err
    return into


# ====================================================================================== size report

def _classify(name: str, part: str, enc: str, modules: dict) -> str:
    owner, _, leaf = name.rpartition(".")
    if enc == "huffman":  # a codebook layer's indices: the positions of a pruned one are sparse indices
        return "indices" if part == "gaps" else "codes"
    if enc == "palette":
        return "codebooks" if part == "palette" else "codes"
    if owner in modules:
        if leaf == "values":
            return "values"
        if leaf in ("col_idx", "row_ptr"):
            return "indices"
        if leaf == "packed_indices":
            return "codes"
        if leaf == "rows" and modules[owner]["kind"] in _ROW_SPARSE_KINDS:
            return "indices"
    lowered = leaf.lower()
    if "codebook" in lowered:
        return "codebooks"
    if "packed" in lowered or "bits" in lowered:
        return "packed_bits"
    if lowered.endswith("indices") or lowered.endswith("idx"):
        return "indices"
    if enc == "bitmap":
        return "indices" if part == "mask" else "values"
    return "dense"


@dataclass
class SizeReport:
    """Bytes of a compressed file by kind (values; indices = sparse positions; codes = codebook indices, Huffman-
    coded or packed; packed_bits; codebooks; dense; headers) and per tensor; ``bits_per_weight`` = file bits /
    weights of the equivalent dense model, ``ratio`` = its fp32 size / file size."""
    total_bytes: int
    bytes_by_kind: dict[str, int]
    dense_params: int
    tensors: list[tuple[str, str, str, int]] = field(default_factory=list)  # (name, kind, encoding, bytes)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.total_bytes / self.dense_params if self.dense_params else float("nan")

    @property
    def dense_fp32_bytes(self) -> int:
        return 4 * self.dense_params

    @property
    def ratio(self) -> float:
        return self.dense_fp32_bytes / self.total_bytes if self.total_bytes else float("nan")

    @classmethod
    def from_header(cls, header: dict, head_bytes: int) -> "SizeReport":
        kinds = {k: 0 for k in ("values", "indices", "codes", "packed_bits", "codebooks", "dense")}
        kinds["headers"] = head_bytes
        rows = []
        for e in header["tensors"]:
            total = 0
            for pname, p in e["parts"].items():
                kind = _classify(e["name"], pname, e["enc"], header["modules"])
                kinds[kind] += p["length"]
                total += p["length"]
            rows.append((e["name"], _classify(e["name"], "values", e["enc"], header["modules"]), e["enc"], total))
        return cls(head_bytes + header["payload_bytes"], kinds, header["dense_params"], rows)

    def __str__(self) -> str:
        lines = [f"{'kind':<12} {'bytes':>12} {'share':>7}"]
        for kind, b in self.bytes_by_kind.items():
            lines.append(f"{kind:<12} {b:>12,d} {100.0 * b / max(self.total_bytes, 1):6.1f}%")
        lines.append(f"{'total':<12} {self.total_bytes:>12,d}   {self.bits_per_weight:.3f} bits/weight, "
                     f"{self.ratio:.1f}x smaller than dense fp32 ({self.dense_params:,d} weights)")
        return "\n".join(lines)


def compressed_size_report(source, compress: bool = True) -> SizeReport:
    """Size report of a saved file (validated, path) or of what :func:`save_compressed` would write for a
    model (nothing written)."""
    if isinstance(source, nn.Module):
        head, _, header = _serialize(source, compress)
        return SizeReport.from_header(header, len(head))
    _, header, start = _load(source)
    return SizeReport.from_header(header, start)
