"""Moved to `sparsecomp.benchmark.binary_methods` (installed with the package); re-exported here for old imports."""
from sparsecomp.benchmark.binary_methods import *  # noqa: F401,F403
