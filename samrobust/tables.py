"""The one markdown-table writer of the package: every summary.md, REPORT.md and bench table goes through
:func:`markdown_table`, so all tables share one layout (``| a | b |`` rows under a ``|---|---|`` rule)."""
from __future__ import annotations

from typing import Callable, Iterable, List, Sequence

__all__ = ["markdown_table", "table_lines"]


def table_lines(header: Sequence, rows: Iterable[Sequence], cell: Callable[[object], str] = str) -> List[str]:
    """The lines of a markdown table: the header row, the ``|---|`` rule, one line per row. ``cell``
    writes each cell (header included); the default is ``str``. A row shorter than the header is not
    padded: the caller states every cell, empty ones as ""."""
    head = [cell(h) for h in header]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


def markdown_table(header: Sequence, rows: Iterable[Sequence], cell: Callable[[object], str] = str) -> str:
    """:func:`table_lines` joined by newlines (no trailing newline)."""
    return "\n".join(table_lines(header, rows, cell))
