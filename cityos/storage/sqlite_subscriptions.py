"""SQLite tables of subscriptions and their notification outbox, and the matching change hook.

Notifications are queued in ``notification_outbox`` by a change hook running in the writer's
transaction, so a change and its notifications are committed together or not at all: a crash
after the commit finds them in the outbox, a crash before it leaves neither. The sender
deletes an outbox row only once the receiver has taken it.

Matching costs nothing for a tenant without subscriptions (one dict lookup); otherwise the
entity selectors, watched attributes and triggers are checked in memory, and only the
subscriptions that still match and have a ``q``, ``scopeQ`` or ``geoQ`` run one SQL statement
against the just-written row, with the same compilers as entity queries.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from cityos.broker.model import Doc
from cityos.broker.subscriptions import Counters, Live
from cityos.storage import sqlite_geo as geoindex
from cityos.storage.base import Change
from cityos.storage.sqlite import (
    DumpRow,
    DumpTable,
    SqliteStorage,
    content_filters,
    dump_tables,
    load_tables,
)

log = logging.getLogger("cityos.subscriptions")

DDL: Final = (
    """CREATE TABLE IF NOT EXISTS subscriptions(
        tenant TEXT NOT NULL,
        id TEXT NOT NULL,
        doc TEXT NOT NULL,
        times_sent INTEGER NOT NULL DEFAULT 0,
        times_failed INTEGER NOT NULL DEFAULT 0,
        last_notification TEXT,
        last_success TEXT,
        last_failure TEXT,
        UNIQUE(tenant, id)
    )""",
    # AUTOINCREMENT: a sequence number is never reused, so order per subscription is seq order
    """CREATE TABLE IF NOT EXISTS notification_outbox(
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant TEXT NOT NULL,
        sub_id TEXT NOT NULL,
        payload TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS notification_outbox_sub ON notification_outbox(tenant, sub_id)",
)


@dataclass(frozen=True, slots=True)
class Queued:
    """One notification waiting in the outbox."""

    seq: int
    tenant: str
    sub_id: str
    payload: Doc


class Registry:
    """The live subscriptions of every tenant, as the change hook sees them.

    Changed only by jobs on the writer thread (the same thread the hook runs on), so a
    change is matched against exactly the subscriptions committed before it.
    """

    def __init__(self) -> None:
        self.by_tenant: dict[str, dict[str, Live]] = {}
        #: the subscriptions with timeInterval, so the periodic round skips all others
        self._periodic: dict[tuple[str, str], Live] = {}

    def put(self, live: Live) -> None:
        self.by_tenant.setdefault(live.tenant, {})[live.id] = live
        if live.periodic:
            self._periodic[(live.tenant, live.id)] = live
        else:
            self._periodic.pop((live.tenant, live.id), None)

    def remove(self, tenant: str, sub_id: str) -> None:
        self._periodic.pop((tenant, sub_id), None)
        subs = self.by_tenant.get(tenant)
        if subs is not None:
            subs.pop(sub_id, None)
            if not subs:
                del self.by_tenant[tenant]

    def get(self, tenant: str, sub_id: str) -> Live | None:
        return self.by_tenant.get(tenant, {}).get(sub_id)

    def periodic(self) -> list[Live]:
        """Return the subscriptions with timeInterval (safe to call off the writer thread)."""
        # list() copies in one step under the GIL, so a concurrent put cannot break it
        return list(self._periodic.values())


def _counters(row: tuple[Any, ...]) -> Counters:
    return Counters(row[0], row[1], row[2], row[3], row[4])


_COLUMNS: Final = "doc, times_sent, times_failed, last_notification, last_success, last_failure"


class SubscriptionStore:
    """Subscriptions and the outbox in the broker's SQLite file."""

    def __init__(self, store: SqliteStorage, registry: Registry) -> None:
        self._store = store
        self.registry = registry
        #: called on the writer thread after a notification is queued (must not block)
        self.on_queued: Callable[[], None] = lambda: None
        # (tenant, id) -> (the Live it was compiled for, SQL, parameters)
        self._sql: dict[tuple[str, str], tuple[Live, str, list[Any]]] = {}
        store.add_change_hook(self._hook)

    #: (dump section, table, order, rowid too?) of what `cityos export` keeps
    DUMP_TABLES: Final[tuple[DumpTable, ...]] = (
        ("subscription", "subscriptions", "rowid", False),
        ("outbox", "notification_outbox", "seq", False),
    )

    @staticmethod
    def dump_rows(conn: sqlite3.Connection) -> Iterator[tuple[str, DumpRow]]:
        """Yield the subscriptions with their counters and the pending notifications."""
        return dump_tables(conn, SubscriptionStore.DUMP_TABLES)

    @staticmethod
    def load_rows(conn: sqlite3.Connection, section: str, rows: Sequence[DumpRow]) -> None:
        """Store dumped rows of a section of dump_rows, keeping their keys."""
        load_tables(conn, SubscriptionStore.DUMP_TABLES, section, rows)

    async def setup(self) -> None:
        """Create the tables if needed."""

        def run(conn: sqlite3.Connection) -> None:
            for stmt in DDL:
                conn.execute(stmt)

        await self._store.write(run)

    async def load(self) -> list[tuple[str, Doc]]:
        """Return every stored subscription as (tenant, doc)."""

        def run(conn: sqlite3.Connection) -> list[tuple[str, Doc]]:
            rows = conn.execute("SELECT tenant, doc FROM subscriptions ORDER BY rowid").fetchall()
            return [(t, orjson.loads(d)) for t, d in rows]

        result: list[tuple[str, Doc]] = await self._store.read(run)
        return result

    # -- CRUD ---------------------------------------------------------------------------------
    async def insert(self, live: Live) -> bool:
        """Store a new subscription; return False when its id is taken."""

        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT OR IGNORE INTO subscriptions(tenant, id, doc) VALUES(?,?,?)",
                (live.tenant, live.id, orjson.dumps(live.doc).decode()),
            )
            if cur.rowcount == 0:
                return False
            self.registry.put(live)
            return True

        ok: bool = await self._store.write(run)
        return ok

    async def replace(self, live: Live) -> bool:
        """Store an updated subscription; return False when it no longer exists."""

        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE subscriptions SET doc=? WHERE tenant=? AND id=?",
                (orjson.dumps(live.doc).decode(), live.tenant, live.id),
            )
            if cur.rowcount == 0:
                return False
            self.registry.put(live)
            return True

        ok: bool = await self._store.write(run)
        return ok

    async def delete(self, tenant: str, sub_id: str) -> bool:
        """Delete a subscription and its undelivered notifications."""

        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "DELETE FROM subscriptions WHERE tenant=? AND id=?", (tenant, sub_id)
            )
            conn.execute(
                "DELETE FROM notification_outbox WHERE tenant=? AND sub_id=?", (tenant, sub_id)
            )
            self.registry.remove(tenant, sub_id)
            self._sql.pop((tenant, sub_id), None)
            return cur.rowcount > 0

        ok: bool = await self._store.write(run)
        return ok

    async def get(self, tenant: str, sub_id: str) -> tuple[Doc, Counters] | None:
        """Return a subscription with its delivery counters."""

        def run(conn: sqlite3.Connection) -> tuple[Doc, Counters] | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM subscriptions WHERE tenant=? AND id=?", (tenant, sub_id)
            ).fetchone()
            return None if row is None else (orjson.loads(row[0]), _counters(row[1:]))

        result: tuple[Doc, Counters] | None = await self._store.read(run)
        return result

    async def page(
        self, tenant: str, limit: int, offset: int
    ) -> tuple[list[tuple[Doc, Counters]], int]:
        """Return one page of a tenant's subscriptions (in creation order) and their total."""

        def run(conn: sqlite3.Connection) -> tuple[list[tuple[Doc, Counters]], int]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM subscriptions WHERE tenant=? ORDER BY rowid "
                "LIMIT ? OFFSET ?",
                (tenant, limit, offset),
            ).fetchall()
            (total,) = conn.execute(
                "SELECT count(*) FROM subscriptions WHERE tenant=?", (tenant,)
            ).fetchone()
            return [(orjson.loads(r[0]), _counters(r[1:])) for r in rows], total

        result: tuple[list[tuple[Doc, Counters]], int] = await self._store.read(run)
        return result

    # -- the outbox ---------------------------------------------------------------------------
    async def queued(self, after: int, limit: int) -> list[Queued]:
        """Return outbox rows after a sequence number, oldest first.

        Read through the writer: it runs after the group that queued the rows is committed,
        so a wake-up from the hook always finds what woke it.
        """

        def run(conn: sqlite3.Connection) -> list[Queued]:
            rows = conn.execute(
                "SELECT seq, tenant, sub_id, payload FROM notification_outbox WHERE seq>? "
                "ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
            return [Queued(s, t, i, orjson.loads(p)) for s, t, i, p in rows]

        result: list[Queued] = await self._store.write(run)
        return result

    async def queued_for(self, tenant: str, sub_id: str, after: int, limit: int) -> list[Queued]:
        """Return one subscription's outbox rows after a sequence number, oldest first."""

        def run(conn: sqlite3.Connection) -> list[Queued]:
            rows = conn.execute(
                "SELECT seq, tenant, sub_id, payload FROM notification_outbox "
                "WHERE tenant=? AND sub_id=? AND seq>? ORDER BY seq LIMIT ?",
                (tenant, sub_id, after, limit),
            ).fetchall()
            return [Queued(s, t, i, orjson.loads(p)) for s, t, i, p in rows]

        result: list[Queued] = await self._store.write(run)
        return result

    async def delivered(self, tenant: str, sub_id: str, seqs: list[int], at: str) -> None:
        """Drop delivered notifications and count the success."""

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM notification_outbox WHERE seq=?", [(s,) for s in seqs])
            conn.execute(
                "UPDATE subscriptions SET times_sent=times_sent+1, last_notification=?, "
                "last_success=? WHERE tenant=? AND id=?",
                (at, at, tenant, sub_id),
            )

        await self._store.write(run)

    async def failed(self, tenant: str, sub_id: str, at: str) -> None:
        """Count a failed attempt (the notification stays queued)."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE subscriptions SET times_sent=times_sent+1, times_failed=times_failed+1, "
                "last_notification=?, last_failure=? WHERE tenant=? AND id=?",
                (at, at, tenant, sub_id),
            )

        await self._store.write(run)

    async def enqueue(self, live: Live, payload: Doc, at: str) -> bool:
        """Queue a periodic notification; return False when the subscription stopped meanwhile.

        Checked in the writer's transaction, so a notification is never queued for a
        subscription deleted, paused or expired while its entities were being read.
        """

        def run(conn: sqlite3.Connection) -> bool:
            current = self.registry.get(live.tenant, live.id)
            if current is None or not current.periodic or not current.active_at(at):
                return False
            self._queue(conn, live.tenant, live.id, payload)
            return True

        ok: bool = await self._store.write(run)
        return ok

    def _queue(self, conn: sqlite3.Connection, tenant: str, sub_id: str, payload: Doc) -> None:
        conn.execute(
            "INSERT INTO notification_outbox(tenant, sub_id, payload) VALUES(?,?,?)",
            (tenant, sub_id, orjson.dumps(payload).decode()),
        )
        self.on_queued()

    # -- matching -----------------------------------------------------------------------------
    def _hook(self, conn: sqlite3.Connection, change: Change) -> None:
        subs = self.registry.by_tenant.get(change.tenant)
        if not subs:
            return
        rid: int | None = None
        for live in list(subs.values()):
            if not live.live_at(change.at):
                continue
            fired = live.fired(change.old, change.new)
            if fired is None:
                continue
            if change.new is not None and (live.q or live.scope_q or live.geo_q):
                if rid is None:
                    rid = conn.execute(
                        "SELECT rid FROM entities WHERE tenant=? AND id=?",
                        (change.tenant, change.entity_id),
                    ).fetchone()[0]
                if not self._row_matches(conn, live, rid):
                    continue
            self._queue(
                conn, change.tenant, live.id, live.payload(change.old, change.new, fired, change.at)
            )

    def _row_matches(self, conn: sqlite3.Connection, live: Live, rid: int | None) -> bool:
        key = (live.tenant, live.id)
        cached = self._sql.get(key)
        if cached is None or cached[0] is not live:
            clauses, params = content_filters(
                live.q, live.scope_q, live.geo_q, live.geoproperty, live.expand
            )
            cached = self._sql[key] = (
                live,
                "SELECT 1 FROM entities e WHERE e.rid=? AND " + " AND ".join(clauses),
                params,
            )
        _, sql, params = cached
        with geoindex.query_scope(live.geo_q) as handles:
            return conn.execute(sql, [rid, *geoindex.bind(params, handles)]).fetchone() is not None
