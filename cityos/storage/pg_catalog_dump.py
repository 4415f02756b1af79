"""Dump and load the PostgreSQL catalog tables with the sections and columns of CatalogStore.

A dump of either engine loads into the other: booleans travel as SQLite's 0/1, a dataset's
key as `rowid`, a token's owner as `user`, and the search rows as their three text columns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

from cityos.storage.pg_catalog_search import fts_tokens, lexemes
from cityos.storage.pg_index import Conn
from cityos.storage.sqlite import DumpRow

#: section -> (table, dumped columns as SQL over the table, order, the dump's column names)
_SECTIONS: Final = {
    "catalog_group": (
        "catalog_groups",
        "id, name, is_org::int, title, created, state, doc",
        "rid",
        ("id", "name", "is_org", "title", "created", "state", "doc"),
    ),
    "catalog_dataset": (
        "catalog_datasets",
        "rid, id, name, title, title_sort, owner_org, org_name, private::int, state, license_id, "
        "type, metadata_created, metadata_modified, num_resources, num_tags",
        "rid",
        (
            "rowid",
            "id",
            "name",
            "title",
            "title_sort",
            "owner_org",
            "org_name",
            "private",
            "state",
            "license_id",
            "type",
            "metadata_created",
            "metadata_modified",
            "num_resources",
            "num_tags",
        ),
    ),
    "catalog_dataset_doc": ("catalog_dataset_docs", "ds, doc", "ds", ("ds", "doc")),
    "catalog_dataset_tag": ("catalog_dataset_tags", "tag, ds", "ds, tag", ("tag", "ds")),
    "catalog_dataset_group": ("catalog_dataset_groups", "grp, ds", "ds, grp", ("grp", "ds")),
    "catalog_resource": (
        "catalog_resources",
        "id, ds, format",
        # the order SQLite lists them in too: a dump is the same from either engine
        "ds, id",
        ("id", "ds", "format"),
    ),
    "catalog_search": (
        "catalog_fts",
        "ds, title, notes, body",
        "ds",
        ("rowid", "title", "notes", "body"),
    ),
    "catalog_token": (
        "catalog_tokens",
        "hash, prefix, user_name, created, last_used",
        "rid",
        ("hash", "prefix", "user", "created", "last_used"),
    ),
}
SECTIONS: Final = tuple(_SECTIONS)


async def dump_rows(conn: Conn) -> AsyncIterator[tuple[str, DumpRow]]:
    """Yield every catalog row as CatalogStore.dump_rows does (token hashes only)."""
    for section, (table, select, order, names) in _SECTIONS.items():
        for row in await conn.fetch(f"SELECT {select} FROM {table} ORDER BY {order}"):
            yield section, dict(zip(names, row, strict=True))


async def load_rows(conn: Conn, section: str, rows: Sequence[DumpRow]) -> None:
    """Store dumped rows of a section of dump_rows, keeping their keys."""
    if section not in _SECTIONS:
        raise ValueError(f"not a section of the catalog store: {section!r}")
    if section == "catalog_dataset":
        cols = _SECTIONS[section][1].replace("::int", "")
        await conn.executemany(
            f"INSERT INTO catalog_datasets({cols}) OVERRIDING SYSTEM VALUE VALUES "
            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            [_values(r, _SECTIONS[section][3], bools=("private",)) for r in rows],
        )
        # datasets created later must not take a loaded key
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence('catalog_datasets', 'rid'), max(rid)) "
            "FROM catalog_datasets HAVING max(rid) IS NOT NULL"
        )
        return
    if section == "catalog_search":
        await conn.executemany(
            "INSERT INTO catalog_fts(ds, title, notes, body, ntok, lexemes) "
            "VALUES ($1, $2, $3, $4, $5, array_to_tsvector($6::text[]))",
            [_search_values(r) for r in rows],
        )
        return
    table, select, _, names = _SECTIONS[section]
    cols = select.replace("::int", "")
    marks = ", ".join(f"${i}" for i in range(1, len(names) + 1))
    await conn.executemany(
        f"INSERT INTO {table}({cols}) VALUES ({marks})",
        [_values(r, names, bools=("is_org",)) for r in rows],
    )


def _values(row: DumpRow, names: Sequence[str], *, bools: Sequence[str]) -> tuple[Any, ...]:
    return tuple(bool(row[n]) if n in bools else row[n] for n in names)


def _search_values(row: DumpRow) -> tuple[Any, ...]:
    cols = [fts_tokens(str(row[c])) for c in ("title", "notes", "body")]
    return (
        row["rowid"],
        *(" ".join(c) for c in cols),
        sum(len(c) for c in cols),
        lexemes([t for c in cols for t in c]),
    )
