"""The SQLite storage engine: WAL, reads on a thread pool, writes through one writer."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from cityos.broker import clock
from cityos.broker.errors import InternalError, NgsiError
from cityos.broker.model import Doc
from cityos.storage import sqlite_attrindex as attrindex
from cityos.storage import sqlite_geo as geoindex
from cityos.storage.base import (
    MAX_RULE_DEPTH,
    AttributeInfo,
    Change,
    EntityQuery,
    Mutation,
    Outcome,
    QueryResult,
    Rule,
    Storage,
    TypeInfo,
)
from cityos.storage.sqlite_writer import Checkpointer, Writer

#: bumped whenever the schema changes; an older database file is refused with a clear message
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants(name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entities(
    rid INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    doc TEXT NOT NULL,
    type1 TEXT NOT NULL,  -- the first type: most entities have one, checked without a join
    created_at TEXT NOT NULL,
    modified_at TEXT NOT NULL,
    UNIQUE(tenant, id)
);
-- (tenant, rid) order lets "WHERE tenant=? ORDER BY rid LIMIT n" stop after n rows
CREATE INDEX IF NOT EXISTS entities_tenant ON entities(tenant);
CREATE TABLE IF NOT EXISTS entity_types(
    tenant TEXT NOT NULL, type TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY(tenant, type, rid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entity_types_rid ON entity_types(rid);
CREATE TABLE IF NOT EXISTS entity_attrs(
    rid INTEGER NOT NULL, attr TEXT NOT NULL, atype TEXT NOT NULL,
    PRIMARY KEY(rid, attr, atype)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entity_attrs_attr ON entity_attrs(attr, rid);
CREATE TABLE IF NOT EXISTS kv(
    ns TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY(ns, key)
) WITHOUT ROWID;
"""


def content_filters(
    q: Any, scope_q: Any, geo: Any, geoproperty: str, expand: Callable[[str], str]
) -> tuple[list[str], list[Any]]:
    """Compile the q, scopeQ and geo conditions on an entity row ``e`` (queries and
    subscription matching share them)."""
    clauses: list[str] = []
    params: list[Any] = []
    if q is not None:
        sql, p = attrindex.compile_q(q, expand)
        clauses.append(sql)
        params.extend(p)
    if scope_q is not None:
        sql, p = attrindex.compile_scope_q(scope_q)
        clauses.append(sql)
        params.extend(p)
    if geo is not None:
        sql, p = geoindex.compile_geo(geo, geoproperty)
        clauses.append(sql)
        params.extend(p)
    return clauses, params


class SchemaError(RuntimeError):
    """The database file was made by an incompatible version of cityos."""


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    existing = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='entities'"
    ).fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if existing and version != SCHEMA_VERSION:
        raise SchemaError(
            f"{path} was written by a cityos with storage schema {version}; this version "
            f"uses schema {SCHEMA_VERSION}. Export the data with the older cityos or start "
            "with an empty data directory."
        )


def check_schema(path: Path) -> None:
    """Raise SchemaError if an existing database file has another schema version."""
    if not path.exists():
        return
    conn = sqlite3.connect(path)
    try:
        _check_schema(conn, path)
    finally:
        conn.close()


def near_radii(max_distance: float | None, start: float) -> list[float | None]:
    """Return growing search radii (x3 from start) of a near query, ending with maxDistance."""
    if max_distance is None:
        return [None]
    radii: list[float | None] = []
    r = max(start, 10.0)
    while r < max_distance:
        radii.append(r)
        r *= 3
    return [*radii, max_distance]


def _attr_kinds(doc: Doc) -> list[tuple[str, str]]:
    return [(name, inst["type"]) for name, insts in doc.get("attrs", {}).items() for inst in insts]


log = logging.getLogger("cityos.storage")

#: hook(conn, change), run in the writer's transaction (see SqliteStorage.add_change_hook)
ChangeHook = Callable[[sqlite3.Connection, Change], None]


def _dumps(doc: Doc) -> str:
    return orjson.dumps(doc).decode()


def _regexp(pattern: str, value: Any) -> bool:
    if value is None:
        return False
    return _compiled(pattern).search(str(value)) is not None


_regex_cache: dict[str, re.Pattern[str]] = {}


def _compiled(pattern: str) -> re.Pattern[str]:
    rx = _regex_cache.get(pattern)
    if rx is None:
        if len(_regex_cache) > 512:
            _regex_cache.clear()
        rx = _regex_cache[pattern] = re.compile(pattern)
    return rx


class SqliteStorage(Storage):
    ordered_writes = True  # one writer thread takes the writes in the order they come
    """Entities of every tenant in one SQLite file."""

    def __init__(self, path: Path, *, sync: str = "NORMAL", query_threads: int = 2) -> None:
        self.path = path
        self._sync = sync
        self._paths = attrindex.PathIds()  # used by the writer thread only
        self._writer = Writer(
            self._connect_writer,
            on_rollback=self._paths.forget,
            wal_path=path.with_name(path.name + "-wal"),
        )
        self._checkpointer = Checkpointer(self._open)
        self._pool = ThreadPoolExecutor(query_threads, thread_name_prefix="cityos-sqlite-read")
        self._local = threading.local()
        self._inline: sqlite3.Connection | None = None
        self._tenants: set[str] = {""}
        self._change_hooks: list[ChangeHook] = []
        self._rules: list[Rule] = []
        #: (tenant, geoproperty, rows needed rounded up to a power of 2) -> the fraction of
        #: maxDistance that sufficed last time
        self._near_hint: dict[tuple[str, str | None, int], float] = {}

    # -- connections ---------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute(f"PRAGMA synchronous={self._sync}")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA mmap_size=268435456")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.create_function("REGEXP", 2, _regexp, deterministic=True)
        attrindex.register_functions(conn)
        geoindex.register_functions(conn)
        return conn

    def _connect_writer(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._open()
        conn.execute("PRAGMA journal_mode=WAL")
        # Checkpoints (which fsync) run on their own thread, not in the writer's commits.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        try:
            _check_schema(conn, self.path)
        except SchemaError:
            conn.close()
            raise
        conn.executescript(SCHEMA + attrindex.ATTR_INDEX_DDL + geoindex.GEO_DDL)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
        return conn

    async def start(self) -> None:
        self._writer.start()
        self._checkpointer.start()
        self._inline = self._open()
        self._inline.execute("PRAGMA query_only=1")
        rows = self._inline.execute("SELECT name FROM tenants").fetchall()
        self._tenants.update(r[0] for r in rows)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._writer.close)
        await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.close)
        self._pool.shutdown(wait=True)
        if self._inline is not None:
            self._inline.close()

    async def _read(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(self._reader(), *args))

    # -- reads ---------------------------------------------------------------------------
    async def tenant_exists(self, tenant: str) -> bool:
        return tenant in self._tenants

    async def get(self, tenant: str, entity_id: str) -> Doc | None:
        # A point lookup by primary key costs less than a hop to the thread pool.
        assert self._inline is not None
        row = self._inline.execute(
            "SELECT doc FROM entities WHERE tenant=? AND id=?", (tenant, entity_id)
        ).fetchone()
        if row is None:
            return None
        doc: Doc = orjson.loads(row[0])
        return doc

    def _where(self, tenant: str, query: EntityQuery) -> tuple[str, list[Any]]:
        clauses = ["e.tenant=?"]
        params: list[Any] = [tenant]
        if query.ids:
            clauses.append(f"e.id IN ({','.join('?' * len(query.ids))})")
            params.extend(query.ids)
        if query.id_pattern is not None:
            clauses.append("REGEXP(?, e.id)")
            params.append(query.id_pattern)
        if query.types is not None:
            sql, p = attrindex.compile_type_selection(query.types, query.expand)
            clauses.append(sql)
            params.extend(p)
        if query.attrs:
            marks = ",".join("?" * len(query.attrs))
            clauses.append(
                f"EXISTS (SELECT 1 FROM entity_attrs x WHERE x.rid=e.rid AND x.attr IN ({marks}))"
            )
            params.extend(sorted(query.attrs))
        more, more_params = content_filters(
            query.q, query.scope_q, query.geo, query.geoproperty or "", query.expand
        )
        return " AND ".join([*clauses, *more]), [*params, *more_params]

    def _query_sync(self, conn: sqlite3.Connection, tenant: str, query: EntityQuery) -> QueryResult:
        # one read transaction: the count and the page see the same snapshot
        conn.execute("BEGIN")
        try:
            return self._query_snapshot(conn, tenant, query)
        finally:
            conn.execute("COMMIT")

    def _query_snapshot(
        self, conn: sqlite3.Connection, tenant: str, query: EntityQuery
    ) -> QueryResult:
        with geoindex.query_scope(query.geo) as handles:
            count: int | None = None
            if query.count:
                where, params = self._bound(tenant, query, handles)
                sql = f"SELECT count(*) FROM entities e WHERE {where}"
                count = conn.execute(sql, params).fetchone()[0]
            docs: list[Doc] = []
            if query.limit > 0:
                docs = [orjson.loads(t) for t in self._page(conn, tenant, query, handles)]
        return QueryResult(docs, count)

    def _bound(
        self, tenant: str, query: EntityQuery, handles: dict[geoindex.Handle, int]
    ) -> tuple[str, list[Any]]:
        where, params = self._where(tenant, query)
        return where, geoindex.bind(params, handles)

    def _page(
        self,
        conn: sqlite3.Connection,
        tenant: str,
        query: EntityQuery,
        handles: dict[geoindex.Handle, int],
    ) -> list[str]:
        geo = query.geo
        dist = None
        if geo is not None and geo.georel == "near":
            dist = geoindex.compile_distance(geo, query.geoproperty or "")
        if dist is None or geo is None:
            where, params = self._bound(tenant, query, handles)
            return [
                r[0]
                for r in conn.execute(
                    f"SELECT e.doc FROM entities e WHERE {where} ORDER BY e.rid LIMIT ? OFFSET ?",
                    [*params, query.limit, query.offset],
                )
            ]
        # near: nearest first, as map users expect. Ordering every candidate within
        # maxDistance is slow in dense areas, so search growing circles: once a circle
        # holds offset+limit matches, nothing outside it can be nearer.
        need = query.offset + query.limit
        # Start from the fraction of maxDistance that was enough last time for this tenant and
        # page size (or 1/16), so a typical query needs one circle, rarely two.
        hint_key = (tenant, query.geoproperty, 1 << (need - 1).bit_length())
        if len(self._near_hint) > 1024:
            self._near_hint.clear()
        fraction = self._near_hint.get(hint_key, 1 / 16)
        max_d = geo.max_distance
        radii = near_radii(max_d, fraction * max_d if max_d else 0.0)
        for i, radius in enumerate(radii):
            step = replace(query, geo=replace(geo, max_distance=radius)) if radius else query
            with geoindex.query_scope(step.geo) as step_handles:
                where, params = self._bound(tenant, step, step_handles)
                order_params = geoindex.bind(dist[1], step_handles)
                # sort rids only; the documents of the page are read afterwards
                rids = [
                    r[0]
                    for r in conn.execute(
                        f"SELECT e.rid FROM entities e WHERE {where} "
                        f"ORDER BY {dist[0]}, e.rid LIMIT ?",
                        [*params, *order_params, need],
                    )
                ]
            if len(rids) >= need or radius is None or radius == geo.max_distance:
                if radius is not None and max_d:
                    # enough at once: try a smaller circle next time; else start here
                    self._near_hint[hint_key] = radius / max_d / (1.5 if i == 0 else 1.0)
                break
        page = rids[query.offset :]
        if not page:
            return []
        docs = dict(
            conn.execute(
                f"SELECT rid, doc FROM entities WHERE rid IN ({','.join('?' * len(page))})", page
            ).fetchall()
        )
        return [docs[r] for r in page]

    async def query(self, tenant: str, query: EntityQuery) -> QueryResult:
        result: QueryResult = await self._read(self._query_sync, tenant, query)
        return result

    async def types(self, tenant: str) -> list[TypeInfo]:
        def run(conn: sqlite3.Connection) -> list[TypeInfo]:
            counts = conn.execute(
                "SELECT type, count(*) FROM entity_types WHERE tenant=? "
                "GROUP BY type ORDER BY type",
                (tenant,),
            ).fetchall()
            attrs: dict[str, dict[str, set[str]]] = {}
            for t, a, at in conn.execute(
                "SELECT DISTINCT t.type, x.attr, x.atype FROM entity_types t "
                "JOIN entity_attrs x ON x.rid=t.rid WHERE t.tenant=?",
                (tenant,),
            ):
                attrs.setdefault(t, {}).setdefault(a, set()).add(at)
            return [TypeInfo(t, n, attrs.get(t, {})) for t, n in counts]

        result: list[TypeInfo] = await self._read(run)
        return result

    async def attributes(
        self, tenant: str, types: frozenset[str] | None = None
    ) -> list[AttributeInfo]:
        only, only_params = "", []
        if types is not None:
            marks = ",".join("?" * len(types))
            only = (
                f" AND x.rid IN (SELECT rid FROM entity_types WHERE tenant=? AND type IN ({marks}))"
            )
            only_params = [tenant, *sorted(types)]

        def run(conn: sqlite3.Connection) -> list[AttributeInfo]:
            out: dict[str, AttributeInfo] = {}
            for a, n in conn.execute(
                "SELECT x.attr, count(DISTINCT x.rid) FROM entity_attrs x JOIN entities e "
                f"ON e.rid=x.rid WHERE e.tenant=?{only} GROUP BY x.attr ORDER BY x.attr",
                (tenant, *only_params),
            ):
                out[a] = AttributeInfo(a, n, set(), set())
            for a, at, t in conn.execute(
                "SELECT DISTINCT x.attr, x.atype, t.type FROM entity_attrs x "
                f"JOIN entity_types t ON t.rid=x.rid WHERE t.tenant=?{only}",
                (tenant, *only_params),
            ):
                info = out.get(a)
                if info is not None and (types is None or t in types):
                    info.types.add(t)
                    info.attribute_types.add(at)
            return list(out.values())

        result: list[AttributeInfo] = await self._read(run)
        return result

    # -- writes --------------------------------------------------------------------------
    def _store(
        self, conn: sqlite3.Connection, tenant: str, rid: int | None, doc: Doc, old: Doc | None
    ) -> int:
        text = _dumps(doc)
        if rid is None or old is None:
            cur = conn.execute(
                "INSERT INTO entities(tenant, id, doc, type1, created_at, modified_at) "
                "VALUES(?,?,?,?,?,?)",
                (tenant, doc["id"], text, doc["type"][0], doc["createdAt"], doc["modifiedAt"]),
            )
            rid = cur.lastrowid
            assert rid is not None
            self._index_types(conn, tenant, rid, doc["type"])
            conn.executemany(
                "INSERT OR IGNORE INTO entity_attrs(rid, attr, atype) VALUES(?,?,?)",
                [(rid, a, t) for a, t in _attr_kinds(doc)],
            )
            attrindex.insert_index(conn, rid, doc, self._paths)
            geoindex.write_geo(conn, rid, doc)
            return rid
        conn.execute(
            "UPDATE entities SET doc=?, modified_at=? WHERE rid=?", (text, doc["modifiedAt"], rid)
        )
        # Rewrite only what changed: a PATCH of one value touches one index row.
        if old["type"] != doc["type"]:
            conn.execute("UPDATE entities SET type1=? WHERE rid=?", (doc["type"][0], rid))
            conn.execute("DELETE FROM entity_types WHERE rid=?", (rid,))
            self._index_types(conn, tenant, rid, doc["type"])
        old_kinds, new_kinds = set(_attr_kinds(old)), _attr_kinds(doc)
        if old_kinds != set(new_kinds):
            conn.execute("DELETE FROM entity_attrs WHERE rid=?", (rid,))
            conn.executemany(
                "INSERT OR IGNORE INTO entity_attrs(rid, attr, atype) VALUES(?,?,?)",
                [(rid, a, t) for a, t in new_kinds],
            )
        attrindex.update_index(conn, rid, old, doc, self._paths)
        if geoindex.geo_rows(old) != geoindex.geo_rows(doc):
            geoindex.delete_geo(conn, rid)
            geoindex.write_geo(conn, rid, doc)
        return rid

    @staticmethod
    def _index_types(conn: sqlite3.Connection, tenant: str, rid: int, types: list[str]) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO entity_types(tenant, type, rid) VALUES(?,?,?)",
            [(tenant, t, rid) for t in types],
        )

    def _unindex(self, conn: sqlite3.Connection, rid: int) -> None:
        conn.execute("DELETE FROM entity_types WHERE rid=?", (rid,))
        conn.execute("DELETE FROM entity_attrs WHERE rid=?", (rid,))
        attrindex.delete_index(conn, rid)
        geoindex.delete_geo(conn, rid)

    def _delete(self, conn: sqlite3.Connection, rid: int) -> None:
        self._unindex(conn, rid)
        conn.execute("DELETE FROM entities WHERE rid=?", (rid,))

    def _mutate(
        self, conn: sqlite3.Connection, tenant: str, m: Mutation, depth: int = 0
    ) -> Outcome:
        """Apply one mutation (run by the writer, inside the job's savepoint)."""
        if tenant not in self._tenants:
            conn.execute("INSERT OR IGNORE INTO tenants(name) VALUES(?)", (tenant,))
        row = conn.execute(
            "SELECT rid, doc FROM entities WHERE tenant=? AND id=?", (tenant, m.entity_id)
        ).fetchone()
        current = orjson.loads(row[1]) if row else None
        new = m.fn(current)
        derived: list[Mutation] = []
        if new is not None:
            for rule in self._rules:
                new, more = rule(current, new)
                derived += more
        if new is None:
            if row is not None:
                self._delete(conn, row[0])
                self._changed(conn, Change(tenant, m.entity_id, current, None, clock.now()))
            return Outcome(m.entity_id, deleted=row is not None)
        self._store(conn, tenant, row[0] if row else None, new, current)
        self._changed(conn, Change(tenant, m.entity_id, current, new, new["modifiedAt"]))
        if derived:
            if depth >= MAX_RULE_DEPTH:
                raise InternalError(f"derivation rules nest deeper than {MAX_RULE_DEPTH} levels")
            for follow in derived:
                # in the same savepoint: the entity and what derives from it commit together
                self._mutate(conn, tenant, follow, depth + 1)
        return Outcome(m.entity_id, created=row is None, doc=new)

    def _changed(self, conn: sqlite3.Connection, change: Change) -> None:
        for hook in self._change_hooks:
            hook(conn, change)

    def add_rule(self, rule: Rule) -> None:
        """Run rule(old, new) on every entity write before it is stored (see base.Rule)."""
        self._rules.append(rule)

    def add_change_hook(self, hook: ChangeHook) -> None:
        """Run hook(conn, change) in the writer's transaction after every entity change.

        A hook writes what must be atomic with the change (history rows, a notification
        outbox); if it raises, the change is rolled back with it.
        """
        self._change_hooks.append(hook)

    async def write(self, job: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run job(conn) on the writer, in its own savepoint; return its result once committed."""
        return await self._writer.submit(job)

    async def read(self, job: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run job(conn) on a reader connection, in one read snapshot."""

        def snapshot(conn: sqlite3.Connection) -> Any:
            conn.execute("BEGIN")
            try:
                return job(conn)
            finally:
                conn.execute("COMMIT")

        return await self._read(snapshot)

    async def apply(self, tenant: str, mutations: Sequence[Mutation]) -> list[Outcome]:
        # One job per mutation, all queued at once: they share group commits, and each
        # runs in its own savepoint, so a failing one leaves the others and no trace.
        futures = [
            self._writer.enqueue(functools.partial(self._mutate, tenant=tenant, m=m))
            for m in mutations
        ]
        outcomes: list[Outcome] = []
        for m, fut in zip(mutations, futures, strict=True):
            try:
                outcomes.append(await fut)
            except NgsiError as exc:
                outcomes.append(Outcome(m.entity_id, error=exc))
            except (sqlite3.Error, ValueError, TypeError, KeyError) as exc:
                log.exception("write of %s failed", m.entity_id)
                outcomes.append(Outcome(m.entity_id, error=InternalError(f"storage error: {exc}")))
        if any(o.ok for o in outcomes):
            self._tenants.add(tenant)
        return outcomes

    async def purge(self, tenant: str, query: EntityQuery) -> int:
        def run(conn: sqlite3.Connection) -> int:
            where, params = self._where(tenant, query)
            with geoindex.query_scope(query.geo) as geo_params:
                params = geoindex.bind(params, geo_params)
                # documents are read only when a hook wants to see what was deleted
                doc = "e.doc" if self._change_hooks else "NULL"
                rows = conn.execute(
                    f"SELECT e.rid, e.id, {doc} FROM entities e WHERE {where}", params
                ).fetchall()
            now = clock.now()
            for rid, entity_id, text in rows:
                self._delete(conn, rid)
                if self._change_hooks:
                    self._changed(conn, Change(tenant, entity_id, orjson.loads(text), None, now))
            return len(rows)

        n: int = await self._writer.submit(run)
        return n

    # -- small blobs -----------------------------------------------------------------------
    async def kv_get(self, namespace: str, key: str) -> bytes | None:
        assert self._inline is not None
        row = self._inline.execute(
            "SELECT value FROM kv WHERE ns=? AND key=?", (namespace, key)
        ).fetchone()
        return bytes(row[0]) if row else None

    async def kv_put(self, namespace: str, key: str, value: bytes) -> None:
        await self._writer.submit(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO kv(ns, key, value) VALUES(?,?,?)", (namespace, key, value)
            )
        )

    async def kv_delete(self, namespace: str, key: str) -> bool:
        n: int = await self._writer.submit(
            lambda c: c.execute("DELETE FROM kv WHERE ns=? AND key=?", (namespace, key)).rowcount
        )
        return n > 0

    async def kv_list(self, namespace: str) -> list[tuple[str, bytes]]:
        assert self._inline is not None
        rows = self._inline.execute(
            "SELECT key, value FROM kv WHERE ns=? ORDER BY key", (namespace,)
        ).fetchall()
        return [(k, bytes(v)) for k, v in rows]

    # -- dumps ---------------------------------------------------------------------------------
    @staticmethod
    def dump_rows(conn: sqlite3.Connection) -> Iterator[tuple[str, DumpRow]]:
        """Yield the tenants, the entities (stored documents, in rid order) and the kv blobs."""
        yield from dump_tables(conn, (("tenant", "tenants", "name", False),))
        # the indexes are rebuilt from the documents on load
        for tenant, doc in conn.execute("SELECT tenant, doc FROM entities ORDER BY rid"):
            yield "entity", {"tenant": tenant, "doc": orjson.loads(doc)}
        yield from dump_tables(conn, (("kv", "kv", "ns, key", False),))

    def load_rows(self, conn: sqlite3.Connection, section: str, rows: Sequence[DumpRow]) -> None:
        """Store dumped rows of a section of dump_rows (entities indexed, no hooks run)."""
        if section != "entity":
            load_tables(
                conn, (("tenant", "tenants", "", False), ("kv", "kv", "", False)), section, rows
            )
            return
        for row in rows:
            self._store(conn, row["tenant"], None, row["doc"], None)


# -- dumps (cityos export / import-dump) ------------------------------------------------------
#: what a store dumps of one table: (dump section, table, ORDER BY, rowid too?)
DumpTable = tuple[str, str, str, bool]
#: a dumped row: column name -> value
DumpRow = dict[str, Any]


def open_snapshot(path: Path) -> sqlite3.Connection:
    """Open a read-only connection already inside one read transaction (a snapshot)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA query_only=1")
    conn.execute("BEGIN")
    # the snapshot starts at the first read, not at BEGIN
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return conn


def _tables(conn: sqlite3.Connection) -> frozenset[str]:
    return frozenset(r[0] for r in conn.execute("SELECT name FROM sqlite_master"))


def dump_tables(
    conn: sqlite3.Connection, tables: Sequence[DumpTable]
) -> Iterator[tuple[str, DumpRow]]:
    """Yield (section, row) for every row of tables, in their order; absent tables are empty."""
    present = _tables(conn)
    for section, table, order, with_rowid in tables:
        if table not in present:
            continue
        cur = conn.execute(
            f"SELECT {'rowid AS rowid, ' if with_rowid else ''}* FROM {table} ORDER BY {order}"
        )
        names = [d[0] for d in cur.description]
        for row in cur:
            yield section, dict(zip(names, row, strict=True))


def load_tables(
    conn: sqlite3.Connection, tables: Sequence[DumpTable], section: str, rows: Sequence[DumpRow]
) -> None:
    """Insert dumped rows of section into its table, keeping their keys."""
    table = next(t[1] for t in tables if t[0] == section)
    for row in rows:
        cols = ", ".join(row)
        # OR REPLACE: setup() seeds some one-row tables (audit_head) that the dump overwrites
        conn.execute(
            f"INSERT OR REPLACE INTO {table}({cols}) VALUES ({','.join('?' * len(row))})",
            list(row.values()),
        )


def dump_sequences(conn: sqlite3.Connection) -> Iterator[DumpRow]:
    """Yield the AUTOINCREMENT counters, so ids of deleted rows stay unused after a load."""
    if "sqlite_sequence" in _tables(conn):
        for name, seq in conn.execute("SELECT name, seq FROM sqlite_sequence ORDER BY name"):
            yield {"table": name, "seq": seq}


def load_sequence(conn: sqlite3.Connection, table: str, seq: int) -> None:
    """Raise the AUTOINCREMENT counter of table to seq."""
    if conn.execute(
        "UPDATE sqlite_sequence SET seq=max(seq, ?) WHERE name=?", (seq, table)
    ).rowcount:
        return
    conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES (?, ?)", (table, seq))
