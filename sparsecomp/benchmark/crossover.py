"""Crossover (break-even) sparsity: from which sparsity a method stays faster than dense, on a measured grid."""
from __future__ import annotations

import math
from typing import Sequence

#: how format_crossover's special values read
CROSSOVER_LEGEND = ("'<= s': faster than dense at every sparsity measured; "
                    "'none': slower than dense at the highest sparsity measured")


def crossover(sparsities: Sequence[float], speedups: Sequence[float | None]) -> float | None:
    """The lowest sparsity from which ``speedup >= 1`` holds up to the highest measured sparsity.

    Points are sorted by sparsity; missing speedups (None or NaN, e.g. a method that did not run) are
    dropped. Returns the lowest sparsity if every point is >= 1, None if the highest one is < 1 (so a method
    that is faster in the middle but slower again at the top end has no crossover: it does not *stay*
    faster), and otherwise the point between the last slower grid point and the next one where the straight
    line through the two reaches 1.
    """
    if len(sparsities) != len(speedups):
        raise ValueError(f"crossover: {len(sparsities)} sparsities but {len(speedups)} speedups")
    points = sorted((float(s), float(v)) for s, v in zip(sparsities, speedups)
                    if v is not None and not math.isnan(float(v)))
    if any(a[0] == b[0] for a, b in zip(points, points[1:])):
        raise ValueError("crossover: sparsities must be distinct")
    if not points or points[-1][1] < 1.0:
        return None
    slower = [i for i, (_, v) in enumerate(points) if v < 1.0]
    if not slower:
        return points[0][0]
    (s0, v0), (s1, v1) = points[slower[-1]], points[slower[-1] + 1]
    return s0 + (1.0 - v0) * (s1 - s0) / (v1 - v0)


def crossovers(rows: list[dict], methods: Sequence[str]) -> list[dict]:
    """One entry per (case, batch, method that ran) of sweep rows (``case``, ``shape``, ``batch``, ``sparsity``,
    ``speedup[method]``): the crossover sparsity (None if none) and the lowest sparsity measured."""
    found = []
    for case in dict.fromkeys(r["case"] for r in rows):
        for batch in dict.fromkeys(r["batch"] for r in rows if r["case"] == case):
            pts = [r for r in rows if r["case"] == case and r["batch"] == batch]
            for method in methods:
                if all(r["speedup"].get(method) is None for r in pts):
                    continue  # not run here (skipped, or not on this device): no crossover to report
                found.append({"case": case, "shape": pts[0]["shape"], "batch": batch, "method": method,
                              "sparsity": crossover([r["sparsity"] for r in pts],
                                                    [r["speedup"].get(method) for r in pts]),
                              "lowest_measured": min(r["sparsity"] for r in pts),
                              "points": len(pts)})
    return found


def format_crossover(c: dict) -> str:
    """'0.412'; '<= 0.3' when faster at every measured sparsity; 'none' when slower at the highest one."""
    if c["sparsity"] is None:
        return "none"
    if c["sparsity"] == c["lowest_measured"]:
        return f"<= {c['sparsity']:.3g}"
    return f"{c['sparsity']:.3f}"
