"""What this installation of sparsecomp was built with and what it will use at run time."""
from __future__ import annotations

import torch

from . import _C


def _parallel_backend() -> str:
    for line in torch.__config__.parallel_info().splitlines():
        if line.startswith("ATen parallel backend:"):
            return line.split(":", 1)[1].strip() + (" (extension built with OpenMP)" if _C.openmp else "")
    return "unknown"


def info(verbose: bool = False) -> dict:
    """Version, torch version, CPU ISA in use, threads, and whether CUDA kernels were built."""
    from . import __version__

    data = {
        "sparsecomp": __version__,
        "torch": torch.__version__,
        "cpu_isa": _C.cpu_isa(),
        "cpu_isa_detected": _C.cpu_isa_detected(),
        "threads": torch.get_num_threads(),
        "parallel_backend": _parallel_backend(),
        "cuda_kernels_built": bool(_C.built_with_cuda()),
        "cuda_available": torch.cuda.is_available(),
        "cuda_arch_list": torch.cuda.get_arch_list() if torch.cuda.is_available() else [],
    }
    if verbose:
        width = max(map(len, data))
        for key, value in data.items():
            print(f"{key:<{width}}  {value}")
    return data
