"""South-bound ingestion shared by HTTP and MQTT: resolve the device, parse, map, write.

A message becomes NGSI-LD upserts (``options=update`` semantics) through the broker's own
entity service; all updates of one message are queued at once, so they commit in one of the
storage writer's group commits together with the measures of other devices that arrived at
the same time (a burst is written in batches, not one transaction per measure). A message that
fails to parse or map changes nothing and is counted by reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import orjson

from cityos.broker import clock
from cityos.broker.api.common import Broker
from cityos.broker.entities import EntityService, UpdateResult
from cityos.broker.errors import NgsiError
from cityos.iot import payloads
from cityos.iot.payloads import MeasureMapping
from cityos.iot.provisioning import (
    Device,
    Group,
    IotError,
    bad_request,
    entity_id_for,
    entity_type_for,
    mapping_for,
    parse_device,
    parse_group,
)
from cityos.storage.base import Mutation, Outcome, Storage
from cityos.storage.engines import Iot

__all__ = ["Ingestor", "Message", "Prepared", "QuietLog", "Seen"]

log = logging.getLogger("cityos.iot")

Proto = Literal["json", "ul"]
#: provisioning read from the database is reused this long; this process forgets it at once
#: when it changes provisioning itself, another worker's change shows within this delay
CACHE_SECONDS: Final = 30.0


@dataclass(slots=True)
class Seen:
    """When a device last sent a measure, and the entity its measures go to."""

    tenant: str
    device_id: str
    entity_id: str
    at: float  # wall-clock seconds


class Ingestor:
    """Turn device messages into entity writes; remember when each device was last seen."""

    def __init__(self, broker: Broker, iot: Iot) -> None:
        self.broker = broker
        self.iot = iot
        self.counts: Counter[str] = Counter()
        self.seen: dict[tuple[str, str], Seen] = {}
        self._groups: dict[tuple[str, str | None], tuple[float, tuple[str, str, Group]]] = {}
        self._devices: dict[tuple[str, str], tuple[float, Device]] = {}
        # the merged mapping of a (group, device) pair, rebuilt only when either is reloaded
        self._mappings: dict[tuple[int, int], tuple[Group, Device, MeasureMapping]] = {}
        #: (tenant, entity id) -> the latest write queued for it (engines without ordered_writes)
        self._latest: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._listeners: list[Callable[[Seen], None]] = []
        self._log = QuietLog(log)

    def forget(self) -> None:
        """Drop cached provisioning (called when groups or devices change)."""
        self._groups.clear()
        self._devices.clear()
        self._mappings.clear()

    def on_seen(self, listener: Callable[[Seen], None]) -> None:
        """Call listener(seen) whenever a device's measures have been written."""
        self._listeners.append(listener)

    # -- resolving ------------------------------------------------------------------------------

    async def find_group(self, apikey: str, resource: str | None) -> tuple[str, str, Group]:
        """Return (tenant, service path, group) of an apikey, preferring this resource's."""
        key = (apikey, resource)
        hit = self._groups.get(key)
        if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
            return hit[1]
        rows = await self.iot.groups_by_apikey(apikey)
        if not rows:
            raise IotError("DEVICE_GROUP_NOT_FOUND", f"no group has apikey {apikey!r}", 404)
        exact = [r for r in rows if r[2] == resource]
        tenant, path, _, doc = (exact or rows)[0]
        found = (tenant, path, parse_group(doc))
        self._groups[key] = (time.monotonic(), found)
        return found

    async def find_device(self, tenant: str, path: str, group: Group, device_id: str) -> Device:
        """Return a provisioned device, provisioning it when its group allows."""
        key = (tenant, device_id)
        hit = self._devices.get(key)
        if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
            return hit[1]
        row = await self.iot.get_device(tenant, device_id)
        if row is None:
            if not group.autoprovision:
                raise IotError("DEVICE_NOT_FOUND", f"no device with id {device_id!r}", 404)
            doc: dict[str, Any] = {"device_id": device_id, "apikey": group.apikey}
            if group.entity_type:
                doc["entity_type"] = group.entity_type
            doc["entity_name"] = entity_id_for(parse_device(doc), group)
            # Another message may have provisioned it meanwhile; then that device stands.
            await self.iot.insert_devices(tenant, path, [(device_id, doc)])
            row = await self.iot.get_device(tenant, device_id)
        device = parse_device(row[1] if row else doc)
        self._devices[key] = (time.monotonic(), device)
        return device

    # -- ingesting ------------------------------------------------------------------------------

    async def ingest(
        self,
        proto: Proto,
        apikey: str,
        device_id: str,
        body: bytes,
        *,
        resource: str | None,
        attr: str | None = None,
        stamp: str | None = None,
    ) -> None:
        """Write one message's measures; raise IotError, changing nothing, when refused."""
        message = Message(proto, apikey, device_id, body, resource, attr, stamp)
        try:
            prepared = await self._prepare(message)
            outcomes = await self.broker.store.apply(prepared.tenant, prepared.mutations)
            _raise_failed(outcomes)
        except IotError as exc:
            self._refused(message, exc)
            raise
        self._accepted(prepared)

    async def prepare_many(self, messages: list[Message]) -> list[Prepared]:
        """Parse and map messages in order; count and drop the refused ones."""
        ready: list[Prepared] = []
        for message in messages:
            try:
                ready.append(await self._prepare(message))
            except IotError as exc:
                self._refused(message, exc)
        return ready

    async def commit_many(self, ready: list[Prepared]) -> None:
        """Write prepared messages (their writes share group commits); count each.

        One device's measures must land in the order they came: on an engine whose
        concurrent writes may overtake each other, the writes of one entity wait for the
        previous one, while different entities still go concurrently.
        """
        store = self.broker.store
        if store.ordered_writes:
            results = await asyncio.gather(*(store.apply(p.tenant, p.mutations) for p in ready))
        else:
            results = await self._in_order(store, ready)
        for prepared, outcomes in zip(ready, results, strict=True):
            try:
                _raise_failed(outcomes)
            except IotError as exc:
                self._refused(prepared.message, exc)
            else:
                self._accepted(prepared)

    async def _in_order(self, store: Storage, ready: list[Prepared]) -> list[list[Outcome]]:
        """Apply each write after the earlier ones (of this and earlier batches) on its entities."""
        results: list[list[Outcome]] = [[] for _ in ready]

        async def run(i: int, before: list[asyncio.Future[None]]) -> None:
            for earlier in before:
                with contextlib.suppress(Exception):  # its own caller hears of its failure
                    await earlier
            results[i] = await store.apply(ready[i].tenant, ready[i].mutations)

        tasks = []
        for i, prepared in enumerate(ready):
            keys = [(prepared.tenant, m.entity_id) for m in prepared.mutations]
            before = [self._latest[k] for k in keys if k in self._latest]
            task = asyncio.ensure_future(run(i, before))
            for k in keys:
                self._latest[k] = task
                task.add_done_callback(functools.partial(self._settled, k))
            tasks.append(task)
        await asyncio.gather(*tasks)
        return results

    def _settled(self, key: tuple[str, str], task: asyncio.Future[None]) -> None:
        if self._latest.get(key) is task:
            del self._latest[key]

    def _refused(self, message: Message, exc: IotError) -> None:
        self.counts[f"refused:{exc.name}"] += 1
        self._log.warning(
            (message.apikey, exc.name),
            "measure from %s/%s refused: %s",
            message.apikey,
            message.device_id,
            exc.message,
        )

    def _accepted(self, prepared: Prepared) -> None:
        self.counts["accepted"] += 1
        message = prepared.message
        seen = Seen(prepared.tenant, message.device_id, prepared.entity_id, time.time())
        self.seen[(prepared.tenant, message.device_id)] = seen
        for listener in self._listeners:
            listener(seen)

    def _mapping(self, group: Group, device: Device) -> MeasureMapping:
        key = (id(group), id(device))
        hit = self._mappings.get(key)
        if hit is not None and hit[0] is group and hit[1] is device:
            return hit[2]
        mapping = mapping_for(device, group)
        if len(self._mappings) > 100_000:
            self._mappings.clear()
        self._mappings[key] = (group, device, mapping)
        return mapping

    async def _prepare(self, m: Message) -> Prepared:
        tenant, path, group = await self.find_group(m.apikey, m.resource)
        device = await self.find_device(tenant, path, group, m.device_id)
        try:
            if m.attr is not None:
                measures = [payloads.parse_single(m.attr, m.body, m.proto)]
            elif m.proto == "json":
                measures = payloads.parse_json(m.body)
            else:
                measures = payloads.parse_ul(m.body)
            if m.stamp is not None:
                forced = query_timestamp(m.stamp)
                # A timestamp inside the payload is the device's own and stays.
                measures = [payloads.Measures(x.values, x.timestamp or forced) for x in measures]
            updates = payloads.to_updates(measures, self._mapping(group, device), now=_now())
        except payloads.PayloadError as exc:
            raise bad_request(str(exc)) from None
        entity_id = entity_id_for(device, group)
        entity_type = entity_type_for(device, group)
        svc = EntityService(self.broker.store, tenant, self.broker.loader.default(), clock.now())
        try:
            mutations = [
                Mutation(
                    entity_id,
                    svc.append_fn(
                        entity_id,
                        {"type": entity_type, **update},
                        overwrite=True,
                        only_existing=False,
                        result=UpdateResult(),
                        create=True,
                    ),
                )
                for update in updates
                if update
            ]
        except NgsiError as exc:
            raise IotError("UNPROCESSABLE_ENTITY", exc.detail, 422) from None
        return Prepared(m, tenant, entity_id, mutations)


@dataclass(frozen=True, slots=True)
class Message:
    """One device message as it arrived."""

    proto: Proto
    apikey: str
    device_id: str
    body: bytes
    resource: str | None  # the HTTP resource it came on; None for MQTT
    attr: str | None = None  # a single-attribute message
    stamp: str | None = None  # the t= parameter


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message parsed, mapped and turned into mutations, not yet written."""

    message: Message
    tenant: str
    entity_id: str
    mutations: list[Mutation]


class QuietLog:
    """Log a warning once per key and interval, with how many were suppressed meanwhile.

    A misconfigured fleet can send thousands of refused measures a second; the log should say
    so, not drown.
    """

    def __init__(self, logger: logging.Logger, every: float = 60.0) -> None:
        self._logger = logger
        self._every = every
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def warning(self, key: tuple[str, str], msg: str, *args: object) -> None:
        """Log msg unless the same key was logged within the interval."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self._every:
            self._last[key] = (last[0], last[1] + 1)
            return
        if last is not None and last[1]:
            msg += f" (and {last[1]} more like it in the last {self._every:.0f} s)"
        if len(self._last) > 10_000:
            self._last.clear()
        self._last[key] = (now, 0)
        self._logger.warning(msg, *args)


def _raise_failed(outcomes: list[Outcome]) -> None:
    failed = [o.error for o in outcomes if o.error is not None]
    if failed:
        detail = failed[0].detail if isinstance(failed[0], NgsiError) else str(failed[0])
        raise IotError("UNPROCESSABLE_ENTITY", detail, 422)


def _now() -> datetime:
    return datetime.fromisoformat(clock.now())


def query_timestamp(stamp: str) -> datetime | None:
    """Parse the t= parameter with exactly the payload parser's timestamp rules."""
    try:
        wrapped = payloads.parse_json(orjson.dumps({payloads.TIMESTAMP_KEY: stamp, "t": 0}))
    except payloads.PayloadError as exc:
        raise bad_request(f"t: {exc}") from None
    return wrapped[0].timestamp
