"""Access-control benchmark: the foundation scenarios without auth, with an API key on every
request (CITYOS_AUTH=on), and anonymous reads of public data with auth on, alternating, on the
same machine in the same run.

Each round starts a fresh `cityos serve` on a new data dir, loads the sensors, and drives the
scenarios of bench/run.py with wrk. With a key, a steward key made by `cityos keys create`
goes on every request (bench/wrk/common.lua reads BENCH_KEY) and the per-key rate limit is
raised out of the way (CITYOS_KEY_RATE_LIMIT), so the figures show what identifying the key,
asking the policy and auditing each write cost. Anonymous: the sensors' type is made public
(CITYOS_PUBLIC_TYPES), the per-address limit raised, and the reads sent without a key, so the
figures show what deciding "public data" and narrowing queries to public types cost.

Usage: .venv/bin/python bench/auth.py [--entities 20000] [--duration 10] [--rounds 2]
                                      [--write-results]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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

CITYOS = str(Path(sys.executable).parent / "cityos")
BEGIN, END = "<!-- auth: begin -->", "<!-- auth: end -->"
KEYS = ("ceiling", "get", "patch", "q")
WANTED = [s for s in SCENARIOS if s.key in KEYS]


MODES = ("off", "key", "anonymous")
#: what anonymous callers can do: read (a PATCH would be refused)
ANONYMOUS_KEYS = ("ceiling", "get", "q")


def one_round(args: argparse.Namespace, mode: str) -> dict[str, Result]:
    """Start a server (auth off, or on), load it, run the scenarios; return their results."""
    saved = dict(os.environ)
    auth = mode != "off"
    os.environ["CITYOS_AUTH"] = "on" if auth else "off"
    os.environ["CITYOS_KEY_RATE_LIMIT"] = "1000000/s:1000000"
    os.environ["CITYOS_RATE_LIMIT"] = "1000000/s:1000000"
    if mode == "anonymous":
        os.environ["CITYOS_PUBLIC_TYPES"] = "WaterLevelObserved,WaterObserved"
    os.environ.pop("BENCH_KEY", None)
    os.environ["BENCH_ENTITIES"] = str(args.entities)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out: dict[str, Result] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="cityos-bench-auth-") as tmp:
            data, log = Path(tmp) / "data", Path(tmp) / "server.log"
            proc = start_server(data, port, log)
            try:
                headers = {}
                if auth:
                    made = subprocess.run(
                        [CITYOS, "keys", "create", "--name", "bench", "--role", "steward",
                         "--tenant", "", "--data-dir", str(data)],
                        capture_output=True, text=True, check=True,
                    )  # fmt: skip
                    key = made.stdout.strip()
                    headers["Authorization"] = f"Bearer {key}"  # loading writes
                    if mode == "key":
                        os.environ["BENCH_KEY"] = key
                with httpx.Client(base_url=url, timeout=120, headers=headers) as client:
                    load(client, args.entities, random.Random(42))
                for s in WANTED:
                    if mode != "anonymous" or s.key in ANONYMOUS_KEYS:
                        out[s.key] = run_wrk(s, url, args)
            finally:
                problem = stop_server(proc)
                if problem:
                    print(f"{problem}:\n{log_tail(log)}", file=sys.stderr)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entities", type=int, default=20_000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    runs: dict[str, list[dict[str, Result]]] = {mode: [] for mode in MODES}
    for n in range(args.rounds):
        for mode in MODES:
            print(f"round {n + 1}: {mode} ...", file=sys.stderr)
            runs[mode].append(one_round(args, mode))
    lines = [
        BEGIN,
        "## Issue 7: the broker benchmark with a key on every request, and anonymous reads",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Machine: {machine()}",
        f"- Code: cityos {git_revision()}",
        f"- Command: `.venv/bin/python bench/auth.py --entities {args.entities} --duration "
        f"{args.duration} --rounds {args.rounds} --write-results`",
        f"- Load: {args.entities:,} `WaterLevelObserved` entities, scenarios of bench/run.py, "
        f"one `cityos serve` worker, wrk -t1 on the same 2 cores; rounds alternate auth off / "
        f"on with a steward key (`Authorization: Bearer`) on every request / on with no key "
        f"(the sensors' type made public, reads only), each on a fresh data dir; the table "
        f"shows the median of {args.rounds} rounds.",
        "",
        "| scenario | auth off req/s | with a key req/s | ratio | anonymous req/s | ratio "
        "| p95 off ms | p95 key ms | p95 anonymous ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    worst = 1.0

    def median(mode: str, key: str, field: str) -> float | None:
        values = [getattr(r[key], field) for r in runs[mode] if key in r]
        return statistics.median(values) if values else None

    for s in WANTED:
        off = median("off", s.key, "rps") or 0.0
        cells = [f"{off:,.0f}"]
        for mode in ("key", "anonymous"):
            rps = median(mode, s.key, "rps")
            if rps is None:
                cells += ["–", "–"]
                continue
            ratio = rps / off if off else 0.0
            if s.key != "ceiling":
                worst = min(worst, ratio)
            cells += [f"{rps:,.0f}", f"{ratio:.0%}"]
        for mode in MODES:
            p95 = median(mode, s.key, "p95_ms")
            cells.append("–" if p95 is None else f"{p95:.1f}")
        errors = sum(r[s.key].errors for m in MODES for r in runs[m] if s.key in r)
        lines.append(
            f"| {s.title} | " + " | ".join(cells) + " |" + (f" ({errors} errors)" if errors else "")
        )
    lines += [
        "",
        f"Target (broker scenarios with a key, and anonymous public reads, within 10% of "
        f"without auth): **{'met' if worst >= 0.9 else 'not met'}** (worst {worst:.0%}).",
        END,
    ]
    report = "\n".join(lines)
    print(report)
    if args.write_results:
        write_section(report, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
