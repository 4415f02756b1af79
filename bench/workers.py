"""Workers benchmark: the foundation scenarios on PostgreSQL with 1 and with 2 workers.

Each round starts a fresh `cityos serve --workers N` (auth off, loopback) on a new PostgreSQL
database (PostGIS) with the Redis bus, loads the sensors through the API and drives
bench/run.py's scenarios with wrk; rounds alternate 1 and 2 workers. Ratios are 2 / 1.

Usage: .venv/bin/python bench/workers.py [--entities 20000] [--duration 10] [--rounds 1]
           [--postgres postgresql://postgres@127.0.0.1:5432/test]
           [--bus redis://127.0.0.1:6379/0] [--write-results]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import engines  # noqa: E402
from engines import WANTED  # noqa: E402
from run import Result, git_revision, machine, write_section  # noqa: E402

BEGIN, END = "<!-- workers: begin -->", "<!-- workers: end -->"
COUNTS = (1, 2)


def one_round(args: argparse.Namespace, workers: int) -> dict[str, Result]:
    """Start `workers` workers on a fresh database with the bus, load it, run the scenarios."""
    env = {
        "CITYOS_BUS_URL": args.bus,
        "CITYOS_BUS_NAMESPACE": f"bench{secrets.token_hex(4)}",
        "CITYOS_WORKERS": str(workers),
    }
    return engines.one_round(args, "postgresql", env)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entities", type=int, default=20_000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--bus", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    runs: dict[int, list[dict[str, Result]]] = {n: [] for n in COUNTS}
    for r in range(args.rounds):
        for n in COUNTS:
            print(f"round {r + 1}: {n} worker(s) ...", file=sys.stderr)
            runs[n].append(one_round(args, n))
    lines = [
        BEGIN,
        "## Issue 8: PostgreSQL with 1 and with 2 workers",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Machine: {machine()}; PostgreSQL 15 + PostGIS 3 and Redis on the same machine",
        f"- Code: cityos {git_revision()}",
        f"- Command: `.venv/bin/python bench/workers.py --entities {args.entities} "
        f"--duration {args.duration} --rounds {args.rounds} --write-results`",
        f"- Load: {args.entities:,} `WaterLevelObserved` entities loaded through the API, "
        f"scenarios of bench/run.py, `cityos serve --workers N` (granian, one port) with the "
        f"Redis bus, wrk on the same 2 cores as the workers and PostgreSQL; rounds alternate "
        f"1 / 2 workers, each on a fresh database; median of {args.rounds} round(s).",
        "",
        "| scenario | 1 worker req/s | 2 workers req/s | 2 / 1 | p95 1 worker ms "
        "| p95 2 workers ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in WANTED:
        one = statistics.median(r[s.key].rps for r in runs[1])
        two = statistics.median(r[s.key].rps for r in runs[2])
        p_one = statistics.median(r[s.key].p95_ms for r in runs[1])
        p_two = statistics.median(r[s.key].p95_ms for r in runs[2])
        errors = sum(r[s.key].errors for m in runs.values() for r in m)
        lines.append(
            f"| {s.title} | {one:,.0f} | {two:,.0f} | {two / one if one else 0:.2f}x "
            f"| {p_one:.1f} | {p_two:.1f} |" + (f" ({errors} errors)" if errors else "")
        )
    lines.append(END)
    report = "\n".join(lines)
    print(report)
    if args.write_results:
        write_section(report, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
