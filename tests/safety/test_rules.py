"""The server derives a gauge's alert level and its Alert, and a shelter's crowding, on write."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

E = "/ngsi-ld/v1/entities"
GAUGE = "urn:ngsi-ld:WaterObserved:sano-test-gauge"
ALERT = "urn:ngsi-ld:Alert:flood-sano-test-gauge"
SHELTER = "urn:ngsi-ld:EvacuationShelter:sano-test-school"


def gauge(level: float, **extra: Any) -> dict[str, Any]:
    def metres(v: float) -> dict[str, Any]:
        return {"type": "Property", "value": v, "unitCode": "MTR"}

    return {
        "id": GAUGE,
        "type": "WaterObserved",
        "name": {"type": "LanguageProperty", "languageMap": {"ja": "秋山川 試験", "en": "Test"}},
        "waterLevel": {**metres(level), "observedAt": "2019-10-12T08:00:00Z"},
        "standbyLevel": metres(1.6),
        "cautionLevel": metres(2.4),
        "evacuationJudgementLevel": metres(2.8),
        "dangerLevel": metres(3.2),
        **extra,
    }


def reading(c: TestClient, level: float, at: str = "2019-10-12T09:00:00Z") -> None:
    r = c.patch(
        f"{E}/{GAUGE}/attrs",
        json={"waterLevel": {"type": "Property", "value": level, "observedAt": at}},
    )
    assert r.status_code == 204, r.text


def derived(c: TestClient) -> tuple[str, int]:
    e = c.get(f"{E}/{GAUGE}", params={"options": "keyValues"}).json()
    return e["levelStatus"], e["floodAlertLevel"]


def test_levels_follow_readings_up_and_down_with_hysteresis(client: TestClient) -> None:
    assert client.post(E, json=gauge(1.0)).status_code == 201
    assert derived(client) == ("normal", 0)
    assert client.get(f"{E}/{ALERT}").status_code == 404  # nothing to announce yet
    steps = [
        (1.7, ("standby", 0)),
        (2.4, ("caution", 2)),  # exactly on the line reaches it
        (2.38, ("caution", 2)),  # bouncing just below the line holds the level
        (2.9, ("evacuationJudgement", 3)),
        (3.25, ("danger", 4)),
        (3.17, ("danger", 4)),
        (3.1, ("evacuationJudgement", 3)),
        (1.0, ("normal", 0)),  # a steep fall clears several levels at once
    ]
    for level, expected in steps:
        reading(client, level)
        assert derived(client) == expected, level


def test_alert_entity_is_raised_escalated_and_cleared(client: TestClient) -> None:
    assert client.post(E, json=gauge(2.5)).status_code == 201
    alert = client.get(f"{E}/{ALERT}", params={"options": "keyValues"}).json()
    assert alert["type"] == "Alert"
    assert alert["floodAlertLevel"] == 2
    assert alert["severity"] == "low"
    assert alert["alertSource"] == GAUGE
    assert alert["description"].startswith("秋山川 試験: 氾濫注意水位に到達（警戒レベル2相当）")
    assert alert["validFrom"] == {"@type": "DateTime", "@value": "2019-10-12T08:00:00Z"}
    reading(client, 3.3, "2019-10-12T10:00:00Z")
    alert = client.get(f"{E}/{ALERT}", params={"options": "keyValues"}).json()
    assert (alert["floodAlertLevel"], alert["severity"]) == (4, "high")
    assert alert["data"] == {"change": "escalated", "fromLevel": 2, "toLevel": 4}
    assert alert["validFrom"]["@value"] == "2019-10-12T08:00:00Z"  # the episode's start stays
    reading(client, 0.9, "2019-10-13T02:00:00Z")
    alert = client.get(f"{E}/{ALERT}", params={"options": "keyValues"}).json()
    assert alert["floodAlertLevel"] == 0
    assert alert["validTo"]["@value"] == "2019-10-13T02:00:00Z"
    # current alerts are one query away
    current = client.get(E, params={"type": "Alert", "q": "floodAlertLevel>0"}).json()
    assert current == []


def test_overflow_reported_is_level_5(client: TestClient) -> None:
    assert client.post(E, json=gauge(3.0)).status_code == 201
    r = client.post(f"{E}/{GAUGE}/attrs", json={"overflowReported": True, "waterLevel": 3.0})
    assert r.status_code == 204, r.text
    assert derived(client) == ("overflow", 5)
    alert = client.get(f"{E}/{ALERT}", params={"options": "keyValues"}).json()
    assert alert["severity"] == "critical"


def test_gauge_without_reference_levels_is_left_alone(client: TestClient) -> None:
    doc = gauge(5.0)
    del doc["dangerLevel"]
    assert client.post(E, json=doc).status_code == 201
    e = client.get(f"{E}/{GAUGE}", params={"options": "keyValues"}).json()
    assert "floodAlertLevel" not in e
    assert "levelStatus" not in e


def test_failed_batch_element_leaves_no_alert(client: TestClient) -> None:
    # the reading and its Alert commit together: a refused reading leaves neither
    bad = gauge(3.5)
    bad["waterLevel"]["observedAt"] = "not a time"
    r = client.post(f"{E[:-9]}/entityOperations/create", json=[bad])
    assert r.status_code in (207, 400), r.text
    assert client.get(f"{E}/{ALERT}").status_code == 404
    assert client.get(f"{E}/{GAUGE}").status_code == 404


def test_history_records_derived_levels(client: TestClient) -> None:
    assert client.post(E, json=gauge(1.0)).status_code == 201
    for level in (2.5, 2.9, 3.3):
        reading(client, level)
    r = client.get(
        f"/ngsi-ld/v1/temporal/entities/{GAUGE}",
        params={"attrs": "floodAlertLevel", "options": "temporalValues"},
    )
    assert [v[0] for v in r.json()["floodAlertLevel"]["values"]] == [0, 2, 3, 4]


def shelter(**extra: Any) -> dict[str, Any]:
    return {
        "id": SHELTER,
        "type": "EvacuationShelter",
        "capacity": {"type": "Property", "value": 200},
        "occupancy": {"type": "Property", "value": 0},
        "openingStatus": {"type": "Property", "value": "closed"},
        **extra,
    }


def test_shelter_crowding_follows_occupancy(client: TestClient) -> None:
    assert client.post(E, json=shelter()).status_code == 201

    def crowding() -> Any:
        return (
            client.get(f"{E}/{SHELTER}", params={"options": "keyValues"})
            .json()
            .get("crowdingLevel")
        )

    assert crowding() is None  # closed: 利用停止中, no crowding shown
    client.patch(f"{E}/{SHELTER}/attrs", json={"openingStatus": "open"})
    assert crowding() == "vacant"
    for occupancy, expected in (
        (59, "vacant"),
        (60, "slightlyCrowded"),
        (119, "slightlyCrowded"),
        (120, "crowded"),
        (159, "crowded"),
        (160, "full"),
        (230, "full"),
    ):
        r = client.patch(f"{E}/{SHELTER}/attrs", json={"occupancy": occupancy})
        assert r.status_code == 204, r.text
        assert crowding() == expected, occupancy
    client.patch(f"{E}/{SHELTER}/attrs", json={"openingStatus": "closed"})
    assert crowding() is None
