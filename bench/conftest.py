"""pytest-benchmark settings shared by the bench/ suites: all cores, quiet torch.sparse beta warning."""
import os

import torch


def pytest_configure(config):
    # Same thread count as sweep_sparse.py, so both report comparable numbers. BENCH_THREADS overrides.
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    config.addinivalue_line("filterwarnings", "ignore:Sparse CSR tensor support is in beta:UserWarning")
