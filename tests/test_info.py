"""sparsecomp.info(): what was built and what will be used at run time."""
from __future__ import annotations

import pytest
import torch

import sparsecomp
from sparsecomp import _C

from conftest import ISA_ORDER


EXPECTED_KEYS = {"sparsecomp", "torch", "cpu_isa", "cpu_isa_detected", "threads", "parallel_backend",
                 "cuda_kernels_built", "cuda_available", "cuda_arch_list"}


def test_info_keys_and_values():
    data = sparsecomp.info()
    assert EXPECTED_KEYS <= set(data), EXPECTED_KEYS - set(data)
    assert data["sparsecomp"] == sparsecomp.__version__
    assert data["torch"] == torch.__version__
    assert data["cpu_isa"] in ISA_ORDER
    assert data["cpu_isa_detected"] in ISA_ORDER
    assert ISA_ORDER.index(data["cpu_isa"]) <= ISA_ORDER.index(data["cpu_isa_detected"])
    assert data["threads"] == torch.get_num_threads() and data["threads"] >= 1
    assert isinstance(data["parallel_backend"], str) and data["parallel_backend"]
    assert data["parallel_backend"] != "unknown", "torch.__config__.parallel_info() names the ATen backend"
    assert ("extension built with OpenMP" in data["parallel_backend"]) == bool(_C.openmp)
    assert isinstance(data["cuda_kernels_built"], bool)
    assert data["cuda_available"] == torch.cuda.is_available()
    assert isinstance(data["cuda_arch_list"], list)
    if not torch.cuda.is_available():
        assert data["cuda_arch_list"] == []


def test_info_follows_runtime_settings():
    """info() reports the ISA and thread count in effect now, not the ones at import."""
    original_isa, original_threads = _C.cpu_isa(), torch.get_num_threads()
    try:
        _C.set_cpu_isa("scalar")
        torch.set_num_threads(1)
        data = sparsecomp.info()
        assert data["cpu_isa"] == "scalar" and data["threads"] == 1
        assert data["cpu_isa_detected"] == _C.cpu_isa_detected()
    finally:
        _C.set_cpu_isa(original_isa)
        torch.set_num_threads(original_threads)
    assert sparsecomp.info()["cpu_isa"] == original_isa


def test_info_verbose_prints_every_key(capsys):
    data = sparsecomp.info(verbose=True)
    out = capsys.readouterr().out
    for key, value in data.items():
        assert any(line.split()[:1] == [key] and line.rstrip().endswith(str(value)) for line in out.splitlines()), key


def test_set_cpu_isa_rejects_unknown_and_unsupported():
    original = _C.cpu_isa()
    with pytest.raises(ValueError, match="unknown CPU ISA 'sse9'"):
        _C.set_cpu_isa("sse9")
    detected = _C.cpu_isa_detected()
    for isa in ISA_ORDER[ISA_ORDER.index(detected) + 1:]:
        with pytest.raises(ValueError, match="does not support"):
            _C.set_cpu_isa(isa)
    assert _C.cpu_isa() == original
