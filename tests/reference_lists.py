"""The release's state-dict key lists (../shared/reference/upstream_state_dict/*.txt), read for
the parity tests: one `key (shape) dtype` line per entry."""
import os
import re
from pathlib import Path

import pytest

# a copy of the team's ../shared/reference/upstream_state_dict travels with the tests, so a clean
# clone (CI) always runs the parity tests; MEGRAPHAU_REFERENCE_DIR points elsewhere
REFERENCE = Path(os.environ.get("MEGRAPHAU_REFERENCE_DIR",
                                Path(__file__).resolve().parent / "reference" / "upstream_state_dict"))


def reference_entries(name: str) -> list[tuple[str, tuple, str]]:
    """[(key, shape, dtype)] of reference list `name`, in the release's order; skips if absent."""
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"reference list {path} not available")
    entries = []
    for line in path.read_text().splitlines():
        key, rest = line.split(" ", 1)
        shape, dtype = rest.rsplit(" ", 1)
        entries.append((key, tuple(int(s) for s in re.findall(r"\d+", shape)), dtype))
    return entries
