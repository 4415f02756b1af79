"""Deliver queued notifications: HTTP(S) POSTs and MQTT publishes, in order, with retries.

One task reads the outbox (waking as soon as a change queues a notification) and hands rows
to one worker per subscription. A worker sends its subscription's notifications strictly one
after another, retrying the first with capped exponential back-off until the receiver takes
it, so a receiver that is down loses nothing and sees nothing out of order, and a receiver
that never returns holds up only its own subscription. A row leaves the outbox only once
delivered, so a restart resends what was not (at-least-once delivery).

With ``throttling`` a worker waits until the period since its last notification has passed
and then sends everything queued meanwhile as one notification, rather than dropping it.

``Periodic`` serves subscriptions with ``timeInterval``: every interval it queries the current
state of the selected entities and writes it to the same outbox, so periodic notifications
are delivered, retried and kept across restarts exactly like the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final, Protocol
from urllib.parse import unquote, urlsplit

import aiomqtt
import httpx
import orjson

from cityos.broker import clock as ngsi_clock
from cityos.broker.model import Doc
from cityos.broker.subscriptions import Live
from cityos.http import media
from cityos.storage.base import Storage
from cityos.storage.engines import Subscriptions
from cityos.storage.pg_subscriptions import PostgresSubscriptionStore
from cityos.storage.sqlite_subscriptions import Queued

log = logging.getLogger("cityos.notify")

BACKOFF_BASE: Final = 1.0
BACKOFF_CAP: Final = 60.0
FETCH: Final = 1000
#: at most this many notifications of one subscription are held in memory; the rest wait in
#: the outbox until the receiver catches up
MAX_QUEUE: Final = 1000
#: at most this many queued notifications are sent as one throttled notification
MAX_MERGE: Final = 100
HTTP_TIMEOUT: Final = 10.0
#: at most this many entities travel in one periodic notification; more are split in order
PERIODIC_CHUNK: Final = 1000
#: the periodic loop looks at least this often for new, changed and resumed subscriptions
PERIODIC_POLL: Final = 1.0


class Clock(Protocol):
    """What delivery needs of time: a monotonic reading and a way to wait."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    """The wall clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


_MERGED: Final = uuid.UUID("6f1d4c1e-2b8a-5d0e-9c63-1a2b3c4d5e6f")


def backoff(attempts: int) -> float:
    """Return the wait before retry number ``attempts`` (1, 2, 4 ... seconds, capped)."""
    return float(min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempts - 1)))


def merged(rows: list[Queued]) -> Doc:
    """Return one notification carrying the data of several, in their order."""
    first = dict(rows[0].payload)
    if len(rows) > 1:
        # the same rows sent again (a worker died before recording the delivery) keep their id,
        # so a receiver can tell a repeat from a new notification
        seqs = ",".join(str(r.seq) for r in rows)
        first["id"] = f"urn:ngsi-ld:Notification:{uuid.uuid5(_MERGED, f'{rows[0].sub_id}/{seqs}')}"
        first["data"] = [d for r in rows for d in r.payload["data"]]
    return first


def _headers(live: Live) -> dict[str, str]:
    endpoint = live.doc["notification"]["endpoint"]
    accept = endpoint.get("accept", media.JSON)
    headers = {"Content-Type": accept}
    source = live.context_source()
    if accept == media.JSON and isinstance(source, str):
        headers["Link"] = media.link_header(source)
    if live.tenant:
        headers["NGSILD-Tenant"] = live.tenant
    for item in endpoint.get("receiverInfo", ()):
        headers[item["key"]] = item["value"]
    return headers


def _notifier_info(live: Live) -> dict[str, str]:
    return {
        i["key"]: i["value"] for i in live.doc["notification"]["endpoint"].get("notifierInfo", ())
    }


class Sender:
    """The background delivery of one broker's outbox."""

    def __init__(
        self,
        subs: Subscriptions,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        lookup: Callable[[str, str], Awaitable[Live | None]] | None = None,
    ) -> None:
        self._subs = subs
        # loads a subscription this worker has not heard of yet (another worker created it)
        self._lookup = lookup
        self.clock: Clock = clock or RealClock()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event = asyncio.Event()
        self._pending = False
        self._last_seq = 0
        self._queues: dict[tuple[str, str], deque[Queued]] = {}
        self._workers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._last_sent: dict[tuple[str, str], float] = {}
        self._reader: asyncio.Task[None] | None = None
        self._acks: set[asyncio.Future[None]] = set()
        #: subscriptions whose later notifications were left in the outbox (queue full)
        self._overflow: set[tuple[str, str]] = set()
        self._skipped: dict[tuple[str, str], int] = {}  # highest seq left in the outbox
        self._loaded: dict[tuple[str, str], int] = {}  # highest seq taken into memory
        self._mqtt: dict[tuple[Any, ...], aiomqtt.Client] = {}
        #: called after every delivery attempt (tests wait on it instead of sleeping)
        self.on_attempt: Callable[[], None] = lambda: None

    # -- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start reading the outbox (what a previous run left first)."""
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._client = httpx.AsyncClient(timeout=HTTP_TIMEOUT, transport=self._transport)
        self._subs.on_queued = self.wake_threadsafe
        self._event.set()
        self._reader = asyncio.create_task(self._read_outbox(), name="cityos-notify-outbox")

    async def stop(self) -> None:
        """Stop delivering; what is not delivered stays in the outbox."""
        self._subs.on_queued = lambda: None
        tasks = [t for t in (self._reader, *self._workers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()
        await self.flush()
        if self._client is not None:
            await self._client.aclose()
        for client in self._mqtt.values():
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
        self._mqtt.clear()

    def _track(self, write: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(write)
        self._acks.add(task)
        task.add_done_callback(self._acked)

    def _acked(self, task: asyncio.Future[None]) -> None:
        self._acks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("recording a delivery failed: %s", task.exception())

    async def flush(self) -> None:
        """Wait until every delivery so far is recorded in the store."""
        while self._acks:
            await asyncio.gather(*list(self._acks), return_exceptions=True)

    def backlog(self) -> int:
        """Return how many notifications wait in memory for delivery."""
        return sum(len(q) for q in self._queues.values())

    def wake_threadsafe(self) -> None:
        """Say that notifications were queued (called on the writer thread)."""
        if self._pending or self._loop is None:
            return
        self._pending = True
        with contextlib.suppress(RuntimeError):  # the loop closed: nothing to wake
            self._loop.call_soon_threadsafe(self._event.set)

    # -- reading the outbox -------------------------------------------------------------------
    async def _read_outbox(self) -> None:
        if isinstance(self._subs, PostgresSubscriptionStore):
            await self._claim_outbox(self._subs)
            return
        while True:
            await self._event.wait()
            self._event.clear()
            self._pending = False
            while True:
                try:
                    rows = await self._subs.queued(self._last_seq, FETCH)
                except Exception:  # retried at the next wake-up
                    log.exception("reading the notification outbox failed")
                    break
                for row in rows:
                    self._last_seq = row.seq
                    key = (row.tenant, row.sub_id)
                    queue = self._queues.setdefault(key, deque())
                    if key in self._overflow or len(queue) >= MAX_QUEUE:
                        # A receiver that is far behind: leave the rest in the outbox (memory
                        # stays bounded); its worker reads it back in order as it catches up.
                        self._overflow.add(key)
                        self._skipped[key] = row.seq
                    else:
                        queue.append(row)
                        self._loaded[key] = row.seq
                    if key not in self._workers:
                        self._workers[key] = asyncio.create_task(self._work(key))
                if len(rows) < FETCH:
                    break

    async def _claim_outbox(self, subs: PostgresSubscriptionStore) -> None:
        """Take notifications leased to this sender (several workers share the outbox).

        A claim also renews this sender's leases and takes over those of dead senders, so it
        runs at least every third of the lease even when nothing wakes it.
        """
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), subs.lease / 3)
            self._event.clear()
            self._pending = False
            # deliveries recorded first: rows this sender still holds count against its cap
            await self.flush()
            while True:
                try:
                    rows = await subs.claim(FETCH, per_subscription=MAX_QUEUE)
                except Exception:  # retried at the next wake-up
                    log.exception("claiming from the notification outbox failed")
                    break
                for row in rows:
                    # A claim never returns a row this sender holds, so each is new here. Its
                    # seq may be lower than one held already: seqs are drawn when a write
                    # queues, and concurrent writes commit in another order (a row skipped
                    # for that reason would never be sent).
                    key = (row.tenant, row.sub_id)
                    self._queues.setdefault(key, deque()).append(row)
                    if key not in self._workers:
                        self._workers[key] = asyncio.create_task(self._work(key))
                if len(rows) < FETCH:
                    break

    # -- one subscription's worker ------------------------------------------------------------
    async def _work(self, key: tuple[str, str]) -> None:
        queue = self._queues[key]
        attempts = 0
        try:
            while True:
                if not queue and key in self._overflow:
                    await self._refill(key, queue)
                if not queue:
                    break
                live = self._subs.registry.get(*key)
                if live is None and self._lookup is not None:
                    live = await self._lookup(*key)
                if live is None:  # deleted, and its outbox rows with it
                    queue.clear()
                    self._overflow.discard(key)
                    break
                batch = [queue[0]]
                if live.throttling:
                    due = self._last_sent.get(key, float("-inf")) + live.throttling
                    wait = due - self.clock.monotonic()
                    if wait > 0:
                        await self.clock.sleep(wait)
                        continue
                    batch = [queue[i] for i in range(min(len(queue), MAX_MERGE))]
                payload = merged(batch)
                at = ngsi_clock.now()
                payload["notifiedAt"] = at
                ok = await self._deliver(live, payload)
                if ok:
                    self._last_sent[key] = self.clock.monotonic()
                    # Record the delivery without waiting for its commit: the next send starts
                    # at once (order is kept: sends are sequential). A crash before the commit
                    # resends, which at-least-once delivery allows.
                    self._track(self._subs.delivered(key[0], key[1], [r.seq for r in batch], at))
                    for _ in batch:
                        queue.popleft()
                    attempts = 0
                    self.on_attempt()
                else:
                    await self._subs.failed(key[0], key[1], at)
                    attempts += 1
                    self.on_attempt()
                    await self.clock.sleep(backoff(attempts))
        finally:
            if not queue:
                self._queues.pop(key, None)
            self._workers.pop(key, None)
            if isinstance(self._subs, PostgresSubscriptionStore):
                self._event.set()  # more of this subscription may wait, beyond the claim cap

    async def _refill(self, key: tuple[str, str], queue: deque[Queued]) -> None:
        """Read a subscription's next notifications back from the outbox, in order."""
        while True:
            rows = await self._subs.queued_for(key[0], key[1], self._loaded.get(key, 0), MAX_QUEUE)
            for row in rows:
                queue.append(row)
                self._loaded[key] = row.seq
            if len(rows) == MAX_QUEUE:
                return  # more wait in the outbox: read them when these are sent
            # Rows the reader skipped while this read was running are read again, so that
            # nothing stays behind once the reader takes over again.
            if self._skipped.get(key, 0) <= self._loaded.get(key, 0):
                self._overflow.discard(key)
                self._skipped.pop(key, None)
                return

    async def _deliver(self, live: Live, payload: Doc) -> bool:
        uri: str = live.doc["notification"]["endpoint"]["uri"]
        try:
            if uri.startswith(("mqtt://", "mqtts://")):
                await self._publish(live, uri, payload)
                return True
            assert self._client is not None
            resp = await self._client.post(
                uri, content=orjson.dumps(payload), headers=_headers(live)
            )
        except (httpx.HTTPError, aiomqtt.MqttError, OSError) as exc:
            log.warning("notification of %s to %s failed: %s", live.id, uri, exc)
            return False
        except Exception:  # a worker must outlive any receiver's misbehaviour
            log.exception("notification of %s to %s failed", live.id, uri)
            return False
        if 200 <= resp.status_code < 300:
            return True
        log.warning("notification of %s to %s: HTTP %d", live.id, uri, resp.status_code)
        return False

    # -- MQTT ---------------------------------------------------------------------------------
    async def _publish(self, live: Live, uri: str, payload: Doc) -> None:
        parts = urlsplit(uri)
        tls = parts.scheme == "mqtts"
        info = _notifier_info(live)
        version = (
            aiomqtt.ProtocolVersion.V5
            if info.get("MQTT-Version") == "mqtt5.0"
            else aiomqtt.ProtocolVersion.V311
        )
        key = (parts.hostname, parts.port, tls, parts.username, parts.password, version)
        client = self._mqtt.get(key)
        if client is None:
            client = aiomqtt.Client(
                parts.hostname or "localhost",
                parts.port or (8883 if tls else 1883),
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                protocol=version,
                tls_context=ssl.create_default_context() if tls else None,
                timeout=HTTP_TIMEOUT,
            )
            await client.__aenter__()
            self._mqtt[key] = client
        # clause 7.x MQTT binding: the headers travel as metadata next to the body
        message = {"metadata": _headers(live), "body": payload}
        try:
            await client.publish(
                unquote(parts.path.lstrip("/")),
                orjson.dumps(message),
                qos=int(info.get("MQTT-QoS", "0")),
                timeout=HTTP_TIMEOUT,
            )
        except aiomqtt.MqttError:
            self._mqtt.pop(key, None)
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
            raise


# -- periodic notifications (timeInterval) -------------------------------------------------------
def _datetime(posix: float) -> str:
    return datetime.fromtimestamp(posix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Periodic:
    """Queue, every ``timeInterval``, the current state of a subscription's entities.

    ``tick(now)`` does one round at a given wall-clock time; a background loop calls it in
    production, tests call it with the times they choose (after ``stop``). The schedule is
    kept in memory only: a subscription first notifies one interval after it is first seen
    active (created, resumed, its interval changed, or the broker restarted).
    """

    def __init__(
        self, subs: Subscriptions, storage: Storage, leader: Callable[[], bool] = lambda: True
    ) -> None:
        self._subs = subs
        self._storage = storage
        # several workers keep the schedule; only the leader queues the notifications
        self._leader = leader
        # (tenant, id) -> (the interval it was scheduled with, when it is next due)
        self._due: dict[tuple[str, str], tuple[float, float]] = {}
        self._task: asyncio.Task[None] | None = None
        #: when the earliest periodic notification is due (POSIX seconds; inf when none)
        self.next_due = math.inf

    async def start(self) -> None:
        """Start the background loop on the wall clock."""
        self._task = asyncio.create_task(self._loop(), name="cityos-notify-periodic")

    async def stop(self) -> None:
        """Stop the background loop and forget the schedule."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._due.clear()
        self.next_due = math.inf

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick(time.time())
            except Exception:  # keep the schedule going; the next round retries
                log.exception("periodic notifications failed")
            wait = min(self.next_due - time.time(), PERIODIC_POLL)
            await asyncio.sleep(max(0.0, wait))

    async def tick(self, now: float) -> int:
        """Queue the periodic notifications due at ``now`` (POSIX seconds); return how many."""
        at = _datetime(now)
        queued = 0
        seen: set[tuple[str, str]] = set()
        next_due = math.inf
        for live in self._subs.registry.periodic():
            if not live.active_at(at):
                continue  # forgotten below, so resuming starts a fresh interval
            key = (live.tenant, live.id)
            seen.add(key)
            interval = live.interval
            state = self._due.get(key)
            if state is None or state[0] != interval or state[1] - now > interval:
                # new, resumed, re-timed, or the wall clock went back: count from now
                state = (interval, now + interval)
            elif now >= state[1]:
                if self._leader():
                    queued += await self._notify(live, at)
                # rounds missed while busy or suspended are skipped, not sent in a burst
                missed = math.floor((now - state[1]) / interval)
                state = (interval, state[1] + (missed + 1) * interval)
            self._due[key] = state
            next_due = min(next_due, state[1])
        for key in self._due.keys() - seen:
            del self._due[key]
        self.next_due = next_due
        return queued

    async def _notify(self, live: Live, at: str) -> int:
        """Queue the current state of the subscription's entities, if any match."""
        ids: set[str] = set()
        batch: list[Doc] = []
        queued = 0
        for query in live.queries(PERIODIC_CHUNK):
            offset = 0
            while True:
                result = await self._storage.query(live.tenant, replace(query, offset=offset))
                for doc in result.docs:
                    if doc["id"] in ids:  # selected by an earlier selector too
                        continue
                    ids.add(doc["id"])
                    batch.append(doc)
                    if len(batch) == PERIODIC_CHUNK:
                        if not await self._subs.enqueue(live, live.periodic_payload(batch, at), at):
                            return queued
                        queued += 1
                        batch = []
                if len(result.docs) < query.limit:
                    break
                offset += query.limit
        if batch and await self._subs.enqueue(live, live.periodic_payload(batch, at), at):
            queued += 1
        return queued
