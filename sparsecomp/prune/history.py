"""The table schedules return: a list of per-round dicts that also prints itself."""
from __future__ import annotations

from .table import format_table

_FORMATS = {"target": ".3f", "sparsity": ".3f", "metric": ".4f", "drop": "+.4f", "seconds": ".1f"}


class History(list):
    """Rounds of a pruning schedule, one dict per round (round 0 = before pruning); ``print(history)`` shows
    them as a table."""

    def columns(self) -> list[str]:
        keys: list[str] = []
        for row in self:
            keys += [k for k in row if k not in keys]
        return keys

    def table(self) -> str:
        if not self:
            return "(no rounds)"
        return format_table(self, [(k, k, _FORMATS.get(k)) for k in self.columns()])

    def __str__(self) -> str:
        return self.table()


def print_history(history: History) -> None:
    print(History(history).table())
