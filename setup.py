"""Build of the single extension `sparsecomp._C`.

CPU sources are always compiled. CUDA sources are compiled when torch was built with CUDA and a CUDA
toolkit is found (CUDA_HOME), or when FORCE_CUDA=1. Vector code is selected at run time (see
csrc/cpu/cpu_features.cpp), so no -march flag is ever passed.
"""
import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def _want_cuda():
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def _extension():
    cpu_sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp") + _sources("csrc/ops/*.cpp")
    # -fopenmp: at::parallel_for is a header template; without it the extension's loops run on one thread.
    cxx_flags = ["-O3", "-fvisibility=hidden", "-fopenmp"]  # C++ standard: torch's default
    link_flags = ["-fopenmp"]
    if _want_cuda():
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
        if not arch:
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        return CUDAExtension(
            "sparsecomp._C",
            cpu_sources + _sources("csrc/cuda/*.cu"),
            define_macros=[("SPARSECOMP_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
            extra_link_args=link_flags,
        )
    return CppExtension("sparsecomp._C", cpu_sources, extra_compile_args={"cxx": cxx_flags},
                        extra_link_args=link_flags)


setup(
    packages=find_packages(include=["sparsecomp", "sparsecomp.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
