"""SQLite tables of the open data catalog, in the broker's file.

A dataset is stored as its CKAN dict (JSON) plus the columns searched, sorted and faceted on;
tags, groups and resource formats live in join tables so facets are GROUP BY queries, and a
full-text index (FTS5) holds pre-tokenized text (cityos/catalog/text.py: CJK bigrams, words),
so package_search never loads every dataset into Python. Its results are cached until the
next change to datasets or groups (a generation counter kept by triggers, so writes of
other processes count too); on a miss, the count and facets come from bitsets in memory
(sqlite_catalog_facets.py) of the same generation. API tokens are stored as sha256.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from cityos.catalog.search import All, And, Clause, Equals, Match, Not, Query, Range
from cityos.catalog.text import is_cjk, normalize
from cityos.storage.sqlite import DumpRow, DumpTable, SqliteStorage, dump_tables, load_tables
from cityos.storage.sqlite_catalog_facets import (
    FACET_MEMORY,
    FacetIndex,
    FacetIndexHolder,
    bits_of,
)

DDL: Final = (
    # organizations and groups share one table and one name space, as in CKAN
    """CREATE TABLE IF NOT EXISTS catalog_groups(
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL UNIQUE,
        is_org INTEGER NOT NULL,
        title TEXT NOT NULL,
        created TEXT NOT NULL,
        state TEXT NOT NULL,
        doc TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS catalog_datasets(
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL UNIQUE,
        title TEXT NOT NULL,
        title_sort TEXT NOT NULL,
        owner_org TEXT,
        org_name TEXT,
        private INTEGER NOT NULL,
        state TEXT NOT NULL,
        license_id TEXT,
        type TEXT NOT NULL,
        metadata_created TEXT NOT NULL,
        metadata_modified TEXT NOT NULL,
        num_resources INTEGER NOT NULL,
        num_tags INTEGER NOT NULL
    )""",
    # the CKAN dict apart from the columns: searches and facets scan narrow rows
    """CREATE TABLE IF NOT EXISTS catalog_dataset_docs(
        ds INTEGER PRIMARY KEY, doc TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS catalog_datasets_list ON catalog_datasets(state, private, name)",
    # the default order (newest first) of the visible datasets, read in index order
    "CREATE INDEX IF NOT EXISTS catalog_datasets_modified "
    "ON catalog_datasets(state, private, metadata_modified)",
    "CREATE INDEX IF NOT EXISTS catalog_datasets_org ON catalog_datasets(owner_org)",
    """CREATE TABLE IF NOT EXISTS catalog_dataset_tags(
        tag TEXT NOT NULL, ds INTEGER NOT NULL, PRIMARY KEY(tag, ds)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS catalog_dataset_tags_ds ON catalog_dataset_tags(ds)",
    """CREATE TABLE IF NOT EXISTS catalog_dataset_groups(
        grp TEXT NOT NULL, ds INTEGER NOT NULL, PRIMARY KEY(grp, ds)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS catalog_dataset_groups_ds ON catalog_dataset_groups(ds)",
    """CREATE TABLE IF NOT EXISTS catalog_resources(
        id TEXT PRIMARY KEY, ds INTEGER NOT NULL, format TEXT NOT NULL
    )""",
    # covering: the res_format facet reads formats by dataset without touching the rows
    "DROP INDEX IF EXISTS catalog_resources_ds",
    "CREATE INDEX IF NOT EXISTS catalog_resources_ds_format ON catalog_resources(ds, format)",
    "CREATE INDEX IF NOT EXISTS catalog_resources_format ON catalog_resources(format, ds)",
    # the text is already tokenized (space-separated); 'ascii' keeps non-ASCII tokens whole
    """CREATE VIRTUAL TABLE IF NOT EXISTS catalog_fts USING fts5(
        title, notes, body, tokenize='ascii'
    )""",
    # bumped by every change to datasets or groups (from any process): search results
    # cached under one generation are exactly what a search would find while it lasts
    "CREATE TABLE IF NOT EXISTS catalog_generation(n INTEGER NOT NULL)",
    "INSERT INTO catalog_generation(n) "
    "SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM catalog_generation)",
    *(
        f"CREATE TRIGGER IF NOT EXISTS {table}_{op.lower()}_gen AFTER {op} ON {table} "
        "BEGIN UPDATE catalog_generation SET n = n + 1; END"
        for table in ("catalog_datasets", "catalog_groups")
        for op in ("INSERT", "UPDATE", "DELETE")
    ),
    """CREATE TABLE IF NOT EXISTS catalog_tokens(
        hash TEXT PRIMARY KEY,
        prefix TEXT NOT NULL,
        user TEXT NOT NULL,
        created TEXT NOT NULL,
        last_used TEXT
    )""",
)
TOKEN_PREFIX_LEN: Final = 14
#: last_used is written at most once a minute per token
_TOUCH_EVERY: Final = 60.0


def now_iso() -> str:
    """Return the UTC time as CKAN writes it: ISO, microseconds, no zone."""
    return datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(slots=True)
class DatasetRow:
    """A dataset as stored: its CKAN dict and what is indexed about it."""

    doc: dict[str, Any]
    org_name: str | None
    tags: list[str]
    groups: list[str]
    #: (resource id, format)
    resources: list[tuple[str, str]]
    #: tokenized title, notes and the rest of the searchable text
    fts: tuple[str, str, str]


@dataclass(slots=True)
class SearchResult:
    count: int
    docs: list[dict[str, Any]]
    facets: dict[str, list[tuple[str, int]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    prefix: str
    user: str
    created: str
    last_used: str | None


def _doc_field(name: str) -> str:
    # fields kept only in the CKAN dict, in the side table the narrow rows point at
    return (
        f"(SELECT json_extract(x.doc, '$.{name}') FROM catalog_dataset_docs x WHERE x.ds = d.rowid)"
    )


_COLUMNS: Final = {
    "id": "d.id",
    "name": "d.name",
    "state": "d.state",
    "license_id": "d.license_id",
    "type": "d.type",
    "organization": "d.org_name",
    "owner_org": "d.owner_org",
    "author": _doc_field("author"),
    "maintainer": _doc_field("maintainer"),
    "version": _doc_field("version"),
}
_JOINS: Final = {
    "tags": ("catalog_dataset_tags", "tag", ""),
    "groups": ("catalog_dataset_groups", "grp", ""),
    "res_format": ("catalog_resources", "format", " COLLATE NOCASE"),
}
_SORTS: Final = {
    "name": "d.name",
    "title": "d.title_sort",
    "metadata_modified": "d.metadata_modified",
    "metadata_created": "d.metadata_created",
    "num_resources": "d.num_resources",
    "num_tags": "d.num_tags",
}
_FACET_COLUMNS: Final = {
    "organization": "d.org_name",
    "license_id": "d.license_id",
    "type": "d.type",
    "state": "d.state",
    "private": "CASE d.private WHEN 1 THEN 'true' ELSE 'false' END",
}


def _fts_phrase(m: Match) -> str:
    phrase = '"' + " ".join(t.replace('"', '""') for t in m.tokens) + '"'
    return f"{m.column} : {phrase}" if m.column else phrase


def _is_fallback(m: Match) -> bool:
    """A lone CJK character is inside bigram tokens, not one itself: scan instead."""
    return len(m.tokens) == 1 and len(m.tokens[0]) == 1 and is_cjk(m.tokens[0])


def _compile(clause: Clause, args: list[Any]) -> str:
    """Return an SQL condition on the dataset row `d` for a parsed clause."""
    if isinstance(clause, All):
        return "1"
    if isinstance(clause, Match):
        if _is_fallback(clause):
            col = clause.column or "title || ' ' || notes || ' ' || body"
            args.append(clause.tokens[0])
            return f"d.rowid IN (SELECT rowid FROM catalog_fts WHERE instr({col}, ?) > 0)"
        args.append(_fts_phrase(clause))
        return "d.rowid IN (SELECT rowid FROM catalog_fts WHERE catalog_fts MATCH ?)"
    if isinstance(clause, Equals):
        return _compile_equals(clause, args)
    if isinstance(clause, Range):
        col = f"d.{clause.field}"
        parts = []
        if clause.lo is not None:
            parts.append(f"{col} >= ?")
            args.append(clause.lo)
        if clause.hi is not None:
            parts.append(f"{col} <= ?")
            args.append(clause.hi)
        return " AND ".join(parts) or "1"
    if isinstance(clause, Not):
        return f"NOT ({_compile(clause.clause, args)})"
    if isinstance(clause, And):
        return "(" + " AND ".join(_compile(c, args) for c in clause.clauses) + ")"
    return "(" + " OR ".join(_compile(c, args) for c in clause.clauses) + ")"


def _compile_equals(clause: Equals, args: list[Any]) -> str:
    if clause.field == "private":
        if clause.value == "*":
            return "1"
        return "d.private = 1" if clause.value == "true" else "d.private = 0"
    prefix = clause.value.endswith("*") and len(clause.value) > 1
    if prefix:  # name:sano-* matches names starting with sano-
        args.append(clause.value[:-1])
    elif clause.value != "*":
        args.append(clause.value)
    if clause.field in _JOINS:
        table, col, collate = _JOINS[clause.field]
        if clause.value == "*":
            return f"d.rowid IN (SELECT ds FROM {table})"
        if prefix:
            test = f"substr({col}, 1, {len(clause.value) - 1}) = ?{collate}"
        else:
            test = f"{col} = ?{collate}"
        return f"d.rowid IN (SELECT ds FROM {table} WHERE {test})"
    col = _COLUMNS[clause.field]
    if clause.value == "*":
        return f"coalesce({col}, '') != ''"
    if prefix:
        return f"substr({col}, 1, {len(clause.value) - 1}) = ?"
    return f"{col} = ?"


def _conjuncts(clause: Clause) -> list[Clause]:
    if isinstance(clause, And):
        return [c for part in clause.clauses for c in _conjuncts(part)]
    return [clause]


def _split_rank(clause: Clause) -> tuple[str | None, Clause]:
    """Split the required text terms off a clause: their FTS expression ranks (score).

    Return the expression (None without such terms) and the clause left to filter by.
    """
    parts = _conjuncts(clause)
    ranked = [c for c in parts if isinstance(c, Match) and not _is_fallback(c)]
    if not ranked:
        return None, clause
    rest = [c for c in parts if not (isinstance(c, Match) and not _is_fallback(c))]
    expr = " AND ".join(_fts_phrase(c) for c in ranked)
    return expr, (And(tuple(rest)) if rest else All())


class CatalogStore:
    """Datasets, resources, organizations, groups, tags and API tokens in the broker's file."""

    def __init__(self, store: SqliteStorage, *, facet_memory: int = FACET_MEMORY) -> None:
        self._store = store
        self._touched: dict[str, float] = {}
        self._results = _ResultCache()
        self._facets = FacetIndexHolder(facet_memory)

    @property
    def facet_index(self) -> FacetIndex | None:
        """Return the facet index last built (None before the first)."""
        return self._facets.current

    #: (dump section, table, order, rowid too?) of what `cityos export` keeps
    DUMP_TABLES: Final[tuple[DumpTable, ...]] = (
        ("catalog_group", "catalog_groups", "rowid", False),
        ("catalog_dataset", "catalog_datasets", "rowid", True),
        ("catalog_dataset_doc", "catalog_dataset_docs", "ds", False),
        ("catalog_dataset_tag", "catalog_dataset_tags", "ds, tag", False),
        ("catalog_dataset_group", "catalog_dataset_groups", "ds, grp", False),
        ("catalog_resource", "catalog_resources", "ds, id", False),  # as PostgreSQL lists them
        ("catalog_search", "catalog_fts", "rowid", True),
        ("catalog_token", "catalog_tokens", "rowid", False),
    )

    @staticmethod
    def dump_rows(conn: sqlite3.Connection) -> Iterator[tuple[str, DumpRow]]:
        """Yield the organizations, groups, datasets with their search rows, the token hashes."""
        return dump_tables(conn, CatalogStore.DUMP_TABLES)

    @staticmethod
    def load_rows(conn: sqlite3.Connection, section: str, rows: Sequence[DumpRow]) -> None:
        """Store dumped rows of a section of dump_rows, keeping their keys."""
        load_tables(conn, CatalogStore.DUMP_TABLES, section, rows)

    async def setup(self) -> None:
        """Create the tables if needed."""

        def run(conn: sqlite3.Connection) -> None:
            for stmt in DDL:
                conn.execute(stmt)

        await self._store.write(run)

    # -- tokens -------------------------------------------------------------------------------

    async def create_token(self, user: str) -> str:
        """Make a new token for user; return it (only its sha256 is stored)."""
        token = "cityos_" + secrets.token_urlsafe(32)

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO catalog_tokens(hash, prefix, user, created) VALUES (?, ?, ?, ?)",
                (_hash(token), token[:TOKEN_PREFIX_LEN], user, now_iso()),
            )

        await self._store.write(run)
        return token

    async def list_tokens(self) -> list[TokenInfo]:
        """Return every token's prefix, user and times, oldest first."""

        def run(conn: sqlite3.Connection) -> list[TokenInfo]:
            rows = conn.execute(
                "SELECT prefix, user, created, last_used FROM catalog_tokens ORDER BY created"
            ).fetchall()
            return [TokenInfo(*r) for r in rows]

        result: list[TokenInfo] = await self._store.read(run)
        return result

    async def revoke_tokens(self, prefix: str) -> list[TokenInfo]:
        """Delete the tokens whose prefix starts with `prefix` if exactly one does; return them."""

        def run(conn: sqlite3.Connection) -> list[TokenInfo]:
            rows = conn.execute(
                "SELECT prefix, user, created, last_used FROM catalog_tokens "
                "WHERE substr(prefix, 1, ?) = ?",
                (len(prefix), prefix),
            ).fetchall()
            if len(rows) == 1:
                conn.execute(
                    "DELETE FROM catalog_tokens WHERE substr(prefix, 1, ?) = ?",
                    (len(prefix), prefix),
                )
            return [TokenInfo(*r) for r in rows]

        if not prefix:
            return []
        result: list[TokenInfo] = await self._store.write(run)
        return result

    async def user_for_token(self, token: str) -> str | None:
        """Return the user of an API token, or None."""
        digest = _hash(token)

        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT user FROM catalog_tokens WHERE hash = ?", (digest,)
            ).fetchone()
            return None if row is None else str(row[0])

        user: str | None = await self._store.read(run)
        if user is not None:
            await self._touch(digest)
        return user

    async def _touch(self, digest: str) -> None:
        import time

        now = time.monotonic()
        if now - self._touched.get(digest, -_TOUCH_EVERY) < _TOUCH_EVERY:
            return
        self._touched[digest] = now
        stamp = now_iso()

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE catalog_tokens SET last_used = ? WHERE hash = ?", (stamp, digest))

        await self._store.write(run)

    # -- organizations and groups ---------------------------------------------------------------

    async def save_group(self, doc: dict[str, Any], *, is_org: bool) -> bool:
        """Insert or replace a group/organization by id; False if its name is taken."""

        def run(conn: sqlite3.Connection) -> bool:
            taken = conn.execute(
                "SELECT 1 FROM catalog_groups WHERE name = ? AND id != ?", (doc["name"], doc["id"])
            ).fetchone()
            if taken:
                return False
            conn.execute(
                "INSERT INTO catalog_groups(id, name, is_org, title, created, state, doc) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET name=excluded.name, "
                "title=excluded.title, state=excluded.state, doc=excluded.doc",
                (
                    doc["id"],
                    doc["name"],
                    int(is_org),
                    doc.get("title") or "",
                    doc["created"],
                    doc.get("state", "active"),
                    orjson.dumps(doc).decode(),
                ),
            )
            return True

        ok: bool = await self._store.write(run)
        return ok

    async def get_group(self, id_or_name: str, *, is_org: bool) -> dict[str, Any] | None:
        """Return a group/organization's dict with its package_count, or None."""

        def run(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                "SELECT doc FROM catalog_groups WHERE (id = ? OR name = ?) AND is_org = ?",
                (id_or_name, id_or_name, int(is_org)),
            ).fetchone()
            if row is None:
                return None
            doc: dict[str, Any] = orjson.loads(row[0])
            doc["package_count"] = _package_count(conn, doc, is_org)
            return doc

        result: dict[str, Any] | None = await self._store.read(run)
        return result

    async def list_groups(
        self, *, is_org: bool, sort: str, desc: bool, limit: int, offset: int, names: list[str]
    ) -> list[dict[str, Any]]:
        """Return active groups/organizations with package_count, sorted and paged."""
        order = {"name": "name", "title": "title COLLATE NOCASE", "package_count": "n"}[sort]
        direction = "DESC" if desc else "ASC"

        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            filt = ""
            args: list[Any] = [int(is_org)]
            if names:
                filt = f" AND name IN ({','.join('?' * len(names))})"
                args.extend(names)
            ds_col = (
                "d.owner_org = g.id"
                if is_org
                else ("d.rowid IN (SELECT ds FROM catalog_dataset_groups WHERE grp = g.name)")
            )
            rows = conn.execute(
                f"SELECT g.doc, (SELECT count(*) FROM catalog_datasets d WHERE {ds_col} "
                "AND d.state = 'active' AND d.private = 0) AS n "
                f"FROM catalog_groups g WHERE is_org = ? AND state = 'active'{filt} "
                f"ORDER BY {order} {direction}, name LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
            out = []
            for doc_text, n in rows:
                doc = orjson.loads(doc_text)
                doc["package_count"] = n
                out.append(doc)
            return out

        result: list[dict[str, Any]] = await self._store.read(run)
        return result

    async def group_titles(self, names: list[str], *, is_org: bool) -> dict[str, str]:
        """Return the titles (the name when empty) of active groups/organizations by name."""

        def run(conn: sqlite3.Connection) -> dict[str, str]:
            rows = conn.execute(
                f"SELECT name, title FROM catalog_groups WHERE is_org = ? AND state = 'active' "
                f"AND name IN ({','.join('?' * len(names))})",
                [int(is_org), *names],
            ).fetchall()
            return {name: title or name for name, title in rows}

        if not names:
            return {}
        result: dict[str, str] = await self._store.read(run)
        return result

    # -- datasets -------------------------------------------------------------------------------

    async def get_dataset(self, id_or_name: str) -> dict[str, Any] | None:
        """Return a dataset's stored dict by id or name, or None."""

        def run(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                "SELECT x.doc FROM catalog_datasets d JOIN catalog_dataset_docs x "
                "ON x.ds = d.rowid WHERE d.id = ? OR d.name = ?",
                (id_or_name, id_or_name),
            ).fetchone()
            return None if row is None else dict(orjson.loads(row[0]))

        result: dict[str, Any] | None = await self._store.read(run)
        return result

    async def dataset_of_resource(self, resource_id: str) -> dict[str, Any] | None:
        """Return the dict of the dataset holding a resource, or None."""

        def run(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                "SELECT x.doc FROM catalog_resources r JOIN catalog_dataset_docs x "
                "ON x.ds = r.ds WHERE r.id = ?",
                (resource_id,),
            ).fetchone()
            return None if row is None else dict(orjson.loads(row[0]))

        result: dict[str, Any] | None = await self._store.read(run)
        return result

    async def save_dataset(
        self, row: DatasetRow, *, expect_modified: str | None = None
    ) -> str | None:
        """Insert or replace a dataset by id with its index rows, atomically.

        Return None on success; "stale" when expect_modified is given and the stored
        dataset's metadata_modified differs (someone else wrote it meanwhile); or the field
        in conflict: "name" (another dataset has it), "resources" (a resource id is taken).
        """
        doc = row.doc

        def run(conn: sqlite3.Connection) -> str | None:
            if conn.execute(
                "SELECT 1 FROM catalog_datasets WHERE name = ? AND id != ?",
                (doc["name"], doc["id"]),
            ).fetchone():
                return "name"
            found = conn.execute(
                "SELECT rowid, metadata_modified FROM catalog_datasets WHERE id = ?", (doc["id"],)
            ).fetchone()
            if expect_modified is not None and (found is None or found[1] != expect_modified):
                return "stale"
            values = (
                doc["name"],
                doc.get("title") or "",
                normalize(doc.get("title") or doc["name"]),
                doc.get("owner_org"),
                row.org_name,
                int(bool(doc.get("private"))),
                doc.get("state", "active"),
                doc.get("license_id"),
                doc.get("type", "dataset"),
                doc["metadata_created"],
                doc["metadata_modified"],
                len(row.resources),
                len(row.tags),
            )
            if found is None:
                cur = conn.execute(
                    "INSERT INTO catalog_datasets(name, title, title_sort, owner_org, org_name, "
                    "private, state, license_id, type, metadata_created, metadata_modified, "
                    "num_resources, num_tags, id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*values, doc["id"]),
                )
                rid = cur.lastrowid
            else:
                rid = found[0]
                conn.execute(
                    "UPDATE catalog_datasets SET name=?, title=?, title_sort=?, owner_org=?, "
                    "org_name=?, private=?, state=?, license_id=?, type=?, metadata_created=?, "
                    "metadata_modified=?, num_resources=?, num_tags=? WHERE rowid=?",
                    (*values, rid),
                )
                for table in (
                    "catalog_dataset_tags",
                    "catalog_dataset_groups",
                    "catalog_resources",
                ):
                    conn.execute(f"DELETE FROM {table} WHERE ds = ?", (rid,))
                conn.execute("DELETE FROM catalog_fts WHERE rowid = ?", (rid,))
            conn.execute(
                "INSERT OR REPLACE INTO catalog_dataset_docs(ds, doc) VALUES (?, ?)",
                (rid, orjson.dumps(doc).decode()),
            )
            for res_id, _ in row.resources:
                if conn.execute(
                    "SELECT 1 FROM catalog_resources WHERE id = ?", (res_id,)
                ).fetchone():
                    raise _Conflict("resources")
            conn.executemany(
                "INSERT INTO catalog_dataset_tags(tag, ds) VALUES (?, ?)",
                [(t, rid) for t in dict.fromkeys(row.tags)],
            )
            conn.executemany(
                "INSERT INTO catalog_dataset_groups(grp, ds) VALUES (?, ?)",
                [(g, rid) for g in dict.fromkeys(row.groups)],
            )
            conn.executemany(
                "INSERT INTO catalog_resources(id, ds, format) VALUES (?, ?, ?)",
                [(i, rid, f) for i, f in row.resources],
            )
            conn.execute(
                "INSERT INTO catalog_fts(rowid, title, notes, body) VALUES (?, ?, ?, ?)",
                (rid, *row.fts),
            )
            return None

        try:
            result: str | None = await self._store.write(run)
        except _Conflict as exc:  # raised inside the job: the savepoint was rolled back
            return exc.field
        return result

    async def list_names(self, limit: int | None, offset: int) -> list[str]:
        """Return the names of public active datasets, sorted."""

        def run(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT name FROM catalog_datasets WHERE state = 'active' AND private = 0 "
                "ORDER BY name LIMIT ? OFFSET ?",
                (-1 if limit is None else limit, offset),
            ).fetchall()
            return [r[0] for r in rows]

        result: list[str] = await self._store.read(run)
        return result

    async def tag_names(self, query: str | None) -> list[str]:
        """Return the tags of active public datasets (containing `query`), sorted."""

        def run(conn: sqlite3.Connection) -> list[str]:
            args: list[Any] = []
            filt = ""
            if query:
                filt = " AND instr(lower(t.tag), lower(?)) > 0"
                args.append(query)
            rows = conn.execute(
                "SELECT DISTINCT t.tag FROM catalog_dataset_tags t JOIN catalog_datasets d "
                f"ON d.rowid = t.ds WHERE d.state = 'active' AND d.private = 0{filt} "
                "ORDER BY t.tag",
                args,
            ).fetchall()
            return [r[0] for r in rows]

        result: list[str] = await self._store.read(run)
        return result

    async def search(self, query: Query, *, indexed: bool = True) -> SearchResult:
        """Run a parsed package_search: count, one page of dicts, facets.

        indexed=False counts with SQL alone and skips the result cache: the reference
        the facet index is tested against.
        """

        key = repr(query)

        def run(conn: sqlite3.Connection) -> SearchResult:
            generation = int(conn.execute("SELECT n FROM catalog_generation").fetchone()[0])
            hit = self._results.get(generation, key) if indexed else None
            if hit is not None:
                return hit
            states = ["active"]
            if query.include_drafts:
                states.append("draft")
            if query.include_deleted:
                states.append("deleted")
            vis = [f"d.state IN ({','.join('?' * len(states))})"]
            if not query.include_private:
                vis.append("d.private = 0")
            index = self._facets.get(conn, generation) if indexed else None
            if index is None:
                total, facets = _count_and_facets(conn, query, states)
            else:
                total, facets = _indexed_count_and_facets(conn, query, states, index)
            docs: list[str] = []
            if query.rows > 0 and query.start < total:
                docs = _page(conn, query, vis, states)
            if indexed:
                self._results.put(generation, key, total, docs, facets)
            return SearchResult(total, [orjson.loads(d) for d in docs], facets)

        result: SearchResult = await self._store.read(run)
        return result


def _count_and_facets(
    conn: sqlite3.Connection, query: Query, states: list[str]
) -> tuple[int, dict[str, list[tuple[str, int]]]]:
    """Return the number of matches and the facets, in one statement over the matched set.

    The filter runs once (a materialized CTE carrying the row's own facet columns); each
    facet groups that set, joining the tag, group and resource tables through their `ds`
    indexes, instead of re-running the filter per facet.
    """
    args: list[Any] = list(states)
    # `+d.state`: the state index would walk every visible dataset; let the filter lead
    vis = [f"+d.state IN ({','.join('?' * len(states))})"]
    if not query.include_private:
        vis.append("d.private = 0")
    where = " AND ".join([*vis, _compile(query.where, args)])
    cols = {name: f"{_FACET_COLUMNS[name]} AS c{i}" for i, name in enumerate(_FACET_COLUMNS)}
    wanted = [n for n in query.facet_fields if n in cols]
    select = ", ".join(["d.rowid AS r", *(cols[n] for n in wanted)])
    # with every dataset matched, scanning the join table beats probing it per row
    join = "JOIN" if isinstance(query.where, All) else "CROSS JOIN"
    parts = ["SELECT -1, NULL, count(*) FROM m"]
    for i, name in enumerate(query.facet_fields):
        if name in _JOINS:
            table, col, _ = _JOINS[name]
            # (tag, ds) and (grp, ds) are keys; a dataset may hold two resources of one format
            n = "count(DISTINCT t.ds)" if table == "catalog_resources" else "count(*)"
            parts.append(
                f"SELECT {i}, t.{col}, {n} FROM m {join} {table} t "
                f"ON t.ds = m.r WHERE t.{col} != '' GROUP BY t.{col}"
            )
        else:
            c = cols[name].rsplit(" ", 1)[-1]
            parts.append(
                f"SELECT {i}, {c}, count(*) FROM m WHERE coalesce({c}, '') != '' GROUP BY {c}"
            )
    rows = conn.execute(
        f"WITH m AS MATERIALIZED (SELECT {select} FROM catalog_datasets d WHERE {where}) "
        + " UNION ALL ".join(parts),
        args,
    ).fetchall()
    total = 0
    found: list[list[tuple[str, int]]] = [[] for _ in query.facet_fields]
    mincount = max(query.facet_mincount, 0)
    for i, value, n in rows:
        if i < 0:
            total = int(n)
        elif n >= mincount:
            found[i].append((str(value), int(n)))
    facets = {}
    for name, items in zip(query.facet_fields, found, strict=True):
        items.sort(key=lambda item: (-item[1], item[0]))
        facets[name] = items if query.facet_limit < 0 else items[: query.facet_limit]
    return total, facets


def _indexed_count_and_facets(
    conn: sqlite3.Connection, query: Query, states: list[str], index: FacetIndex
) -> tuple[int, dict[str, list[tuple[str, int]]]]:
    """Return what _count_and_facets does, with the facet index of conn's generation.

    SQL only finds the rowids of what the bitsets cannot match (words, ranges...);
    visibility, exact field values, the count and the facets are bitset operations.
    """

    def sql(clause: Clause) -> int:
        rank, rest = _split_rank(clause)
        args: list[Any] = []
        if rank is not None and isinstance(rest, All):  # words only: no dataset row needed
            stmt = "SELECT rowid FROM catalog_fts WHERE catalog_fts MATCH ?"
            args.append(rank)
        else:
            stmt = f"SELECT d.rowid FROM catalog_datasets d WHERE {_compile(clause, args)}"
        # a word's matches are the same for every search of this generation
        return index.filter_bits(
            stmt + "\0" + repr(args),
            lambda: bits_of([r for (r,) in conn.execute(stmt, args)]),
        )

    matched = index.visible(states, query.include_private) & index.matches(query.where, sql)
    facets = index.facets(matched, query.facet_fields, query.facet_limit, query.facet_mincount)
    return matched.bit_count(), facets


def _page(conn: sqlite3.Connection, query: Query, vis: list[str], states: list[str]) -> list[str]:
    """Return one page of dataset dicts (JSON) in the query's order (score: FTS5's bm25)."""
    rank, rest = _split_rank(query.where)
    if not any(key.field == "score" for key in query.sort):
        rank, rest = None, query.where  # bm25 of every match only when the order needs it
    args: list[Any] = list(states)
    where = " AND ".join([*vis, _compile(rest, args)])
    source = "catalog_datasets d"
    with_ = ""
    if rank is not None:
        # materialized once: joined per row, the FTS query would run once per row
        with_ = (
            "WITH f AS MATERIALIZED (SELECT rowid AS r, rank FROM catalog_fts "
            "WHERE catalog_fts MATCH ?) "
        )
        source += " JOIN f ON f.r = d.rowid"
        args.insert(0, rank)
    order = []
    for key in query.sort:
        if key.field == "score":
            if rank is not None:  # bm25: lower is better
                order.append("f.rank" if key.desc else "f.rank DESC")
            continue
        order.append(f"{_SORTS[key.field]} {'DESC' if key.desc else 'ASC'}")
    order.append("d.name")
    # sort the narrow rows, then read the page's documents: sorting thousands of matches
    # with their JSON attached cost as much as ranking them
    ids = [
        r[0]
        for r in conn.execute(
            f"{with_}SELECT d.rowid FROM {source} WHERE {where} ORDER BY {', '.join(order)} "
            "LIMIT ? OFFSET ?",
            [*args, query.rows, query.start],
        )
    ]
    if not ids:
        return []
    docs = dict(
        conn.execute(
            f"SELECT ds, doc FROM catalog_dataset_docs WHERE ds IN ({','.join('?' * len(ids))})",
            ids,
        ).fetchall()
    )
    return [str(docs[i]) for i in ids]


class _ResultCache:
    """Recent search results of the current catalog generation (shared by the readers).

    Documents are kept as JSON text and parsed per hit, so no caller can change a cached
    result; a new generation (any dataset or group written) empties the cache.
    """

    MAX = 512

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = -1
        self._items: dict[str, tuple[int, list[str], dict[str, list[tuple[str, int]]]]] = {}

    def get(self, generation: int, key: str) -> SearchResult | None:
        with self._lock:
            if generation != self._generation:
                return None
            item = self._items.get(key)
        if item is None:
            return None
        total, docs, facets = item
        return SearchResult(
            total, [orjson.loads(d) for d in docs], {k: list(v) for k, v in facets.items()}
        )

    def put(
        self,
        generation: int,
        key: str,
        total: int,
        docs: list[str],
        facets: dict[str, list[tuple[str, int]]],
    ) -> None:
        with self._lock:
            if generation < self._generation:
                return  # a reader on an older snapshot: its result is already stale
            if generation > self._generation or len(self._items) >= self.MAX:
                self._items.clear()
                self._generation = generation
            self._items[key] = (total, docs, {k: list(v) for k, v in facets.items()})


class _Conflict(Exception):
    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def _package_count(conn: sqlite3.Connection, doc: dict[str, Any], is_org: bool) -> int:
    if is_org:
        row = conn.execute(
            "SELECT count(*) FROM catalog_datasets WHERE owner_org = ? AND state = 'active' "
            "AND private = 0",
            (doc["id"],),
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT count(*) FROM catalog_dataset_groups g JOIN catalog_datasets d "
            "ON d.rowid = g.ds WHERE g.grp = ? AND d.state = 'active' AND d.private = 0",
            (doc["name"],),
        ).fetchone()
    return int(row[0])
