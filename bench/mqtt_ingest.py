"""MQTT ingestion benchmark: 1,000 devices publish JSON measures through Mosquitto into cityos.

For each rate step the same publisher processes run twice: first on a topic cityos does not
subscribe to, counted by a plain paho subscriber (the raw Mosquitto baseline), then on the
IoT Agent topics `/json/<apikey>/<device>/attrs` that `cityos serve` ingests. Throughput is
read server-side from `GET /iot/about` (measures accepted); a checker process meanwhile polls
sampled entities until each new value is visible, for the publish-to-visible latency.

Usage: .venv/bin/python bench/mqtt_ingest.py [--rates 2000,5000,8000] [--duration 30]
                                             [--publishers 2] [--qos 1] [--write-results]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing as mp
import os
import platform
import random
import re
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from run import (
    NGSI,
    RESULTS,
    check,
    free_port,
    git_revision,
    log_tail,
    start_server,
    stop_server,
    write_section,
)

MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883
DEVICES = 1000
ENTITY_TYPE = "WaterObserved"
RAW_PREFIX = "/bench-raw"  # matches none of cityos's topics, so the baseline bypasses it
TARGET_RATE = 5000
TARGET_P99_MS = 500.0
SECTION = "mqtt_ingest"
REFUSALS: dict[str, int] = {}  # the server's refusal counts by reason, as last read


def device_id(i: int) -> str:
    """Return simulated device i's id."""
    return f"bench-{i:04d}"


def entity_id(i: int) -> str:
    """Return the entity device i's measures go to."""
    return f"urn:ngsi-ld:{ENTITY_TYPE}:bench-{i:04d}"


def topic(prefix: str, apikey: str, i: int) -> str:
    """Return the IoT Agent JSON measure topic of device i (under `prefix` for the baseline)."""
    return f"{prefix}/json/{apikey}/{device_id(i)}/attrs"


def new_client(name: str) -> mqtt.Client:
    """Return a connected paho client (MQTT 3.1.1) with its network loop in a thread."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex}")
    client.max_inflight_messages_set(0)  # 0: no limit; the rate, not acks, paces publishing
    client.connect(MQTT_HOST, MQTT_PORT, keepalive=60)
    client.loop_start()
    return client


# -- publishers (one process each, a slice of the devices, open loop) ---------------------------
@dataclass
class Published:
    sent: int
    first: float  # wall clock of the first and last publish
    last: float
    max_lag_s: float  # how far publishing fell behind its schedule at worst


def publish(
    index: int, publishers: int, prefix: str, apikey: str, rate: float, duration: float,
    start_at: float, qos: int, out: Any,
) -> None:  # fmt: skip
    """Publish this process's share of `rate` for `duration` s, devices in turn; report."""
    client = new_client(f"bench-pub{index}")
    mine = [i for i in range(DEVICES) if i % publishers == index]
    topics = [topic(prefix, apikey, i) for i in mine]
    share = rate / publishers
    n = int(share * duration)
    rng = random.Random(index)
    max_lag = 0.0
    infos: list[mqtt.MQTTMessageInfo] = []
    first = last = 0.0
    k = 0
    # Messages due are published in a burst, then the process sleeps until the next one is due:
    # sleeping per message would cost more CPU than publishing on this 2-core machine.
    while k < n:
        now = time.time()
        due = start_at + k / share
        if due > now:
            time.sleep(due - now)
            continue
        max_lag = max(max_lag, now - due)
        until = min(n, int((now - start_at) * share) + 1)
        while k < until:
            sent = time.time()
            body = b'{"l":%.3f,"s":%.6f}' % (rng.uniform(0, 5), sent)
            info = client.publish(topics[k % len(topics)], body, qos=qos)
            if qos:
                infos.append(info)
            first = first or sent
            last = sent
            k += 1
    for info in infos[-1000:]:
        info.wait_for_publish(30)
    client.loop_stop()
    client.disconnect()
    out.put(Published(n, first, last, max_lag))


# -- the raw baseline subscriber -----------------------------------------------------------------
def count_raw(group: str, stop: Event, ready: Event, out: Any) -> None:
    """Receive the baseline topics in a shared group; report receipt times and sent stamps."""
    received: list[float] = []
    stamps: list[float] = []

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        received.append(time.time())
        stamps.append(orjson.loads(msg.payload)["s"])

    def on_subscribe(*_: Any) -> None:
        ready.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-raw-{group}")
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.connect(MQTT_HOST, MQTT_PORT, keepalive=60)
    client.subscribe(f"$share/{group}/{RAW_PREFIX}/json/+/+/attrs", qos=1)
    client.loop_start()
    stop.wait()
    client.loop_stop()
    client.disconnect()
    out.put((received, stamps))


# -- the latency checker -------------------------------------------------------------------------
async def http_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> bytes:
    """GET on a kept-alive connection (raw HTTP/1.1: httpx would cost the server's CPU)."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    length = next(
        (int(ln.split(":", 1)[1]) for ln in lines if ln.lower().startswith("content-length:")), 0
    )
    body = await reader.readexactly(length)
    if lines[0].split()[1] != "200":
        raise RuntimeError(f"{path}: {lines[0]} {body[:200]!r}")
    return body


async def watch(port: int, until: float, watchers: int, poll_s: float) -> list[tuple[float, ...]]:
    """Sample random devices: poll each until a new measure shows; (sent, before, seen) rows."""
    rows: list[tuple[float, ...]] = []

    async def watcher(seed: int) -> None:
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.time() < until:
                path = f"{NGSI}/entities/{entity_id(rng.randrange(DEVICES))}?options=keyValues"
                old = orjson.loads(await http_get(reader, writer, path)).get("sentAt")
                before = time.time()
                give_up = max(until, before) + 30  # a sample started in time is finished
                while time.time() < give_up:
                    await asyncio.sleep(poll_s)
                    sent = orjson.loads(await http_get(reader, writer, path)).get("sentAt")
                    seen = time.time()
                    if sent != old:
                        # visible between the previous poll and this one: count this one
                        rows.append((float(sent), before, seen))
                        break
                    before = seen
        finally:
            writer.close()

    await asyncio.gather(*(watcher(s) for s in range(watchers)))
    return rows


def check_latency(port: int, until: float, watchers: int, poll_s: float, out: Any) -> None:
    """Run the watchers in this process and report their rows."""
    out.put(asyncio.run(watch(port, until, watchers, poll_s)))


# -- one step ------------------------------------------------------------------------------------
def quantiles(xs: list[float]) -> tuple[float, float, float, float]:
    """Return p50, p95, p99 and max of xs (nan when there are too few)."""
    if len(xs) < 2:
        return (float("nan"),) * 4
    q = statistics.quantiles(xs, n=100, method="inclusive")
    return q[49], q[94], q[98], max(xs)


@dataclass
class Phase:
    published: int = 0
    publish_rate: float = 0.0  # achieved by the publishers, over their first to last publish
    max_lag_s: float = 0.0
    steady_rate: float = 0.0  # received (raw) or accepted (cityos) per s in the steady window
    backlog: int = 0  # published but not yet received/accepted when publishing ended
    drain_s: float = 0.0  # from the end of publishing until everything was received/accepted
    lost: int = 0  # never received/accepted within the drain timeout
    foreign: int = 0  # refused by cityos meanwhile: other publishers on this machine's broker
    latency_ms: tuple[float, float, float, float] = (float("nan"),) * 4
    samples: int = 0


@dataclass
class Step:
    rate: float
    raw: Phase = field(default_factory=Phase)
    cityos: Phase = field(default_factory=Phase)


def run_publishers(
    ctx: Any, args: argparse.Namespace, prefix: str, apikey: str, rate: float, start_at: float
) -> tuple[list[Any], Any]:
    """Start the publisher processes; return them and their result queue."""
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=publish,
            args=(i, args.publishers, prefix, apikey, rate, args.duration, start_at, args.qos, out),
        )
        for i in range(args.publishers)
    ]
    for p in procs:
        p.start()
    return procs, out


def collect(procs: list[Any], out: Any, phase: Phase) -> float:
    """Wait for the publishers; fill the publishing figures; return when publishing ended."""
    done: list[Published] = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    phase.published = sum(d.sent for d in done)
    first, last = min(d.first for d in done), max(d.last for d in done)
    phase.publish_rate = phase.published / (last - first)
    phase.max_lag_s = max(d.max_lag_s for d in done)
    return last


def steady(points: list[tuple[float, int]], start: float, end: float) -> float:
    """Return the count's growth per second between `start` and `end` (the nearest samples)."""
    inside = [p for p in points if start <= p[0] <= end]
    if len(inside) < 2:
        return float("nan")
    (t0, c0), (t1, c1) = inside[0], inside[-1]
    return (c1 - c0) / (t1 - t0)


def window(args: argparse.Namespace, start_at: float) -> tuple[float, float]:
    """Return the steady window: skip the first fifth (at least 3 s) of publishing."""
    return start_at + max(3.0, args.duration / 5), start_at + args.duration


def raw_phase(ctx: Any, args: argparse.Namespace, apikey: str, rate: float) -> Phase:
    """Publish `rate` on the baseline topics to a plain subscriber; return its figures."""
    phase = Phase()
    stop, ready, out = ctx.Event(), ctx.Event(), ctx.Queue()
    sub = ctx.Process(target=count_raw, args=(f"raw{apikey}", stop, ready, out))
    sub.start()
    if not ready.wait(30):
        raise SystemExit("the baseline subscriber did not subscribe in 30 s")
    start_at = time.time() + 1.0
    procs, pub_out = run_publishers(ctx, args, RAW_PREFIX, apikey, rate, start_at)
    end = collect(procs, pub_out, phase)
    time.sleep(min(args.drain_timeout, 5.0))  # the subscriber catches up with what is queued
    stop.set()
    received, stamps = out.get(timeout=120)
    sub.join()
    points = [(t, k + 1) for k, t in enumerate(received)]
    phase.steady_rate = steady(points, *window(args, start_at))
    phase.backlog = phase.published - sum(1 for t in received if t <= end)
    phase.drain_s = max(0.0, (received[-1] if received else end) - end)
    phase.lost = phase.published - len(received)
    phase.latency_ms = quantiles([(r - s) * 1000 for r, s in zip(received, stamps, strict=True)])
    phase.samples = len(received)
    return phase


def about(client: httpx.Client) -> tuple[int, int]:
    """Return (accepted, refused) measures counted by the server since it started."""
    counts = check(client.get("/iot/about"), 200).json()["measures"]
    REFUSALS.update({k: v for k, v in counts.items() if k.startswith("refused")})
    refused = sum(v for k, v in counts.items() if k.startswith("refused"))
    return counts.get("accepted", 0), refused


def cityos_phase(
    ctx: Any, args: argparse.Namespace, client: httpx.Client, port: int, apikey: str, rate: float
) -> Phase:
    """Publish `rate` on the IoT Agent topics; count what cityos accepts, sample the latency."""
    phase = Phase()
    accepted0, refused0 = about(client)
    start_at = time.time() + 1.0
    lat_out = ctx.Queue()
    checker = ctx.Process(
        target=check_latency,
        args=(port, start_at + args.duration, args.watchers, args.poll_ms / 1000, lat_out),
    )
    checker.start()
    procs, pub_out = run_publishers(ctx, args, "", apikey, rate, start_at)
    points: list[tuple[float, int]] = []
    while any(p.is_alive() for p in procs):
        points.append((time.time(), about(client)[0] - accepted0))
        time.sleep(0.5)
    end = collect(procs, pub_out, phase)
    accepted, refused = about(client)
    phase.backlog = phase.published - (accepted - accepted0)
    progress, stalled_since = accepted, time.time()
    while True:
        accepted, refused = about(client)
        now = time.time()
        points.append((now, accepted - accepted0))
        if accepted - accepted0 >= phase.published:
            phase.drain_s = now - end
            break
        if accepted != progress:
            progress, stalled_since = accepted, now
        elif now - stalled_since > 5 or now - end > args.drain_timeout:
            phase.drain_s = float("nan")  # never caught up: the rest is lost
            break
        time.sleep(0.05)
    phase.foreign = refused - refused0
    phase.lost = phase.published - (accepted - accepted0)
    phase.steady_rate = steady(points, *window(args, start_at))
    rows = lat_out.get(timeout=120)
    checker.join()
    phase.latency_ms = quantiles([(seen - sent) * 1000 for sent, _, seen in rows])
    phase.samples = len(rows)
    return phase


# -- setting up ----------------------------------------------------------------------------------
def provision(client: httpx.Client, apikey: str) -> None:
    """Create the group and the 1,000 devices (waterLevel and sentAt from keys l and s)."""
    group = {"apikey": apikey, "resource": "", "entity_type": ENTITY_TYPE}
    check(client.post("/iot/groups", json={"groups": [group]}), 201)
    attrs = [
        {"object_id": "l", "name": "waterLevel", "type": "Number"},
        {"object_id": "s", "name": "sentAt", "type": "Number"},
    ]
    devices = [
        {
            "device_id": device_id(i),
            "entity_name": entity_id(i),
            "entity_type": ENTITY_TYPE,
            "attributes": attrs,
        }
        for i in range(DEVICES)
    ]
    for start in range(0, DEVICES, 250):
        check(client.post("/iot/devices", json={"devices": devices[start : start + 250]}), 201)


def warm_up(client: httpx.Client, apikey: str) -> None:
    """Publish one measure per device and wait until cityos has written them all (and checks)."""
    accepted0, _ = about(client)
    pub = new_client("bench-warm")
    for i in range(DEVICES):
        pub.publish(topic("", apikey, i), b'{"l":1.5,"s":%d}' % i, qos=1).wait_for_publish(10)
    pub.loop_stop()
    pub.disconnect()
    deadline = time.monotonic() + 60
    while about(client)[0] - accepted0 < DEVICES:
        if time.monotonic() > deadline:
            raise SystemExit(f"warm-up: cityos accepted {about(client)} of {DEVICES} measures")
        time.sleep(0.2)
    got = check(client.get(f"{NGSI}/entities/{entity_id(7)}?options=keyValues"), 200).json()
    if got.get("waterLevel") != 1.5 or got.get("sentAt") != 7:
        raise SystemExit(f"warm-up: {entity_id(7)} reads {got}, not the measure published")


def wait_connected(client: httpx.Client) -> None:
    """Wait until the server's MQTT subscriber is connected."""
    deadline = time.monotonic() + 30
    while not (client.get("/iot/about").json().get("mqtt") or {}).get("connected"):
        if time.monotonic() > deadline:
            raise SystemExit("cityos did not connect to Mosquitto in 30 s")
        time.sleep(0.2)


# -- the report ----------------------------------------------------------------------------------
def sustained(step: Step) -> bool:
    """Return whether cityos kept up with this step (nothing lost, backlog drained fast)."""
    c = step.cityos
    return (
        c.publish_rate >= 0.97 * step.rate
        and c.steady_rate >= 0.97 * step.rate
        and c.lost == 0
        and c.drain_s <= 2.0
    )


def fmt_ms(q: tuple[float, float, float, float]) -> str:
    """Return p50 / p95 / p99 / max in ms."""
    return " / ".join(f"{x:,.0f}" if x >= 10 else f"{x:.1f}" for x in q)


def report(
    args: argparse.Namespace, steps: list[Step], started: dt.datetime, load: str, shutdown: str
) -> str:
    """Return the Markdown section for bench/RESULTS.md."""
    command = shlex.join([".venv/bin/python", "bench/mqtt_ingest.py", *sys.argv[1:]])
    rows = [
        "| offered/s | path | published/s | received or accepted/s (steady) | vs raw "
        "| backlog at end | drain s | lost | latency p50 / p95 / p99 / max ms | samples |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for s in steps:
        for name, p in (("raw Mosquitto", s.raw), ("cityos", s.cityos)):
            if not p.published:
                continue  # --no-raw
            ratio = (
                f"{p.steady_rate / s.raw.steady_rate:.0%}"
                if name == "cityos" and s.raw.steady_rate
                else ""
            )
            drain = "never" if p.drain_s != p.drain_s else f"{p.drain_s:.1f}"
            rows.append(
                f"| {s.rate:,.0f} | {name} | {p.publish_rate:,.0f} | {p.steady_rate:,.0f} | "
                f"{ratio} | {p.backlog:,} | {drain} | {p.lost:,} | {fmt_ms(p.latency_ms)} | "
                f"{p.samples:,} |"
            )
    best = [s for s in steps if s.rate >= TARGET_RATE and sustained(s)]
    rate_ok = bool(best)
    lat_ok = any(s.cityos.latency_ms[2] <= TARGET_P99_MS for s in best)
    kept = [f"{s.rate:,.0f}" for s in steps if sustained(s)]
    targets = [
        (f"≥ {TARGET_RATE:,} measures/s sustained from {DEVICES:,} devices", rate_ok),
        (f"publish-to-visible p99 ≤ {TARGET_P99_MS:,.0f} ms at that rate", rate_ok and lat_ok),
    ]
    short = "" if args.duration >= 30 else " (shorter than the 30 s default)"
    return f"""## Issue 4: MQTT ingestion

- Date: {started:%Y-%m-%d %H:%M %Z}
- Machine: {machine()}, Mosquitto {mosquitto_version()}, paho-mqtt {metadata.version("paho-mqtt")},
  aiomqtt {metadata.version("aiomqtt")}; load average (1/5/15 min) before the run {load}
- Code: cityos {git_revision()}
- Command: `{command}`
- Setup: `cityos serve` (one worker, fresh data dir, `CITYOS_MQTT_URL=mqtt://127.0.0.1:1883`,
  a shared-subscription group of its own), one group and {DEVICES:,} provisioned devices
  (`l` → `waterLevel`, `s` → `sentAt`, Number), one warm-up measure per device first.
- Load: {args.publishers} publisher processes (one MQTT connection each, devices split between
  them), QoS {args.qos}, open loop at the offered rate for {args.duration:g} s per phase{short};
  devices in turn, so each publishes every {DEVICES:,} / rate s. A message is
  `{{"l": <level>, "s": <wall-clock publish time>}}` on `/json/<apikey>/<device>/attrs`.
- Baseline, same publishers just before each cityos phase: the topics prefixed with
  `{RAW_PREFIX}` (cityos does not subscribe to them), received by one plain paho subscriber
  (QoS 1 shared subscription) that only parses the payload; its latency is publish to receipt.
- cityos throughput: measures accepted (`GET /iot/about`) per second over the steady window
  (the phase minus its first fifth, at least 3 s). Backlog: published minus accepted when the
  last message was published; drain: time until every message was accepted (never: progress
  stopped for 5 s or {args.drain_timeout:g} s passed; the rest counts as lost).
- Latency: a checker process, {args.watchers} watchers, each picks a random device, reads its
  entity (`GET /ngsi-ld/v1/entities/<id>?options=keyValues`, raw HTTP/1.1 keep-alive), polls
  every {args.poll_ms:g} ms until `sentAt` changes and records poll time minus that `sentAt`
  (an upper bound, within one poll interval), then the next device.
- Clean shutdown (SIGTERM, exit 0 within 30 s): {shutdown or "yes"}

{chr(10).join(rows)}

Steps sustained by cityos (published ≥ 97 % of offered, accepted ≥ 97 % of offered in the
steady window, nothing lost, drained within 2 s): {", ".join(kept) or "none"}.

| target | met |
|---|---|
{chr(10).join(f"| {t} | {'met' if ok else '**not met**'} |" for t, ok in targets)}"""


def machine() -> str:
    """Describe the machine: cores, CPU model, Python, SQLite, kernel."""
    model = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    return (
        f"{os.cpu_count()} cores (nproc), {model.group(1) if model else 'unknown CPU'}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{platform.system()} {platform.release()}"
    )


def mosquitto_version() -> str:
    """Return the installed Mosquitto's version."""
    out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].removeprefix("mosquitto version ") if first else "unknown"


def write_results(text: str) -> None:
    """Replace (or append) this benchmark's section of bench/RESULTS.md."""
    begin, end = f"<!-- {SECTION}: begin -->", f"<!-- {SECTION}: end -->"
    write_section(f"{begin}\n{text.strip()}\n{end}", begin, end)


def main() -> int:
    """Run the benchmark; return 1 if the server did not stop cleanly."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="2000,5000,8000", help="measures/s steps (2000,5000,8000)")
    ap.add_argument("--duration", type=float, default=30, help="seconds per phase (30)")
    ap.add_argument("--publishers", type=int, default=2, help="publisher processes (2)")
    ap.add_argument("--qos", type=int, choices=(0, 1), default=1, help="publish QoS (1)")
    ap.add_argument("--watchers", type=int, default=3, help="latency watchers (3)")
    ap.add_argument("--poll-ms", type=float, default=10, help="watcher poll interval (10)")
    ap.add_argument("--drain-timeout", type=float, default=60, help="max drain wait, s (60)")
    ap.add_argument("--no-raw", action="store_true", help="skip the Mosquitto baseline")
    ap.add_argument("--server-log", type=Path, help="keep a copy of the server's log here")
    ap.add_argument("--write-results", action="store_true", help="write bench/RESULTS.md")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    ctx = mp.get_context("spawn")
    started = dt.datetime.now().astimezone()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    apikey = f"bench{uuid.uuid4().hex[:10]}"
    port = free_port()
    # A group of our own: another cityos on this machine must not take a share of our messages.
    os.environ.update(
        CITYOS_MQTT_URL=f"mqtt://{MQTT_HOST}:{MQTT_PORT}", CITYOS_MQTT_GROUP=f"g{apikey}"
    )
    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="cityos-bench-mqtt-") as tmp:
        log = Path(tmp) / "server.log"
        proc = start_server(Path(tmp) / "data", port, log)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                wait_connected(client)
                provision(client, apikey)
                warm_up(client, apikey)
                for rate in rates:
                    step = Step(rate)
                    if not args.no_raw:
                        print(f"{rate:,.0f}/s raw Mosquitto ...", flush=True)
                        step.raw = raw_phase(ctx, args, apikey, rate)
                        print(f"  {step.raw}", flush=True)
                    print(f"{rate:,.0f}/s cityos ...", flush=True)
                    step.cityos = cityos_phase(ctx, args, client, port, apikey, rate)
                    print(f"  {step.cityos}", flush=True)
                    steps.append(step)
        finally:
            shutdown = stop_server(proc)
            if shutdown:
                print(f"{shutdown}:\n{log_tail(log)}", file=sys.stderr)
            if args.server_log:
                shutil.copy(log, args.server_log)
    if any(REFUSALS.values()):
        print(f"refused by cityos (not ours: our measures are all provisioned): {REFUSALS}")
    text = report(args, steps, started, load, shutdown)
    print(f"\n{text}")
    if args.write_results:
        write_results(text)
        print(f"\nwrote {RESULTS.name}")
    return 1 if shutdown else 0


if __name__ == "__main__":
    sys.exit(main())
