"""Dump and load the PostgreSQL history with the sections and rows of SqliteHistory.

Sections ``history_entity`` ({"hid", "tenant", "eid"}, by hid), ``history_type``
({"tenant", "type", "hid"}, in the order written) and ``history_instance`` (every column of
``attr_history``, by iid; ``inst`` as its JSON text). Times are integer microseconds on both
engines, so rows travel unchanged; monthly partitions are made for the instants loaded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

from cityos.storage import pg_history_partitions as partitions
from cityos.storage.pg_index import Conn
from cityos.storage.sqlite import DumpRow

#: the sections of dump_rows, in dump order
SECTIONS: Final = ("history_entity", "history_type", "history_instance")
#: the columns of a history_instance record, as SQLite's attr_history has them
INSTANCE_COLUMNS: Final = (
    "iid", "hid", "attr", "ds", "t_obs", "t_cre", "t_mod", "num", "val", "inst",
)  # fmt: skip
_PAGE: Final = 1000
_DUMPS: Final = (
    ("history_entity", "SELECT hid, tenant, eid FROM history_entities ORDER BY hid"),
    ("history_type", "SELECT tenant, type, hid FROM history_types ORDER BY pos"),
    (
        "history_instance",
        f"SELECT {', '.join(INSTANCE_COLUMNS)} FROM attr_history ORDER BY iid",
    ),
)


async def dump_rows(conn: Conn) -> AsyncIterator[tuple[str, DumpRow]]:
    """Yield the history: entities, their types, every attribute instance (conn in a
    transaction: the cursors need one)."""
    for section, sql in _DUMPS:
        async for row in conn.cursor(sql, prefetch=_PAGE):
            yield section, dict(row.items())


def _instance(r: DumpRow) -> tuple[Any, ...]:
    num = r["num"]
    return (
        *(r[c] for c in INSTANCE_COLUMNS[:7]),
        None if num is None else float(num),
        r["val"],
        r["inst"],
    )


async def load_rows(conn: Conn, section: str, rows: Sequence[DumpRow]) -> None:
    """Store dumped rows of a section of dump_rows, keeping hid and iid."""
    if section == "history_entity":
        await conn.executemany(
            "INSERT INTO history_entities(hid, tenant, eid) OVERRIDING SYSTEM VALUE "
            "VALUES($1, $2, $3)",
            [(r["hid"], r["tenant"], r["eid"]) for r in rows],
        )
        # entities recorded after the load must not take a loaded hid
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence('history_entities', 'hid'), max(hid)) "
            "FROM history_entities HAVING count(*) > 0"
        )
    elif section == "history_type":
        # one at a time, in order: pos numbers them as they were written
        await conn.executemany(
            "INSERT INTO history_types(tenant, type, hid) VALUES($1, $2, $3)",
            [(r["tenant"], r["type"], r["hid"]) for r in rows],
        )
    elif section == "history_instance":
        values = [_instance(r) for r in rows]
        await partitions.ensure(conn, (int(v[4]) for v in values))
        await conn.executemany(
            f"INSERT INTO attr_history({', '.join(INSTANCE_COLUMNS)}) "
            "VALUES($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            values,
        )
        # instanceIds given after the load stay above the loaded ones
        await conn.execute(
            "SELECT setval('attr_history_iid_seq', greatest(max(iid), "
            "pg_sequence_last_value('attr_history_iid_seq'::regclass))) "
            "FROM attr_history HAVING count(*) > 0"
        )
    else:
        raise ValueError(f"not a section of the history: {section!r}")
