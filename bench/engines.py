"""Engine benchmark: the foundation scenarios on SQLite and on PostgreSQL, one worker each,
alternating on the same machine in the same run.

Each round starts a fresh `cityos serve` (auth off, loopback) on a new data dir, and for
PostgreSQL a new database (`CITYOS_DATABASE_URL`, PostGIS), loads the sensors through the API
and drives bench/run.py's scenarios with wrk. Ratios are PostgreSQL / SQLite.

Usage: .venv/bin/python bench/engines.py [--entities 20000] [--duration 10] [--rounds 1]
           [--postgres postgresql://postgres@127.0.0.1:5432/test] [--write-results]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from run import (  # noqa: E402
    SCENARIOS,
    Result,
    free_port,
    git_revision,
    load,
    log_tail,
    machine,
    run_wrk,
    start_server,
    stop_server,
    write_section,
)

BEGIN, END = "<!-- engines: begin -->", "<!-- engines: end -->"
KEYS = ("ceiling", "get", "patch", "q", "geo")
WANTED = [s for s in SCENARIOS if s.key in KEYS]


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def one_round(
    args: argparse.Namespace, engine: str, env: dict[str, str] | None = None
) -> dict[str, Result]:
    """Start a server on the engine (with env added to its environment), load it, run the
    scenarios; return their results."""
    saved = dict(os.environ)
    os.environ.update(env or {})
    os.environ["CITYOS_AUTH"] = "off"
    os.environ["BENCH_ENTITIES"] = str(args.entities)
    os.environ.pop("BENCH_KEY", None)
    name = f"cityos_bench_{secrets.token_hex(4)}"
    base, _, _ = args.postgres.rpartition("/")
    if engine == "postgresql":
        asyncio.run(_admin(args.postgres, f"CREATE DATABASE {name}"))
        os.environ["CITYOS_DATABASE_URL"] = f"{base}/{name}"
    else:
        os.environ.pop("CITYOS_DATABASE_URL", None)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out: dict[str, Result] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="cityos-bench-engines-") as tmp:
            data, log = Path(tmp) / "data", Path(tmp) / "server.log"
            proc = start_server(data, port, log)
            try:
                with httpx.Client(base_url=url, timeout=300) as client:
                    load(client, args.entities, random.Random(42))
                for s in WANTED:
                    out[s.key] = run_wrk(s, url, args)
            finally:
                problem = stop_server(proc)
                if problem:
                    print(f"{problem}:\n{log_tail(log)}", file=sys.stderr)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if engine == "postgresql":
            asyncio.run(_admin(args.postgres, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            asyncio.run(_admin(args.postgres, f'DROP ROLE IF EXISTS "{name}_datastore_reader"'))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entities", type=int, default=20_000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    runs: dict[str, list[dict[str, Result]]] = {"sqlite": [], "postgresql": []}
    for n in range(args.rounds):
        for engine in runs:
            print(f"round {n + 1}: {engine} ...", file=sys.stderr)
            runs[engine].append(one_round(args, engine))
    lines = [
        BEGIN,
        "## Issue 8: the foundation scenarios on SQLite and on PostgreSQL (one worker)",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Machine: {machine()}; PostgreSQL 15 + PostGIS 3 on the same machine",
        f"- Code: cityos {git_revision()}",
        f"- Command: `.venv/bin/python bench/engines.py --entities {args.entities} "
        f"--duration {args.duration} --rounds {args.rounds} --write-results`",
        f"- Load: {args.entities:,} `WaterLevelObserved` entities loaded through the API, "
        f"scenarios of bench/run.py, one `cityos serve` worker, wrk on the same 2 cores; "
        f"rounds alternate SQLite / PostgreSQL, each on a fresh data dir and database; "
        f"median of {args.rounds} round(s).",
        "",
        "| scenario | SQLite req/s | PostgreSQL req/s | PG / SQLite | p95 SQLite ms "
        "| p95 PostgreSQL ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in WANTED:
        lite = statistics.median(r[s.key].rps for r in runs["sqlite"])
        pg = statistics.median(r[s.key].rps for r in runs["postgresql"])
        p_lite = statistics.median(r[s.key].p95_ms for r in runs["sqlite"])
        p_pg = statistics.median(r[s.key].p95_ms for r in runs["postgresql"])
        errors = sum(r[s.key].errors for m in runs.values() for r in m)
        lines.append(
            f"| {s.title} | {lite:,.0f} | {pg:,.0f} | {pg / lite if lite else 0:.0%} "
            f"| {p_lite:.1f} | {p_pg:.1f} |" + (f" ({errors} errors)" if errors else "")
        )
    lines += [
        "",
        "Issue 8's targets concern 2 workers (>= 1.5x one: bench/workers.py, the section "
        "below) and 1,000,000 entities (q and geo p95 <= 50 ms: bench/million.py).",
        END,
    ]
    report = "\n".join(lines)
    print(report)
    if args.write_results:
        write_section(report, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
