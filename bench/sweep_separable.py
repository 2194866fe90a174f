"""`python bench/sweep_separable.py ARGS` runs `sparsecomp bench separable ARGS`
(the engine is `sparsecomp.benchmark.separable`),
writing to bench/out/separable by default. Kept so existing commands and scripts still work."""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's sparsecomp, not another install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparsecomp.benchmark.separable import *  # noqa: E402,F401,F403  (old imports of this module keep working)
from sparsecomp.benchmark import separable as _impl  # noqa: E402

DEFAULT_OUT = str(Path(__file__).resolve().parent / "out/separable")


def main(argv: list[str] | None = None) -> int:
    return _impl.main(argv, default_out=DEFAULT_OUT, command="python bench/sweep_separable.py")


if __name__ == "__main__":
    sys.exit(main())
