"""The C++ autograd kernels of sparse_linear / sparse_matmul (csrc/ops/sparse_autograd.cpp).

Gradient values are checked in test_sparse_linear_op.py / test_sparse_matmul_op.py (dense references,
gradcheck, opcheck). Here: when a graph is recorded and when not, which gradients are produced for each subset
of inputs that require grad, the in-place safety of saved tensors, and that no Python runs on the call path.
"""
from __future__ import annotations

import sys

import pytest
import torch

from sparsecomp.nn import SparseLinear

from conftest import random_pruned, to_csr

linear = torch.ops.sparsecomp.sparse_linear
matmul = torch.ops.sparsecomp.sparse_matmul


def linear_args(gen, dtype=torch.float64):
    w = random_pruned(6, 9, 0.5, dtype, gen)
    v, ci, rp = to_csr(w)
    x = torch.randn(4, 9, generator=gen, dtype=dtype)
    b = torch.randn(6, generator=gen, dtype=dtype)
    return w, x, v, ci, rp, b


def matmul_args(gen, dtype=torch.float64):
    w = random_pruned(6, 9, 0.5, dtype, gen)
    v, ci, rp = to_csr(w)
    x = torch.randn(2, 9, 5, generator=gen, dtype=dtype)
    b = torch.randn(6, generator=gen, dtype=dtype)
    return w, x, v, ci, rp, b


@pytest.mark.parametrize("which", ["linear", "matmul"])
def test_graph_only_when_grad_mode_and_requires_grad(which, gen):
    w, x, v, ci, rp, b = (linear_args if which == "linear" else matmul_args)(gen)
    op = linear if which == "linear" else matmul
    x, v, b = x.requires_grad_(), v.requires_grad_(), b.requires_grad_()
    y = op(x, v, ci, rp, b, 9)
    assert y.requires_grad and y.grad_fn is not None
    with torch.no_grad():
        y = op(x, v, ci, rp, b, 9)
    assert not y.requires_grad and y.grad_fn is None
    with torch.inference_mode():
        y = op(x, v, ci, rp, b, 9)
    assert not y.requires_grad and y.is_inference()
    y = op(x.detach(), v.detach(), ci, rp, b.detach(), 9)
    assert not y.requires_grad and y.grad_fn is None
    # the no-graph path computes the same values as the recording one
    torch.testing.assert_close(y, op(x, v, ci, rp, b, 9).detach(), rtol=0, atol=0)


SUBSETS = [(True, False, False), (False, True, False), (False, False, True), (True, True, True),
           (False, True, True)]


@pytest.mark.parametrize("x_rg,v_rg,b_rg", SUBSETS)
@pytest.mark.parametrize("which", ["linear", "matmul"])
def test_gradients_for_each_subset_of_inputs(which, x_rg, v_rg, b_rg, gen):
    """Exactly the inputs that require grad get one, equal to the dense float64 gradient (x is saved only for
    grad_values and values only for grad_x, so every subset takes its own path through backward)."""
    w, x, v, ci, rp, b = (linear_args if which == "linear" else matmul_args)(gen)
    mask = w != 0
    xs, vs, bs = x.clone().requires_grad_(x_rg), v.clone().requires_grad_(v_rg), b.clone().requires_grad_(b_rg)
    xd, wd, bd = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
    if which == "linear":
        y = linear(xs, vs, ci, rp, bs, 9)
        yd = xd @ wd.T + bd
    else:
        y = matmul(xs, vs, ci, rp, bs, 9)
        yd = wd @ xd + bd[:, None]
    g = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    y.backward(g)
    yd.backward(g)
    for t, rg, ref in ((xs, x_rg, xd.grad), (vs, v_rg, wd.grad[mask]), (bs, b_rg, bd.grad)):
        if rg:
            torch.testing.assert_close(t.grad, ref, rtol=1e-12, atol=1e-12)
        else:
            assert t.grad is None


@pytest.mark.parametrize("which", ["linear", "matmul"])
def test_in_place_change_of_a_saved_input_is_caught(which, gen):
    _, x, v, ci, rp, b = (linear_args if which == "linear" else matmul_args)(gen)
    op = linear if which == "linear" else matmul
    v = v.clone().requires_grad_()
    y = op(x, v, ci, rp, b, 9)  # grad_values needs x: saved
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_no_grad_for_structure_and_second_backward_needs_retain_graph(gen):
    _, x, v, ci, rp, b = linear_args(gen)
    v = v.clone().requires_grad_()
    y = linear(x, v, ci, rp, b, 9)
    y.sum().backward(retain_graph=True)
    first = v.grad.clone()
    y.sum().backward()
    torch.testing.assert_close(v.grad, 2 * first, rtol=0, atol=0)
    assert ci.grad is None and rp.grad is None
    y = linear(x, v, ci, rp, b, 9)
    y.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.sum().backward()


def python_calls(fn) -> list[str]:
    """'file:function' of every Python function entered while fn runs."""
    calls = []

    def profile(frame, event, arg):
        if event == "call":
            calls.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


@pytest.mark.parametrize("mode", ["no_grad", "grad"])
def test_layer_call_runs_no_python_autograd_and_no_module_getattr(mode, gen):
    """Per-call overhead guard: a Python autograd kernel (torch.library.register_autograd) ran on every call
    outside inference_mode, no_grad included, and nn.Module.__getattr__ costs ~0.5 us per tensor."""
    layer = SparseLinear.from_dense(torch.nn.Linear(9, 6))
    x = torch.randn(3, 9, generator=gen)
    with torch.no_grad() if mode == "no_grad" else torch.enable_grad():
        calls = python_calls(lambda: layer(x))
    assert any("sparse_linear.py:forward" in c for c in calls), calls  # the profiler did see the call
    offending = [c for c in calls if "torch/_library" in c or "torch/autograd" in c or c.endswith(":__getattr__")]
    assert not offending, offending
