"""PostgreSQL twin of sqlite_subscriptions: subscriptions, the notification outbox, the hook.

As on SQLite, a change hook queues notifications in the entity write's transaction, so a
change and its notifications commit together or not at all. Unlike SQLite, several workers
may write and send at once:

- A queued row raises ``NOTIFY cityos_outbox``, which PostgreSQL delivers only at commit, to
  every worker listening; ``on_queued`` runs then, so a wake-up always finds what woke it.
- Senders share the outbox through ``claim``: a sender leases a subscription and takes its
  rows, so each notification is handed to exactly one sender and one subscription's
  notifications leave from one sender, in order. A lease lapses when its sender stops
  renewing it (it died); another sender then takes the subscription over.
- ``queued``/``queued_for`` read by sequence number as on SQLite, for a single sender only:
  sequence numbers are taken before commit, so a later reader may see a row appear behind
  one it has already read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, Final

import asyncpg
import orjson

from cityos.broker import qlang
from cityos.broker.errors import BadRequestData
from cityos.broker.model import Doc
from cityos.broker.subscriptions import Counters, Live
from cityos.storage import pg_query
from cityos.storage.base import Change, EntityQuery
from cityos.storage.pg_index import Conn
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import DumpRow
from cityos.storage.sqlite_subscriptions import Queued, Registry

log = logging.getLogger("cityos.subscriptions")

#: the channel a committed outbox row is announced on
CHANNEL: Final = "cityos_outbox"
#: seconds a sender holds a subscription without renewing its lease (CITYOS_NOTIFY_LEASE): a
#: killed worker's notifications wait this long at most before another worker sends them
LEASE: Final = 30.0
_GENERATION: Final = "SELECT n FROM subscription_generation WHERE id=1"
_BUMP: Final = "UPDATE subscription_generation SET n=n+1 WHERE id=1"
#: at most this many of one subscription's notifications are held by one sender at a time
PER_SUBSCRIPTION: Final = 1000

_COLUMNS: Final = "doc, times_sent, times_failed, last_notification, last_success, last_failure"

# The subscription row is key-share locked while its notification is queued: a concurrent
# delete waits, or the row is not queued; counter and lease updates do not wait.
_QUEUE: Final = (
    "WITH q AS (INSERT INTO notification_outbox(tenant, sub_id, payload) "
    "SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM subscriptions WHERE tenant=$1 AND id=$2 "
    "FOR KEY SHARE) RETURNING seq) "
    f"SELECT pg_notify('{CHANNEL}', '') FROM q"
)

# Subscriptions with rows this sender does not hold, that no other live sender holds; locked
# so that two senders never claim one subscription at once (a locked one is left to its
# locker). NO KEY UPDATE does not conflict with the hook's KEY SHARE: a subscription that is
# being notified all the time is not skipped for ever.
_CLAIMABLE: Final = """
SELECT s.tenant, s.id FROM subscriptions s
WHERE (s.sender IS NULL OR s.sender=$1 OR s.lease_until < now())
  AND EXISTS (SELECT 1 FROM notification_outbox o
              WHERE o.tenant=s.tenant AND o.sub_id=s.id AND o.claimed_by IS DISTINCT FROM $1)
ORDER BY (SELECT min(o.seq) FROM notification_outbox o
          WHERE o.tenant=s.tenant AND o.sub_id=s.id AND o.claimed_by IS DISTINCT FROM $1)
LIMIT $2
FOR NO KEY UPDATE OF s SKIP LOCKED
"""

# The oldest rows of the locked subscriptions this sender does not hold yet, at most
# PER_SUBSCRIPTION held per subscription (counting those it holds already).
_TAKE: Final = """
WITH subs AS (SELECT * FROM unnest($2::text[], $3::text[]) AS x(tenant, sub_id)),
ranked AS (
    SELECT o.seq, o.claimed_by,
           row_number() OVER (PARTITION BY o.tenant, o.sub_id ORDER BY o.seq) AS n
    FROM notification_outbox o JOIN subs USING (tenant, sub_id)),
picked AS (
    SELECT seq FROM ranked WHERE n <= $4 AND claimed_by IS DISTINCT FROM $1
    ORDER BY seq LIMIT $5)
UPDATE notification_outbox o SET claimed_by=$1 FROM picked WHERE o.seq=picked.seq
RETURNING o.seq, o.tenant, o.sub_id, o.payload
"""


#: (dump section, SQL) of what dump_rows yields, with SubscriptionStore's sections and columns
_DUMPS: Final = (
    (
        "subscription",
        f"SELECT tenant, id, {_COLUMNS} FROM subscriptions ORDER BY rid",
    ),
    ("outbox", "SELECT seq, tenant, sub_id, payload FROM notification_outbox ORDER BY seq"),
)


def _counters(row: Any) -> Counters:
    return Counters(row[1], row[2], row[3], row[4], row[5])


def _queued(rows: list[Any]) -> list[Queued]:
    return [Queued(s, t, i, orjson.loads(p)) for s, t, i, p in rows]


def _patterns(expr: qlang.QExpr | None) -> list[str]:
    """Return the regular expressions of a q expression."""
    if isinstance(expr, qlang.Match):
        return [expr.pattern]
    if isinstance(expr, qlang.And | qlang.Or):
        return [p for item in expr.items for p in _patterns(item)]
    return []


def default_sender_id() -> str:
    """Return a name for this process's sender that no other worker uses."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class PostgresSubscriptionStore:
    """Subscriptions and the outbox in the broker's PostgreSQL database."""

    def __init__(
        self,
        store: PostgresStorage,
        registry: Registry,
        *,
        sender_id: str | None = None,
        lease: float = LEASE,
    ) -> None:
        self._store = store
        self.registry = registry
        #: who this store claims notifications as (see claim)
        self.sender_id = sender_id or default_sender_id()
        self.lease = lease
        self._lease = timedelta(seconds=lease)
        #: called on the event loop once a queued notification is committed (by any worker)
        self.on_queued: Callable[[], None] = lambda: None
        self._listener: asyncpg.Connection | None = None
        #: set when other workers may change subscriptions: reloads the registry (on a
        #: connection in a write's transaction) before a write is matched against it
        self.reload: Callable[[Conn], Awaitable[None]] | None = None
        self._generation: int | None = None
        self._reloading = asyncio.Lock()
        # (tenant, id) -> (the Live it was compiled for, SQL, parameters)
        self._sql: dict[tuple[str, str], tuple[Live, str, list[Any]]] = {}
        store.add_change_hook(self._hook)

    @staticmethod
    async def dump_rows(conn: Conn) -> AsyncIterator[tuple[str, DumpRow]]:
        """Yield the subscriptions with their counters and the pending notifications."""
        for section, sql in _DUMPS:
            for row in await conn.fetch(sql):
                yield section, dict(row.items())

    @staticmethod
    async def load_rows(conn: Conn, section: str, rows: Sequence[DumpRow]) -> None:
        """Store dumped rows of a section of dump_rows; a row with a taken key replaces it."""
        # fixed column lists: a dump file's keys never reach the SQL text
        if section == "subscription":
            await conn.executemany(
                f"INSERT INTO subscriptions(tenant, id, {_COLUMNS}) "
                "VALUES($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant, id) DO UPDATE SET "
                "doc=EXCLUDED.doc, times_sent=EXCLUDED.times_sent, "
                "times_failed=EXCLUDED.times_failed, "
                "last_notification=EXCLUDED.last_notification, "
                "last_success=EXCLUDED.last_success, last_failure=EXCLUDED.last_failure",
                [
                    (
                        r["tenant"],
                        r["id"],
                        r["doc"],
                        r["times_sent"],
                        r["times_failed"],
                        r["last_notification"],
                        r["last_success"],
                        r["last_failure"],
                    )
                    for r in rows
                ],
            )
            return
        if section != "outbox":
            raise ValueError(f"unknown dump section {section!r}")
        await conn.executemany(
            "INSERT INTO notification_outbox(seq, tenant, sub_id, payload) "
            "OVERRIDING SYSTEM VALUE VALUES($1, $2, $3, $4) ON CONFLICT (seq) DO UPDATE SET "
            "tenant=EXCLUDED.tenant, sub_id=EXCLUDED.sub_id, payload=EXCLUDED.payload, "
            "claimed_by=NULL",
            [(r["seq"], r["tenant"], r["sub_id"], r["payload"]) for r in rows],
        )
        # notifications queued after the load come after the loaded ones
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence('notification_outbox', 'seq'), max(seq)) "
            "FROM notification_outbox HAVING count(*) > 0"
        )

    async def setup(self) -> None:
        """Start listening for committed notifications (migrations create the tables)."""
        if self._listener is None:
            self._listener = await asyncpg.connect(self._store.url)
            await self._listener.add_listener(CHANNEL, self._announced)
            self._listener.add_termination_listener(self._lost)

    async def close(self) -> None:
        """Stop listening, and hand back what this sender holds (a graceful stop).

        Another sender, or this worker started again, takes the subscriptions over at once
        instead of after the lease.
        """
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.close()
        async with self._store.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE notification_outbox SET claimed_by=NULL WHERE claimed_by=$1",
                self.sender_id,
            )
            await conn.execute(
                "UPDATE subscriptions SET sender=NULL, lease_until=NULL WHERE sender=$1",
                self.sender_id,
            )

    def _announced(self, *_: object) -> None:
        self.on_queued()

    def _lost(self, _conn: object) -> None:
        if self._listener is not None:  # not closed by us
            log.warning("the connection listening for notifications closed; senders must poll")

    async def load(self, conn: Conn | None = None) -> list[tuple[str, Doc]]:
        """Return every stored subscription as (tenant, doc) (on conn: in its transaction)."""
        sql = "SELECT tenant, doc FROM subscriptions ORDER BY rid"
        rows = await (conn or self._store.pool).fetch(sql)
        return [(t, orjson.loads(d)) for t, d in rows]

    async def _sync(self, conn: Conn) -> None:
        """Reload the subscriptions when another worker changed them since we last loaded."""
        assert self.reload is not None
        n = await conn.fetchval(_GENERATION)
        if n == self._generation:
            return
        async with self._reloading:
            if n != self._generation:
                await self.reload(conn)
                # n was read before the reload: a change after it is seen by the next write
                self._generation = n

    # -- CRUD ---------------------------------------------------------------------------------
    async def _check_patterns(self, live: Live) -> None:
        # Python accepted them (qlang.check_regex); refuse now what PostgreSQL cannot run,
        # rather than fail every entity write the subscription is matched against
        for pattern in _patterns(live.q):
            try:
                await self._store.pool.fetchval("SELECT '' ~ $1", pattern)
            except asyncpg.InvalidRegularExpressionError as exc:
                raise BadRequestData(
                    f"regular expression not supported by this database: {exc}"
                ) from exc

    async def insert(self, live: Live) -> bool:
        """Store a new subscription; return False when its id is taken."""
        await self._check_patterns(live)
        async with self._store.pool.acquire() as conn, conn.transaction():
            rid = await conn.fetchval(
                "INSERT INTO subscriptions(tenant, id, doc) VALUES($1, $2, $3) "
                "ON CONFLICT (tenant, id) DO NOTHING RETURNING rid",
                live.tenant,
                live.id,
                orjson.dumps(live.doc).decode(),
            )
            if rid is not None:
                await conn.execute(_BUMP)
        if rid is None:
            return False
        self.registry.put(live)
        return True

    async def replace(self, live: Live) -> bool:
        """Store an updated subscription; return False when it no longer exists."""
        await self._check_patterns(live)
        async with self._store.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "UPDATE subscriptions SET doc=$1 WHERE tenant=$2 AND id=$3",
                orjson.dumps(live.doc).decode(),
                live.tenant,
                live.id,
            )
            await conn.execute(_BUMP)
        if status == "UPDATE 0":
            return False
        self.registry.put(live)
        return True

    async def delete(self, tenant: str, sub_id: str) -> bool:
        """Delete a subscription and its undelivered notifications."""
        async with self._store.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "DELETE FROM subscriptions WHERE tenant=$1 AND id=$2", tenant, sub_id
            )
            await conn.execute(
                "DELETE FROM notification_outbox WHERE tenant=$1 AND sub_id=$2", tenant, sub_id
            )
            await conn.execute(_BUMP)
        self.registry.remove(tenant, sub_id)
        self._sql.pop((tenant, sub_id), None)
        return bool(status != "DELETE 0")

    async def get(self, tenant: str, sub_id: str) -> tuple[Doc, Counters] | None:
        """Return a subscription with its delivery counters."""
        row = await self._store.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM subscriptions WHERE tenant=$1 AND id=$2", tenant, sub_id
        )
        return None if row is None else (orjson.loads(row[0]), _counters(row))

    async def page(
        self, tenant: str, limit: int, offset: int
    ) -> tuple[list[tuple[Doc, Counters]], int]:
        """Return one page of a tenant's subscriptions (in creation order) and their total."""
        async with self._store.pool.acquire() as conn:  # noqa: SIM117 (the transaction needs conn)
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                rows = await conn.fetch(
                    f"SELECT {_COLUMNS} FROM subscriptions WHERE tenant=$1 ORDER BY rid "
                    "LIMIT $2 OFFSET $3",
                    tenant,
                    limit,
                    offset,
                )
                total: int = await conn.fetchval(
                    "SELECT count(*) FROM subscriptions WHERE tenant=$1", tenant
                )
        return [(orjson.loads(r[0]), _counters(r)) for r in rows], total

    # -- the outbox ---------------------------------------------------------------------------
    async def queued(self, after: int, limit: int) -> list[Queued]:
        """Return committed outbox rows after a sequence number, oldest first."""
        rows = await self._store.pool.fetch(
            "SELECT seq, tenant, sub_id, payload FROM notification_outbox WHERE seq>$1 "
            "ORDER BY seq LIMIT $2",
            after,
            limit,
        )
        return _queued(rows)

    async def queued_for(self, tenant: str, sub_id: str, after: int, limit: int) -> list[Queued]:
        """Return one subscription's outbox rows after a sequence number, oldest first."""
        rows = await self._store.pool.fetch(
            "SELECT seq, tenant, sub_id, payload FROM notification_outbox "
            "WHERE tenant=$1 AND sub_id=$2 AND seq>$3 ORDER BY seq LIMIT $4",
            tenant,
            sub_id,
            after,
            limit,
        )
        return _queued(rows)

    async def claim(self, limit: int, per_subscription: int = PER_SUBSCRIPTION) -> list[Queued]:
        """Hand this sender up to ``limit`` notifications it does not hold yet, oldest first.

        Only subscriptions no other live sender holds are served; they are leased to this
        sender, and every lease it holds is renewed. Call it at least every third of the
        lease: that keeps the leases and takes over those of senders that died.
        """
        pool = self._store.pool
        await pool.execute(
            "UPDATE subscriptions SET lease_until=now()+$2::interval WHERE sender=$1",
            self.sender_id,
            self._lease,
        )
        async with pool.acquire() as conn, conn.transaction():
            subs = await conn.fetch(_CLAIMABLE, self.sender_id, limit)
            if not subs:
                return []
            rows = await conn.fetch(
                _TAKE,
                self.sender_id,
                [s[0] for s in subs],
                [s[1] for s in subs],
                per_subscription,
                limit,
            )
            taken = sorted({(r[1], r[2]) for r in rows})
            await conn.execute(
                "UPDATE subscriptions s SET sender=$1, lease_until=now()+$2::interval "
                "FROM unnest($3::text[], $4::text[]) AS x(tenant, id) "
                "WHERE s.tenant=x.tenant AND s.id=x.id",
                self.sender_id,
                self._lease,
                [t for t, _ in taken],
                [i for _, i in taken],
            )
        return sorted(_queued(rows), key=lambda q: q.seq)

    async def delivered(self, tenant: str, sub_id: str, seqs: list[int], at: str) -> None:
        """Drop delivered notifications and count the success."""
        async with self._store.pool.acquire() as conn, conn.transaction():
            # the subscription row first: claim locks it before the rows too
            await conn.execute(
                "UPDATE subscriptions SET times_sent=times_sent+1, last_notification=$1, "
                "last_success=$1, lease_until=CASE WHEN sender=$4 THEN now()+$5::interval "
                "ELSE lease_until END WHERE tenant=$2 AND id=$3",
                at,
                tenant,
                sub_id,
                self.sender_id,
                self._lease,
            )
            # with nothing else of it in hand, let any sender take the subscription next
            await conn.execute(
                "WITH gone AS (DELETE FROM notification_outbox WHERE seq = ANY($3::bigint[])) "
                "UPDATE subscriptions SET sender=NULL, lease_until=NULL "
                "WHERE tenant=$1 AND id=$2 AND sender=$4 AND NOT EXISTS ("
                "SELECT 1 FROM notification_outbox WHERE tenant=$1 AND sub_id=$2 "
                "AND claimed_by=$4 AND seq <> ALL($3::bigint[]))",
                tenant,
                sub_id,
                seqs,
                self.sender_id,
            )

    async def failed(self, tenant: str, sub_id: str, at: str) -> None:
        """Count a failed attempt (the notification stays queued)."""
        await self._store.pool.execute(
            "UPDATE subscriptions SET times_sent=times_sent+1, times_failed=times_failed+1, "
            "last_notification=$1, last_failure=$1, "
            "lease_until=CASE WHEN sender=$4 THEN now()+$5::interval ELSE lease_until END "
            "WHERE tenant=$2 AND id=$3",
            at,
            tenant,
            sub_id,
            self.sender_id,
            self._lease,
        )

    async def enqueue(self, live: Live, payload: Doc, at: str) -> bool:
        """Queue a periodic notification; return False when the subscription stopped meanwhile."""
        current = self.registry.get(live.tenant, live.id)
        if current is None or not current.periodic or not current.active_at(at):
            return False
        async with self._store.pool.acquire() as conn:
            return await self._queue(conn, live.tenant, live.id, payload)

    async def _queue(self, conn: Conn, tenant: str, sub_id: str, payload: Doc) -> bool:
        rows = await conn.fetch(_QUEUE, tenant, sub_id, orjson.dumps(payload).decode())
        return bool(rows)

    # -- matching -----------------------------------------------------------------------------
    async def _hook(self, conn: Conn, change: Change) -> None:
        if self.reload is not None:
            await self._sync(conn)
        subs = self.registry.by_tenant.get(change.tenant)
        if not subs:
            return
        for live in list(subs.values()):
            if not live.live_at(change.at):
                continue
            fired = live.fired(change.old, change.new)
            if fired is None:
                continue
            if (
                change.new is not None
                and (live.q or live.scope_q or live.geo_q)
                and not await self._row_matches(conn, live, change.entity_id)
            ):
                continue
            payload = live.payload(change.old, change.new, fired, change.at)
            await self._queue(conn, change.tenant, live.id, payload)

    async def _row_matches(self, conn: Conn, live: Live, entity_id: str) -> bool:
        key = (live.tenant, live.id)
        cached = self._sql.get(key)
        if cached is None or cached[0] is not live:
            query = EntityQuery(
                q=live.q,
                scope_q=live.scope_q,
                geo=live.geo_q,
                geoproperty=live.geoproperty,
                expand=live.expand,
            )
            where, params = pg_query.where(live.tenant, query)
            sql = pg_query.numbered(f"SELECT 1 FROM entities e WHERE e.id=? AND {where}")
            cached = self._sql[key] = (live, sql, params)
        _, sql, params = cached
        return await conn.fetchval(sql, entity_id, *params) is not None
