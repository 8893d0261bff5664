"""Shared by the bench scripts: plain-text or markdown tables, and the command line they record."""
from __future__ import annotations

from pathlib import Path

from megraphau.paths import REPO_ROOT as ROOT  # noqa: E402


def format_table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    """Rows of strings under `header`: a markdown table, or space-aligned columns."""
    table = [list(header)] + [list(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in table]
        lines.insert(1, "|" + "|".join("---" for _ in header) + "|")
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


def script_argv(script: str, argv: list[str] | None) -> list[str] | None:
    """The command a JSON result records (provenance.collect's argv): None for a command-line run
    (sys.argv), else the script's path from the repository root followed by `argv` (main(argv)
    called from Python, where sys.argv is the caller's)."""
    if argv is None:
        return None
    path = Path(script).resolve()
    return [str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path), *argv]
