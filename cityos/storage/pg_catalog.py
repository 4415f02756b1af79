"""PostgreSQL tables of the open data catalog (migration 0006): the twin of CatalogStore.

Same calls, answers, errors and order as ``sqlite_catalog.CatalogStore``. Search results are
cached per process under the catalog generation, a counter that triggers bump in the writing
transaction, so a write by any worker empties every worker's cache at its next search. Counts
and facets are SQL (pg_catalog_search.py); there is no in-memory facet index on this engine.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import asyncpg
import orjson

from cityos.catalog.search import Query
from cityos.catalog.text import normalize
from cityos.storage import pg_catalog_dump
from cityos.storage.pg_catalog_search import count_and_facets, fold, fts_tokens, lexemes, page
from cityos.storage.pg_index import Conn
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import DumpRow
from cityos.storage.sqlite_catalog import (
    _TOUCH_EVERY,
    TOKEN_PREFIX_LEN,
    DatasetRow,
    SearchResult,
    TokenInfo,
    _hash,
    _ResultCache,
    now_iso,
)
from cityos.storage.sqlite_catalog_facets import FACET_MEMORY, FacetIndex

_TOKEN_COLUMNS = "prefix, user_name, created, last_used"
#: a create that loses a race with another worker's create of the same id is retried
_WRITE_ATTEMPTS = 3


class _Conflict(Exception):
    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


class PgCatalogStore:
    """Datasets, resources, organizations, groups, tags and API tokens in PostgreSQL."""

    def __init__(self, store: PostgresStorage, *, facet_memory: int = FACET_MEMORY) -> None:
        self._store = store
        self._touched: dict[str, float] = {}
        self._results = _ResultCache()
        # kept for the same signature: counts and facets are SQL on this engine
        self._facet_memory = facet_memory

    @property
    def facet_index(self) -> FacetIndex | None:
        """Return None: this engine counts facets in SQL, with no in-memory index."""
        return None

    #: dump sections, in the order and with the columns of CatalogStore.dump_rows
    DUMP_SECTIONS: Final = pg_catalog_dump.SECTIONS

    @staticmethod
    def dump_rows(conn: Conn) -> AsyncIterator[tuple[str, DumpRow]]:
        """Yield the organizations, groups, datasets with their search rows, the token hashes."""
        return pg_catalog_dump.dump_rows(conn)

    @staticmethod
    async def load_rows(conn: Conn, section: str, rows: Sequence[DumpRow]) -> None:
        """Store dumped rows of a section of dump_rows, keeping their keys."""
        await pg_catalog_dump.load_rows(conn, section, rows)

    async def setup(self) -> None:
        """Do nothing: migration 0006, applied by PostgresStorage.start(), made the tables."""

    # -- tokens -------------------------------------------------------------------------------

    async def create_token(self, user: str) -> str:
        """Make a new token for user; return it (only its sha256 is stored)."""
        token = "cityos_" + secrets.token_urlsafe(32)
        await self._store.pool.execute(
            "INSERT INTO catalog_tokens(hash, prefix, user_name, created) VALUES ($1, $2, $3, $4)",
            _hash(token),
            token[:TOKEN_PREFIX_LEN],
            user,
            now_iso(),
        )
        return token

    async def list_tokens(self) -> list[TokenInfo]:
        """Return every token's prefix, user and times, oldest first."""
        rows = await self._store.pool.fetch(
            f"SELECT {_TOKEN_COLUMNS} FROM catalog_tokens ORDER BY created, rid"
        )
        return [TokenInfo(*r) for r in rows]

    async def revoke_tokens(self, prefix: str) -> list[TokenInfo]:
        """Delete the tokens whose prefix starts with `prefix` if exactly one does; return them."""
        if not prefix:
            return []
        async with self._store.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                f"SELECT {_TOKEN_COLUMNS} FROM catalog_tokens WHERE starts_with(prefix, $1) "
                "ORDER BY rid FOR UPDATE",
                prefix,
            )
            if len(rows) == 1:
                await conn.execute(
                    "DELETE FROM catalog_tokens WHERE starts_with(prefix, $1)", prefix
                )
        return [TokenInfo(*r) for r in rows]

    async def user_for_token(self, token: str) -> str | None:
        """Return the user of an API token, or None."""
        digest = _hash(token)
        user = await self._store.pool.fetchval(
            "SELECT user_name FROM catalog_tokens WHERE hash = $1", digest
        )
        if user is None:
            return None
        await self._touch(digest)
        return str(user)

    async def _touch(self, digest: str) -> None:
        now = time.monotonic()
        if now - self._touched.get(digest, -_TOUCH_EVERY) < _TOUCH_EVERY:
            return
        self._touched[digest] = now
        await self._store.pool.execute(
            "UPDATE catalog_tokens SET last_used = $1 WHERE hash = $2", now_iso(), digest
        )

    # -- organizations and groups ---------------------------------------------------------------

    async def save_group(self, doc: dict[str, Any], *, is_org: bool) -> bool:
        """Insert or replace a group/organization by id; False if its name is taken."""
        try:
            async with self._store.pool.acquire() as conn, conn.transaction():
                if await conn.fetchval(
                    "SELECT 1 FROM catalog_groups WHERE name = $1 AND id <> $2",
                    doc["name"],
                    doc["id"],
                ):
                    return False
                await conn.execute(
                    "INSERT INTO catalog_groups(id, name, is_org, title, created, state, doc) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET "
                    "name=EXCLUDED.name, title=EXCLUDED.title, state=EXCLUDED.state, "
                    "doc=EXCLUDED.doc",
                    doc["id"],
                    doc["name"],
                    is_org,
                    doc.get("title") or "",
                    doc["created"],
                    doc.get("state", "active"),
                    orjson.dumps(doc).decode(),
                )
        except asyncpg.UniqueViolationError:
            return False  # another worker took the name meanwhile
        return True

    async def get_group(self, id_or_name: str, *, is_org: bool) -> dict[str, Any] | None:
        """Return a group/organization's dict with its package_count, or None."""
        row = await self._store.pool.fetchrow(
            f"SELECT g.doc, {_package_count(is_org)} FROM catalog_groups g "
            "WHERE (g.id = $1 OR g.name = $1) AND g.is_org = $2 ORDER BY g.rid LIMIT 1",
            id_or_name,
            is_org,
        )
        if row is None:
            return None
        doc: dict[str, Any] = orjson.loads(row[0])
        doc["package_count"] = int(row[1])
        return doc

    async def list_groups(
        self, *, is_org: bool, sort: str, desc: bool, limit: int, offset: int, names: list[str]
    ) -> list[dict[str, Any]]:
        """Return active groups/organizations with package_count, sorted and paged."""
        order = {"name": "g.name", "title": fold("g.title"), "package_count": "n"}[sort]
        direction = "DESC" if desc else "ASC"
        filt = " AND g.name = ANY($2::text[])" if names else ""
        args: list[Any] = [is_org, *([names] if names else [])]
        rows = await self._store.pool.fetch(
            f"SELECT g.doc, {_package_count(is_org)} AS n FROM catalog_groups g "
            f"WHERE g.is_org = $1 AND g.state = 'active'{filt} "
            f"ORDER BY {order} {direction}, g.name "
            f"LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}",
            *args,
            limit,
            offset,
        )
        out = []
        for doc_text, n in rows:
            doc = orjson.loads(doc_text)
            doc["package_count"] = int(n)
            out.append(doc)
        return out

    async def group_titles(self, names: list[str], *, is_org: bool) -> dict[str, str]:
        """Return the titles (the name when empty) of active groups/organizations by name."""
        if not names:
            return {}
        rows = await self._store.pool.fetch(
            "SELECT name, title FROM catalog_groups WHERE is_org = $1 AND state = 'active' "
            "AND name = ANY($2::text[])",
            is_org,
            names,
        )
        return {name: title or name for name, title in rows}

    # -- datasets -------------------------------------------------------------------------------

    async def get_dataset(self, id_or_name: str) -> dict[str, Any] | None:
        """Return a dataset's stored dict by id or name, or None."""
        text = await self._store.pool.fetchval(
            "SELECT x.doc FROM catalog_datasets d JOIN catalog_dataset_docs x ON x.ds = d.rid "
            "WHERE d.id = $1 OR d.name = $1 ORDER BY d.rid LIMIT 1",
            id_or_name,
        )
        return None if text is None else dict(orjson.loads(text))

    async def dataset_of_resource(self, resource_id: str) -> dict[str, Any] | None:
        """Return the dict of the dataset holding a resource, or None."""
        text = await self._store.pool.fetchval(
            "SELECT x.doc FROM catalog_resources r JOIN catalog_dataset_docs x ON x.ds = r.ds "
            "WHERE r.id = $1",
            resource_id,
        )
        return None if text is None else dict(orjson.loads(text))

    async def save_dataset(
        self, row: DatasetRow, *, expect_modified: str | None = None
    ) -> str | None:
        """Insert or replace a dataset by id with its index rows, atomically.

        Return None on success; "stale" when expect_modified is given and the stored
        dataset's metadata_modified differs (someone else wrote it meanwhile); or the field
        in conflict: "name" (another dataset has it), "resources" (a resource id is taken).
        """
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                async with self._store.pool.acquire() as conn, conn.transaction():
                    return await _save_dataset(conn, row, expect_modified)
            except _Conflict as exc:  # raised inside the transaction: it was rolled back
                return exc.field
            except asyncpg.UniqueViolationError as exc:
                field = _conflict_field(exc.constraint_name or "")
                if field is not None:
                    return field
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise
                # another worker created this id meanwhile: the next attempt updates it
        raise AssertionError("unreachable")

    async def list_names(self, limit: int | None, offset: int) -> list[str]:
        """Return the names of public active datasets, sorted."""
        rows = await self._store.pool.fetch(
            "SELECT name FROM catalog_datasets WHERE state = 'active' AND NOT private "
            "ORDER BY name LIMIT $1 OFFSET $2",
            limit,
            offset,
        )
        return [r[0] for r in rows]

    async def tag_names(self, query: str | None) -> list[str]:
        """Return the tags of active public datasets (containing `query`), sorted."""
        args: list[Any] = []
        filt = ""
        if query:
            filt = f" AND strpos({fold('t.tag')}, {fold('$1')}) > 0"
            args.append(query)
        rows = await self._store.pool.fetch(
            "SELECT DISTINCT t.tag FROM catalog_dataset_tags t JOIN catalog_datasets d "
            f"ON d.rid = t.ds WHERE d.state = 'active' AND NOT d.private{filt} ORDER BY t.tag",
            *args,
        )
        return [r[0] for r in rows]

    async def search(self, query: Query, *, indexed: bool = True) -> SearchResult:
        """Run a parsed package_search: count, one page of dicts, facets.

        indexed=False skips the result cache (on this engine both count with SQL).
        """
        key = repr(query)
        async with self._store.pool.acquire() as conn:  # noqa: SIM117 (the transaction needs conn)
            # one snapshot: the generation read first is the one every later read sees
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                generation = int(
                    await conn.fetchval("SELECT n FROM catalog_generation WHERE id = 1")
                )
                hit = self._results.get(generation, key) if indexed else None
                if hit is not None:
                    return hit
                states = ["active"]
                if query.include_drafts:
                    states.append("draft")
                if query.include_deleted:
                    states.append("deleted")
                total, facets = await count_and_facets(conn, query, states)
                docs: list[str] = []
                if query.rows > 0 and query.start < total:
                    docs = await page(conn, query, states)
        if indexed:
            self._results.put(generation, key, total, docs, facets)
        return SearchResult(total, [orjson.loads(d) for d in docs], facets)


def _package_count(is_org: bool) -> str:
    """Return SQL counting the active public datasets of the group row `g`."""
    owned = (
        "d.owner_org = g.id"
        if is_org
        else "d.rid IN (SELECT ds FROM catalog_dataset_groups WHERE grp = g.name)"
    )
    return (
        f"(SELECT count(*) FROM catalog_datasets d WHERE {owned} "
        "AND d.state = 'active' AND NOT d.private)"
    )


def _conflict_field(constraint: str) -> str | None:
    if constraint == "catalog_datasets_name_key":
        return "name"
    if constraint == "catalog_resources_pkey":
        return "resources"
    return None


async def _save_dataset(conn: Conn, row: DatasetRow, expect_modified: str | None) -> str | None:
    doc = row.doc
    if await conn.fetchval(
        "SELECT 1 FROM catalog_datasets WHERE name = $1 AND id <> $2", doc["name"], doc["id"]
    ):
        return "name"
    # locked until commit: a concurrent writer of this dataset waits, then sees it stale
    found = await conn.fetchrow(
        "SELECT rid, metadata_modified FROM catalog_datasets WHERE id = $1 FOR UPDATE", doc["id"]
    )
    if expect_modified is not None and (found is None or found[1] != expect_modified):
        return "stale"
    values = (
        doc["name"],
        doc.get("title") or "",
        normalize(doc.get("title") or doc["name"]),
        doc.get("owner_org"),
        row.org_name,
        bool(doc.get("private")),
        doc.get("state", "active"),
        doc.get("license_id"),
        doc.get("type", "dataset"),
        doc["metadata_created"],
        doc["metadata_modified"],
        len(row.resources),
        len(row.tags),
    )
    columns = (
        "name, title, title_sort, owner_org, org_name, private, state, license_id, type, "
        "metadata_created, metadata_modified, num_resources, num_tags"
    )
    if found is None:
        rid = await conn.fetchval(
            f"INSERT INTO catalog_datasets({columns}, id) VALUES "
            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING rid",
            *values,
            doc["id"],
        )
    else:
        rid = found[0]
        sets = ", ".join(f"{c}=${i}" for i, c in enumerate(columns.split(", "), 1))
        await conn.execute(f"UPDATE catalog_datasets SET {sets} WHERE rid = $14", *values, rid)
        for table in ("catalog_dataset_tags", "catalog_dataset_groups", "catalog_resources"):
            await conn.execute(f"DELETE FROM {table} WHERE ds = $1", rid)
    await conn.execute(
        "INSERT INTO catalog_dataset_docs(ds, doc) VALUES ($1, $2) "
        "ON CONFLICT (ds) DO UPDATE SET doc = EXCLUDED.doc",
        rid,
        orjson.dumps(doc).decode(),
    )
    res_ids = [i for i, _ in row.resources]
    if res_ids and await conn.fetchval(
        "SELECT 1 FROM catalog_resources WHERE id = ANY($1::text[])", res_ids
    ):
        raise _Conflict("resources")
    await conn.execute(
        "INSERT INTO catalog_dataset_tags(tag, ds) SELECT unnest($1::text[]), $2",
        list(dict.fromkeys(row.tags)),
        rid,
    )
    await conn.execute(
        "INSERT INTO catalog_dataset_groups(grp, ds) SELECT unnest($1::text[]), $2",
        list(dict.fromkeys(row.groups)),
        rid,
    )
    await conn.execute(
        "INSERT INTO catalog_resources(id, ds, format) "
        "SELECT unnest($1::text[]), $2, unnest($3::text[])",
        res_ids,
        rid,
        [f for _, f in row.resources],
    )
    # stored as FTS5's 'ascii' tokenizer reads it: tokens joined by single spaces
    cols = [fts_tokens(part) for part in row.fts]
    await conn.execute(
        "INSERT INTO catalog_fts(ds, title, notes, body, ntok, lexemes) "
        "VALUES ($1, $2, $3, $4, $5, array_to_tsvector($6::text[])) ON CONFLICT (ds) DO UPDATE "
        "SET title=EXCLUDED.title, notes=EXCLUDED.notes, body=EXCLUDED.body, "
        "ntok=EXCLUDED.ntok, lexemes=EXCLUDED.lexemes",
        rid,
        *(" ".join(c) for c in cols),
        sum(len(c) for c in cols),
        lexemes([t for c in cols for t in c]),
    )
    return None
