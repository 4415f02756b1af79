"""Portal benchmark: the published snapshots under a typhoon-night surge, cityos against nginx.

Fills a data dir with the typhoon replay, starts `cityos serve` (which publishes
`<data-dir>/public/`) and nginx on the same folder, keeps pushing gauge readings over HTTP
(the IoT path, as the demo's devices do) and runs wrk with many connections against
`/public/water-levels.json` and `/public/water-levels.html` on both. Freshness: a reading
with a value of its own is sent, and `/public/water-levels.json` is polled until it shows.

Usage: .venv/bin/python bench/portal.py [--connections 1000] [--duration 30] [--write-results]
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from run import free_port, git_revision, log_tail, machine, write_section  # noqa: E402

ROOT = BENCH.parent
CITYOS = str(Path(sys.executable).parent / "cityos")
RESULTS = BENCH / "RESULTS.md"
BEGIN, END = "<!-- portal: begin -->", "<!-- portal: end -->"
GAUGE_DEVICE, GAUGE_KEY = "sano-wl-akiyama-ohashi", "sano-river"
GAUGE_ID = "urn:ngsi-ld:WaterObserved:sano-akiyama-ohashi"
FILES = ("water-levels.json", "water-levels.html")

# nginx runs the documented configuration (docs/nginx-portal.conf), as the nginx test does, in a
# wrapper of our own: all cores, no daemon, everything under a temporary prefix.
NGINX_SNIPPET = ROOT / "docs" / "nginx-portal.conf"
NGINX_PLACEHOLDER = "root /var/lib/cityos;"
NGINX_CONF = """
worker_processes auto;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        include {snippet};
    }}
}}
"""


@dataclass
class Wrk:
    rps: float
    p99_ms: float
    errors: int
    requests: int


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


def run_wrk(url: str, connections: int, duration: int) -> Wrk:
    """Run wrk (2 threads) with gzip accepted, as browsers send it; parse its summary."""
    cmd = [
        "wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s",
        "-H", "Accept-Encoding: gzip", url,
    ]  # fmt: skip
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, preexec_fn=_raise_nofile
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99 is not None, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return Wrk(rps, float(p99.group(1)) * scale, errors, requests)


def push_readings(base: str, stop: threading.Event, rate: float) -> None:
    """Send gauge readings through the IoT HTTP path until stopped (the simulator's traffic)."""
    n = 0
    with httpx.Client(base_url=base, timeout=10) as client:
        while not stop.is_set():
            level = 1.0 + (n % 200) / 100
            client.post(
                "/iot/json",
                params={"k": GAUGE_KEY, "i": GAUGE_DEVICE},
                json={"waterLevel": level},
            )
            n += 1
            stop.wait(1 / rate)


def freshness(base: str, samples: int) -> list[float]:
    """Return seconds from a reading's acknowledgement to its value in water-levels.json."""
    lags: list[float] = []
    with httpx.Client(base_url=base, timeout=10) as client:
        for i in range(samples):
            level = round(4.0 + i / 1000 + 0.0001, 4)  # a value no other reading has
            sent = time.perf_counter()
            r = client.post(
                "/iot/json",
                params={"k": GAUGE_KEY, "i": GAUGE_DEVICE},
                json={"waterLevel": level},
            )
            r.raise_for_status()
            while True:
                body = client.get("/public/water-levels.json").text
                if str(level) in body:
                    lags.append(time.perf_counter() - sent)
                    break
                if time.perf_counter() - sent > 10:
                    lags.append(float("inf"))
                    break
                time.sleep(0.01)
            time.sleep(0.2)
    return lags


def sizes(public: Path) -> dict[str, tuple[int, int]]:
    """Return (bytes, gzip bytes) of every published HTML and JSON file."""
    out = {}
    for path in sorted(public.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(public).parts)
        if path.suffix in (".html", ".json") and path.is_file() and not hidden:
            raw = path.read_bytes()
            out[str(path.relative_to(public))] = (len(raw), len(gzip.compress(raw, 6)))
    return out


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--rate", type=float, default=20.0, help="readings/s pushed meanwhile")
    ap.add_argument("--samples", type=int, default=60, help="freshness samples")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    if not shutil.which("wrk") or not shutil.which("nginx"):
        print("needs wrk and nginx (apt-get install wrk nginx)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="cityos-portal-bench-"))
    tmp.chmod(0o755)  # nginx's workers run as another user and must read the folder
    data = tmp / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOS_")}
    print("replaying the typhoon into", data, file=sys.stderr)
    subprocess.run(
        [CITYOS, "demo", "--once", "--speed", "1000000", "--port", str(free_port()),
         "--data-dir", str(data)],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    port, nport = free_port(), free_port()
    log = tmp / "server.log"
    server = subprocess.Popen(
        [CITYOS, "serve", "--port", str(port), "--data-dir", str(data)],
        env=env, stderr=log.open("wb"), preexec_fn=_raise_nofile,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    prefix = tmp / "nginx"
    prefix.mkdir()
    snippet = prefix / "portal.conf"
    documented = NGINX_SNIPPET.read_text(encoding="utf-8")
    assert NGINX_PLACEHOLDER in documented, f"{NGINX_SNIPPET} no longer has {NGINX_PLACEHOLDER}"
    snippet.write_text(documented.replace(NGINX_PLACEHOLDER, f"root {data};"), encoding="utf-8")
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=nport, snippet=snippet))
    nginx = subprocess.Popen(
        ["nginx", "-p", str(prefix), "-c", str(conf)],
        stderr=subprocess.DEVNULL, preexec_fn=_raise_nofile,
    )  # fmt: skip
    stop = threading.Event()
    results: dict[tuple[str, str], Wrk] = {}
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/public/water-levels.json").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit("the portal was not published:\n" + log_tail(log))
        pusher = threading.Thread(target=push_readings, args=(base, stop, args.rate))
        pusher.start()
        for name in FILES:
            for who, url in (
                ("nginx", f"http://127.0.0.1:{nport}/public/{name}"),
                ("cityos", f"{base}/public/{name}"),
            ):
                print(f"wrk {who} {name} ...", file=sys.stderr)
                results[(who, name)] = run_wrk(url, args.connections, args.duration)
                print(f"  {results[(who, name)]}", file=sys.stderr)
        stop.set()
        pusher.join()
        print("freshness ...", file=sys.stderr)
        lags = freshness(base, args.samples)
        page_sizes = sizes(data / "public")
    finally:
        stop.set()
        nginx.send_signal(signal.SIGQUIT)
        server.send_signal(signal.SIGTERM)
        nginx.wait(timeout=30)
        server.wait(timeout=60)
    report = render(args, results, lags, page_sizes)
    print(report)
    if args.write_results:
        write_section(report, BEGIN, END)
    return 0


def render(
    args: argparse.Namespace,
    results: dict[tuple[str, str], Wrk],
    lags: list[float],
    page_sizes: dict[str, tuple[int, int]],
) -> str:
    lines = [
        BEGIN,
        "## Issue 5: resident portal snapshots under a surge",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Machine: {machine()}",
        f"- Code: cityos {git_revision()}",
        f"- Command: `.venv/bin/python bench/portal.py --connections {args.connections} "
        f"--duration {args.duration}{' --write-results' if args.write_results else ''}`",
        f"- Load: wrk -t2 -c{args.connections} -d{args.duration}s with `Accept-Encoding: gzip`, "
        f"one file at a time, nginx first; meanwhile {args.rate:g} gauge readings/s go in "
        "through `POST /iot/json` and republish the snapshots. cityos: one `cityos serve` "
        "worker (granian); nginx: docs/nginx-portal.conf with `worker_processes auto` (2 here), "
        "the same folder.",
        "",
        "| file | server | req/s | vs nginx | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in FILES:
        ref = results[("nginx", name)].rps
        for who in ("nginx", "cityos"):
            r = results[(who, name)]
            ratio = f"{r.rps / ref:.0%}" if who == "cityos" else ""
            lines.append(
                f"| `{name}` | {who} | {r.rps:,.0f} | {ratio} | {r.p99_ms:.0f} | {r.errors} |"
            )
    finite = [x for x in lags if x != float("inf")]
    lines += [
        "",
        f"Freshness (reading acknowledged → visible in `water-levels.json`, {len(lags)} samples, "
        f"polling every 10 ms): p50 {statistics.median(finite) * 1000:.0f} ms, "
        f"p99 {p99(lags) * 1000:.0f} ms, never {len(lags) - len(finite)}.",
        "",
        "| page | bytes | gzip bytes |",
        "|---|---:|---:|",
        *(f"| `{p}` | {raw:,} | {gz:,} |" for p, (raw, gz) in page_sizes.items()),
        END,
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
