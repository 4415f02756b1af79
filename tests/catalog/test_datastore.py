"""The datastore actions on a real app and a real datastore.db: create, upsert, search, info,
delete, and the errors CKAN clients expect."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from cityos.catalog import datastore as ds
from cityos.catalog import registry
from cityos.catalog.errors import CkanError, NotAuthorized, ValidationError
from cityos.catalog.registry import Context

API = "/api/3/action/"

SHELTERS = [
    {
        "name": "佐野市立避難所A",
        "kind": "避難所",
        "capacity": 120,
        "open": True,
        "opened": "2024-04-01",
    },
    {"name": "城北公民館", "kind": "公民館", "capacity": 80, "open": False, "opened": "2019-10-12"},
    {"name": "赤見小学校体育館", "kind": "避難所", "capacity": 300, "open": True, "opened": None},
    {"name": "Sano Station Hall", "kind": "hall", "capacity": None, "open": False, "opened": None},
]
FIELDS = [
    {"id": "name", "type": "text"},
    {"id": "kind", "type": "text"},
    {"id": "capacity", "type": "int"},
    {"id": "open", "type": "bool"},
    {"id": "opened", "type": "date"},
]


def call(
    client: TestClient, name: str, params: dict[str, Any], *, user: str | None = "admin"
) -> Any:
    """Run an action in the app's loop as a user (None: anonymous)."""
    catalog = client.app.catalog  # type: ignore[attr-defined]
    ctx = Context(catalog=catalog, user=user)
    assert client.portal is not None
    return client.portal.call(registry.call, ctx, name, params)


def dataset(client: TestClient, name: str = "shelters", *, private: bool = False) -> str:
    """Create a dataset with one resource through the package actions; return its id."""
    pkg = call(client, "package_create", {"name": name, "private": private, "owner_org": None})
    res = call(client, "resource_create", {"package_id": pkg["id"], "name": "table", "url": ""})
    return str(res["id"])


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path) as c:
        yield c


@pytest.fixture
def shelters(client: TestClient) -> str:
    rid = dataset(client)
    call(
        client,
        "datastore_create",
        {"resource_id": rid, "fields": FIELDS, "records": SHELTERS, "primary_key": ["name"]},
    )
    return rid


def search(client: TestClient, **params: Any) -> dict[str, Any]:
    r = client.get(API + "datastore_search", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    result: dict[str, Any] = body["result"]
    return result


def error(client: TestClient, name: str, params: dict[str, Any], status: int) -> dict[str, Any]:
    r = client.get(API + name, params=params)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["success"] is False
    err: dict[str, Any] = body["error"]
    return err


# -- create and search ----------------------------------------------------------------------


def test_create_marks_the_resource_active_and_search_returns_typed_records(
    client: TestClient, shelters: str
) -> None:
    assert call(client, "resource_show", {"id": shelters})["datastore_active"] is True
    result = search(client, resource_id=shelters)
    assert result["total"] == 4
    assert result["fields"][0] == {"id": "_id", "type": "int"}
    assert [f["id"] for f in result["fields"][1:]] == ["name", "kind", "capacity", "open", "opened"]
    first = result["records"][0]
    assert first == {
        "_id": 1,
        "name": "佐野市立避難所A",
        "kind": "避難所",
        "capacity": 120,
        "open": True,
        "opened": "2024-04-01",
    }
    assert result["limit"] == 100
    assert result["records_format"] == "objects"
    assert result["total_was_estimated"] is False
    assert result["_links"]["start"].startswith("/api/3/action/datastore_search?")


def test_create_with_a_resource_dict_creates_the_resource(client: TestClient) -> None:
    pkg = call(client, "package_create", {"name": "rivers"})
    out = call(
        client,
        "datastore_create",
        {
            "resource": {"package_id": pkg["id"], "name": "levels"},
            "records": [{"river": "秋山川", "level": 1.5}],
        },
    )
    rid = out["resource_id"]
    assert call(client, "resource_show", {"id": rid})["datastore_active"] is True
    # types guessed from the records
    assert out["fields"] == [{"id": "river", "type": "text"}, {"id": "level", "type": "float8"}]
    assert search(client, resource_id=rid)["records"] == [
        {"_id": 1, "river": "秋山川", "level": 1.5}
    ]


@pytest.mark.parametrize(
    ("filters", "names"),
    [
        ({"kind": "避難所"}, ["佐野市立避難所A", "赤見小学校体育館"]),
        ({"kind": ["公民館", "hall"]}, ["城北公民館", "Sano Station Hall"]),
        ({"open": True, "kind": "避難所"}, ["佐野市立避難所A", "赤見小学校体育館"]),
        ({"capacity": "80"}, ["城北公民館"]),  # a string from a form still matches an int
        ({"capacity": {"gte": 100}}, ["佐野市立避難所A", "赤見小学校体育館"]),
        ({"opened": None}, ["赤見小学校体育館", "Sano Station Hall"]),
    ],
)
def test_filters_select_rows(
    client: TestClient, shelters: str, filters: dict[str, Any], names: list[str]
) -> None:
    result = search(client, resource_id=shelters, filters=json.dumps(filters, ensure_ascii=False))
    assert [r["name"] for r in result["records"]] == names
    assert result["total"] == len(names)
    assert result["filters"] == filters


@pytest.mark.parametrize(
    ("q", "names"),
    [
        ("避難", ["佐野市立避難所A", "赤見小学校体育館"]),  # two characters: LIKE
        ("避難所", ["佐野市立避難所A", "赤見小学校体育館"]),  # three: the trigram index
        ("体育館", ["赤見小学校体育館"]),
        ("station hall", ["Sano Station Hall"]),  # words all match, case-insensitive
        ("公民館 避難", []),
        ('{"name": "公民"}', ["城北公民館"]),  # one field
    ],
)
def test_q_finds_japanese_substrings(
    client: TestClient, shelters: str, q: str, names: list[str]
) -> None:
    result = search(client, resource_id=shelters, q=q)
    assert [r["name"] for r in result["records"]] == names
    assert result["total"] == len(names)


def test_full_text_is_q_over_every_text_field(client: TestClient, shelters: str) -> None:
    result = search(client, resource_id=shelters, full_text="体育", filters='{"open": true}')
    assert [r["name"] for r in result["records"]] == ["赤見小学校体育館"]
    assert result["full_text"] == "体育"


@pytest.mark.parametrize(
    "q", ['"', '避難"所', "a*b", "%", "_", "NEAR(a b)", "x OR y", "\\", "'; --"]
)
def test_q_with_query_syntax_characters_is_plain_text(
    client: TestClient, shelters: str, q: str
) -> None:
    result = search(client, resource_id=shelters, q=q)
    assert result["total"] == 0
    assert result["records"] == []


def test_sort_fields_limit_offset_and_links(client: TestClient, shelters: str) -> None:
    result = search(
        client,
        resource_id=shelters,
        sort="capacity desc, name",
        fields="name,capacity",
        limit="2",
        offset="1",
    )
    assert result["records"] == [
        {"name": "佐野市立避難所A", "capacity": 120},
        {"name": "城北公民館", "capacity": 80},
    ]
    assert result["fields"] == [{"id": "name", "type": "text"}, {"id": "capacity", "type": "int4"}]
    assert result["total"] == 4
    assert "offset=3" in result["_links"]["next"]
    # the next link is a working request
    nxt = client.get(result["_links"]["next"]).json()["result"]
    assert nxt["records"] == [{"name": "Sano Station Hall", "capacity": None}]


def test_records_formats(client: TestClient, shelters: str) -> None:
    base = {"resource_id": shelters, "fields": "name,open", "sort": "_id", "limit": 2}
    lists = search(client, **base, records_format="lists")
    assert lists["records"] == [["佐野市立避難所A", True], ["城北公民館", False]]
    csv_text = search(client, **base, records_format="csv")["records"]
    assert csv_text == "佐野市立避難所A,true\n城北公民館,false\n"
    tsv_text = search(client, **base, records_format="tsv")["records"]
    assert tsv_text == "佐野市立避難所A\ttrue\n城北公民館\tfalse\n"


def test_include_total_false_and_limit_cap(client: TestClient, shelters: str) -> None:
    result = search(client, resource_id=shelters, include_total="false", limit="100000")
    assert "total" not in result
    assert result["include_total"] is False
    assert result["limit"] == ds.MAX_LIMIT


def test_post_json_body_with_typed_values(client: TestClient, shelters: str) -> None:
    body = {"resource_id": shelters, "filters": {"open": True}, "limit": 1, "include_total": True}
    r = client.post(API + "datastore_search", json=body)
    assert r.status_code == 200
    result = r.json()["result"]
    assert result["total"] == 2
    assert len(result["records"]) == 1


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "key", "needle"),
    [
        ({"filters": '{"nope": 1}'}, "filters", "nope"),
        ({"filters": '{"capacity": "many"}'}, "filters", "capacity"),
        ({"filters": "not json"}, "filters", "JSON"),
        ({"sort": "nope desc"}, "sort", "nope"),
        ({"fields": "name,nope"}, "fields", "nope"),
        ({"limit": "-1"}, "limit", "natural"),
        ({"offset": "x"}, "offset", "natural"),
        ({"records_format": "xml"}, "records_format", "objects"),
        ({"include_total": "maybe"}, "include_total", "true or false"),
        ({"q": '{"nope": "x"}'}, "q", "nope"),
    ],
)
def test_bad_search_parameters_are_validation_errors(
    client: TestClient, shelters: str, params: dict[str, str], key: str, needle: str
) -> None:
    err = error(client, "datastore_search", {"resource_id": shelters, **params}, 409)
    assert err["__type"] == "Validation Error"
    assert needle in str(err[key])


def test_unknown_resource_is_not_found(client: TestClient) -> None:
    err = error(client, "datastore_search", {"resource_id": "no-such-table"}, 404)
    assert err["__type"] == "Not Found Error"
    assert error(client, "datastore_info", {"id": "no-such-table"}, 404)


def test_private_dataset_needs_a_user(client: TestClient) -> None:
    rid = dataset(client, "secret", private=True)
    call(client, "datastore_create", {"resource_id": rid, "records": [{"a": 1}]})
    assert error(client, "datastore_search", {"resource_id": rid}, 403)
    assert error(client, "datastore_info", {"id": rid}, 403)
    sql = {"sql": f'SELECT * FROM "{rid}"'}
    assert error(client, "datastore_search_sql", sql, 403)
    with pytest.raises(NotAuthorized):
        call(client, "datastore_search", {"resource_id": rid}, user=None)
    assert call(client, "datastore_search", {"resource_id": rid})["total"] == 1


def test_writes_need_a_user(client: TestClient, shelters: str) -> None:
    r = client.post(API + "datastore_upsert", json={"resource_id": shelters, "records": []})
    assert r.status_code == 403
    r = client.post(API + "datastore_delete", json={"resource_id": shelters})
    assert r.status_code == 403
    assert search(client, resource_id=shelters)["total"] == 4


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        ({"name": "X", "capacity": "lots"}, 'row 2: field "capacity"'),
        ({"name": "X", "open": "perhaps"}, 'row 2: field "open"'),
        ({"name": "X", "opened": "2024-13-40"}, 'row 2: field "opened"'),
        ({"name": "X", "colour": "red"}, 'row 2: field "colour" is not in the table'),
        ("not an object", "row 2: must be an object"),
    ],
)
def test_bad_record_inserts_nothing(
    client: TestClient, shelters: str, record: Any, needle: str
) -> None:
    with pytest.raises(ValidationError) as info:
        call(
            client,
            "datastore_upsert",
            {"resource_id": shelters, "method": "insert", "records": [{"name": "ok"}, record]},
        )
    assert needle in str(info.value.errors["records"])
    assert search(client, resource_id=shelters)["total"] == 4


def test_bad_field_declarations(client: TestClient) -> None:
    rid = dataset(client)
    for fields, needle in [
        ([{"id": "a", "type": "money"}], "money"),
        ([{"id": "_a", "type": "text"}], "reserved"),
        ([{"id": "a"}, {"id": "a"}], "twice"),
        ([{"id": 'a"b'}], "must not contain"),
    ]:
        with pytest.raises(ValidationError) as info:
            call(client, "datastore_create", {"resource_id": rid, "fields": fields})
        assert needle in str(info.value.errors["fields"])
    assert error(client, "datastore_search", {"resource_id": rid}, 404)


def test_failed_create_with_a_resource_dict_leaves_no_resource(client: TestClient) -> None:
    pkg = call(client, "package_create", {"name": "broken"})
    with pytest.raises(ValidationError):
        call(
            client,
            "datastore_create",
            {
                "resource": {"package_id": pkg["id"], "name": "bad"},
                "fields": [{"id": "n", "type": "int"}],
                "records": [{"n": 1}, {"n": "two"}],
            },
        )
    assert call(client, "package_show", {"id": pkg["id"]})["resources"] == []


def test_distinct_and_sort_by_id(client: TestClient, shelters: str) -> None:
    kinds = search(client, resource_id=shelters, fields="kind", distinct="true", sort="kind")
    assert [r["kind"] for r in kinds["records"]] == sorted({s["kind"] for s in SHELTERS})
    assert kinds["total"] == 3
    last = search(client, resource_id=shelters, sort="_id desc", limit=1)["records"][0]
    assert last["_id"] == 4


def test_duplicate_primary_key_on_create_changes_nothing(client: TestClient) -> None:
    rid = dataset(client)
    with pytest.raises(CkanError):
        call(
            client,
            "datastore_create",
            {"resource_id": rid, "records": [{"k": 1}, {"k": 1}], "primary_key": "k"},
        )
    assert error(client, "datastore_search", {"resource_id": rid}, 404)
    assert call(client, "resource_show", {"id": rid})["datastore_active"] is False


# -- upsert, delete, info --------------------------------------------------------------------


def test_upsert_update_and_insert(client: TestClient, shelters: str) -> None:
    call(
        client,
        "datastore_upsert",
        {
            "resource_id": shelters,
            "records": [
                {"name": "城北公民館", "capacity": 90},
                {"name": "新設避難所", "kind": "避難所", "capacity": 50},
            ],
        },
    )
    result = search(client, resource_id=shelters, filters='{"kind": "避難所"}', q="新設")
    assert [r["capacity"] for r in result["records"]] == [50]
    updated = search(client, resource_id=shelters, filters='{"name": "城北公民館"}')["records"][0]
    assert updated["capacity"] == 90
    assert updated["kind"] == "公民館"  # fields left out keep their value
    with pytest.raises(ValidationError) as info:
        call(
            client,
            "datastore_upsert",
            {
                "resource_id": shelters,
                "method": "update",
                "records": [{"name": "無い", "capacity": 1}],
            },
        )
    assert "not found" in str(info.value.errors)
    # the full-text index follows updates
    call(
        client,
        "datastore_upsert",
        {
            "resource_id": shelters,
            "method": "update",
            "records": [{"name": "城北公民館", "kind": "臨時避難所"}],
        },
    )
    assert search(client, resource_id=shelters, q="臨時避難")["total"] == 1


def test_repeated_search_totals_follow_writes(client: TestClient, shelters: str) -> None:
    params = {"resource_id": shelters, "filters": '{"kind": "避難所"}', "limit": 1}
    assert [search(client, **params)["total"] for _ in range(4)] == [2, 2, 2, 2]
    row = {"name": "新しい避難所", "kind": "避難所"}
    call(client, "datastore_upsert", {"resource_id": shelters, "records": [row]})
    assert [search(client, **params)["total"] for _ in range(4)] == [3, 3, 3, 3]
    call(client, "datastore_delete", {"resource_id": shelters, "filters": {"kind": "避難所"}})
    assert [search(client, **params)["total"] for _ in range(4)] == [0, 0, 0, 0]


def test_upsert_without_primary_key_needs_id(client: TestClient) -> None:
    rid = dataset(client)
    call(client, "datastore_create", {"resource_id": rid, "records": [{"a": "x"}]})
    with pytest.raises(ValidationError) as info:
        call(client, "datastore_upsert", {"resource_id": rid, "records": [{"a": "y"}]})
    assert "primary key" in str(info.value.errors["method"])
    call(client, "datastore_upsert", {"resource_id": rid, "records": [{"_id": 1, "a": "y"}]})
    assert search(client, resource_id=rid)["records"] == [{"_id": 1, "a": "y"}]


def test_delete_rows_by_filter_then_the_table(client: TestClient, shelters: str) -> None:
    call(client, "datastore_delete", {"resource_id": shelters, "filters": {"kind": "避難所"}})
    result = search(client, resource_id=shelters)
    assert [r["name"] for r in result["records"]] == ["城北公民館", "Sano Station Hall"]
    assert search(client, resource_id=shelters, q="避難所")["total"] == 0
    call(client, "datastore_delete", {"resource_id": shelters})
    assert error(client, "datastore_search", {"resource_id": shelters}, 404)
    assert call(client, "resource_show", {"id": shelters})["datastore_active"] is False


def test_info_describes_the_table(client: TestClient, shelters: str) -> None:
    r = client.get(API + "datastore_info", params={"id": shelters})
    info = r.json()["result"]
    assert info["meta"]["count"] == 4
    assert info["meta"]["primary_key"] == ["name"]
    assert [f["id"] for f in info["fields"]] == ["name", "kind", "capacity", "open", "opened"]
    assert info["fields"][0]["schema"]["uniquekey"] is True


def test_create_again_adds_fields_and_keeps_rows(client: TestClient, shelters: str) -> None:
    call(
        client,
        "datastore_create",
        {
            "resource_id": shelters,
            "fields": [{"id": "tags", "type": "_text"}, {"id": "extra", "type": "json"}],
            "records": [{"name": "追加", "tags": ["a", "b"], "extra": {"floors": 2}}],
            "aliases": "shelters-latest",
        },
    )
    result = search(client, resource_id="shelters-latest", filters='{"name": "追加"}')
    assert result["resource_id"] == shelters
    assert result["records"][0]["tags"] == ["a", "b"]
    assert result["records"][0]["extra"] == {"floors": 2}
    assert search(client, resource_id=shelters)["total"] == 5
    with pytest.raises(ValidationError):
        call(
            client,
            "datastore_create",
            {"resource_id": shelters, "fields": [{"id": "capacity", "type": "text"}]},
        )


def test_data_survives_a_restart(tmp_path: Path) -> None:
    with make_client(tmp_path) as c:
        rid = dataset(c)
        call(c, "datastore_create", {"resource_id": rid, "records": SHELTERS[:2]})
    with make_client(tmp_path) as c:
        assert (
            c.get(API + "datastore_search", params={"resource_id": rid, "q": "避難"}).json()[
                "result"
            ]["total"]
            == 1
        )


# -- the parser never fails with anything but a CKAN error -----------------------------------

TABLE = ds.Table(
    "t",
    (
        ds.Field("name", "text", "text"),
        ds.Field("n", "int4", "int"),
        ds.Field("x", "float8", "float"),
        ds.Field("ok", "bool", "bool"),
        ds.Field("d", "date", "date"),
        ds.Field("j", "json", "json"),
    ),
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
_param = st.one_of(
    st.text(max_size=30),
    _json_values,
    _json_values.map(lambda v: json.dumps(v)),
    st.dictionaries(
        st.sampled_from(["name", "n", "x", "ok", "d", "j", "_id", "zz"]), _json_values
    ).map(json.dumps),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "filters",
                "q",
                "sort",
                "fields",
                "limit",
                "offset",
                "records_format",
                "include_total",
                "distinct",
                "full_text",
            ]
        ),
        _param,
    )
)
def test_search_parser_raises_only_ckan_errors(params: dict[str, Any]) -> None:
    try:
        query = ds.parse_search(TABLE, params)
    except CkanError as exc:
        status = exc.status
    else:
        status = 200
        assert 0 <= query.limit <= ds.MAX_LIMIT
        assert all(c.field in (ds.ID_FIELD, *TABLE.fields) for c in query.conditions)
    assert status < 500


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["name", "n", "x", "ok", "d", "j", "zz", "_id"]), _json_values)
)
def test_record_coercion_raises_only_validation_errors(record: dict[str, Any]) -> None:
    fields = {f.id: f for f in TABLE.fields}
    try:
        stored = ds.coerce_record(fields, record, 1)
    except ValidationError as exc:
        message = str(exc.errors["records"])
    else:
        message = "row 1 stored"
        assert set(stored) <= set(fields)
    assert "row 1" in message


# -- over HTTP with a token, and ckanapi against a real server -------------------------------


def test_http_writes_with_an_api_token(client: TestClient) -> None:
    catalog = client.app.catalog  # type: ignore[attr-defined]
    assert client.portal is not None
    token = client.portal.call(catalog.meta.create_token, "editor")
    rid = dataset(client, "tokens")
    auth = {"Authorization": token}
    body = {"resource_id": rid, "fields": FIELDS, "records": SHELTERS, "primary_key": "name"}
    r = client.post(API + "datastore_create", json=body, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["result"]["primary_key"] == ["name"]
    r = client.post(
        API + "datastore_upsert",
        json={"resource_id": rid, "method": "insert", "records": [{"name": "城北公民館"}]},
        headers=auth,
    )
    assert r.status_code == 409  # the key exists already
    assert r.json()["error"]["__type"] == "Validation Error"
    r = client.post(API + "datastore_delete", json={"resource_id": rid}, headers=auth)
    assert r.status_code == 200
    assert error(client, "datastore_search", {"resource_id": rid}, 404)


@pytest.mark.server
def test_ckanapi_against_cityos_serve(tmp_path: Path) -> None:
    import ckanapi
    from conftest import make_token, running_server

    data = tmp_path / "data"
    token = make_token(data)
    with running_server(data) as base:
        ckan = ckanapi.RemoteCKAN(base, apikey=token)
        pkg = ckan.action.package_create(name="shelters")
        created = ckan.action.datastore_create(
            resource={"package_id": pkg["id"], "name": "避難所一覧"},
            fields=FIELDS,
            records=SHELTERS,
            primary_key=["name"],
        )
        rid = created["resource_id"]
        found = ckan.action.datastore_search(resource_id=rid, filters={"kind": "避難所"}, q="体育")
        assert [r["name"] for r in found["records"]] == ["赤見小学校体育館"]
        rows = ckan.action.datastore_search_sql(sql=f'SELECT count(*) AS n FROM "{rid}"')
        assert rows["records"] == [{"n": 4}]
        with pytest.raises(ckanapi.ValidationError):
            ckan.action.datastore_search(resource_id=rid, filters={"nope": 1})
        with pytest.raises(ckanapi.NotFound):
            ckan.action.datastore_search(resource_id="missing")
        anonymous = ckanapi.RemoteCKAN(base)
        with pytest.raises(ckanapi.NotAuthorized):
            anonymous.action.datastore_delete(resource_id=rid)
        assert anonymous.action.datastore_info(id=rid)["meta"]["count"] == 4


def test_a_table_downloads_whole_as_csv_and_tables_made_from_a_dict_point_there(
    client: TestClient,
) -> None:
    pkg = call(client, "package_create", {"name": "rivers"})
    records = [{"river": "秋山川", "level": i / 100} for i in range(25_000)]  # several pages
    out = call(
        client,
        "datastore_create",
        {"resource": {"package_id": pkg["id"], "name": "levels"}, "records": records},
    )
    rid = out["resource_id"]
    url = call(client, "resource_show", {"id": rid})["url"]
    assert url.endswith(f"/datastore/dump/{rid}")
    r = client.get(f"/datastore/dump/{rid}")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    text = r.content.decode("utf-8")
    assert text.startswith("\ufeff_id,river,level\r\n")
    lines = text.splitlines()
    assert len(lines) == 1 + 25_000
    assert lines[1] == "1,秋山川,0.0"
    assert lines[-1] == "25000,秋山川,249.99"
    tsv = client.get(f"/datastore/dump/{rid}", params={"format": "tsv", "bom": "false"})
    assert tsv.content.decode().startswith("_id\triver\tlevel\r\n")
    assert client.get(f"/datastore/dump/{rid}", params={"format": "xls"}).status_code == 400
    assert client.get("/datastore/dump/nope").status_code == 404


def test_a_private_table_dump_needs_a_token(client: TestClient) -> None:
    rid = dataset(client, "secret", private=True)
    call(client, "datastore_create", {"resource_id": rid, "records": [{"a": 1}]})
    assert client.get(f"/datastore/dump/{rid}").status_code == 403


def test_deleting_a_resource_or_its_dataset_drops_the_table(client: TestClient) -> None:
    store = client.app.catalog.datastore  # type: ignore[attr-defined]
    assert client.portal is not None
    rids = {}
    for name in ("resource-gone", "dataset-gone", "kept"):
        rids[name] = dataset(client, name)
        call(client, "datastore_create", {"resource_id": rids[name], "records": [{"a": 1}]})
        assert client.portal.call(store.table, rids[name]) is not None
    call(client, "resource_delete", {"id": rids["resource-gone"]})
    call(client, "package_delete", {"id": "dataset-gone"})
    assert client.portal.call(store.table, rids["resource-gone"]) is None
    assert client.portal.call(store.table, rids["dataset-gone"]) is None
    assert client.portal.call(store.table, rids["kept"]) is not None
    assert search(client, resource_id=rids["kept"])["total"] == 1
