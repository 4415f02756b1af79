"""datastore_search_sql against hostile SQL: only one read-only SELECT over datastore tables,
stopped after its time limit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ENGINE, make_client
from starlette.testclient import TestClient

from cityos.catalog import registry, sqlcheck
from cityos.catalog.errors import ValidationError
from cityos.catalog.registry import Context

API = "/api/3/action/datastore_search_sql"


def call(client: TestClient, name: str, params: dict[str, Any]) -> Any:
    ctx = Context(catalog=client.app.catalog, user="admin")  # type: ignore[attr-defined]
    assert client.portal is not None
    return client.portal.call(registry.call, ctx, name, params)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path) as c:
        yield c


@pytest.fixture
def rid(client: TestClient) -> str:
    pkg = call(client, "package_create", {"name": "wards"})
    res = call(client, "resource_create", {"package_id": pkg["id"], "name": "wards", "url": ""})
    call(
        client,
        "datastore_create",
        {
            "resource_id": res["id"],
            "fields": [{"id": "区", "type": "text"}, {"id": "人口", "type": "int"}],
            "records": [
                {"区": "佐野", "人口": 100},
                {"区": "田沼", "人口": 50},
                {"区": "葛生", "人口": 20},
            ],
        },
    )
    return str(res["id"])


def sql(client: TestClient, text: str) -> tuple[int, dict[str, Any]]:
    r = client.get(API, params={"sql": text})
    body = r.json()
    return r.status_code, body["result"] if body["success"] else body["error"]


def test_select_with_japanese_columns(client: TestClient, rid: str) -> None:
    status, result = sql(
        client, f'SELECT "区", "人口" FROM "{rid}" WHERE "人口" > 30 ORDER BY "人口"'
    )
    assert status == 200
    assert result["records"] == [{"区": "田沼", "人口": 50}, {"区": "佐野", "人口": 100}]
    assert result["fields"] == [{"id": "区", "type": "text"}, {"id": "人口", "type": "int8"}]
    assert "records_truncated" not in result


def test_with_and_aggregates_are_allowed(client: TestClient, rid: str) -> None:
    text = f'-- total\nWITH t AS (SELECT * FROM "{rid}") SELECT sum("人口") AS n FROM t'
    status, result = sql(client, text)
    assert status == 200
    assert result["records"] == [{"n": 170}]


@pytest.mark.parametrize(
    "text",
    [
        'DELETE FROM "{rid}"',
        'UPDATE "{rid}" SET "人口" = 0',
        'INSERT INTO "{rid}"("区") VALUES (\'x\')',
        'DROP TABLE "{rid}"',
        "PRAGMA writable_schema=1",
        "ATTACH DATABASE '/tmp/x.db' AS x",
        'SELECT 1; DELETE FROM "{rid}"',
        'SELECT * FROM "{rid}"; SELECT 1',
        "SELECT * FROM _datastore_tables",
        "SELECT * FROM _datastore_aliases",
        'SELECT * FROM "{rid}__fts"',  # the FTS5 table itself
        "SELECT * FROM sqlite_master",
        "SELECT count(*) FROM SQLITE_MASTER",
        "SELECT count(*) FROM _datastore_tables",
        'SELECT count(*) FROM "{rid}__fts_data"',
        "SELECT count(*) FROM pragma_table_list",
        "SELECT name FROM pragma_table_list",
        'WITH x AS (SELECT 1) DELETE FROM "{rid}"',
        "/* SELECT */ VACUUM",
        "SELECT load_extension('x')",
        "",
    ],
)
def test_hostile_sql_is_refused_and_changes_nothing(
    client: TestClient, rid: str, text: str
) -> None:
    status, err = sql(client, text.replace("{rid}", rid))
    assert status in (409, 403), err
    assert err["__type"] in ("Validation Error", "Authorization Error")
    status, result = sql(client, f'SELECT count(*) AS n FROM "{rid}"')
    assert result["records"] == [{"n": 3}]
    assert call(client, "datastore_search", {"resource_id": rid})["total"] == 3


#: each engine's own tables next to the datastore's (quoted names)
SYSTEM_TABLES = {
    "sqlite": ['"sqlite_master"', '"_datastore_tables"', '"{rid}__fts_data"', '"{rid}__fts_idx"'],
    "postgresql": ["pg_catalog.pg_class", "information_schema.tables", "public.spatial_ref_sys"],
}[ENGINE]


@pytest.mark.parametrize("table", SYSTEM_TABLES)
def test_system_tables_are_an_authorization_error(client: TestClient, rid: str, table: str) -> None:
    status, err = sql(client, f"SELECT * FROM {table.replace('{rid}', rid)}")
    assert status == 403, err
    assert err["__type"] == "Authorization Error"
    assert "system tables" in err["message"]


def test_the_catalog_tables_are_out_of_reach(client: TestClient, rid: str) -> None:
    # the broker's and catalog's tables live in another file; a name that is not a datastore
    # table is refused whatever it is
    status, err = sql(client, "SELECT * FROM entities")
    assert status == 409
    assert "entities" in str(err["query"])


def test_a_slow_recursive_query_is_stopped(client: TestClient, rid: str) -> None:
    text = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
        f'SELECT count(*) FROM c, "{rid}"'
    )
    started = time.monotonic()
    catalog = client.app.catalog  # type: ignore[attr-defined]
    assert client.portal is not None
    tables = client.portal.call(catalog.datastore.tables_read_by, text)
    with pytest.raises(ValidationError) as info:
        client.portal.call(lambda: catalog.datastore.run_sql(text, tables, seconds=0.5))
    assert info.value.errors == {"query": ["Query took too long"]}
    assert time.monotonic() - started < 5
    # the connection is usable afterwards, without the deadline
    assert sql(client, f'SELECT count(*) AS n FROM "{rid}"')[1]["records"] == [{"n": 3}]


def test_rows_are_capped(client: TestClient, rid: str) -> None:
    catalog = client.app.catalog  # type: ignore[attr-defined]
    assert client.portal is not None
    text = f'SELECT "区" FROM "{rid}"'
    found = client.portal.call(lambda: catalog.datastore.run_sql(text, {rid}, cap=2))
    assert len(found.rows) == 2
    assert found.truncated is True


@pytest.mark.parametrize(
    "text",
    ["DELETE FROM x", "  -- c\n  /* d */ insert into x values (1)", "VALUES (1)", "", "  ", 42],
)
def test_check_text_wants_a_select(text: Any) -> None:
    with pytest.raises(ValidationError):
        sqlcheck.check_text(text)


def test_check_text_skips_comments() -> None:
    assert sqlcheck.check_text("/* x */ -- y\n select 1")
