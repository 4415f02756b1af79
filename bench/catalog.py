"""Catalog benchmark: package_search at 10,000 datasets, and datastore_search with a filter on a
1,000,000-row table against Datasette serving the same table from the same SQLite file.

Starts `cityos serve` on a fresh data dir, makes an API token with `cityos token create`, loads
the datasets and the table through the Action API (as any CKAN client would), then drives each
scenario with wrk (bench/wrk/paths.lua). Datasette (`pip install datasette`, in any venv; give
its path with --datasette) serves `<data-dir>/datastore.db` on its own port.

Usage: .venv/bin/python bench/catalog.py [--datasets 10000] [--rows 1000000] [--duration 15]
                                         [--datasette PATH] [--write-results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from run import (  # noqa: E402
    free_port,
    git_revision,
    log_tail,
    machine,
    start_server,
    stop_server,
    write_section,
)

ROOT = BENCH.parent
RESULTS = BENCH / "RESULTS.md"
BEGIN, END = "<!-- catalog: begin -->", "<!-- catalog: end -->"
CITYOS = str(Path(sys.executable).parent / "cityos")
ACTION = "/api/3/action/"

WORDS = (
    "佐野市", "文化会館", "避難所", "指定緊急避難場所", "公共施設", "人口", "観光", "医療機関",
    "介護サービス", "公衆トイレ", "子育て", "河川水位", "雨量", "予算", "ごみ収集", "バス路線",
    "道路", "小学校", "図書館", "公園", "AED", "Wi-Fi", "イベント", "文化財",
)  # fmt: skip
TAGS = ("防災", "避難", "観光", "健康", "福祉", "教育", "交通", "環境", "人口", "財政")
FORMATS = ("CSV", "JSON", "GeoJSON", "XLSX", "PDF")
LICENSES = ("jp-pdl-1.0", "cc-by-4.0")
CATEGORIES = (
    "避難所",
    "AED",
    "公共施設",
    "医療機関",
    "介護",
    "トイレ",
    "学校",
    "公園",
    "図書館",
    "駐輪場",
)


@dataclass
class Result:
    rps: float
    p50: float
    p95: float
    p99: float
    errors: int


def wrk(
    base: str, paths: list[str], connections: int, duration: int, *, vary: bool = False
) -> Result:
    """Run wrk with random paths from the list; return what bench/wrk/common.lua reported.

    vary: every request gets its own rows/start (bench/wrk/paths.lua), defeating caches.
    """
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "5s", "--latency"]
    cmd += ["-s", str(BENCH / "wrk" / "paths.lua"), base]
    env = {**os.environ, "BENCH_PATHS": "\n".join(paths)}
    if vary:
        env["BENCH_VARY_ROWS"] = "1"
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    r = json.loads(line.removeprefix("BENCH_RESULT "))
    if r["rejected"]:
        print(f"  rejected: {r['rejected']}, first: {r['first_rejected']}", file=sys.stderr)
    return Result(
        rps=r["requests"] / (r["duration_us"] / 1e6),
        p50=r["p50_us"] / 1000,
        p95=r["p95_us"] / 1000,
        p99=r["p99_us"] / 1000,
        errors=r["rejected"] + r["socket_errors"] + r["timeouts"],
    )


def make_token(data: Path) -> str:
    """Create an API token with the documented command; return it."""
    out = subprocess.run(
        [CITYOS, "token", "create", "--user", "bench", "--data-dir", str(data)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip().splitlines()[-1].split()[-1]


def dataset(i: int, rng: random.Random) -> dict[str, Any]:
    words = rng.sample(WORDS, 3)
    tags = rng.sample(TAGS, rng.randint(1, 3))
    return {
        "name": f"ds-{i:05d}",
        "title": f"{words[0]}{words[1]}一覧 第{i}版",
        "notes": f"{words[2]}に関するデータです。 Data about {words[2]}.",
        "owner_org": f"org-{i % 20:02d}",
        "license_id": LICENSES[i % 2],
        "tags": [{"name": t} for t in tags],
        "resources": [
            {
                "name": f"{words[0]} ({f})",
                "url": f"https://example.org/{i}.{f.lower()}",
                "format": f,
            }
            for f in rng.sample(FORMATS, rng.randint(1, 2))
        ],
    }


async def load_datasets(base: str, token: str, n: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    docs = [dataset(i, rng) for i in range(n)]
    headers = {"Authorization": token}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        for o in range(20):
            r = await client.post(
                ACTION + "organization_create",
                json={"name": f"org-{o:02d}", "title": f"佐野市 {o}課"},
            )
            r.raise_for_status()
        queue = list(docs)

        async def worker() -> None:
            while queue:
                doc = queue.pop()
                r = await client.post(ACTION + "package_create", json=doc)
                if r.status_code != 200:
                    raise SystemExit(f"package_create {doc['name']}: {r.status_code} {r.text}")

        await asyncio.gather(*(worker() for _ in range(8)))
    return docs


def search_paths(n: int = 300) -> list[str]:
    """Return n package_search calls as a portal's users make them (a seeded random mix).

    Keyword searches of one or two words (Japanese of two to eight characters, and latin),
    half of them with the search page's four facets; tag and organization filters; the
    facetted landing page (`*:*`); later pages of a result list.
    """
    rng = random.Random(5)
    facets = json.dumps(["tags", "organization", "res_format", "license_id"])
    out = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.35:
            q: dict[str, str] = {"q": rng.choice(WORDS)}
        elif roll < 0.55:
            q = {"q": rng.choice(WORDS), "facet.field": facets}
        elif roll < 0.65:
            q = {"q": f"{rng.choice(WORDS)} {rng.choice(WORDS)}"}
        elif roll < 0.75:
            q = {"fq": f"tags:{rng.choice(TAGS)}"}
        elif roll < 0.82:
            q = {"q": rng.choice(WORDS), "fq": f"organization:org-{rng.randrange(20):02d}"}
        else:
            q = {"q": "*:*", "facet.field": facets}
        out.append(f"{ACTION}package_search?{urllib.parse.urlencode(q)}")
    return out


def load_rows(base: str, token: str, rows: int) -> str:
    """Create a dataset with a datastore table of `rows` rows; return the resource id."""
    headers = {"Authorization": token}
    rng = random.Random(11)
    with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
        pkg = client.post(
            ACTION + "package_create",
            json={"name": "bench-rows", "title": "施設一覧 (bench)", "owner_org": "org-00"},
        ).json()["result"]
        res = client.post(
            ACTION + "resource_create",
            json={"package_id": pkg["id"], "name": "rows", "url": "https://example.org/r.csv"},
        ).json()["result"]
        fields = [
            {"id": "rid", "type": "int"},
            {"id": "category", "type": "text"},
            {"id": "name", "type": "text"},
            {"id": "capacity", "type": "int"},
            {"id": "lat", "type": "float"},
            {"id": "lon", "type": "float"},
        ]
        r = client.post(
            ACTION + "datastore_create",
            json={"resource_id": res["id"], "fields": fields, "indexes": "category",
                  "primary_key": "rid"},
        )  # fmt: skip
        if not r.json().get("success"):
            raise SystemExit(f"datastore_create: {r.text}")
        batch = 20_000
        t0 = time.monotonic()
        for start in range(0, rows, batch):
            records = [
                {
                    "rid": i,
                    "category": CATEGORIES[i % len(CATEGORIES)],
                    "name": f"施設{i}",
                    "capacity": rng.randint(10, 2000),
                    "lat": 36.25 + rng.random() / 4,
                    "lon": 139.45 + rng.random() / 4,
                }
                for i in range(start, min(rows, start + batch))
            ]
            r = client.post(
                ACTION + "datastore_upsert",
                json={"resource_id": res["id"], "records": records, "method": "insert"},
            )
            if not r.json().get("success"):
                raise SystemExit(f"datastore_upsert: {r.text[:500]}")
        print(f"  {rows:,} rows in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        return str(res["id"])


def start_datasette(exe: str, db: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [exe, "serve", str(db), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--setting", "suggest_facets", "off"]  # measure the filtered query, not suggestions
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/-/versions.json").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"datasette did not start:\n{log_tail(log)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=int, default=10_000)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--datasette", default=shutil.which("datasette"))
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    if not args.datasette:
        print("needs datasette (pip install datasette; --datasette PATH)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="cityos-catalog-bench-"))
    data = tmp / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(data, port, tmp / "server.log")
    datasette = None
    try:
        token = make_token(data)  # the documented command, beside the running server
        t0 = time.monotonic()
        print(f"loading {args.datasets:,} datasets ...", file=sys.stderr)
        docs = asyncio.run(load_datasets(base, token, args.datasets))
        load_s = time.monotonic() - t0
        expected = sum(
            1 for d in docs
            if "避難" in d["title"] + d["notes"] or any("避難" in t["name"] for t in d["tags"])
        )  # fmt: skip
        got = httpx.get(base + ACTION + "package_search", params={"q": "避難", "rows": 0})
        count = got.json()["result"]["count"]
        if count != expected:
            raise SystemExit(f"q=避難 found {count} datasets, expected {expected}")
        print("wrk package_search (300 calls of a portal's mix) ...", file=sys.stderr)
        search = wrk(base, search_paths(), args.connections, args.duration)
        print("wrk package_search, every call its own rows/start ...", file=sys.stderr)
        misses = wrk(base, search_paths(), args.connections, args.duration, vary=True)
        print(f"loading {args.rows:,} rows ...", file=sys.stderr)
        rid = load_rows(base, token, args.rows)
        ds_port = free_port()
        datasette = start_datasette(args.datasette, data / "datastore.db", ds_port, tmp / "ds.log")
        ours = [
            f"{ACTION}datastore_search?"
            + urllib.parse.urlencode({"resource_id": rid, "filters": json.dumps({"category": c})})
            for c in CATEGORIES
        ]
        table = urllib.parse.quote(rid)
        theirs = [
            f"/datastore/{table}.json?" + urllib.parse.urlencode({"category": c, "_size": 100})
            for c in CATEGORIES
        ]
        check_same(base, ours[0], f"http://127.0.0.1:{ds_port}", theirs[0])
        print("wrk datastore_search / datasette ...", file=sys.stderr)
        mine = wrk(base, ours, args.connections, args.duration)
        ref = wrk(f"http://127.0.0.1:{ds_port}", theirs, args.connections, args.duration)
    finally:
        if datasette is not None:
            datasette.terminate()
            datasette.wait(10)
        problem = stop_server(server)
        if problem:
            print(problem, file=sys.stderr)
    report = render(args, load_s, count, search, misses, mine, ref)
    print(report)
    if args.write_results:
        write_section(report, BEGIN, END)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def check_same(base: str, ours: str, ds_base: str, theirs: str) -> None:
    """Both servers must answer the same filter with the same total and first page size."""
    a = httpx.get(base + ours).json()["result"]
    b = httpx.get(ds_base + theirs).json()
    total_b = b.get("filtered_table_rows_count")
    if a["total"] != total_b or len(a["records"]) != len(b["rows"]):
        raise SystemExit(f"answers differ: cityos {a['total']}/{len(a['records'])}, "
                         f"datasette {total_b}/{len(b['rows'])}")  # fmt: skip


def render(
    args: argparse.Namespace,
    load_s: float,
    count: int,
    search: Result,
    misses: Result,
    mine: Result,
    ref: Result,
) -> str:
    rel = mine.rps / ref.rps if ref.rps else 0
    lines = [
        BEGIN,
        "## Issue 6: catalog search and datastore",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Machine: {machine()}",
        f"- Code: cityos {git_revision()}",
        f"- Command: `.venv/bin/python bench/catalog.py --datasets {args.datasets} --rows "
        f"{args.rows} --duration {args.duration} --datasette PATH --write-results`",
        f"- Load: one `cityos serve` worker; wrk -t1 -c{args.connections} "
        f"-d{args.duration}s per scenario on the same 2 cores. {args.datasets:,} datasets loaded "
        f"through `package_create` (8 clients) in {load_s:.0f} s; `q=避難` finds {count:,}.",
        "",
        "| scenario | req/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for title, r in (
        (f"package_search, a mix of 300 portal calls, {args.datasets:,} datasets", search),
        ("package_search, the same mix, every call its own rows/start (cache misses)", misses),
        (f"datastore_search, filter category=<one of 10>, {args.rows:,} rows: cityos", mine),
        ("the same filter on the same table: Datasette 0.65 (`--setting suggest_facets off`)", ref),
    ):
        lines.append(
            f"| {title} | {r.rps:,.0f} | {r.p50:.1f} | {r.p95:.1f} | {r.p99:.1f} | {r.errors} |"
        )
    lines += [
        "",
        f"Targets: package_search p95 ≤ 50 ms: **{'met' if search.p95 <= 50 else 'not met'}** "
        f"({search.p95:.1f} ms; {misses.p95:.1f} ms when calls miss the result cache: "
        f"**{'met' if misses.p95 <= 50 else 'not met'}**); datastore_search throughput ≥ "
        "Datasette's: "
        f"**{'met' if rel >= 1 else 'not met'}** ({rel:.0%} of Datasette).",
        END,
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
