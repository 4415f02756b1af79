"""Dump and load the PostgreSQL entity store with the sections and rows of SqliteStorage.

Sections ``tenant`` ({"name"}), ``entity`` ({"tenant", "doc"}, in rid order) and ``kv``
({"ns", "key", "value"}), and the ``sequence`` records ({"table", "seq"}) that keep ids of
deleted rows unused. The indexes (attribute kinds, values, geometries) are not dumped: they are
rebuilt from each document on load, as on SQLite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Final

import orjson

from cityos.storage import pg_index
from cityos.storage.pg_index import Conn
from cityos.storage.sqlite import DumpRow

#: the sections of dump_rows, in dump order
SECTIONS: Final = ("tenant", "entity", "kv")
#: the SQLite AUTOINCREMENT tables (dump_sequences' "table") -> their PostgreSQL sequence
SEQUENCES: Final = {
    "attr_history": "'attr_history_iid_seq'",
    "notification_outbox": "pg_get_serial_sequence('notification_outbox', 'seq')",
}
#: rows fetched at a time from a cursor: the entity table may be large
_PAGE: Final = 1000


async def dump_rows(conn: Conn) -> AsyncIterator[tuple[str, DumpRow]]:
    """Yield the tenants, the entities (documents, in rid order) and the kv blobs.

    conn must be in a transaction (the cursors need one).
    """
    for (name,) in await conn.fetch("SELECT name FROM tenants ORDER BY name"):
        yield "tenant", {"name": name}
    async for tenant, doc in conn.cursor(
        "SELECT tenant, doc FROM entities ORDER BY rid", prefetch=_PAGE
    ):
        yield "entity", {"tenant": tenant, "doc": orjson.loads(doc)}
    async for ns, key, value in conn.cursor(
        "SELECT ns, key, value FROM kv ORDER BY ns, key", prefetch=_PAGE
    ):
        yield "kv", {"ns": ns, "key": key, "value": bytes(value)}


async def load_rows(
    conn: Conn, section: str, rows: Sequence[DumpRow], paths: pg_index.PathIds
) -> None:
    """Store dumped rows of a section of dump_rows; entities get new rids, in dump order, and
    their indexes (no change hooks run: the history and outbox come from their own sections)."""
    if section == "tenant":
        await conn.executemany(
            "INSERT INTO tenants(name) VALUES($1) ON CONFLICT DO NOTHING",
            [(r["name"],) for r in rows],
        )
    elif section == "kv":
        await conn.executemany(
            "INSERT INTO kv(ns, key, value) VALUES($1, $2, $3) "
            "ON CONFLICT (ns, key) DO UPDATE SET value=EXCLUDED.value",
            [(r["ns"], r["key"], r["value"]) for r in rows],
        )
    elif section == "entity":
        await _load_entities(conn, rows, paths)
    else:
        raise ValueError(f"not a section of the entity store: {section!r}")


async def _load_entities(conn: Conn, rows: Sequence[DumpRow], paths: pg_index.PathIds) -> None:
    # rids taken from the identity up front, ascending, so that rid order is dump order
    rids: list[int] = sorted(
        r[0]
        for r in await conn.fetch(
            "SELECT nextval(pg_get_serial_sequence('entities', 'rid')) FROM generate_series(1, $1)",
            len(rows),
        )
    )
    docs = [r["doc"] for r in rows]
    for doc in docs:
        if not isinstance(doc, dict) or not isinstance(doc.get("type"), list):
            raise ValueError(f"an entity record holds no entity document: {str(doc)[:80]}")
    tenants = [r["tenant"] for r in rows]
    await conn.executemany(
        "INSERT INTO entities(rid, tenant, id, doc, types, created_at, modified_at) "
        "OVERRIDING SYSTEM VALUE VALUES($1, $2, $3, $4, $5, $6, $7)",
        [
            (
                rid,
                tenant,
                doc["id"],
                orjson.dumps(doc).decode(),
                doc["type"],
                doc["createdAt"],
                doc["modifiedAt"],
            )
            for rid, tenant, doc in zip(rids, tenants, docs, strict=True)
        ],
    )
    pending: dict[str, int] = {}
    await pg_index.insert_many(conn, list(zip(rids, docs, strict=True)), paths, pending)
    paths.commit(pending)


async def dump_sequences(conn: Conn) -> AsyncIterator[DumpRow]:
    """Yield the id counters dump_sequences yields on SQLite (those ever used), by table."""
    for table, seq in sorted(SEQUENCES.items()):
        last = await conn.fetchval(f"SELECT pg_sequence_last_value({seq}::regclass)")
        if last is not None:
            yield {"table": table, "seq": int(last)}


async def load_sequence(conn: Conn, table: str, seq: int) -> None:
    """Raise the id counter of table (a SQLite AUTOINCREMENT table's name) to seq."""
    if table not in SEQUENCES:
        raise ValueError(f"the dump has the id counter of an unknown table: {table!r}")
    name = SEQUENCES[table]
    await conn.execute(
        f"SELECT setval({name}::regclass, "
        f"greatest($1::bigint, pg_sequence_last_value({name}::regclass), 1))",
        seq,
    )
