"""Leadership: which worker runs the jobs that must run once per installation.

Periodic (timeInterval) notifications, device health alerts, history pruning and the rebuilds
of the portal's snapshots and of live datasets must each run in one worker, not in every one.
On PostgreSQL the leader is the worker holding a session advisory lock on a connection of its
own: when the leader dies its connection closes, PostgreSQL frees the lock, and another worker
takes it at its next look (every `poll` seconds). SQLite serves one worker, which always leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

import asyncpg

log = logging.getLogger("cityos.cluster")

#: how often a follower tries to take the lead, and the leader checks it still holds it
POLL: Final = 2.0
#: one lock per installation: the schema's name keeps installations sharing a database apart
_TRY: Final = (
    "SELECT pg_try_advisory_lock(hashtextextended('cityos.leader:' || current_schema(), 0))"
)


class Leadership:
    """Whether this worker leads; `url` None means the only worker (always the leader)."""

    def __init__(self, url: str | None = None, *, poll: float = POLL) -> None:
        self._url = url
        self._poll = poll
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.is_leader = url is None
        #: called (on the event loop) each time this worker becomes the leader
        self.on_gain: list[Callable[[], None]] = []

    async def start(self) -> None:
        """Try to lead at once (so a lone worker leads from its first request), then keep trying."""
        if self._url is None:
            return
        await self._look()
        self._task = asyncio.create_task(self._run(), name="cityos-leadership")

    async def stop(self) -> None:
        """Give the lead up (closing the connection frees the lock for another worker)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            await self._look()

    async def _look(self) -> None:
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self._url, timeout=10)
            if self.is_leader:
                await self._conn.fetchval("SELECT 1", timeout=self._poll)
                return
            if await self._conn.fetchval(_TRY, timeout=self._poll):
                self.is_leader = True
                log.info("this worker now leads (periodic notifications, health, snapshots)")
                for gained in self.on_gain:
                    gained()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            if self.is_leader:
                log.warning("lost the lead: %s", exc)
            await self._drop()

    async def _drop(self) -> None:
        self.is_leader = self._url is None
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
