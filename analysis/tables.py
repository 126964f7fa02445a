"""Rows of a table (a list of dicts) as Markdown or CSV, the way every analysis script prints them."""

from __future__ import annotations

import csv
import io


def columns(rows: list[dict]) -> list[str]:
    """Every key of every row, in the order they first appear."""
    return list(dict.fromkeys(key for row in rows for key in row))


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "(none)\n"
    names = columns(rows)
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in names) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns(rows), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
