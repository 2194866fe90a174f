"""Moved to `sparsecomp.benchmark.plot` (installed with the package); re-exported here for old imports."""
from sparsecomp.benchmark.plot import *  # noqa: F401,F403
