"""Moved to `sparsecomp.benchmark.sparse_methods` (installed with the package); re-exported here for old imports."""
from sparsecomp.benchmark.sparse_methods import *  # noqa: F401,F403
