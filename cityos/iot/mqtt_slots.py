"""MQTT client-id slots: each worker's persistent MQTT session has a name no other worker uses.

A worker subscribes as ``cityos-<CITYOS_MQTT_GROUP>-<slot>`` with a session the broker keeps
while it is away, so that the messages it had not acknowledged when it died go to whichever
worker next takes its slot (Mosquitto does not hand them to the other members of the shared
subscription). A worker takes the lowest free slot 0, 1, 2...: on PostgreSQL a slot is a session
advisory lock held on a connection of its own for the worker's life (a dead worker's connection
closes and frees its slot, which its restarted successor then takes); SQLite serves one worker,
which always has slot 0. A worker may also take a free slot it has seen held for a while, to
drain the session of a worker that died and was not started again (see `cityos.iot.mqtt`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import asyncpg

__all__ = ["MAX_SLOTS", "Slots", "client_id"]

log = logging.getLogger("cityos.iot.mqtt")

#: more workers than this in one group is a configuration mistake, not a reason to wait forever
MAX_SLOTS: Final = 256
#: the client id names the broker's session, and the broker is shared by every installation
#: that uses it: the lock is keyed by the group (which names the session), not by the schema
_TRY: Final = "SELECT pg_try_advisory_lock(hashtextextended('cityos.mqtt:' || $1, 0))"
_UNLOCK: Final = "SELECT pg_advisory_unlock(hashtextextended('cityos.mqtt:' || $1, 0))"
#: the slots of a group some worker holds now (a bigint lock key is split over classid, objid)
_HELD: Final = """
SELECT s FROM generate_series(0, $2::int - 1) AS s
WHERE hashtextextended('cityos.mqtt:' || $1 || ':' || s, 0) IN (
    SELECT (l.classid::bigint << 32) | l.objid::bigint FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
"""


def client_id(group: str, slot: int) -> str:
    """Return the MQTT client id of a slot of a shared-subscription group."""
    return f"cityos-{group}-{slot}"


class Slots:
    """The slot this worker holds; `url` None means the only worker (always slot 0)."""

    def __init__(self, group: str, url: str | None = None) -> None:
        self.group = group
        self._url = url
        self._conn: asyncpg.Connection | None = None
        self._busy = asyncio.Lock()  # one query at a time on the lock connection
        self.slot: int | None = None
        #: slots this worker has seen held by a worker: candidates to drain once they fall free
        self.known: set[int] = set()

    async def acquire(self) -> int:
        """Return the slot this worker holds, taking the lowest free one if it holds none.

        Raise OSError or asyncpg errors when PostgreSQL cannot be reached (the caller retries).
        """
        if self._url is None:
            self.slot = 0
            return 0
        if self.slot is not None and await self.held():
            return self.slot
        await self.release()
        async with self._busy:
            self._conn = conn = await asyncpg.connect(self._url, timeout=10)
            for slot in range(MAX_SLOTS):
                if await conn.fetchval(_TRY, f"{self.group}:{slot}", timeout=10):
                    self.slot = slot
                    self.known.update(range(slot))  # the lower ones were all taken
                    log.info("MQTT: this worker is %s", client_id(self.group, slot))
                    return slot
        await self.release()
        raise OSError(f"all {MAX_SLOTS} MQTT client slots of group {self.group!r} are taken")

    async def held(self) -> bool:
        """Return whether this worker still holds its slot (its lock connection is alive)."""
        if self._url is None:
            return self.slot is not None
        if self._conn is None or self._conn.is_closed():
            return False
        try:
            async with self._busy:
                await self._conn.fetchval("SELECT 1", timeout=5)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False
        return True

    async def observe(self) -> set[int]:
        """Return the slots of the group held now (by any worker), and remember them."""
        if self._conn is None:
            return set()
        async with self._busy:
            rows = await self._conn.fetch(_HELD, self.group, MAX_SLOTS, timeout=5)
        held = {int(row[0]) for row in rows}
        self.known |= held
        return held

    async def take(self, slot: int) -> bool:
        """Lock another slot too, if it is free (to drain what its dead worker left)."""
        if self._conn is None or slot == self.slot:
            return False
        async with self._busy:
            return bool(await self._conn.fetchval(_TRY, f"{self.group}:{slot}", timeout=5))

    async def give_back(self, slot: int) -> None:
        """Unlock a slot taken with take()."""
        if self._conn is not None and slot != self.slot:
            async with self._busy:
                await self._conn.fetchval(_UNLOCK, f"{self.group}:{slot}", timeout=5)

    async def release(self) -> None:
        """Give the slot up (closing the connection frees the lock for another worker)."""
        async with self._busy:
            conn, self._conn = self._conn, None
            slot, self.slot = self.slot, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    if slot is not None and not conn.is_closed():
                        await conn.fetchval(_UNLOCK, f"{self.group}:{slot}", timeout=5)
                    await asyncio.wait_for(conn.close(), 5)
