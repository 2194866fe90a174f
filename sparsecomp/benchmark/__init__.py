"""The benchmark engine behind ``sparsecomp bench`` (installed with the package; bench/ holds thin wrappers).

Each suite is a module with the same five names, and :data:`SUITES` is the only list of them, so a new suite is
one module plus one registry entry (the CLI, ``sparsecomp bench all`` and ``make bench`` pick it up):

- ``HELP``: one line for ``sparsecomp bench --help``; ``CPU_ONLY = True`` if it cannot run with --device cuda;
- ``add_arguments(parser, default_out)``: its options (start with :func:`.args.add_common`, which gives the
  shared --device --dtype --threads --repeats --warmup --seed --quick --out);
- ``finalize(args, parser) -> args``: defaults (--quick grid) and validation, ``parser.error(...)`` on bad input;
- ``run(args, command, progress=True) -> int``: runs the grid (tqdm bar), prints the table, writes ``args.out``.

Modules: harness (fair timing, result check), crossover, machine, presets, args, sparse / binary / codebook /
separable (suites), sparse_methods / binary_methods (their contenders), plot, results (RESULTS.md writer), cost_model.
"""
from __future__ import annotations

import importlib
from types import ModuleType

#: suite name -> module implementing the protocol above (insertion order = the order `bench all` runs them)
SUITES: dict[str, str] = {
    "sparse": "sparsecomp.benchmark.sparse",
    "binary": "sparsecomp.benchmark.binary",
    "codebook": "sparsecomp.benchmark.codebook",
    "separable": "sparsecomp.benchmark.separable",
}


def load(name: str) -> ModuleType:
    if name not in SUITES:
        raise KeyError(f"unknown benchmark suite {name!r}; known: {', '.join(SUITES)}")
    return importlib.import_module(SUITES[name])
