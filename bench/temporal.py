"""Temporal benchmark: 100 sensors x 10,000 instances over a week, hourly avg and max.

Starts `cityos serve`, loads the history through POST /temporal/entities (the first 1,000
instances of each sensor) and POST /temporal/entities/{id}/attrs (the rest, 1,000 per request),
then times `aggrMethods=avg,max&aggrPeriodDuration=PT1H` over the week for one entity and for
all entities of the type, and checks the answers against values computed here.

Usage: .venv/bin/python bench/temporal.py [--sensors 100] [--instances 10000]
                                          [--repeat 200] [--repeat-all 10] [--write-results]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from results3 import write_section
from run import NGSI, check, free_port, git_revision, log_tail, machine, start_server, stop_server

TYPE = "WaterLevelObserved"
ID_FORMAT = "urn:ngsi-ld:WaterLevelObserved:history-{:03d}"
T0 = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)  # a Monday; the week is [T0, T0 + 7 days)
WEEK = 7 * 24 * 3600
BATCH = 1000
LOADERS = 4  # requests in flight while loading
TEMPORAL = f"{NGSI}/temporal/entities"


def iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def readings(sensor: int, n: int) -> list[tuple[int, float]]:
    """Return sensor's n readings: (seconds after T0, level in m), spread evenly over the week."""
    rng = random.Random(sensor)
    return [(j * WEEK // n, round(rng.uniform(0, 5), 3)) for j in range(n)]


def instances(points: list[tuple[int, float]]) -> list[dict[str, Any]]:
    return [
        {"type": "Property", "value": v, "observedAt": iso(T0 + dt.timedelta(seconds=s))}
        for s, v in points
    ]


async def load(url: str, sensors: int, n: int) -> float:
    """Load every sensor's history; return the seconds it took."""
    jobs: list[tuple[int, int]] = [
        (i, start) for i in range(sensors) for start in range(0, n, BATCH)
    ]
    # each sensor's first batch creates it; the others add to it, so those wait for the first
    firsts = [j for j in jobs if j[1] == 0]
    rest = [j for j in jobs if j[1] != 0]

    points = [readings(i, n) for i in range(sensors)]

    async def send(client: httpx.AsyncClient, i: int, start: int) -> None:
        attr = instances(points[i][start : start + BATCH])
        if start == 0:
            body = {"id": ID_FORMAT.format(i), "type": TYPE, "waterLevel": attr}
            check(await client.post(TEMPORAL, json=body), 201)
        else:
            path = f"{TEMPORAL}/{ID_FORMAT.format(i)}/attrs"
            check(await client.post(path, json={"waterLevel": attr}), 204)

    async def run_all(client: httpx.AsyncClient, todo: list[tuple[int, int]]) -> None:
        async def worker() -> None:
            while todo:
                await send(client, *todo.pop())

        await asyncio.gather(*(worker() for _ in range(LOADERS)))

    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        await run_all(client, firsts)
        await run_all(client, rest)
    return time.perf_counter() - t0


def expected_hours(points: list[tuple[int, float]]) -> dict[int, tuple[float, float]]:
    """Return hour number -> (avg, max) of the readings in that hour."""
    hours: dict[int, list[float]] = {}
    for s, v in points:
        hours.setdefault(s // 3600, []).append(v)
    return {h: (math.fsum(vs) / len(vs), max(vs)) for h, vs in hours.items()}


def verify(entity: dict[str, Any], sensor: int, n: int) -> None:
    """Raise unless the entity's hourly avg and max equal the ones computed here."""
    want = expected_hours(readings(sensor, n))
    got = entity["waterLevel"]
    for method, pos in (("avg", 0), ("max", 1)):
        buckets = got[method]
        if len(buckets) != len(want):
            raise SystemExit(f"{entity['id']} {method}: {len(buckets)} periods, not {len(want)}")
        for h, (value, start, end) in enumerate(buckets):
            b0, b1 = T0 + dt.timedelta(hours=h), T0 + dt.timedelta(hours=h + 1)
            if (start, end) != (iso(b0), iso(b1)):
                raise SystemExit(f"{entity['id']} {method}[{h}] period {start}/{end}")
            if not math.isclose(value, want[h][pos], rel_tol=1e-9, abs_tol=1e-9):
                raise SystemExit(f"{entity['id']} {method}[{h}] = {value}, expected {want[h][pos]}")


AGGR = {
    "options": "aggregatedValues",
    "aggrMethods": "avg,max",
    "aggrPeriodDuration": "PT1H",
    "timerel": "between",
    "timeAt": iso(T0),
    "endTimeAt": iso(T0 + dt.timedelta(seconds=WEEK)),
}


def timed(repeat: int, request: Callable[[int], httpx.Response]) -> list[float]:
    """Return the latencies (ms) of `repeat` requests, after two untimed warm-up requests."""
    for k in range(2):
        check(request(k), 200)
    out = []
    for k in range(repeat):
        t0 = time.perf_counter()
        resp = request(k)
        out.append((time.perf_counter() - t0) * 1000)
        check(resp, 200)
    return out


def pct(xs: list[float], p: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[p - 1] if len(xs) > 1 else xs[0]


def row(title: str, ms: list[float]) -> str:
    """Return a Markdown table row: title, requests, p50, p95, max."""
    return f"| {title} | {len(ms)} | {pct(ms, 50):.1f} | {pct(ms, 95):.1f} | {max(ms):.1f} |"


def main() -> int:
    """Run the benchmark; return 1 if a check failed or the server stopped badly."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sensors", type=int, default=100, help="sensors (100)")
    ap.add_argument("--instances", type=int, default=10_000, help="instances per sensor (10,000)")
    ap.add_argument("--repeat", type=int, default=200, help="one-entity queries timed (200)")
    ap.add_argument("--repeat-all", type=int, default=10, help="all-entity queries timed (10)")
    ap.add_argument("--write-results", action="store_true", help="write RESULTS-issue3.md")
    args = ap.parse_args()
    started = dt.datetime.now().astimezone()
    load_avg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    total = args.sensors * args.instances
    with tempfile.TemporaryDirectory(prefix="cityos-bench-temporal-") as tmp:
        log = Path(tmp) / "server.log"
        proc = start_server(Path(tmp) / "data", port, log)
        try:
            print(f"loading {total:,} instances ...", flush=True)
            load_s = asyncio.run(load(url, args.sensors, args.instances))
            print(f"loaded in {load_s:.1f} s ({total / load_s:,.0f} instances/s)", flush=True)
            files = [f for f in (Path(tmp) / "data").rglob("*") if f.is_file()]
            size = sum(f.stat().st_size for f in files)
            wal = sum(f.stat().st_size for f in files if f.name.endswith("-wal"))
            with httpx.Client(base_url=url, timeout=300) as client:
                counts = check(
                    client.get(
                        TEMPORAL,
                        params={
                            "type": TYPE,
                            "options": "aggregatedValues",
                            "aggrMethods": "totalCount",
                            "limit": args.sensors,
                        },
                    ),
                    200,
                ).json()
                stored = sum(e["waterLevel"]["totalCount"][0][0] for e in counts)
                if len(counts) != args.sensors or stored != total:
                    raise SystemExit(f"{len(counts)} sensors hold {stored:,} of {total:,}")

                def one(k: int) -> httpx.Response:
                    return client.get(
                        f"{TEMPORAL}/{ID_FORMAT.format(k % args.sensors)}", params=AGGR
                    )

                def every(k: int) -> httpx.Response:
                    return client.get(
                        TEMPORAL, params={**AGGR, "type": TYPE, "limit": args.sensors}
                    )

                verify(one(7).json(), 7 % args.sensors, args.instances)
                answer = every(0).json()
                if len(answer) != args.sensors:
                    raise SystemExit(f"the type query answered {len(answer)} entities")
                for e in answer:
                    verify(e, int(e["id"].rsplit("-", 1)[1]), args.instances)
                print(f"timing one entity ({args.repeat} requests) ...", flush=True)
                single = timed(args.repeat, one)
                print(f"timing all {args.sensors} entities ({args.repeat_all} requests) ...")
                every_ms = timed(args.repeat_all, every)
        finally:
            shutdown = stop_server(proc)
            if shutdown:
                print(f"{shutdown}:\n{log_tail(log)}", file=sys.stderr)
    full = args.sensors == 100 and args.instances == 10_000
    note = "" if full else " (not the issue's 100 × 10,000)"
    one_ok = "met" if pct(single, 95) <= 100 else "**not met**"
    all_ok = "met" if max(every_ms) <= 1000 else "**not met**"
    command = shlex.join([".venv/bin/python", "bench/temporal.py", *sys.argv[1:]])
    query = "&".join(f"{k}={v}" for k, v in AGGR.items())
    text = f"""## Temporal aggregation (issue 3, item 5b)

- Date: {started:%Y-%m-%d %H:%M %Z}
- Machine: {machine()}; load average (1/5/15 min) before the run {load_avg}
- Code: cityos {git_revision()}
- Command: `{command}`
- Data: `cityos serve` (one worker, fresh data dir); {args.sensors} `{TYPE}` sensors ×
  {args.instances:,} `waterLevel` instances = {total:,}, evenly spread over the week from
  {iso(T0)} (one every {WEEK / args.instances:.0f} s), values 0-5 m. Loaded through the API:
  `POST /temporal/entities` with each sensor's first {BATCH:,} instances, then
  `POST /temporal/entities/{{id}}/attrs` with {BATCH:,} per request, {LOADERS} in flight:
  **{load_s:.1f} s ({total / load_s:,.0f} instances/s)**; data dir {size / 2**20:,.0f} MiB
  after loading, of which {wal / 2**20:,.0f} MiB write-ahead log.
- Checked: every sensor's totalCount; the hourly avg and max of one entity and of all
  {args.sensors} in the type query equal the values this script computes from the readings
  (all 168 periods, bounds included).
- Query: `GET /ngsi-ld/v1/temporal/entities/{{id}}?{query}` (entities in turn), and the same
  on `/temporal/entities` with `type={TYPE}&limit={args.sensors}`; one connection, one request
  at a time, latency measured by the client (after 2 warm-up requests).
- Clean shutdown (SIGTERM, exit 0 within 30 s): {shutdown or "yes"}

| query | requests | p50 ms | p95 ms | max ms |
|---|---:|---:|---:|---:|
{row(f"one entity, 168 hourly avg + max over {args.instances:,} instances", single)}
{row(f"all {args.sensors} entities of the type", every_ms)}

| target | met |
|---|---|
| one entity p95 ≤ 100 ms | {one_ok}{note} |
| all 100 entities ≤ 1 s (every request) | {all_ok}{note} |"""
    print(f"\n{text}")
    if args.write_results:
        print(f"\nwrote {write_section('temporal', text).name}")
    return 1 if shutdown else 0


if __name__ == "__main__":
    sys.exit(main())
