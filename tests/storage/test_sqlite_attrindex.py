"""q, scopeQ and type selections compiled to SQL and run against a real SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from cityos.broker.qlang import parse_q, parse_scope_q
from cityos.broker.typesel import parse_type_selection
from cityos.storage.sqlite_attrindex import (
    ATTR_INDEX_DDL,
    DATETIME,
    STRING,
    compile_q,
    compile_scope_q,
    compile_type_selection,
    delete_index,
    index_rows,
    insert_index,
    register_functions,
)

#: both engines: tests/storage/test_*_engines.py
pytestmark = pytest.mark.sqlite_only("the SQLite engine's attribute index, in the file")

V = "https://example.org/"
NOW = "2026-01-01T00:00:00.000000Z"
TABLES = """
CREATE TABLE entities(rid INTEGER PRIMARY KEY, tenant TEXT NOT NULL, id TEXT NOT NULL,
    doc TEXT NOT NULL, type1 TEXT NOT NULL, created_at TEXT NOT NULL,
    modified_at TEXT NOT NULL, UNIQUE(tenant, id));
CREATE TABLE entity_types(tenant TEXT, type TEXT, rid INTEGER,
    PRIMARY KEY(tenant, type, rid)) WITHOUT ROWID;
"""


def expand(term: str) -> str:
    return term if ":" in term else V + term


def prop(value: Any, **members: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, **members}


def entity(
    n: int, types: list[str], attrs: dict[str, list[dict[str, Any]]], scope: list[str] | None = None
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": f"urn:x:{n}",
        "type": [V + t for t in types],
        "createdAt": NOW,
        "modifiedAt": NOW,
        "attrs": {V + k: v for k, v in attrs.items()},
    }
    if scope is not None:
        doc["scope"] = scope
    return doc


DOCS = [
    entity(
        1,
        ["WaterLevelObserved"],
        {
            "level": [
                prop(
                    2.7,
                    observedAt="2026-01-01T09:00:00+09:00",
                    unitCode="MTR",
                    **{V + "quality": prop("good")},
                )
            ],
            "name": [prop("Akiyama bridge")],
            "river": [{"type": "Relationship", "object": "urn:ngsi-ld:River:akiyama"}],
            "active": [prop(True)],
            "tags": [prop(["flood", "river"])],
            "reading": [prop({"depth": {"max": 3.5, "unit": "m"}, "sensors": ["a", "b"]})],
            "category": [{"type": "VocabProperty", "vocab": V + "gauge"}],
            "label": [
                {
                    "type": "LanguageProperty",
                    "languageMap": {"ja": "秋山橋", "en": "Akiyama Bridge"},
                }
            ],
            "counts": [{"type": "ListProperty", "valueList": [1, 2, 3]}],
            "meta": [{"type": "JsonProperty", "json": {"vendor": "acme"}}],
            "location": [
                {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [139.6, 36.3]}}
            ],
        },
        scope=["/Sano/Akiyama"],
    ),
    entity(
        2,
        ["WaterLevelObserved", "Device"],
        {
            "level": [
                prop(1.0, observedAt="2026-01-02T00:00:00Z"),
                prop(4.2, datasetId="urn:ds:raw"),
            ],
            "name": [prop("Tanuma")],
            "river": [{"type": "Relationship", "object": "urn:ngsi-ld:River:watarase"}],
            "active": [prop(False)],
            "tags": [prop(["dry"])],
            "reading": [prop({"depth": {"max": 1}})],
            "neighbours": [{"type": "ListRelationship", "objectList": ["urn:x:1", "urn:x:3"]}],
        },
        scope=["/Sano/Tanuma/North"],
    ),
    entity(
        3,
        ["Device"],
        {
            "level": [prop("high")],
            "name": [prop("Sano 3")],
            "when": [prop("2026-03-01T00:00:00Z")],
        },
        scope=["/Sano", "/Other"],
    ),
    entity(4, ["Device"], {}),
]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    conn.executescript(TABLES + ATTR_INDEX_DDL)
    register_functions(conn)
    for tenant in ("", "other"):
        docs = DOCS if tenant == "" else DOCS[:1]
        for doc in docs:
            store(conn, tenant, doc)
    yield conn
    conn.close()


def store(conn: sqlite3.Connection, tenant: str, doc: dict[str, Any]) -> int:
    cur = conn.execute(
        "INSERT INTO entities(tenant, id, doc, type1, created_at, modified_at) VALUES(?,?,?,?,?,?)",
        (tenant, doc["id"], orjson.dumps(doc).decode(), doc["type"][0], NOW, NOW),
    )
    rid = cur.lastrowid
    assert rid is not None
    conn.executemany(
        "INSERT INTO entity_types VALUES(?,?,?)", [(tenant, t, rid) for t in doc["type"]]
    )
    insert_index(conn, rid, doc)
    return rid


def ids(conn: sqlite3.Connection, sql: str, params: list[Any], tenant: str = "") -> set[int]:
    rows = conn.execute(
        f"SELECT e.id FROM entities e WHERE e.tenant=? AND {sql} ORDER BY e.rid", [tenant, *params]
    ).fetchall()
    return {int(r[0].rsplit(":", 1)[1]) for r in rows}


def q(conn: sqlite3.Connection, text: str) -> set[int]:
    return ids(conn, *compile_q(parse_q(text), expand))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # numbers, and the rule that any instance (datasetId) may match
        ("level>2.5", {1, 2}),
        ("level>5", set()),
        ("level<1.5", {2}),
        ("level==1", {2}),
        ("level>=4.2", {2}),
        ("level==1..3", {1, 2}),
        ("level==2.7,9", {1}),
        ("level!=1.0", {1, 3}),
        ("level!=0..2", {1, 3}),
        # a number never compares with a string value, and a string never with a number
        ("level>2", {1, 2}),
        ('level=="high"', {3}),
        ('level>"a"', {3}),
        # strings and regular expressions
        ('name=="Tanuma"', {2}),
        ("name==Tanuma", {2}),
        ('name=="tanuma"', set()),
        ('name~="^Sa"', {3}),
        ('name~="(?i)BRIDGE$"', {1}),
        ('name!~="^Sa"', {1, 2}),
        ('name=="A".."T"', {1, 3}),
        # booleans
        ("active==true", {1}),
        ("active==false", {2}),
        ("active!=true", {2}),
        ("active==1", set()),
        # relationships and lists of them
        ("river==urn:ngsi-ld:River:akiyama", {1}),
        ("river==urn:ngsi-ld:River:akiyama,urn:ngsi-ld:River:watarase", {1, 2}),
        ('river~="watarase$"', {2}),
        ("neighbours==urn:x:3", {2}),
        # arrays: == any element, != no element
        ("tags==flood", {1}),
        ("tags==river,dry", {1, 2}),
        ("tags!=flood", {2}),
        ("counts==2", {1}),
        ("counts>2", {1}),
        # paths into JSON values
        ("reading[depth.max]>2", {1}),
        ("reading[depth][max]==1", {2}),
        ("reading[sensors]==b", {1}),
        ("reading[depth.unit]", {1}),
        ("!reading[depth.unit]", {2, 3, 4}),
        ("reading[depth]==1", set()),
        ('reading[depth.unit]~="^m"', {1}),
        ("reading[depth.max]!=1", {1}),
        ("reading[depth.max]==0..2", {2}),
        ("meta[vendor]==acme", {1}),
        ('location[type]=="Point"', {1}),
        # core members and sub-attributes of an instance
        ("level.observedAt>=2026-01-01T00:00:00Z", {1, 2}),
        ("level.observedAt==2026-01-01T00:00:00Z", {1}),
        ("level.observedAt<2026-01-01T00:00:00.5Z", {1}),
        ("level.observedAt==2026-01-01T00:00:00Z..2026-01-01T12:00:00Z", {1}),
        ("level.unitCode==MTR", {1}),
        ("level.datasetId==urn:ds:raw", {2}),
        ("level.quality==good", {1}),
        ("level.quality", {1}),
        # vocab values are stored expanded; language maps match any of their strings
        ("category==gauge", {1}),
        ('label=="秋山橋"', {1}),
        ('label[en]=="Akiyama Bridge"', {1}),
        # DateTime, Date and plain strings holding DateTimes
        ("when>=2026-02-01", {3}),
        ("when==2026-03-01T09:00:00+09:00", {3}),
        ('when=="2026-03-01T00:00:00Z"', {3}),
        # existence
        ("tags", {1, 2}),
        ("!tags", {3, 4}),
        ("nothing", set()),
        ("!nothing", {1, 2, 3, 4}),
        # logic
        ('active==true|level=="high"', {1, 3}),
        ('(name==Tanuma|name=="Sano 3");level>0', {2}),
        ("level>0;tags|when", {1, 2, 3}),
        ("level>0;(tags|when)", {1, 2}),
    ],
)
def test_q_selects(db: sqlite3.Connection, text: str, expected: set[int]) -> None:
    assert q(db, text) == expected


def test_q_never_reaches_another_tenant(db: sqlite3.Connection) -> None:
    assert ids(db, *compile_q(parse_q("level>2.5"), expand), tenant="other") == {1}


def test_rewritten_entity_is_reindexed(db: sqlite3.Connection) -> None:
    rid = db.execute("SELECT rid FROM entities WHERE tenant='' AND id='urn:x:3'").fetchone()[0]
    delete_index(db, rid)
    insert_index(db, rid, entity(3, ["Device"], {"level": [prop(9)]}))
    assert q(db, "level>5") == {3}
    assert q(db, "name") == {1, 2}


def test_regex_function_is_safe_with_non_strings(db: sqlite3.Connection) -> None:
    assert db.execute(
        "SELECT REGEXP('^a', 'abc'), REGEXP('^a', 5), REGEXP('^a', NULL)"
    ).fetchone() == (1, 0, 0)


def test_datetime_strings_are_indexed_canonically() -> None:
    rows = index_rows(7, entity(7, ["T"], {"when": [prop("2026-01-01T09:00:00+09:00")]}))
    assert (7, V + "when", STRING, "2026-01-01T09:00:00+09:00", None) in rows
    assert (7, V + "when", DATETIME, "2026-01-01T00:00:00.000000Z", None) in rows


def test_sql_is_parameterised(db: sqlite3.Connection) -> None:
    sql, params = compile_q(parse_q('name=="x\'); DROP TABLE entities; --"'), expand)
    assert "DROP" not in sql
    assert ids(db, sql, params) == set()
    assert db.execute("SELECT count(*) FROM entities").fetchone()[0] == 5


@pytest.mark.parametrize("tenant_in", [False, True])
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("WaterLevelObserved", {1, 2}),
        ("Device", {2, 3, 4}),
        ("WaterLevelObserved;Device", {2}),
        ("WaterLevelObserved,Device", {1, 2, 3, 4}),
        ("WaterLevelObserved|Nothing", {1, 2}),
        ("(WaterLevelObserved|Nothing);Device", {2}),
        (V + "WaterLevelObserved", {1, 2}),
        ("Nothing", set()),
    ],
)
def test_type_selection(
    db: sqlite3.Connection, text: str, expected: set[int], tenant_in: bool
) -> None:
    sql, params = compile_type_selection(
        parse_type_selection(text), expand, tenant="" if tenant_in else None
    )
    assert ids(db, sql, params) == expected


def test_type_selection_stays_in_its_tenant(db: sqlite3.Connection) -> None:
    for tenant in (None, "other"):
        sql, params = compile_type_selection(parse_type_selection("Device"), expand, tenant=tenant)
        assert ids(db, sql, params, tenant="other") == set()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/Sano/Akiyama", {1}),
        ("/Sano", {3}),
        ("/Sano/#", {1, 2, 3}),
        ("/Sano/+", {1}),
        ("/Sano/+/North", {2}),
        ("/+/Tanuma/#", {2}),
        ("/#", {1, 2, 3}),
        ("/Sano;/Other", {3}),
        ("/Other|/Sano/Akiyama", {1, 3}),
        ("/Sano/Akiyama;(/Other|/Sano)", set()),
        ("/Sa/#", set()),
        ("/", set()),
    ],
)
def test_scope_q(db: sqlite3.Connection, text: str, expected: set[int]) -> None:
    assert ids(db, *compile_scope_q(parse_scope_q(text))) == expected


def test_combined_filters(db: sqlite3.Connection) -> None:
    t_sql, t_params = compile_type_selection(parse_type_selection("WaterLevelObserved"), expand)
    q_sql, q_params = compile_q(parse_q("level>2.5"), expand)
    s_sql, s_params = compile_scope_q(parse_scope_q("/Sano/Tanuma/#"))
    sql = f"{t_sql} AND {q_sql} AND {s_sql}"
    assert ids(db, sql, [*t_params, *q_params, *s_params]) == {2}
