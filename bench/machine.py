"""Moved to `sparsecomp.benchmark.machine` (installed with the package); re-exported here for old imports."""
from sparsecomp.benchmark.machine import *  # noqa: F401,F403
