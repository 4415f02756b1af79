"""Device health: when each device last reported, and an Alert when one falls silent.

Crisis-management gauges (危機管理型水位計) send one heartbeat a day while the water is low and
report every 10, 5 or 2 minutes once it is up, so a device's expected interval is its
``expected_interval`` (default one day) or, while the gauge its measures feed shows water above
normal (``levelStatus``), its ``active_interval`` (default 10 minutes); both can be set on the
device or its group. A device silent past its interval (plus a grace of a tenth of it, at most a
minute) gets an ``Alert`` entity ``urn:ngsi-ld:Alert:device-<device_id>``; when it reports
again the Alert is closed (``validTo``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from cityos.broker import clock
from cityos.broker.api.common import Broker
from cityos.broker.entities import put_attributes
from cityos.broker.model import DEFAULT_VOCAB, Doc, default_instance
from cityos.broker.normalize import Normalizer
from cityos.iot.ingest import Ingestor, Seen
from cityos.iot.provisioning import Device, IotError, parse_device
from cityos.storage.base import Mutation
from cityos.storage.engines import Iot

__all__ = [
    "DEFAULT_ACTIVE",
    "DEFAULT_HEARTBEAT",
    "HealthMonitor",
    "device_alert_id",
    "due",
    "iso",
]

log = logging.getLogger("cityos.iot.health")

DEFAULT_HEARTBEAT: Final = 86400  # one heartbeat a day
DEFAULT_ACTIVE: Final = 600  # every 10 minutes while the water is up
_QUIET_STATUSES: Final = frozenset({None, "normal"})


def device_alert_id(device_id: str) -> str:
    """Return the id of the Alert that reports a device silent."""
    return f"urn:ngsi-ld:Alert:device-{device_id}"


def due(last: float, interval: int) -> float:
    """Return when a device that reported at `last` counts as silent."""
    return last + interval + min(60.0, interval / 10)


def _duration(seconds: float) -> tuple[str, str]:
    if seconds >= 5400:
        return f"{seconds / 3600:.0f}時間", f"{seconds / 3600:.0f} h"
    if seconds >= 90:
        return f"{round(seconds / 60)}分", f"{round(seconds / 60)} min"
    return f"{round(seconds)}秒", f"{round(seconds)} s"


def iso(epoch: float) -> str:
    """Return an epoch time as an NGSI-LD DateTime."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class HealthMonitor:
    """Record last-seen times and raise or close device Alerts, on a timer."""

    def __init__(
        self,
        broker: Broker,
        iot: Iot,
        ingestor: Ingestor,
        *,
        every: float,
        now: Callable[[], float] = time.time,
        leader: Callable[[], bool] = lambda: True,
    ) -> None:
        self.broker = broker
        self.iot = iot
        self.ingestor = ingestor
        self.every = every
        self._now = now
        # every worker stores the times its devices were seen; the leader raises the Alerts
        self._leader = leader
        self._dirty: dict[tuple[str, str], float] = {}
        self._started_at = now()
        self._task: asyncio.Task[None] | None = None
        ingestor.on_seen(self._seen)

    def _seen(self, seen: Seen) -> None:
        self._dirty[(seen.tenant, seen.device_id)] = seen.at

    async def start(self) -> None:
        """Check in the background every `every` seconds."""
        self._started_at = self._now()
        self._task = asyncio.create_task(self._run(), name="cityos-device-health")

    async def stop(self) -> None:
        """Stop checking and store the last-seen times not yet stored."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await (self.check() if self._leader() else self.flush())
            except Exception:  # keep checking: one failed round must not end device health
                log.exception("device health check failed")

    async def flush(self) -> None:
        """Store the last-seen times gathered since the last flush."""
        if self._dirty:
            batch, self._dirty = self._dirty, {}
            await self.iot.record_seen([(t, d, at) for (t, d), at in batch.items()])

    async def check(self) -> list[tuple[str, str, bool]]:
        """Raise or close device Alerts; return (tenant, device id, silent) of each change."""
        await self.flush()
        now = self._now()
        changes: list[tuple[str, str, bool]] = []
        for tenant, doc, last_seen, silent in await self.iot.all_devices():
            device = parse_device(doc)
            last = last_seen if last_seen is not None else self._started_at
            interval = await self._interval(tenant, device, last, now)
            late = now >= due(last, interval)
            if late and not silent:
                await self._raise(tenant, device.device_id, doc, last, interval, now)
                changes.append((tenant, device.device_id, True))
            elif not late and silent:
                await self._close(tenant, device.device_id, now)
                changes.append((tenant, device.device_id, False))
        return changes

    async def _interval(self, tenant: str, device: Device, last: float, now: float) -> int:
        heartbeat, active = device.expected_interval, device.active_interval
        entity_id: str | None = device.entity_name
        if device.apikey:
            with contextlib.suppress(IotError):
                _, _, group = await self.ingestor.find_group(device.apikey, None)
                heartbeat = heartbeat or group.expected_interval
                active = active or group.active_interval
        heartbeat = heartbeat or DEFAULT_HEARTBEAT
        active = min(active or DEFAULT_ACTIVE, heartbeat)
        if now < due(last, active):
            return heartbeat  # on time even by the short interval: no need to look further
        seen = self.ingestor.seen.get((tenant, device.device_id))
        entity_id = seen.entity_id if seen is not None else entity_id
        if entity_id is None:
            return heartbeat
        entity = await self.broker.store.get(tenant, entity_id)
        status = _status(entity)
        return heartbeat if status in _QUIET_STATUSES else active

    async def _raise(
        self,
        tenant: str,
        device_id: str,
        doc: dict[str, Any],
        last: float,
        interval: int,
        now: float,
    ) -> None:
        silent_ja, silent_en = _duration(now - last)
        every_ja, every_en = _duration(interval)
        source = doc.get("entity_name")
        attrs: dict[str, Any] = {
            "type": "Alert",
            "category": {"type": "Property", "value": "deviceHealth"},
            "subCategory": {"type": "Property", "value": "deviceNotResponding"},
            "severity": {"type": "Property", "value": "medium"},
            "dateIssued": {"type": "Property", "value": {"@type": "DateTime", "@value": iso(now)}},
            "validFrom": {"type": "Property", "value": {"@type": "DateTime", "@value": iso(now)}},
            "description": {
                "type": "Property",
                "value": (
                    f"機器 {device_id} から{silent_ja}受信がありません（想定間隔 {every_ja}） / "
                    f"no data from device {device_id} for {silent_en} "
                    f"(expected every {every_en})"
                ),
            },
            "data": {
                "type": "Property",
                "value": {
                    "deviceId": device_id,
                    "lastSeen": iso(last),
                    "expectedInterval": interval,
                },
            },
        }
        if isinstance(source, str) and source.startswith("urn:"):
            attrs["alertSource"] = {"type": "Relationship", "object": source}
        await self._write(tenant, device_id, attrs, replace=True)
        await self.iot.set_silent(tenant, device_id, True, last)
        log.warning("device %s/%s silent for %s", tenant or "-", device_id, silent_en)

    async def _close(self, tenant: str, device_id: str, now: float) -> None:
        attrs: dict[str, Any] = {
            "type": "Alert",
            "severity": {"type": "Property", "value": "informational"},
            "validTo": {"type": "Property", "value": {"@type": "DateTime", "@value": iso(now)}},
            "description": {
                "type": "Property",
                "value": (
                    f"機器 {device_id} からの受信が再開しました / device {device_id} reports again"
                ),
            },
        }
        await self._write(tenant, device_id, attrs, replace=False)
        await self.iot.set_silent(tenant, device_id, False, now)

    async def _write(
        self, tenant: str, device_id: str, attrs: dict[str, Any], *, replace: bool
    ) -> None:
        alert_id = device_alert_id(device_id)
        stamp = clock.now()
        fresh = Normalizer(self.broker.loader.default(), stamp).entity({"id": alert_id, **attrs})

        def fn(cur: Doc | None) -> Doc:
            if cur is None or replace:
                return {**fresh, "createdAt": cur["createdAt"] if cur else stamp}
            return put_attributes(cur, fresh["attrs"], stamp)

        outcomes = await self.broker.store.apply(tenant, [Mutation(alert_id, fn)])
        if outcomes[0].error is not None:
            raise outcomes[0].error


def _status(entity: Doc | None) -> Any:
    inst = default_instance(entity, DEFAULT_VOCAB + "levelStatus")
    return None if inst is None else inst.get("value")
