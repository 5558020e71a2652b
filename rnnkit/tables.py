"""Table: rows of text cells that print as aligned text and show as HTML or Markdown.

What rnnkit returns as a table (:func:`rnnkit.compare_cells`, the ``%rnnkit`` magics' reports)
is one of these: ``print(table)`` gives aligned columns for a terminal, and a notebook shows
the ``_repr_html_`` table (``_repr_markdown_`` where a front-end renders Markdown only; the text
is the plain-text fallback). Cells are strings, already formatted; the first column is
left-aligned, the others right-aligned (numbers).
"""

from __future__ import annotations

import html
from collections.abc import Sequence


class Table:
    """``header``: column names; ``rows``: lists of cell strings, as many as columns;
    ``title``: a line above; ``note``: a line below (e.g. what a column means)."""

    def __init__(
        self,
        header: Sequence[str],
        rows: Sequence[Sequence[str]],
        *,
        title: str = "",
        note: str = "",
    ) -> None:
        self.header = [str(h) for h in header]
        self.rows = [[str(c) for c in row] for row in rows]
        for row in self.rows:
            if len(row) != len(self.header):
                raise ValueError(
                    f"every row needs {len(self.header)} cells (the header's), got {row!r}"
                )
        self.title, self.note = title, note

    def __str__(self) -> str:
        columns = range(len(self.header))
        widths = [max(len(row[i]) for row in [self.header, *self.rows]) for i in columns]

        def line(row: list[str]) -> str:
            cells = zip(row, widths, strict=True)
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells)
            ).rstrip()

        lines = [self.title] if self.title else []
        lines += [line(self.header), "  ".join("-" * w for w in widths)]
        lines += [line(row) for row in self.rows]
        return "\n".join(lines + ([self.note] if self.note else []))

    __repr__ = __str__

    def to_markdown(self) -> str:
        lines = [self.title, ""] if self.title else []
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("| --- " + "| ---: " * (len(self.header) - 1) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines + (["", self.note] if self.note else []))

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def _repr_html_(self) -> str:
        def cells(tag: str, row: list[str]) -> str:
            return "".join(
                f"<{tag} style='text-align:{'left' if i == 0 else 'right'}'>"
                f"{html.escape(c)}</{tag}>"
                for i, c in enumerate(row)
            )

        body = "".join(f"<tr>{cells('td', row)}</tr>" for row in self.rows)
        title = f"<p>{html.escape(self.title)}</p>" if self.title else ""
        note = f"<p><small>{html.escape(self.note)}</small></p>" if self.note else ""
        return (
            f"<div>{title}<table><thead><tr>{cells('th', self.header)}</tr></thead>"
            f"<tbody>{body}</tbody></table>{note}</div>"
        )
