"""Moved to `sparsecomp.benchmark.harness` (installed with the package); re-exported here for old imports."""
from sparsecomp.benchmark.harness import *  # noqa: F401,F403
