"""Benchmarks of sparsecomp against its peers (not part of the installed package).

A package only so that the scripts, the pytest-benchmark suites and tests/test_bench_harness.py share one
import path: ``from bench.harness import measure``.
"""
