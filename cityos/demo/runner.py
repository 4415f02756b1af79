"""Run a demo scenario against a cityos server through its public APIs only.

Loads the Sano data set with a batch upsert, provisions the IoT groups and devices, then replays
the scenario's readings in compressed simulated time: over MQTT (`/json/<apikey>/<device>/attrs`)
when an MQTT broker is configured, else over HTTP (`POST /iot/json?k=&i=`). Staff actions are
NGSI-LD PATCHes. Derived values (alert levels, Alert entities, crowding) are the server's job.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import click
import httpx
import orjson

from cityos.demo import sano
from cityos.demo.scenario import (
    APIKEY_COUNTER,
    APIKEY_RAIN,
    APIKEY_RIVER,
    JST,
    Event,
    Notice,
    Opening,
    Reading,
    Scenario,
)

__all__ = [
    "Console",
    "DemoError",
    "Summary",
    "prepare",
    "replay",
    "run",
    "summarize",
    "wait_healthy",
]

E: Final = "/ngsi-ld/v1/entities"
OPS: Final = "/ngsi-ld/v1/entityOperations"


class DemoError(RuntimeError):
    """The server refused a step of the demo; the message says which and why."""


def _check(r: httpx.Response, what: str, *ok: int) -> None:
    if r.status_code not in ok:
        raise DemoError(f"{what}: HTTP {r.status_code} {r.text[:300]}")


async def wait_healthy(client: httpx.AsyncClient, within_s: float = 30.0) -> None:
    """Wait until the server answers /-/health."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        try:
            if (await client.get("/-/health")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if loop.time() > deadline:
            raise DemoError(f"the server did not become healthy within {within_s:.0f} s")
        await asyncio.sleep(0.05)


# -- data set and devices ---------------------------------------------------------------------


def _measure(name: str, kind: str, unit: str | None = None) -> dict[str, Any]:
    attr: dict[str, Any] = {"object_id": name, "name": name, "type": kind}
    if unit is not None:
        attr["metadata"] = {"unitCode": {"type": "Text", "value": unit}}
    return attr


GROUPS: Final = [
    {
        "apikey": APIKEY_RIVER,
        "resource": "/iot/json",
        "entity_type": "WaterObserved",
        "autoprovision": False,
        "attributes": [
            _measure("waterLevel", "Number", "MTR"),
            _measure("overflowReported", "Boolean"),
            _measure("dateObserved", "DateTime"),
        ],
    },
    {
        "apikey": APIKEY_RAIN,
        "resource": "/iot/json",
        "entity_type": "WeatherObserved",
        "autoprovision": False,
        "attributes": [
            _measure("precipitation", "Number", "H67"),
            _measure("dateObserved", "DateTime"),
        ],
    },
    {
        "apikey": APIKEY_COUNTER,
        "resource": "/iot/json",
        "entity_type": "EvacuationShelter",
        "autoprovision": False,
        "attributes": [_measure("occupancy", "Integer")],
    },
]


def devices() -> list[dict[str, Any]]:
    """Return the IoT Agent provisioning of every demo device (one per entity it updates)."""
    rows: list[tuple[str, str, str, str]] = [
        *((g.device_id, g.id, "WaterObserved", APIKEY_RIVER) for g in sano.GAUGES),
        *((r.device_id, r.id, "WeatherObserved", APIKEY_RAIN) for r in sano.RAIN_GAUGES),
        *((s.device_id, s.id, "EvacuationShelter", APIKEY_COUNTER) for s in sano.SHELTERS),
    ]
    return [
        {"device_id": d, "entity_name": eid, "entity_type": etype, "apikey": key}
        for d, eid, etype, key in rows
    ]


async def reset(client: httpx.AsyncClient) -> None:
    """Delete the demo entities and their history, so a run starts afresh."""
    ids = sano.entity_ids()
    r = await client.post(f"{OPS}/delete", json=ids)
    _check(r, "deleting the previous demo entities", 204, 207)
    results = await asyncio.gather(
        *(client.delete(f"/ngsi-ld/v1/temporal/entities/{eid}") for eid in ids)
    )
    for eid, res in zip(ids, results, strict=True):
        _check(res, f"deleting the history of {eid}", 204, 404)


async def prepare(client: httpx.AsyncClient) -> int:
    """Reset, load the static data set and provision the devices; return the entity count."""
    await reset(client)
    data = sano.entities()
    r = await client.post(f"{OPS}/upsert", json=data)
    _check(r, "loading the Sano data set", 201, 204)
    # Provisioning again on a re-run answers 409 for what exists already, which is fine.
    r = await client.post("/iot/groups", json={"groups": GROUPS})
    _check(r, "provisioning the IoT groups", 201, 409)
    for doc in devices():
        r = await client.post("/iot/devices", json={"devices": [doc]})
        _check(r, f"provisioning device {doc['device_id']}", 201, 409)
    return len(data)


# -- sending ----------------------------------------------------------------------------------


class Sender(Protocol):
    """Delivers one device's measures to the server, oldest first."""

    async def send(self, readings: Sequence[Reading]) -> None: ...


def _payload(readings: Sequence[Reading]) -> bytes:
    """Return a JSON measure object, or an array of them (one update each, in order)."""
    bodies: list[dict[str, Any]] = []
    for reading in readings:
        stamp = reading.at.isoformat()  # the device's own clock, +09:00
        body: dict[str, Any] = {**reading.values, "TimeInstant": stamp}
        if reading.apikey != APIKEY_COUNTER:
            body["dateObserved"] = stamp
        bodies.append(body)
    return orjson.dumps(bodies[0] if len(bodies) == 1 else bodies)


@dataclass(slots=True)
class HttpSender:
    """Posts measures to the HTTP south-bound (`/iot/json`)."""

    client: httpx.AsyncClient

    async def send(self, readings: Sequence[Reading]) -> None:
        first = readings[0]
        r = await self.client.post(
            "/iot/json",
            params={"k": first.apikey, "i": first.device_id},
            content=_payload(readings),
            headers={"Content-Type": "application/json"},
        )
        _check(r, f"measure from {first.device_id}", 200, 204)


@dataclass(slots=True)
class MqttSender:
    """Publishes measures to `/json/<apikey>/<device>/attrs` on an MQTT broker."""

    client: Any  # aiomqtt.Client

    async def send(self, readings: Sequence[Reading]) -> None:
        first = readings[0]
        topic = f"/json/{first.apikey}/{first.device_id}/attrs"
        await self.client.publish(topic, payload=_payload(readings), qos=1)


@asynccontextmanager
async def mqtt_sender(
    mqtt: tuple[str, int, str | None, str | None],
) -> AsyncIterator[MqttSender]:
    """Connect to the MQTT broker for the length of the replay."""
    import aiomqtt

    host, port, user, password = mqtt
    # aiomqtt warns about every queued publish beyond a threshold; a fast replay queues many
    quiet = logging.getLogger("cityos.demo.mqtt")
    quiet.setLevel(logging.ERROR)
    try:
        async with aiomqtt.Client(
            host, port, username=user, password=password, logger=quiet
        ) as client:
            yield MqttSender(client)
    except aiomqtt.MqttError as exc:
        raise DemoError(f"MQTT broker {host}:{port}: {exc}") from None


# -- the terminal -----------------------------------------------------------------------------


@dataclass(slots=True)
class Console:
    """Prints a line per notable event, and a one-line progress indicator on a terminal."""

    live: bool = field(default_factory=lambda: sys.stderr.isatty())
    _shown: bool = False

    def line(self, at: datetime, text: str) -> None:
        """Print a notable event at its simulated time."""
        self._clear()
        click.echo(f"{at.astimezone(JST):%m-%d %H:%M} {text}")

    def progress(self, at: datetime, done: int, total: int, detail: str) -> None:
        """Redraw the progress line (terminal only)."""
        if not self.live:
            return
        width = 24
        filled = width * done // max(total, 1)
        bar = "█" * filled + "·" * (width - filled)
        text = f"{at.astimezone(JST):%Y-%m-%d %H:%M} JST {bar} {done}/{total} {detail}"
        click.echo(f"\r\x1b[K{text}", nl=False, err=True)
        self._shown = True

    def _clear(self) -> None:
        if self._shown:
            click.echo("\r\x1b[K", nl=False, err=True)
            self._shown = False

    def close(self) -> None:
        """Remove the progress line."""
        self._clear()


# -- replay -----------------------------------------------------------------------------------


def _moments(events: Iterable[Event]) -> list[tuple[datetime, list[Event]]]:
    return [(at, list(group)) for at, group in itertools.groupby(events, key=lambda e: e.at)]


def _by_device(events: Iterable[Event]) -> list[list[Reading]]:
    devices: dict[str, list[Reading]] = {}
    for e in events:
        if isinstance(e, Reading):
            devices.setdefault(e.device_id, []).append(e)
    return list(devices.values())


async def _open(client: httpx.AsyncClient, opening: Opening) -> None:
    when = opening.at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    body = {"openingStatus": {"type": "Property", "value": "open", "observedAt": when}}
    r = await client.patch(f"{E}/{opening.entity_id}/attrs", json=body)
    _check(r, f"opening {opening.entity_id}", 204)


async def replay(
    client: httpx.AsyncClient,
    sender: Sender,
    scenario: Scenario,
    speed: float,
    console: Console,
) -> None:
    """Send the scenario's events, each at its simulated time divided by `speed`."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    total = len(scenario.events)
    central = next(g for g in sano.GAUGES if g.slug == sano.CENTRAL_GAUGE)
    moments = _moments(scenario.events)

    def due(at: datetime) -> float:
        # Every event is due at a fixed offset from the start, so slow sends never add up.
        return t0 + (at - scenario.start).total_seconds() / speed

    detail = ""
    done = i = 0
    while i < len(moments):
        at, batch = moments[i]
        delay = due(at) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        i += 1
        # Behind schedule (a high speed): send the overdue readings of each device together,
        # up to the next staff action, which must stay in order with the shelter's counts.
        if not any(isinstance(e, Opening) for e in batch):
            while (
                i < len(moments)
                and due(moments[i][0]) <= loop.time()
                and not any(isinstance(e, Opening) for e in moments[i][1])
            ):
                batch = batch + moments[i][1]
                at = moments[i][0]
                i += 1
        # Devices are independent, so their messages go in parallel.
        await asyncio.gather(*(sender.send(r) for r in _by_device(batch)))
        await asyncio.gather(*(_open(client, e) for e in batch if isinstance(e, Opening)))
        for e in batch:
            if isinstance(e, Opening):
                console.line(e.at, f"{e.name_ja} 開設 / {e.name_en} opened")
            elif isinstance(e, Notice):
                console.line(e.at, e.text)
            elif e.device_id == central.device_id:
                detail = f"{central.station_ja} {e.values['waterLevel']:.2f} m"
        done += len(batch)
        console.progress(at, done, total, detail)
    console.close()


async def _settle(client: httpx.AsyncClient, scenario: Scenario, within_s: float = 15.0) -> None:
    """Wait until the last readings are visible (MQTT delivery is asynchronous)."""
    last = {e.entity_id: e for e in scenario.events if isinstance(e, Reading)}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    for eid, reading in last.items():
        name, value = next(iter(reading.values.items()))
        while True:
            r = await client.get(f"{E}/{eid}", params={"attrs": name, "options": "keyValues"})
            if r.status_code == 200 and r.json().get(name) == value:
                break
            if loop.time() > deadline:
                raise DemoError(f"the last reading of {eid} did not arrive through MQTT")
            await asyncio.sleep(0.1)


# -- summary ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    """What the scenario left behind, as the API shows it."""

    scenario: str
    readings: int
    peak_alert_level: int  # from the readings and each gauge's lines
    server_alert_levels: dict[str, int]  # gauge slug -> floodAlertLevel the server derived
    alerts: int  # Alert entities on the server
    shelters_open: int
    shelters: int
    evacuees: int
    crowding: dict[str, int]

    def lines(self) -> list[str]:
        """Return the summary as terminal lines."""
        out = [
            f"scenario {self.scenario}: {self.readings} readings sent",
            f"  最高の警戒レベル相当 / highest alert level reached: {self.peak_alert_level}",
        ]
        if self.server_alert_levels:
            now = ", ".join(f"{k} {v}" for k, v in sorted(self.server_alert_levels.items()))
            out.append(f"  floodAlertLevel now: {now}; Alert entities: {self.alerts}")
        else:
            out.append("  the server derived no floodAlertLevel (no flood derivations)")
        out.append(
            f"  開設中の避難所 / shelters open: {self.shelters_open} of {self.shelters}, "
            f"避難者 / evacuees: {self.evacuees}"
        )
        if self.crowding:
            mix = ", ".join(f"{k} {v}" for k, v in sorted(self.crowding.items()))
            out.append(f"  混雑状況 / crowding: {mix}")
        return out


async def _all(client: httpx.AsyncClient, etype: str, attrs: str) -> list[dict[str, Any]]:
    r = await client.get(
        E, params={"type": etype, "attrs": attrs, "options": "keyValues", "limit": 1000}
    )
    _check(r, f"reading the {etype} entities", 200)
    result: list[dict[str, Any]] = r.json()
    return result


async def summarize(client: httpx.AsyncClient, scenario: Scenario) -> Summary:
    """Read the end state of the demo through the API."""
    gauges = await _all(client, "WaterObserved", "floodAlertLevel")
    shelters = await _all(client, "EvacuationShelter", "openingStatus,occupancy,crowdingLevel")
    alerts = await _all(client, "Alert", "floodAlertLevel")
    prefix = "urn:ngsi-ld:WaterObserved:sano-"
    open_ = [s for s in shelters if s.get("openingStatus") == "open"]
    return Summary(
        scenario=scenario.name,
        readings=sum(isinstance(e, Reading) for e in scenario.events),
        peak_alert_level=scenario.peak_alert_level(),
        server_alert_levels={
            g["id"].removeprefix(prefix): g["floodAlertLevel"]
            for g in gauges
            if isinstance(g.get("floodAlertLevel"), int)
        },
        alerts=sum(a["id"].startswith("urn:ngsi-ld:Alert:flood-sano-") for a in alerts),
        shelters_open=len(open_),
        shelters=len(shelters),
        evacuees=sum(int(s.get("occupancy", 0)) for s in open_),
        crowding=dict(Counter(str(s["crowdingLevel"]) for s in open_ if "crowdingLevel" in s)),
    )


async def run(
    base_url: str,
    scenario: Scenario,
    speed: float,
    *,
    mqtt: tuple[str, int, str | None, str | None] | None = None,
    console: Console | None = None,
    api_key: str | None = None,
) -> Summary:
    """Prepare the server, replay the scenario and return the summary."""
    console = console or Console()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=base_url, timeout=30, headers=headers) as client:
        await wait_healthy(client)
        n = await prepare(client)
        how = f"MQTT {mqtt[0]}:{mqtt[1]}" if mqtt else "HTTP /iot/json"
        click.echo(
            f"loaded {n} Sano entities; replaying {scenario.name} at {speed:g}x through {how}"
        )
        click.echo(scenario.title)
        if mqtt is None:
            await replay(client, HttpSender(client), scenario, speed, console)
        else:
            async with mqtt_sender(mqtt) as sender:
                await replay(client, sender, scenario, speed, console)
            await _settle(client, scenario)
        return await summarize(client, scenario)
