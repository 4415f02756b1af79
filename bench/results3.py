"""Write one benchmark's section of bench/RESULTS-issue3.md, keeping the other sections."""

from __future__ import annotations

from pathlib import Path

RESULTS3 = Path(__file__).resolve().parent / "RESULTS-issue3.md"
HEADER = """# Benchmark results: issue 3 (notifications, temporal API)

Written by `bench/notifications.py --write-results` and `bench/temporal.py --write-results`;
each script rewrites only its own section. The issue-2 load benchmark is in
[RESULTS.md](RESULTS.md).
"""


def write_section(key: str, text: str) -> Path:
    """Replace (or append) the section `key` of RESULTS-issue3.md with `text`."""
    begin, end = f"<!-- {key}: begin -->", f"<!-- {key}: end -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    old = RESULTS3.read_text() if RESULTS3.exists() else HEADER
    head, found, rest = old.partition(begin)
    if found and end in rest:
        new = head + block + rest.partition(end)[2]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS3.write_text(new)
    return RESULTS3
