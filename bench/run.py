"""Load benchmark: start `cityos serve`, load sensors over HTTP, drive each scenario with wrk.

Usage: .venv/bin/python bench/run.py [--entities 100000] [--duration 10] [--connections 32]
                                     [--write-results]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WRK_DIR = BENCH / "wrk"
RESULTS = BENCH / "RESULTS.md"

# The store the Lua scripts assume (bench/wrk/common.lua holds the same constants).
TYPE = "WaterLevelObserved"
ID_FORMAT = "urn:ngsi-ld:WaterLevelObserved:sano-{:06d}"
LON_MIN, LON_MAX, LAT_MIN, LAT_MAX = 139.45, 139.70, 36.25, 36.50
RIVERS = ["秋山川", "旗川", "渡良瀬川", "才川", "三杉川", "菊沢川", "出流川", "彦間川"]
R2 = 1.32471795724474602596
LOAD_BATCH = 1000
NGSI = "/ngsi-ld/v1"
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    script: str
    entities_per_request: int = 0
    connections: int | None = None  # None: --connections


SCENARIOS = [
    Scenario("ceiling", "a. GET /-/health (trivial route, ceiling)", "health.lua"),
    Scenario("get", "b. GET entity by id", "get_entity.lua"),
    Scenario("patch", "c. PATCH one attribute", "patch_attr.lua"),
    Scenario("upsert", "d. batch upsert 100/req (existing ids, replace)", "upsert_batch.lua", 100),
    # Latency targets are read at 10 connections, the concurrency of Stellio's published
    # query figures (10 VUs); the same queries at --connections show throughput under load.
    Scenario("q", "e. type + q query, limit 20 (10 connections)", "query_q.lua", 0, 10),
    Scenario(
        "geo", "f. geo near;maxDistance==2000, limit 20 (10 connections)", "query_geo.lua", 0, 10
    ),
    Scenario("q_load", "e'. type + q query, limit 20", "query_q.lua"),
    Scenario("geo_load", "f'. geo near;maxDistance==2000, limit 20", "query_geo.lua"),
]


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    rejected: int  # responses with a status the scenario does not accept
    socket_errors: int  # connect/read/write errors and timeouts
    first_rejected: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def errors(self) -> int:
        return self.rejected + self.socket_errors


# (target, scenario it reads, test on that result and the ceiling)
TARGETS: list[tuple[str, str, Callable[[Result, Result], bool]]] = [
    ("GET by id ≥ 4,000 req/s", "get", lambda r, c: r.rps >= 4000),
    ("PATCH ≥ 2,000 req/s", "patch", lambda r, c: r.rps >= 2000),
    ("batch upsert ≥ 20,000 entities/s", "upsert", lambda r, c: r.rps * 100 >= 20000),
    ("q query p95 ≤ 20 ms", "q", lambda r, c: r.p95_ms <= 20),
    ("geo query p95 ≤ 20 ms", "geo", lambda r, c: r.p95_ms <= 20),
    ("PATCH ≥ 40% of the ceiling", "patch", lambda r, c: r.rps >= 0.4 * c.rps),
]


def sensor_point(i: int) -> tuple[float, float]:
    """Return sensor i's place: point i of the R2 sequence over Sano (as in common.lua)."""
    x, y = (0.5 + i / R2) % 1, (0.5 + i / (R2 * R2)) % 1
    return LON_MIN + x * (LON_MAX - LON_MIN), LAT_MIN + y * (LAT_MAX - LAT_MIN)


def sensor(i: int, level: float, now: str) -> dict[str, Any]:
    """Return water level sensor i as an NGSI-LD entity (normalized, core @context)."""
    status = "alert" if level > 4 else "warning" if level > 3 else "normal"
    river = i % len(RIVERS)
    lon, lat = sensor_point(i)
    return {
        "id": ID_FORMAT.format(i),
        "type": TYPE,
        "name": {"type": "Property", "value": f"{RIVERS[river]} 水位計 {i}"},
        "waterLevel": {"type": "Property", "value": level, "unitCode": "MTR", "observedAt": now},
        "status": {"type": "Property", "value": status},
        "refRiver": {"type": "Relationship", "object": f"urn:ngsi-ld:River:sano-{river + 1}"},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [round(lon, 6), round(lat, 6)]},
        },
        "dateObserved": {"type": "Property", "value": {"@type": "DateTime", "@value": now}},
    }


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def log_tail(log: Path, lines: int = 30) -> str:
    """Return the end of the server's log, for error messages."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def start_server(
    data_dir: Path, port: int, log: Path, extra: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """Start `cityos serve` (one worker, unless extra says) and wait until /-/health answers 200."""
    exe = Path(sys.executable).parent / "cityos"
    cmd = [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), *extra]
    cmd += ["--data-dir", str(data_dir)]
    data_dir.mkdir()
    with log.open("wb") as out:
        # PYTHONPATH: measure this checkout's code even if the venv's install is stale.
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"cityos serve exited with {proc.returncode}:\n{log_tail(log)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/-/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"cityos serve did not become healthy in 60 s:\n{log_tail(log)}")


def stop_server(proc: subprocess.Popen[bytes]) -> str:
    """Send SIGTERM; return "" if the server exited 0 within 30 s, else what went wrong."""
    if proc.poll() is not None:
        return f"server had already exited with {proc.returncode}"
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "server did not exit within 30 s of SIGTERM (killed)"
    return "" if rc == 0 else f"server exited with {rc} after SIGTERM"


def check(resp: httpx.Response, *statuses: int) -> httpx.Response:
    """Raise unless the response has one of these statuses."""
    if resp.status_code not in statuses:
        raise SystemExit(
            f"{resp.request.method} {resp.request.url} answered {resp.status_code} "
            f"(expected {statuses}): {resp.text[:500]}"
        )
    return resp


def load(client: httpx.Client, n: int, rng: random.Random) -> tuple[float, list[float]]:
    """Upsert sensors 0..n-1 in batches of 1,000; return (seconds in requests, levels)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    levels = [round(rng.uniform(0, 5), 3) for _ in range(n)]
    spent = 0.0
    for start in range(0, n, LOAD_BATCH):
        batch = [sensor(i, levels[i], now) for i in range(start, min(n, start + LOAD_BATCH))]
        body = json.dumps(batch, ensure_ascii=False).encode()
        t0 = time.perf_counter()
        resp = client.post(f"{NGSI}/entityOperations/upsert", content=body, headers=JSON_HEADERS)
        spent += time.perf_counter() - t0
        check(resp, 201, 204)
        if resp.status_code == 201 and len(resp.json()) != len(batch):
            raise SystemExit(f"upsert at {start} created {len(resp.json())} of {len(batch)}")
    return spent, levels


def distance_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Return the great-circle distance in metres (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * 6_371_008.8 * math.asin(math.sqrt(a))


def query(client: httpx.Client, **params: str | int) -> list[dict[str, Any]]:
    """Return the entities of type TYPE that GET /entities finds with these parameters."""
    found: list[dict[str, Any]] = check(
        client.get(f"{NGSI}/entities", params={"type": TYPE, **params}), 200
    ).json()
    return found


def smoke(client: httpx.Client, n: int, levels: list[float]) -> None:
    """Check once that every scenario's request does what it should on the loaded store."""
    counted = check(client.get(f"{NGSI}/entities", params={"type": TYPE, "count": "true"}), 200)
    if counted.headers.get("NGSILD-Results-Count", str(n)) != str(n):
        raise SystemExit(f"the store holds {counted.headers['NGSILD-Results-Count']} of {n}")
    first = check(client.get(f"{NGSI}/entities/{ID_FORMAT.format(0)}"), 200).json()
    if first["waterLevel"]["value"] != levels[0] or first["name"]["value"] != "秋山川 水位計 0":
        raise SystemExit(f"entity 0 does not read back as loaded: {first}")
    last = ID_FORMAT.format(n - 1)
    check(client.patch(f"{NGSI}/entities/{last}/attrs/waterLevel", json={"value": 2.3}), 204)
    if check(client.get(f"{NGSI}/entities/{last}"), 200).json()["waterLevel"]["value"] != 2.3:
        raise SystemExit("PATCH of waterLevel did not take effect")
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = json.dumps([sensor(1, 1.0, now)], ensure_ascii=False).encode()
    check(client.post(f"{NGSI}/entityOperations/upsert", content=body, headers=JSON_HEADERS), 204)
    found = query(client, q="waterLevel>4.5", limit=20)
    if not 0 < len(found) <= 20 or any(e["waterLevel"]["value"] <= 4.5 for e in found):
        raise SystemExit(f"q=waterLevel>4.5 answered {len(found)} entities, not all above 4.5")
    lon, lat = (LON_MIN + LON_MAX) / 2, (LAT_MIN + LAT_MAX) / 2
    near = query(
        client,
        georel="near;maxDistance==2000",
        geometry="Point",
        coordinates=f"[{lon},{lat}]",
        limit=20,
    )
    where = [e["location"]["value"]["coordinates"] for e in near]
    if not 0 < len(near) <= 20 or any(distance_m(lon, lat, *p) > 2020 for p in where):
        raise SystemExit(f"near;maxDistance==2000 answered {len(near)} entities at {where}")


def wrk_command(
    script: str, url: str, args: argparse.Namespace, connections: int | None = None
) -> list[str]:
    """Return the wrk command line for a scenario (one thread: the machine has 2 cores)."""
    conns = connections or args.connections
    opts = [f"-c{conns}", f"-d{args.duration}s", "--timeout", "5s", "--latency"]
    return ["wrk", "-t1", *opts, "-s", script, url]


def run_wrk(scenario: Scenario, url: str, args: argparse.Namespace) -> Result:
    """Run wrk with the scenario's script and return what its done() reported."""
    cmd = wrk_command(str(WRK_DIR / scenario.script), url, args, scenario.connections)
    env = {**os.environ, "BENCH_ENTITIES": str(args.entities)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    r = json.loads(line.removeprefix("BENCH_RESULT "))
    ms = {k: r[f"{k}_us"] / 1000 for k in ("p50", "p95", "p99")}
    return Result(
        requests=r["requests"],
        seconds=r["duration_us"] / 1e6,
        p50_ms=ms["p50"],
        p95_ms=ms["p95"],
        p99_ms=ms["p99"],
        rejected=r["rejected"],
        socket_errors=r["socket_errors"] + r["timeouts"],
        first_rejected=r["first_rejected"],
    )


def results_table(results: dict[str, Result]) -> str:
    """Return the per-scenario results as a Markdown table."""
    ceiling = results["ceiling"].rps
    rows = [
        "| scenario | req/s | entities/s | p50 ms | p95 ms | p99 ms | errors | vs ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in SCENARIOS:
        r = results[s.key]
        ents = f"{r.rps * s.entities_per_request:,.0f}" if s.entities_per_request else ""
        errs = f"**{r.errors:,}** of {r.requests:,}" if r.errors else "0"
        rows.append(
            f"| {s.title} | {r.rps:,.0f} | {ents} | {r.p50_ms:.2f} | {r.p95_ms:.2f} | "
            f"{r.p99_ms:.2f} | {errs} | {r.rps / ceiling:.0%} |"
        )
    return "\n".join(rows)


def targets_table(results: dict[str, Result]) -> str:
    """Return the issue's targets with met / not met as a Markdown table."""
    rows = ["| target | met |", "|---|---|"]
    for text, key, test in TARGETS:
        r = results[key]
        if r.errors or results["ceiling"].errors:
            verdict = "not met (the run had errors)"
        else:
            verdict = "met" if test(r, results["ceiling"]) else "**not met**"
        rows.append(f"| {text} | {verdict} |")
    return "\n".join(rows)


def machine() -> str:
    """Describe the machine: cores, CPU model, Python, SQLite and wrk versions."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout
    return (
        f"{os.cpu_count()} cores (nproc), {model.group(1) if model else 'unknown CPU'}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{wrk.split(' Copyright')[0].strip()}, {platform.system()} {platform.release()}"
    )


def git_revision() -> str:
    """Return the commit measured, marked when the tree has uncommitted changes."""

    def git(*a: str) -> str:
        return subprocess.run(
            ["git", *a], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    return rev + (" with uncommitted changes" if git("status", "--porcelain") else "")


def old_notes() -> str:
    """Return the Notes section of the previous RESULTS.md, so rewriting keeps the lead's text."""
    if not RESULTS.exists():
        return ""
    _, found, notes = RESULTS.read_text().partition("\n## Notes\n")
    return notes.strip() if found else ""


def write_section(report: str, begin: str, end: str) -> None:
    """Replace the marked section of bench/RESULTS.md with report (which carries the markers),
    or append it when the file has no such section yet."""
    text = RESULTS.read_text(encoding="utf-8")
    if begin in text and end in text:
        start, stop = text.index(begin), text.index(end) + len(end)
        text = text[:start] + report + text[stop:]
    else:
        text = text.rstrip("\n") + "\n\n" + report + "\n"
    RESULTS.write_text(text, encoding="utf-8")


def write_results(report: str) -> None:
    """Write bench/RESULTS.md: the report, then the Notes section (kept from the last file)."""
    notes = old_notes() or (
        "_For the lead: causes of the gaps between the targets and the measurements._"
    )
    RESULTS.write_text(f"{report}\n\n## Notes\n\n{notes}\n")


def report(
    args: argparse.Namespace,
    started: dt.datetime,
    load_seconds: float,
    results: dict[str, Result],
    shutdown: str,
    load_avg: str,
) -> str:
    """Return the Markdown report of a run (the body of bench/RESULTS.md)."""
    command = shlex.join([".venv/bin/python", "bench/run.py", *sys.argv[1:]])
    wrk = " ".join(wrk_command("bench/wrk/<scenario>.lua", "http://127.0.0.1:PORT", args))
    errors = [s.title for s in SCENARIOS if results[s.key].errors]
    verdict = f"**This run had errors** in: {'; '.join(errors)}." if errors else "No errors."
    rate = args.entities / load_seconds
    return f"""# Benchmark results

Written by `bench/run.py --write-results` (see bench/README.md); edit only the Notes section,
which the script keeps when it rewrites this file.

- Date: {started:%Y-%m-%d %H:%M %Z}
- Machine: {machine()}; load average (1/5/15 min) before the run {load_avg}
- Code: cityos {git_revision()}
- Command: `{command}`
- Server: `cityos serve` (one uvicorn worker), fresh data dir, {args.entities:,} `{TYPE}`
  entities, loaded at **{rate:,.0f} entities/s** ({load_seconds:.1f} s in requests; batch
  upsert of {LOAD_BATCH:,} per request over one connection)
- Load generator, on the same machine, one scenario after another:
  `BENCH_ENTITIES={args.entities} {wrk}`
- Clean shutdown (SIGTERM, exit 0 within 30 s): {shutdown or "yes"}

## Scenarios

{verdict}

{results_table(results)}

Errors are responses with a status the scenario does not accept (2xx; for the upsert 201/204,
so a 207 is an error) plus socket errors and timeouts (> 5 s). Latencies are wrk's. The batch
upsert replaces 100 existing entities per request (default upsert, not `options=update`).

## Targets

{targets_table(results)}"""


def main() -> int:
    """Run the benchmark; return 1 if any scenario had errors or the server stopped badly."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entities", type=int, default=100_000, help="sensors to load (100,000)")
    ap.add_argument("--duration", type=int, default=10, help="seconds per scenario (10)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    ap.add_argument("--write-results", action="store_true", help="write bench/RESULTS.md")
    args = ap.parse_args()
    if args.entities < 1000:
        ap.error("--entities must be at least 1000")
    started = dt.datetime.now().astimezone()
    load_avg = " ".join(f"{x:.2f}" for x in os.getloadavg())  # shows a machine already busy
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="cityos-bench-") as tmp:
        log = Path(tmp) / "server.log"
        proc = start_server(Path(tmp) / "data", port, log)
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                print(f"loading {args.entities:,} {TYPE} entities ...", flush=True)
                load_seconds, levels = load(client, args.entities, random.Random(42))
                rate = args.entities / load_seconds
                print(f"loaded at {rate:,.0f} entities/s ({load_seconds:.1f} s)", flush=True)
                smoke(client, args.entities, levels)
            for s in SCENARIOS:
                print(f"{s.title} ...", flush=True)
                results[s.key] = run_wrk(s, url, args)
                if results[s.key].first_rejected:
                    print(f"  first rejected response: {results[s.key].first_rejected}")
        finally:
            shutdown = stop_server(proc)
            if shutdown:
                print(f"{shutdown}:\n{log_tail(log)}", file=sys.stderr)
    text = report(args, started, load_seconds, results, shutdown, load_avg)
    print(f"\n{text}")
    if args.write_results:
        write_results(text)
        print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    return 1 if shutdown or any(r.errors for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
