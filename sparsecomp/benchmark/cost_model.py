"""Per-layer time predictions for ``sparsecomp.convert(..., cost_model=...)`` from a measured sparse-sweep table.

A layer is described as the GEMM it runs (:class:`LayerGemm`: out x in weight, rows per call = batch x output
pixels, its sparsity, its fraction of all-zero rows, whether it is 2:4). :class:`TableCostModel` reads the
``results.json`` that ``sparsecomp bench sparse`` writes (for the same device and dtype) and predicts, for each
method that applies, the time per call:

- ``dense``: the nearest measured shape's dense time, scaled by the multiply count ``out * in * rows``;
- ``sparse`` (SparseLinear / SparseConv2d), ``structured`` (RowSparseLinear / RowSparseConv2d: a smaller dense
  layer over the nonzero rows), ``semi_structured_24`` (CUDA only): dense time / the measured speedup, the
  speedup interpolated over sparsity (linear) and GEMM rows (log scale) on the nearest measured shape (log
  distance in out and in). ``structured`` is looked up at the layer's zero-row fraction (the table measures
  "a layer with (1 - s) of the rows" at sparsity s), ``sparse`` at its sparsity.

Outside the measured sparsity range a prediction is only made where it is conservative: above the highest
measured sparsity the speedup of the highest is used (sparser is not slower); below the lowest, no prediction
(the method is not considered). Rows are clamped to the measured range. Why ratios and not raw times: the
speedup at a given (rows, sparsity) moves much less across shapes than the times do.
"""
from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

METHODS = ("dense", "sparse", "structured", "semi_structured_24")
#: column of the sweep's ``ms`` / ``speedup`` for each method
TABLE_COLUMN = {"dense": "dense", "sparse": "sparsecomp", "structured": "structured",
                "semi_structured_24": "semi_structured_24"}


@dataclass(frozen=True)
class LayerGemm:
    """What a prediction needs to know about one layer (``rows``: GEMM rows per call)."""

    out_features: int
    in_features: int
    rows: int
    sparsity: float
    zero_row_fraction: float = 0.0
    is_2_4: bool = False
    device: str = "cpu"


def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear through sorted (xs, ys), clamped to the end values outside."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


class TableCostModel:
    """Predictions from the rows of one sparse sweep (``results.json`` of ``sparsecomp bench sparse``)."""

    def __init__(self, rows: Sequence[Mapping], device: str = "cpu", dtype: str = "float32", source: str = "table"):
        self.device, self.dtype, self.source = device, dtype, source
        self._points: dict[tuple[int, int], list[Mapping]] = {}
        for r in rows:
            if r["ms"].get("dense") is None:
                continue
            self._points.setdefault((int(r["out_features"]), int(r["in_features"])), []).append(r)
        if not self._points:
            raise ValueError("cost model table has no rows with a dense time")

    @classmethod
    def from_results(cls, results: Mapping | str | Path) -> "TableCostModel":
        """From a results.json path or its parsed content."""
        source = str(results) if isinstance(results, (str, Path)) else "table"
        if isinstance(results, (str, Path)):
            results = json.loads(Path(results).read_text())
        if not isinstance(results, Mapping) or "rows" not in results:
            raise ValueError("cost model table must be the results.json of `sparsecomp bench sparse` "
                             "(a dict with 'rows')")
        meta = results.get("meta", {})
        return cls(results["rows"], device=meta.get("machine", {}).get("device", "cpu"),
                   dtype=meta.get("args", {}).get("dtype", "float32"), source=source)

    # ------------------------------------------------------------------------------------------ lookup
    def _nearest_shape(self, layer: LayerGemm) -> tuple[int, int]:
        def distance(shape):
            return abs(math.log(shape[0] / layer.out_features)) + abs(math.log(shape[1] / layer.in_features))
        return min(self._points, key=distance)

    @staticmethod
    def _rows_of(r: Mapping) -> int:
        return int(r.get("gemm_rows", r["batch"]))

    def _by_rows(self, points: list[Mapping], value) -> tuple[list[float], list[float]]:
        """(log rows, value(r)) sorted by rows, over the points where value(r) is known (one per rows, mean)."""
        acc: dict[int, list[float]] = {}
        for r in points:
            v = value(r)
            if v is not None and v > 0:
                acc.setdefault(self._rows_of(r), []).append(v)
        keys = sorted(acc)
        return [math.log(k) for k in keys], [sum(acc[k]) / len(acc[k]) for k in keys]

    def _speedup(self, points: list[Mapping], column: str, sparsity: float, rows: int) -> float | None:
        """Speedup of ``column`` over dense at (sparsity, rows): linear in sparsity between measured ones
        (each interpolated over log rows first); None below the lowest measured sparsity."""
        per_sparsity = {}
        for s in sorted({float(r["sparsity"]) for r in points}):
            xs, ys = self._by_rows([r for r in points if float(r["sparsity"]) == s],
                                   lambda r: r["speedup"].get(column))
            if xs:
                per_sparsity[s] = _interp(xs, ys, math.log(rows))
        if not per_sparsity:
            return None
        grid = sorted(per_sparsity)
        if sparsity < grid[0] - 1e-9:
            return None
        return _interp(grid, [per_sparsity[s] for s in grid], sparsity)

    # --------------------------------------------------------------------------------------- predictions
    def predict(self, layer: LayerGemm) -> dict[str, float]:
        """{method: predicted ms per call} for the methods that apply and have a prediction (dense always)."""
        shape = self._nearest_shape(layer)
        points = self._points[shape]
        xs, ys = self._by_rows(points, lambda r: r["ms"]["dense"] / (shape[0] * shape[1]
                                                                                 * self._rows_of(r)))
        dense_ms = _interp(xs, ys, math.log(layer.rows)) * layer.out_features * layer.in_features * layer.rows
        out = {"dense": dense_ms}
        wanted = {"sparse": layer.sparsity}
        if layer.zero_row_fraction > 0:
            wanted["structured"] = layer.zero_row_fraction
        if layer.is_2_4 and layer.device == "cuda":
            wanted["semi_structured_24"] = None  # always 50%: averaged over the table's sparsities
        for method, sparsity in wanted.items():
            column = TABLE_COLUMN[method]
            if sparsity is None:
                xs, ys = self._by_rows(points, lambda r: r["speedup"].get(column))
                speedup = _interp(xs, ys, math.log(layer.rows)) if xs else None
            else:
                speedup = self._speedup(points, column, sparsity, layer.rows)
            if speedup:
                out[method] = dense_ms / speedup
        return out

    def choose(self, layer: LayerGemm, margin: float = 0.05,
               allowed: Sequence[str] = METHODS) -> tuple[str, dict[str, float]]:
        """(fastest predicted method, predictions); dense unless another is predicted below (1 - margin) x dense."""
        predicted = {m: t for m, t in self.predict(layer).items() if m in allowed or m == "dense"}
        best = min(predicted, key=predicted.get)
        if best != "dense" and predicted[best] >= predicted["dense"] * (1.0 - margin):
            best = "dense"
        return best, predicted


def load(cost_model) -> TableCostModel:
    """A TableCostModel from a path to results.json, its parsed dict, or an existing model."""
    if isinstance(cost_model, TableCostModel):
        return cost_model
    if isinstance(cost_model, (str, Path)):
        if not Path(cost_model).is_file():
            raise ValueError(f"cost_model: {cost_model} is not a file (expected the results.json of "
                             "`sparsecomp bench sparse`, 'probe' or None)")
        return TableCostModel.from_results(cost_model)
    if isinstance(cost_model, Mapping):
        return TableCostModel.from_results(cost_model)
    raise TypeError(f"cost_model must be None, 'probe', a results.json path, its dict or a TableCostModel; "
                    f"got {type(cost_model).__name__}")
