"""The temporal API over HTTP (GS CIM 009 clauses 6.18 to 6.24)."""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import make_client, sensor
from starlette.testclient import TestClient

from cityos.broker import clock
from cityos.broker.temporal import Retention, to_micros
from cityos.storage import engines

E = "/ngsi-ld/v1/entities"
T = "/ngsi-ld/v1/temporal/entities"
Q = "/ngsi-ld/v1/temporal/entityOperations/query"
SID = "urn:ngsi-ld:WaterLevelObserved:akiyama-1"
PROBLEM = "https://uri.etsi.org/ngsi-ld/errors/"
T0 = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def problem(resp: Any, status: int, kind: str, mentions: str = "") -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["type"] == PROBLEM + kind
    assert mentions in body["detail"]
    return body


def level(value: float, at: datetime, **extra: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, "observedAt": iso(at), **extra}


def gauge(eid: str = SID, levels: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Return a temporal entity payload for POST /temporal/entities."""
    return {
        "id": eid,
        "type": "WaterLevelObserved",
        "waterLevel": levels or [level(1.0, T0)],
    }


def patch_level(client: TestClient, value: float, at: str | None = None) -> None:
    attr: dict[str, Any] = {"type": "Property", "value": value}
    if at is not None:
        attr["observedAt"] = at
    r = client.patch(f"{E}/{SID}/attrs", json={"waterLevel": attr})
    assert r.status_code == 204, r.text


def values(client: TestClient, **params: Any) -> list[list[Any]]:
    r = client.get(f"{T}/{SID}", params={"options": "temporalValues", **params})
    assert r.status_code == 200, r.text
    wl = r.json().get("waterLevel")
    return [] if wl is None else list(wl["values"])


# -- recording -------------------------------------------------------------------------------
def test_every_change_is_recorded_once_with_observed_at_or_change_time(
    client: TestClient,
) -> None:
    client.post(E, json=sensor(level=1.5))
    patch_level(client, 1.6, "2026-11-25T11:00:00Z")
    patch_level(client, 1.6, "2026-11-25T11:00:00Z")  # the same: nothing new to record
    before = clock.now()
    patch_level(client, 1.8)  # no observedAt: recorded at the time of the change
    after = clock.now()
    got = client.get(f"{T}/{SID}").json()
    wl = got["waterLevel"]
    assert [i["value"] for i in wl] == [1.5, 1.6, 1.8]
    assert wl[0]["observedAt"] == "2026-11-25T10:00:00Z"
    assert "observedAt" not in wl[2]
    assert len({i["instanceId"] for i in wl}) == 3
    t = values(client)[2][1]
    assert to_micros(before) <= to_micros(t) <= to_micros(after)
    # attributes the updates did not touch were recorded once, at creation
    assert len(got["name"]) == 1
    assert got["refRiver"] == [
        {
            "type": "Relationship",
            "object": "urn:ngsi-ld:River:akiyama",
            "instanceId": got["refRiver"][0]["instanceId"],
        }
    ]


def test_a_refused_update_records_no_history(client: TestClient) -> None:
    client.post(E, json=sensor(level=1.5))
    r = client.post(E, json=sensor(level=9.9))  # AlreadyExists: nothing written
    problem(r, 409, "AlreadyExists")
    r = client.patch(
        f"{E}/{SID}/attrs/waterLevel", json={"type": "Property", "value": 9.9, "observedAt": "x"}
    )
    problem(r, 400, "BadRequestData")
    assert [v[0] for v in values(client)] == [1.5]


def test_deleting_the_entity_keeps_its_history_until_deleted_temporally(
    client: TestClient,
) -> None:
    client.post(E, json=sensor(level=1.5))
    assert client.delete(f"{E}/{SID}").status_code == 204
    assert [v[0] for v in values(client)] == [1.5]
    assert client.delete(f"{T}/{SID}").status_code == 204
    problem(client.get(f"{T}/{SID}"), 404, "ResourceNotFound", SID)
    problem(client.delete(f"{T}/{SID}"), 404, "ResourceNotFound", SID)


# -- time filters ----------------------------------------------------------------------------
def hourly(client: TestClient, n: int = 6) -> None:
    pts = [level(float(h), T0 + timedelta(hours=h)) for h in range(n)]
    assert client.post(T, json=gauge(levels=pts)).status_code == 201


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"timerel": "before", "timeAt": "2026-11-25T02:00:00Z"}, [0.0, 1.0]),
        ({"timerel": "after", "timeAt": "2026-11-25T03:00:00Z"}, [4.0, 5.0]),
        (
            {
                "timerel": "between",
                "timeAt": "2026-11-25T01:00:00Z",
                "endTimeAt": "2026-11-25T03:00:00Z",
            },
            [1.0, 2.0],
        ),
        ({"timerel": "after", "timeAt": "2026-11-25T10:00:00+09:00"}, [2.0, 3.0, 4.0, 5.0]),
        ({"lastN": "2"}, [4.0, 5.0]),
        ({"timerel": "before", "timeAt": "2026-11-25T04:00:00Z", "lastN": "3"}, [1.0, 2.0, 3.0]),
        ({}, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]),
    ],
)
def test_timerel_and_last_n_select_instances(
    client: TestClient, query: dict[str, str], expected: list[float]
) -> None:
    hourly(client)
    assert [v[0] for v in values(client, **query)] == expected


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"timeAt": "2026-11-25T01:00:00Z"}, "timerel"),
        ({"endTimeAt": "2026-11-25T01:00:00Z"}, "timerel"),
        ({"timerel": "before"}, "timeAt"),
        ({"timerel": "between", "timeAt": "2026-11-25T01:00:00Z"}, "endTimeAt"),
        (
            {
                "timerel": "between",
                "timeAt": "2026-11-25T03:00:00Z",
                "endTimeAt": "2026-11-25T01:00:00Z",
            },
            "endTimeAt",
        ),
        ({"timerel": "during", "timeAt": "2026-11-25T01:00:00Z"}, "timerel"),
        ({"timerel": "after", "timeAt": "yesterday"}, "timeAt"),
        ({"timeproperty": "deletedAt"}, "timeproperty"),
        ({"lastN": "0"}, "lastN"),
        ({"lastN": "many"}, "lastN"),
        ({"aggrMethods": "avg"}, "aggrMethods"),
        ({"options": "aggregatedValues"}, "aggrMethods"),
        ({"options": "aggregatedValues", "aggrMethods": "median"}, "aggrMethods"),
        (
            {"options": "aggregatedValues", "aggrMethods": "avg", "aggrPeriodDuration": "1h"},
            "aggrPeriodDuration",
        ),
        (
            {"options": "aggregatedValues", "aggrMethods": "avg", "aggrPeriodDuration": "PT0S"},
            "aggrPeriodDuration",
        ),
        ({"options": "temporalValues,aggregatedValues", "aggrMethods": "avg"}, "options"),
        ({"options": "keyValues"}, "options"),
        ({"since": "yesterday"}, "since"),
    ],
)
def test_bad_temporal_parameters_are_refused_naming_the_parameter(
    client: TestClient, query: dict[str, str], field: str
) -> None:
    hourly(client)
    problem(client.get(f"{T}/{SID}", params=query), 400, "BadRequestData", field)
    problem(client.get(T, params={"type": "WaterLevelObserved", **query}), 400, "BadRequestData")


def test_timeproperty_created_and_modified_at(client: TestClient) -> None:
    hourly(client, 3)
    inst = client.get(f"{T}/{SID}", params={"options": "sysAttrs"}).json()["waterLevel"]
    created = max(i["createdAt"] for i in inst)
    assert all(i["createdAt"] == i["modifiedAt"] for i in inst)
    target = inst[1]["instanceId"]
    r = client.patch(f"{T}/{SID}/attrs/waterLevel/{target}", json={"value": 42.0})
    assert r.status_code == 204, r.text
    changed = values(client, timeproperty="modifiedAt", timerel="after", timeAt=created)
    assert [v[0] for v in changed] == [42.0]
    assert to_micros(changed[0][1]) > to_micros(created)
    by_creation = values(client, timeproperty="createdAt", timerel="before", timeAt=created)
    assert by_creation == []
    assert len(values(client, timeproperty="createdAt", timerel="after", timeAt=iso(T0))) == 3


# -- representations ---------------------------------------------------------------------
def test_temporal_values_of_relationships_and_datasets(client: TestClient) -> None:
    payload = {
        "id": SID,
        "type": "WaterLevelObserved",
        "refRiver": [
            {"type": "Relationship", "object": "urn:ngsi-ld:River:a", "observedAt": iso(T0)},
            {
                "type": "Relationship",
                "object": "urn:ngsi-ld:River:b",
                "observedAt": iso(T0 + timedelta(hours=1)),
            },
        ],
        "waterLevel": [
            level(1.0, T0),
            level(2.0, T0, datasetId="urn:ngsi-ld:Dataset:backup"),
        ],
    }
    assert client.post(T, json=payload).status_code == 201
    got = client.get(f"{T}/{SID}", params={"options": "temporalValues"}).json()
    assert got["refRiver"] == {
        "type": "Relationship",
        "objects": [
            ["urn:ngsi-ld:River:a", iso(T0)],
            ["urn:ngsi-ld:River:b", iso(T0 + timedelta(hours=1))],
        ],
    }
    assert got["waterLevel"] == [
        {"type": "Property", "values": [[1.0, iso(T0)]]},
        {
            "type": "Property",
            "datasetId": "urn:ngsi-ld:Dataset:backup",
            "values": [[2.0, iso(T0)]],
        },
    ]
    only = client.get(
        f"{T}/{SID}", params={"datasetId": "urn:ngsi-ld:Dataset:backup", "attrs": "waterLevel"}
    ).json()
    assert [i["value"] for i in only["waterLevel"]] == [2.0]
    assert "refRiver" not in only


# -- aggregation -------------------------------------------------------------------------
POINTS = [1.2, 3.4, 3.4, 0.5, 7.25, 2.0, 9.5, 4.0, 4.0, 6.75, 1.0, 8.0]


def test_aggregated_values_match_independent_computation(client: TestClient) -> None:
    # 12 points, one every 20 minutes: three per hour over four hours
    pts = [level(v, T0 + timedelta(minutes=20 * i)) for i, v in enumerate(POINTS)]
    assert client.post(T, json=gauge(levels=pts)).status_code == 201
    methods = "totalCount,distinctCount,sum,avg,min,max,stddev,sumsq"
    r = client.get(
        f"{T}/{SID}",
        params={
            "options": "aggregatedValues",
            "aggrMethods": methods,
            "aggrPeriodDuration": "PT1H",
            "timerel": "after",
            "timeAt": iso(T0 - timedelta(seconds=1)),
        },
    )
    assert r.status_code == 200, r.text
    wl = r.json()["waterLevel"]
    assert wl["type"] == "Property"
    start = T0 - timedelta(seconds=1)
    for hour in range(4):
        chunk = POINTS[3 * hour : 3 * hour + 3]
        b0 = iso(start + timedelta(hours=hour))
        b1 = iso(start + timedelta(hours=hour + 1))
        expected = {
            "totalCount": len(chunk),
            "distinctCount": len(set(chunk)),
            "sum": math.fsum(chunk),
            "avg": statistics.mean(chunk),
            "min": min(chunk),
            "max": max(chunk),
            "stddev": statistics.pstdev(chunk),
            "sumsq": math.fsum(x * x for x in chunk),
        }
        for method, value in expected.items():
            got = wl[method][hour]
            assert got[1:] == [b0, b1], method
            assert got[0] == pytest.approx(value, rel=1e-9, abs=1e-9), method


def test_aggregation_over_the_whole_range_and_by_type(client: TestClient) -> None:
    for n in (1, 2):
        eid = f"urn:ngsi-ld:WaterLevelObserved:akiyama-{n}"
        pts = [level(v * n, T0 + timedelta(minutes=i)) for i, v in enumerate(POINTS)]
        client.post(T, json=gauge(eid, pts))
    r = client.get(
        T,
        params={
            "type": "WaterLevelObserved",
            "options": "aggregatedValues",
            "aggrMethods": "avg,max,totalCount",
        },
    )
    assert r.status_code == 200, r.text
    by_id = {e["id"]: e["waterLevel"] for e in r.json()}
    for n in (1, 2):
        wl = by_id[f"urn:ngsi-ld:WaterLevelObserved:akiyama-{n}"]
        assert wl["avg"] == [
            [
                pytest.approx(statistics.mean(POINTS) * n),
                iso(T0),
                iso(T0 + timedelta(minutes=len(POINTS) - 1)),
            ]
        ]
        assert wl["max"][0][0] == max(POINTS) * n
        assert wl["totalCount"][0][0] == len(POINTS)


def test_calendar_month_periods(client: TestClient) -> None:
    jan31 = datetime(2026, 1, 31, tzinfo=UTC)
    pts = [
        level(1.0, jan31 + timedelta(days=1)),  # Feb 1: first period (Jan 31 - Feb 28)
        level(3.0, datetime(2026, 2, 27, 23, tzinfo=UTC)),
        level(10.0, datetime(2026, 2, 28, tzinfo=UTC)),  # second period (Feb 28 - Mar 31)
    ]
    client.post(T, json=gauge(levels=pts))
    r = client.get(
        f"{T}/{SID}",
        params={
            "options": "aggregatedValues",
            "aggrMethods": "sum",
            "aggrPeriodDuration": "P1M",
            "timerel": "between",
            "timeAt": iso(jan31),
            "endTimeAt": "2026-04-30T00:00:00Z",
        },
    )
    assert r.json()["waterLevel"]["sum"] == [
        [4.0, "2026-01-31T00:00:00Z", "2026-02-28T00:00:00Z"],
        [10.0, "2026-02-28T00:00:00Z", "2026-03-31T00:00:00Z"],
    ]


def test_non_numeric_values_are_counted_only(client: TestClient) -> None:
    pts = [
        {"type": "Property", "value": v, "observedAt": iso(T0 + timedelta(minutes=i))}
        for i, v in enumerate(["high", "low", "high"])
    ]
    client.post(T, json={"id": SID, "type": "WaterLevelObserved", "alert": pts})
    r = client.get(
        f"{T}/{SID}",
        params={"options": "aggregatedValues", "aggrMethods": "totalCount,distinctCount,avg"},
    )
    alert = r.json()["alert"]
    assert alert["totalCount"][0][0] == 3
    assert alert["distinctCount"][0][0] == 2
    assert alert["avg"] == []


# -- paging ------------------------------------------------------------------------------
def test_long_histories_are_paged_with_content_range(client: TestClient) -> None:
    pts = [level(float(i), T0 + timedelta(minutes=i)) for i in range(1500)]
    assert client.post(T, json=gauge(levels=pts)).status_code == 201
    r = client.get(f"{T}/{SID}", params={"options": "temporalValues"})
    assert r.status_code == 206
    got = r.json()["waterLevel"]["values"]
    assert len(got) == 1000
    end = iso(T0 + timedelta(minutes=999))
    assert r.headers["content-range"] == f"date-time {iso(T0)}-{end}/*"
    r = client.get(
        f"{T}/{SID}", params={"options": "temporalValues", "timerel": "after", "timeAt": end}
    )
    assert r.status_code == 200
    rest = r.json()["waterLevel"]["values"]
    assert [v[0] for v in got + rest] == [float(i) for i in range(1500)]
    # lastN beyond the page size: the newest 1000, range from newest to oldest
    r = client.get(f"{T}/{SID}", params={"options": "temporalValues", "lastN": "1200"})
    assert r.status_code == 206
    newest = r.json()["waterLevel"]["values"]
    assert [v[0] for v in newest] == [float(i) for i in range(500, 1500)]
    first, last = iso(T0 + timedelta(minutes=1499)), iso(T0 + timedelta(minutes=500))
    assert r.headers["content-range"] == f"date-time {first}-{last}/*"


def test_a_page_cuts_every_attribute_at_the_same_instant(client: TestClient) -> None:
    pts = [level(float(i), T0 + timedelta(minutes=i)) for i in range(1001)]
    other = [
        {"type": "Property", "value": i, "observedAt": iso(T0 + timedelta(minutes=i, seconds=30))}
        for i in range(1001)
    ]
    client.post(T, json={**gauge(levels=pts), "flow": other})
    r = client.get(f"{T}/{SID}", params={"options": "temporalValues"})
    assert r.status_code == 206
    body = r.json()
    cut = iso(T0 + timedelta(minutes=999))
    assert body["waterLevel"]["values"][-1][1] == cut
    assert body["flow"]["values"][-1][1] < cut
    assert r.headers["content-range"].endswith(f"-{cut}/*")


# -- temporal writes -------------------------------------------------------------------------
def test_post_creates_then_adds_instances_without_touching_the_current_entity(
    client: TestClient,
) -> None:
    r = client.post(T, json=gauge())
    assert r.status_code == 201
    assert r.headers["location"] == f"{T}/{SID}"
    r = client.post(T, json=gauge(levels=[level(2.0, T0 + timedelta(hours=1))]))
    assert r.status_code == 204
    assert [v[0] for v in values(client)] == [1.0, 2.0]
    assert client.get(f"{E}/{SID}").status_code == 404
    problem(
        client.post(T, json={"id": SID, "waterLevel": [level(1, T0)]}),
        400,
        "BadRequestData",
        "type",
    )
    problem(client.post(T, json={**gauge(), "waterLevel": []}), 400, "BadRequestData", "water")


def test_add_attribute_instances(client: TestClient) -> None:
    client.post(T, json=gauge())
    r = client.post(f"{T}/{SID}/attrs", json={"waterLevel": level(5.0, T0 + timedelta(hours=2))})
    assert r.status_code == 204, r.text
    assert [v[0] for v in values(client)] == [1.0, 5.0]
    r = client.post(f"{T}/urn:ngsi-ld:X:none/attrs", json={"waterLevel": level(1.0, T0)})
    problem(r, 404, "ResourceNotFound", "urn:ngsi-ld:X:none")


def test_delete_attribute_instances_by_dataset(client: TestClient) -> None:
    ds = "urn:ngsi-ld:Dataset:backup"
    pts = [level(1.0, T0), level(2.0, T0, datasetId=ds), level(3.0, T0, datasetId=ds)]
    client.post(T, json={**gauge(levels=pts), "flow": [level(7.0, T0)]})
    assert client.delete(f"{T}/{SID}/attrs/waterLevel").status_code == 204
    left = client.get(f"{T}/{SID}").json()["waterLevel"]
    assert [i["value"] for i in left] == [2.0, 3.0]
    assert client.delete(f"{T}/{SID}/attrs/waterLevel", params={"datasetId": ds}).status_code == 204
    got = client.get(f"{T}/{SID}").json()
    assert "waterLevel" not in got
    assert len(got["flow"]) == 1
    problem(client.delete(f"{T}/{SID}/attrs/waterLevel"), 404, "ResourceNotFound", "waterLevel")
    assert client.delete(f"{T}/{SID}/attrs/flow", params={"deleteAll": "true"}).status_code == 204
    problem(
        client.delete(f"{T}/{SID}/attrs/flow", params={"deleteAll": "maybe"}),
        400,
        "BadRequestData",
        "deleteAll",
    )


def test_modify_and_delete_one_instance(client: TestClient) -> None:
    hourly(client, 3)
    inst = client.get(f"{T}/{SID}").json()["waterLevel"]
    iid = inst[0]["instanceId"]
    url = f"{T}/{SID}/attrs/waterLevel/{iid}"
    moved = iso(T0 + timedelta(hours=5))
    r = client.patch(url, json={"waterLevel": [{"value": 9.0, "observedAt": moved}]})
    assert r.status_code == 204, r.text
    assert values(client) == [
        [1.0, iso(T0 + timedelta(hours=1))],
        [2.0, iso(T0 + timedelta(hours=2))],
        [9.0, moved],
    ]
    assert client.delete(url).status_code == 204
    assert [v[0] for v in values(client)] == [1.0, 2.0]
    problem(client.delete(url), 404, "ResourceNotFound", iid)
    problem(client.patch(url, json={"value": 1}), 404, "ResourceNotFound", iid)
    problem(
        client.delete(f"{T}/{SID}/attrs/waterLevel/urn:other:1"), 404, "ResourceNotFound", "urn"
    )
    problem(client.delete(f"{T}/{SID}/attrs/waterLevel/not%20a%20uri"), 400, "BadRequestData")
    problem(
        client.delete(f"{T}/urn:ngsi-ld:X:none/attrs/waterLevel/{iid}"), 404, "ResourceNotFound"
    )
    r = client.patch(f"{T}/{SID}/attrs/waterLevel/{inst[1]['instanceId']}", json={"observedAt": 5})
    problem(r, 400, "BadRequestData", "observedAt")


# -- queries -----------------------------------------------------------------------------
def test_query_filters_on_history_and_current_state(client: TestClient) -> None:
    for n, lv in ((1, 1.0), (2, 5.0), (3, 9.0)):
        client.post(E, json=sensor(n, level=lv))
    client.post(
        T, json={"id": "urn:ngsi-ld:River:akiyama", "type": "River", "flow": [level(3.0, T0)]}
    )

    def ids(**params: Any) -> list[str]:
        r = client.get(T, params=params)
        assert r.status_code == 200, r.text
        return [e["id"] for e in r.json()]

    sid = "urn:ngsi-ld:WaterLevelObserved:akiyama-"
    assert ids(type="WaterLevelObserved") == [f"{sid}1", f"{sid}2", f"{sid}3"]
    assert ids(type="River") == ["urn:ngsi-ld:River:akiyama"]
    assert ids(type="River,WaterLevelObserved", idPattern="-2$") == [f"{sid}2"]
    assert ids(id=f"{sid}3,urn:ngsi-ld:River:akiyama") == [f"{sid}3", "urn:ngsi-ld:River:akiyama"]
    assert ids(attrs="flow") == ["urn:ngsi-ld:River:akiyama"]
    assert ids(type="WaterLevelObserved", q="waterLevel>4") == [f"{sid}2", f"{sid}3"]
    near = {
        "georel": "near;maxDistance==50",
        "geometry": "Point",
        "coordinates": "[139.5803,36.3144]",
    }
    assert ids(type="WaterLevelObserved", **near) == [f"{sid}2"]
    r = client.get(T, params={"type": "WaterLevelObserved", "limit": "2", "count": "true"})
    assert r.headers["ngsild-results-count"] == "3"
    assert 'rel="next"' in r.headers["link"]
    assert "offset=2" in r.headers["link"]
    assert ids(type="WaterLevelObserved", limit="2", offset="2") == [f"{sid}3"]
    only = client.get(T, params={"type": "WaterLevelObserved", "attrs": "waterLevel"}).json()
    assert all(set(e) == {"id", "type", "waterLevel"} for e in only)


def test_post_query_with_temporal_q(client: TestClient) -> None:
    hourly(client)
    body = {
        "type": "Query",
        "entities": [{"type": "WaterLevelObserved"}],
        "attrs": ["waterLevel"],
        "temporalQ": {"timerel": "before", "timeAt": "2026-11-25T02:00:00Z"},
    }
    r = client.post(Q, json=body, params={"options": "temporalValues"})
    assert r.status_code == 200, r.text
    assert [v[0] for v in r.json()[0]["waterLevel"]["values"]] == [0.0, 1.0]
    body["temporalQ"] = {"timerel": "before", "time": "2026-11-25T02:00:00Z"}
    problem(client.post(Q, json=body), 400, "BadRequestData", "temporalQ")
    body["temporalQ"] = {"timerel": "before"}
    problem(client.post(Q, json=body), 400, "BadRequestData", "timeAt")


# -- tenants and retention -----------------------------------------------------------------
def test_tenants_have_separate_histories(client: TestClient) -> None:
    a, b = {"NGSILD-Tenant": "sano"}, {"NGSILD-Tenant": "ashikaga"}
    assert client.post(T, json=gauge(levels=[level(1.0, T0)]), headers=a).status_code == 201
    problem(client.get(f"{T}/{SID}", headers=b), 404, "NonexistentTenant", "ashikaga")
    client.post(E, json=sensor(level=7.0), headers=b)
    got_b = client.get(f"{T}/{SID}", headers=b).json()
    assert [i["value"] for i in got_b["waterLevel"]] == [7.0]
    got_a = client.get(f"{T}/{SID}", headers=a).json()
    assert [i["value"] for i in got_a["waterLevel"]] == [1.0]
    problem(client.get(f"{T}/{SID}"), 404, "ResourceNotFound", SID)
    assert client.delete(f"{T}/{SID}", headers=a).status_code == 204
    assert client.get(f"{T}/{SID}", headers=b).status_code == 200


def test_retention_prunes_old_instances(client: TestClient) -> None:
    hourly(client, 4)
    pruner = Retention(engines.history_reader(client.app.broker.store), 3600)  # type: ignore[attr-defined]
    now = to_micros("2026-11-25T02:30:00Z")
    assert client.portal.call(pruner.prune, now) == 2  # type: ignore[union-attr]
    assert [v[0] for v in values(client)] == [2.0, 3.0]
    assert client.portal.call(pruner.prune, now) == 0  # type: ignore[union-attr]


def test_retention_setting_prunes_at_start(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    pts = [level(1.0, now - timedelta(days=3)), level(2.0, now - timedelta(hours=1))]
    with make_client(tmp_path) as c:
        c.post(T, json=gauge(levels=pts))
        assert len(c.get(f"{T}/{SID}").json()["waterLevel"]) == 2
    with make_client(tmp_path, history_retention=86400) as c:
        assert [i["value"] for i in c.get(f"{T}/{SID}").json()["waterLevel"]] == [2.0]
