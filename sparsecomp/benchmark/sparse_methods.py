"""The contenders of the sparse-linear benchmark, each built (untimed) into a callable ``fn(x)``.

Same function as dense ``F.linear(x, W, b)`` with the pruned W, so their outputs are checked:
- ``dense``: ``F.linear`` on the pruned weight stored densely (the baseline every speedup is relative to);
- ``sparsecomp``: ``sparsecomp.nn.SparseLinear.from_dense`` (tiled CSR, ``torch.ops.sparsecomp.sparse_linear``);
- ``csr_linear`` / ``csr_mm``: the two ways to run torch.sparse CSR; the faster one is reported as ``torch_csr``;
- ``torch_bsr``: torch.sparse BSR (``F.linear`` with a ``to_sparse_bsr`` weight), the smallest block of 4, 2, 1
  dividing both dimensions (unstructured zeros leave most blocks nonzero, so smaller blocks waste less);

Different functions, timed but not checked against dense:
- ``structured``: structured pruning at the same parameter count, i.e. a smaller dense layer with
  round((1 - s) * out) rows (the rows of largest norm of the unpruned weight);
Convolutions (conv presets with a geometry), on the images whose im2col matrices the GEMM methods get:
- ``dense_conv2d``: torch ``F.conv2d`` (oneDNN on CPU, cuDNN on CUDA) with the pruned weight;
- ``sparsecomp_conv2d``: ``sparsecomp.nn.SparseConv2d.from_dense`` (its own im2col + sparse matmul).
Their outputs are checked against the same reference (reordered to GEMM rows); their ratio is ``conv_speedup``.

- ``semi_structured_24`` (CUDA only): the unpruned weight pruned 2:4 (50%, whatever the grid sparsity) and
  run by ``torch.sparse.to_sparse_semi_structured`` in fp16.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .args import DTYPES  # noqa: F401  (re-exported)

Fn = Callable[[torch.Tensor], torch.Tensor]

#: methods whose output must equal dense F.linear with the pruned weight
SAME_FUNCTION = ("dense", "sparsecomp", "csr_linear", "csr_mm", "torch_bsr")
CSR_VARIANTS = {"csr_linear": "F.linear(x, W_csr, b)", "csr_mm": "torch.sparse.mm(W_csr, x.t()).t() + b"}
LABELS = {
    "dense": "dense F.linear",
    "sparsecomp": "sparsecomp SparseLinear",
    "torch_csr": "torch.sparse CSR",
    "torch_bsr": "torch.sparse BSR",
    "structured": "structured pruning (fewer rows)",
    "semi_structured_24": "2:4 semi-structured fp16",
    "sparsecomp_conv2d": "SparseConv2d vs torch conv2d",
}
CONV_METHODS = ("dense_conv2d", "sparsecomp_conv2d")


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) against a float64 reference, for outputs of order 1 (see :func:`random_layer`)."""
    if dtype == torch.float64:
        return 1e-10, 1e-10
    if dtype == torch.float32:
        return 1e-4, 1e-4
    if dtype == torch.float16:
        return 1e-2, 1e-2
    return 5e-2, 5e-2


def random_layer(out_features: int, in_features: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A float32 CPU weight and bias scaled like nn.Linear's init, so outputs are of order 1 at any width."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=g) / math.sqrt(in_features)
    bias = 0.1 * torch.randn(out_features, generator=g)
    return weight, bias


def random_inputs(count: int, batch: int, in_features: int, seed: int, dtype: torch.dtype,
                  device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, in_features, generator=g).to(device=device, dtype=dtype) for _ in range(count)]


def magnitude_order(weight: torch.Tensor) -> torch.Tensor:
    """Flat indices of ``weight`` by increasing |w|: computed once per shape, reused for every sparsity."""
    return torch.argsort(weight.abs().flatten())


def prune_to(weight: torch.Tensor, order: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A copy of ``weight`` with exactly round(sparsity * numel) of its smallest-magnitude entries zeroed."""
    pruned = weight.clone()
    pruned.view(-1)[order[: round(sparsity * weight.numel())]] = 0
    return pruned


def structured_rows(out_features: int, sparsity: float) -> int:
    """Rows of the structured-pruned layer with the parameter count of the sparse one (at least 1)."""
    return max(1, round((1.0 - sparsity) * out_features))


def make_dense(weight: torch.Tensor, bias: torch.Tensor) -> Fn:
    return lambda x: F.linear(x, weight, bias)


def make_sparsecomp(weight: torch.Tensor, bias: torch.Tensor) -> Fn:
    import sparsecomp

    linear = torch.nn.utils.skip_init(torch.nn.Linear, weight.shape[1], weight.shape[0], device=weight.device,
                                      dtype=weight.dtype)
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    linear.bias = torch.nn.Parameter(bias, requires_grad=False)
    layer = sparsecomp.nn.SparseLinear.from_dense(linear).eval().requires_grad_(False)
    return layer


def make_csr_variants(weight: torch.Tensor, bias: torch.Tensor) -> dict[str, Fn]:
    """Both torch.sparse CSR formulations, sharing one converted weight."""
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta": said once per conversion, noise here
        warnings.simplefilter("ignore", UserWarning)
        w_csr = weight.to_sparse_csr()
    return {
        "csr_linear": lambda x: F.linear(x, w_csr, bias),
        "csr_mm": lambda x: torch.sparse.mm(w_csr, x.t()).t() + bias,
    }


def bsr_blocksize(weight: torch.Tensor) -> int:
    out_features, in_features = weight.shape
    return next(b for b in (4, 2, 1) if out_features % b == 0 and in_features % b == 0)


def make_bsr(weight: torch.Tensor, bias: torch.Tensor) -> Fn:
    b = bsr_blocksize(weight)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        w_bsr = weight.to_sparse_bsr((b, b))
    return lambda x: F.linear(x, w_bsr, bias)


def make_structured(unpruned: torch.Tensor, bias: torch.Tensor, sparsity: float) -> Fn:
    rows = structured_rows(unpruned.shape[0], sparsity)
    keep = torch.topk(unpruned.float().norm(dim=1), rows).indices.sort().values
    weight, b = unpruned[keep].contiguous(), bias[keep].contiguous()
    return lambda x: F.linear(x, weight, b)


def prune_2_4(weight: torch.Tensor) -> torch.Tensor:
    """Keeps the 2 largest-magnitude entries of every 4 consecutive ones along a row (in_features % 4 == 0)."""
    groups = weight.reshape(weight.shape[0], -1, 4)
    keep = groups.abs().topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return (groups * mask).reshape(weight.shape)


def make_semi_structured_24(unpruned: torch.Tensor, bias: torch.Tensor,
                            inputs: Sequence[torch.Tensor]) -> tuple[Fn, Callable[[torch.Tensor], torch.Tensor]]:
    """(fn, reference): fn runs the 2:4 fp16 layer; reference(x) is its float64 dense equivalent.

    The fp16 copies of ``inputs`` are made here, untimed (casting the input is not the layer's work); fn
    must be called with one of ``inputs``.
    """
    w24 = prune_2_4(unpruned).half()
    b16 = bias.half()
    w_sparse = torch.sparse.to_sparse_semi_structured(w24)
    half_inputs = {id(x): x.half() for x in inputs}

    def fn(x: torch.Tensor) -> torch.Tensor:
        return F.linear(half_inputs[id(x)], w_sparse, b16)

    def reference(x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.half().double(), w24.double(), b16.double())

    return fn, reference


# ------------------------------------------------------------------------------------------ conv cases
def conv_inputs(geometry, batch: int, count: int, seed: int, dtype: torch.dtype,
                device: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(images [batch, C, H, W], their im2col GEMM inputs [batch * out_pixels, C * k * k]), ``count`` of each."""
    c_in, k, stride, padding, hw = geometry
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(batch, c_in, hw, hw, generator=g).to(device=device, dtype=dtype) for _ in range(count)]
    cols = [F.unfold(x, k, padding=padding, stride=stride).transpose(1, 2).reshape(-1, c_in * k * k).contiguous()
            for x in images]
    return images, cols


def as_gemm_rows(conv_out: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] conv output -> [N * H * W, C], the row order of the im2col GEMM."""
    return conv_out.permute(0, 2, 3, 1).reshape(-1, conv_out.shape[1])


def make_conv_methods(weight: torch.Tensor, bias: torch.Tensor, geometry, images: Sequence[torch.Tensor],
                      cols: Sequence[torch.Tensor]) -> dict[str, Fn]:
    """Conv methods called with a GEMM input (one of ``cols``); each runs on the matching image instead."""
    import sparsecomp

    c_in, k, stride, padding, _ = geometry
    w4 = weight.reshape(weight.shape[0], c_in, k, k)
    image_of = {id(c): x for c, x in zip(cols, images)}
    conv = torch.nn.Conv2d(c_in, weight.shape[0], k, stride, padding, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(w4)
        conv.bias.copy_(bias)
    sparse = sparsecomp.nn.SparseConv2d.from_dense(conv).eval().requires_grad_(False)
    return {"dense_conv2d": lambda x: F.conv2d(image_of[id(x)], w4, bias, stride, padding),
            "sparsecomp_conv2d": lambda x: sparse(image_of[id(x)])}
