"""`python bench/sweep_codebook.py ARGS` runs `sparsecomp bench codebook ARGS`
(the engine is `sparsecomp.benchmark.codebook`),
writing to bench/out/codebook by default. Kept so existing commands and scripts still work."""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's sparsecomp, not another install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparsecomp.benchmark.codebook import *  # noqa: E402,F401,F403  (old imports of this module keep working)
from sparsecomp.benchmark import codebook as _impl  # noqa: E402

DEFAULT_OUT = str(Path(__file__).resolve().parent / "out/codebook")


def main(argv: list[str] | None = None) -> int:
    return _impl.main(argv, default_out=DEFAULT_OUT, command="python bench/sweep_codebook.py")


if __name__ == "__main__":
    sys.exit(main())
