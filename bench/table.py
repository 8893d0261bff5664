"""Plain-text or markdown tables for the bench scripts' printed results."""
from __future__ import annotations


def format_table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    """Rows of strings under `header`: a markdown table, or space-aligned columns."""
    table = [list(header)] + [list(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in table]
        lines.insert(1, "|" + "|".join("---" for _ in header) + "|")
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)
