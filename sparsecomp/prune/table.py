"""Plain-text tables for the reports of pruning, schedules and conversion."""
from __future__ import annotations

from typing import Any, Callable, Sequence


def _cell(value: Any, fmt: str | Callable | None) -> str:
    if value is None:
        return "-"
    if callable(fmt):
        return fmt(value)
    if fmt and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, fmt)
    return str(value)


def format_table(rows: Sequence[dict], columns: Sequence[tuple]) -> str:
    """Renders ``rows`` under ``columns`` = [(key, header, fmt), ...]; numbers right-aligned, text left.

    ``fmt`` is a format spec (".3f") or a callable value -> str; missing values print as "-".
    """
    headers = [c[1] for c in columns]
    cells = [[_cell(row.get(key), fmt) for key, _, fmt in columns] for row in rows]
    numeric = [all(isinstance(row.get(key), (int, float)) or row.get(key) is None for row in rows)
               for key, _, _ in columns]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule] + [line(r) for r in cells])
