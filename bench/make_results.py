"""`python bench/make_results.py RESULTS_JSON... [--copy-plot]` == `python -m sparsecomp.benchmark.results ...`:
refreshes the generated sparse sections of bench/RESULTS.md (the engine is sparsecomp.benchmark.results)."""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's sparsecomp, not another install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparsecomp.benchmark.results import *  # noqa: E402,F401,F403
from sparsecomp.benchmark import results as _impl  # noqa: E402

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not any(a == "--results-md" or a.startswith("--results-md=") for a in argv):
        argv += ["--results-md", str(RESULTS_MD)]
    return _impl.main(argv)


if __name__ == "__main__":
    sys.exit(main())
