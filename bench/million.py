"""Query benchmark at scale: 1,000,000 entities on PostgreSQL, q and geo queries over HTTP.

Loads N entities of a city's mix (water level gauges, weather stations, buildings,
streetlights, parking spots, spread over Tochigi around its towns) straight into a fresh
PostgreSQL database, as the API would store them (bench/bulk_pg.py; checked against twins
created through the API), starts `cityos serve` on it and measures with wrk, at 10
connections and the default limit, GET by id and /-/health as the baseline, then type + q
queries (a number comparison, a text equality, both) and geo-queries (near 500 m and 2 km,
within a polygon). The database is dropped at the end unless --keep.

Usage: .venv/bin/python bench/million.py [--entities 1000000] [--duration 10]
           [--connections 10] [--postgres postgresql://postgres@127.0.0.1:5432/test]
           [--workers N] [--keep] [--database NAME (reuse a kept one: no load)]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import random
import secrets
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from bulk_pg import MIX, cities, load, verify_twins  # noqa: E402
from run import (  # noqa: E402
    SCENARIOS,
    Result,
    check,
    distance_m,
    free_port,
    git_revision,
    log_tail,
    machine,
    run_wrk,
    start_server,
    stop_server,
)

NGSI = "/ngsi-ld/v1"
PATHS = 400  # distinct requests per scenario (wrk draws among them)


@dataclass(frozen=True)
class Family:
    key: str
    title: str
    make: Callable[[random.Random], str]  # one request path
    check: Callable[[dict[str, str], list[dict[str, Any]]], str]  # "" or what is wrong


def _q(type_: str, q: str) -> str:
    return f"{NGSI}/entities?type={type_}&q={urllib.parse.quote(q, safe='')}"


def _point(rng: random.Random) -> tuple[float, float]:
    return cities().point(rng)


def _near(type_: str, meters: int) -> Callable[[random.Random], str]:
    def make(rng: random.Random) -> str:
        lon, lat = _point(rng)
        return (
            f"{NGSI}/entities?type={type_}&georel=near%3BmaxDistance%3D%3D{meters}"
            f"&geometry=Point&coordinates=%5B{lon:.5f}%2C{lat:.5f}%5D"
        )

    return make


def _square(lon: float, lat: float, half_m: float) -> list[list[list[float]]]:
    dlat = half_m / 111_320
    dlon = half_m / (111_320 * math.cos(math.radians(lat)))
    ring = [
        [lon - dlon, lat - dlat],
        [lon + dlon, lat - dlat],
        [lon + dlon, lat + dlat],
        [lon - dlon, lat + dlat],
        [lon - dlon, lat - dlat],
    ]
    return [[[round(x, 6), round(y, 6)] for x, y in ring]]


def _within(type_: str, half_m: float) -> Callable[[random.Random], str]:
    def make(rng: random.Random) -> str:
        coords = json.dumps(_square(*_point(rng), half_m), separators=(",", ":"))
        return (
            f"{NGSI}/entities?type={type_}&georel=within&geometry=Polygon"
            f"&coordinates={urllib.parse.quote(coords, safe='')}"
        )

    return make


def _value(doc: dict[str, Any], attr: str) -> Any:
    return doc[attr]["value"]


def _params(path: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query))


def _check_q(test: Callable[[dict[str, Any], dict[str, str]], bool]) -> Callable[..., str]:
    def run(params: dict[str, str], found: list[dict[str, Any]]) -> str:
        bad = [d["id"] for d in found if not test(d, params)]
        return f"{len(bad)} entities do not match: {bad[:3]}" if bad else ""

    return run


def _number(params: dict[str, str], attr: str) -> float:
    term = next(t for t in params["q"].split(";") if t.startswith(attr))
    return float(term.split(">")[-1].split("<")[-1])


def _check_near(params: dict[str, str], found: list[dict[str, Any]]) -> str:
    lon, lat = json.loads(params["coordinates"])
    limit = float(params["georel"].split("==")[1]) * 1.01
    dists = [distance_m(lon, lat, *d["location"]["value"]["coordinates"]) for d in found]
    if any(x > limit for x in dists):
        return f"entities beyond maxDistance: {max(dists):.0f} m"
    if any(b < a - 1 for a, b in itertools.pairwise(dists)):  # 1 m: sphere vs spheroid
        return "near results not nearest first"
    return ""


def _check_within(params: dict[str, str], found: list[dict[str, Any]]) -> str:
    ring = json.loads(params["coordinates"])[0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    for d in found:
        x, y = d["location"]["value"]["coordinates"]
        if not (min(xs) <= x <= max(xs) and min(ys) <= y <= max(ys)):
            return f"{d['id']} lies outside the polygon"
    return ""


FAMILIES = [
    Family(
        "q_number",
        "type + q number: WeatherObserved temperature>T (T 30-34)",
        lambda r: _q("WeatherObserved", f"temperature>{r.uniform(30, 34):.1f}"),
        _check_q(lambda d, p: _value(d, "temperature") > _number(p, "temperature")),
    ),
    Family(
        "q_text",
        "type + q text: Building category==one of 7",
        lambda r: _q("Building", f'category=="{r.choice(MIX.building_categories)}"'),
        _check_q(lambda d, p: f'category=="{_value(d, "category")}"' == p["q"]),
    ),
    Family(
        "q_both",
        'type + q both: Streetlight status=="defective";lanternHeight>H',
        lambda r: _q("Streetlight", f'status=="defective";lanternHeight>{r.uniform(4, 10):.1f}'),
        _check_q(
            lambda d, p: (
                _value(d, "status") == "defective"
                and _value(d, "lanternHeight") > _number(p, "lanternHeight")
            )
        ),
    ),
    Family("near_500", "geo near 500 m: Streetlight", _near("Streetlight", 500), _check_near),
    Family("near_2k", "geo near 2 km: Building", _near("Building", 2000), _check_near),
    Family("within", "geo within a 1 km square: Building", _within("Building", 500), _check_within),
]


def smoke(client: httpx.Client, family: Family, paths: list[str]) -> str:
    """Check a few of a family's requests; return a note on how many entities they find."""
    sizes = []
    for path in paths[:5]:
        found = check(client.get(path), 200).json()
        problem = family.check(_params(path), found)
        if problem:
            raise SystemExit(f"{family.key}: {path}: {problem}")
        sizes.append(len(found))
    counted = check(client.get(paths[0] + "&count=true&limit=0"), 200)
    return f"{sizes} found (first: {counted.headers.get('NGSILD-Results-Count')} match)"


def run_paths(family: Family, paths: list[str], url: str, args: argparse.Namespace) -> Result:
    """Run wrk over a family's paths (bench/wrk/paths.lua)."""
    os.environ["BENCH_PATHS"] = "\n".join(paths)
    try:
        scenario = next(s for s in SCENARIOS if s.key == "ceiling")
        custom = type(scenario)(family.key, family.title, "paths.lua", 0, args.connections)
        return run_wrk(custom, url, args)
    finally:
        os.environ.pop("BENCH_PATHS", None)


async def _admin(url: str, *sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in sql:
            await conn.execute(statement)
    finally:
        await conn.close()


def measure(url: str, args: argparse.Namespace, gauges: int) -> list[tuple[str, Result, str]]:
    """Check and measure every scenario against the server at url."""
    rows: list[tuple[str, Result, str]] = []
    # run_wrk tells the scripts the store's size: get_entity.lua draws among the gauges
    args = argparse.Namespace(**{**vars(args), "entities": gauges})
    for key in ("ceiling", "get"):
        s = next(s for s in SCENARIOS if s.key == key)
        conn_s = type(s)(s.key, s.title, s.script, 0, args.connections)
        rows.append((s.title, run_wrk(conn_s, url, args), ""))
    rng = random.Random(8)
    with httpx.Client(base_url=url, timeout=60) as client:
        for family in FAMILIES:
            paths = [family.make(rng) for _ in range(PATHS)]
            note = smoke(client, family, paths)
            print(f"  {family.key}: {note}", file=sys.stderr)
            rows.append((family.title, run_paths(family, paths, url, args), note))
    return rows


def table(rows: list[tuple[str, Result, str]]) -> str:
    out = [
        "| scenario | req/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for title, r, _ in rows:
        out.append(
            f"| {title} | {r.rps:,.0f} | {r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.p99_ms:.1f} "
            f"| {r.errors or 0} |"
        )
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entities", type=int, default=1_000_000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--workers", type=int, default=0, help="passed to cityos serve if > 0")
    ap.add_argument("--keep", action="store_true", help="keep the database at the end")
    ap.add_argument("--database", default="", help="measure a kept database, without loading")
    args = ap.parse_args()
    name = args.database or f"cityos_million_{secrets.token_hex(4)}"
    db_url = f"{args.postgres.rpartition('/')[0]}/{name}"
    saved = dict(os.environ)
    os.environ["CITYOS_AUTH"] = "off"
    os.environ["CITYOS_DATABASE_URL"] = db_url
    os.environ.pop("BENCH_KEY", None)
    gauges = MIX.gauges(args.entities)
    try:
        if not args.database:
            asyncio.run(_admin(args.postgres, f"CREATE DATABASE {name}"))
            t0 = time.perf_counter()
            asyncio.run(load(db_url, args.entities, progress=sys.stderr))
            print(f"loaded {args.entities:,} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory(prefix="cityos-bench-million-") as tmp:
            data, log = Path(tmp) / "data", Path(tmp) / "server.log"
            extra = ["--workers", str(args.workers)] if args.workers else []
            proc = start_server(data, port, log, extra)
            try:
                with httpx.Client(base_url=url, timeout=60) as client:
                    verify_twins(client, db_url, args.entities)
                rows = measure(url, args, gauges)
            finally:
                problem = stop_server(proc)
                if problem:
                    print(f"{problem}:\n{log_tail(log)}", file=sys.stderr)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if args.keep:
            print(f"kept: --database {name}", file=sys.stderr)
        else:
            asyncio.run(_admin(args.postgres, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            asyncio.run(_admin(args.postgres, f'DROP ROLE IF EXISTS "{name}_datastore_reader"'))
    print(
        "\n".join(
            [
                f"## {args.entities:,} entities on PostgreSQL, one worker, "
                f"{args.connections} connections",
                "",
                f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
                f"- Machine: {machine()}; PostgreSQL 15 + PostGIS 3 on the same machine",
                f"- Code: cityos {git_revision()}",
                f"- Command: `.venv/bin/python bench/million.py --entities {args.entities} "
                f"--duration {args.duration} --connections {args.connections}`",
                f"- Store: {MIX.describe(args.entities)}",
                "",
                table(rows),
            ]
        )
    )
    return 1 if any(r.errors for _, r, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
