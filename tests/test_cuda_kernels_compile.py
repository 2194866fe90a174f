"""Compile checks of the CUDA sources with nvcc, for machines without a GPU (CI).

* Every ``csrc/cuda/kernels/*.cuh`` is compiled for sm_80 and sm_90 with every nvcc and host-compiler
  (-Wall -Wextra) warning treated as a failure, through
  ``tests/cuda_compile_check/<stem>.cu``, a translation unit that instantiates the header's launchers for every
  value type (a template-only header compiled on its own checks almost nothing).
* ``csrc/cuda/*.cu`` (the torch bindings) are compiled, not linked, against the installed torch's headers, which a
  CPU-only torch wheel also ships. Torch's own headers warn under nvcc, so warnings are not errors here.

Skipped when nvcc is not found. All compiles start at once (one nvcc per file).
"""
import os
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KERNELS = sorted((ROOT / "csrc" / "cuda" / "kernels").glob("*.cuh"))
BINDINGS = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
CHECK_UNITS = Path(__file__).resolve().parent / "cuda_compile_check"

ARCH_FLAGS = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
# What torch.utils.cpp_extension passes to nvcc for every extension: the kernels must build under these.
TORCH_NVCC_DEFINES = [
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
]
TIMEOUT_S = 600


def _find_nvcc():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidates = [shutil.which("nvcc")]
    if cuda_home:
        candidates.append(os.path.join(cuda_home, "bin", "nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


NVCC = _find_nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (PATH, CUDA_HOME, /usr/local/cuda/bin)")


def _kernel_jobs(out_dir):
    jobs = {}
    for header in KERNELS:
        unit = CHECK_UNITS / f"{header.stem}.cu"
        if unit.is_file():  # a missing unit is reported by test_every_kernel_header_has_a_check_unit
            jobs[header.name] = [
                NVCC, "-c", "-std=c++17", "-O3", "-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra",
                *ARCH_FLAGS, *TORCH_NVCC_DEFINES, str(unit), "-o", str(out_dir / f"{header.stem}.o"),
            ]  # fmt: skip
    return jobs


def _torch_include_dirs():
    try:
        from torch.utils.cpp_extension import include_paths
    except ImportError:
        return None
    dirs = [Path(p) for p in include_paths()]
    return dirs if any((d / "c10" / "cuda" / "CUDAGuard.h").is_file() for d in dirs) else None


def _binding_jobs(out_dir):
    """The bindings cannot be linked without a CUDA torch, but their C++ can be checked against torch's headers."""
    include_dirs = _torch_include_dirs()
    if include_dirs is None:
        return None
    import torch

    # A CPU-only torch lacks this one generated header of the CUDA build; its content is a single define.
    stub = out_dir / "stub"
    if not any((d / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").is_file() for d in include_dirs):
        (stub / "c10" / "cuda" / "impl").mkdir(parents=True)
        (stub / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").write_text(
            "#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n"
        )
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
    flags = [
        "-c", "-std=c++17", "-O1", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC",
        "-gencode", "arch=compute_80,code=sm_80",  # the host code is what is checked here; kernels are above
        *TORCH_NVCC_DEFINES, f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-DSPARSECOMP_WITH_CUDA=1",
        "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C",
        "-I", str(stub), *[f"-I{d}" for d in include_dirs], f"-I{sysconfig.get_paths()['include']}",
    ]  # fmt: skip
    return {b.name: [NVCC, *flags, str(b), "-o", str(out_dir / f"{b.stem}.o")] for b in BINDINGS}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Starts every compile at once (kernels and bindings) and returns {"kernels": {...}, "bindings": {...} or
    None}, each {file name: CompletedProcess}."""
    out_dir = tmp_path_factory.mktemp("nvcc")
    groups = {"kernels": _kernel_jobs(out_dir), "bindings": _binding_jobs(out_dir)}
    jobs = [(g, name, argv) for g, js in groups.items() if js for name, argv in js.items()]
    results = {g: (None if js is None else {}) for g, js in groups.items()}
    if jobs:
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            futures = [
                (g, name, pool.submit(subprocess.run, argv, capture_output=True, text=True, timeout=TIMEOUT_S))
                for g, name, argv in jobs
            ]
            for g, name, f in futures:
                results[g][name] = f.result()
    return results


def _failures(results, warnings_fail):
    bad = {
        name: r
        for name, r in results.items()
        if r.returncode != 0 or (warnings_fail and "warning" in (r.stdout + r.stderr).lower())
    }
    return "\n\n".join(f"== {name} (exit {r.returncode}) ==\n{r.stdout}{r.stderr}" for name, r in bad.items())


def test_every_kernel_header_has_a_check_unit():
    assert KERNELS, "no csrc/cuda/kernels/*.cuh found"
    missing = [h.name for h in KERNELS if not (CHECK_UNITS / f"{h.stem}.cu").is_file()]
    assert not missing, f"add tests/cuda_compile_check/<stem>.cu instantiating the launchers of: {', '.join(missing)}"


def test_kernel_headers_compile_without_warnings(compiled):
    if not compiled["kernels"]:
        pytest.skip("no kernel header has a check unit")
    failures = _failures(compiled["kernels"], warnings_fail=True)
    assert not failures, "nvcc rejected (errors or warnings):\n" + failures


def test_cuda_bindings_compile(compiled):
    if compiled["bindings"] is None:
        pytest.skip("torch (with its c10/cuda headers) is not importable")
    if not compiled["bindings"]:
        pytest.skip("no csrc/cuda/*.cu")
    # Torch's own headers warn under nvcc (e.g. C++20 extensions), so only errors fail here.
    failures = _failures(compiled["bindings"], warnings_fail=False)
    assert not failures, "nvcc failed on a binding:\n" + failures


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
