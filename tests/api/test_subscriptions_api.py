"""Subscriptions over HTTP (GS CIM 009 v1.8 clauses 5.8, 6.10-6.11), sent to a real receiver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import Receiver, make_client, sensor
from starlette.testclient import TestClient

from cityos.broker.api.subscriptions import periodic_of, sender_of
from cityos.broker.notify import Periodic

S = "/ngsi-ld/v1/subscriptions"
E = "/ngsi-ld/v1/entities"
SID = "urn:ngsi-ld:WaterLevelObserved:akiyama-1"
PROBLEM = "https://uri.etsi.org/ngsi-ld/errors/"


# -- a clock the test moves ----------------------------------------------------------------
class FakeClock:
    """A monotonic clock that only moves when the test says so."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.waiters: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append((self.t + seconds, fut))
        await fut

    def advance(self, seconds: float) -> None:
        """Move time on (run on the app's event loop)."""
        self.t += seconds
        for entry in list(self.waiters):
            due, fut = entry
            if due <= self.t:
                self.waiters.remove(entry)
                if not fut.done():
                    fut.set_result(None)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for background delivery to reach a state (polls; the state is not time-based)."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out waiting for delivery"
        time.sleep(0.01)


def fake_clock(client: TestClient) -> FakeClock:
    clock = FakeClock()
    sender_of(client.app.broker).clock = clock  # type: ignore[attr-defined]
    return clock


def advance(client: TestClient, clock: FakeClock, seconds: float) -> None:
    assert client.portal is not None
    client.portal.call(clock.advance, seconds)


def subscription(uri: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "Subscription",
        "entities": [{"type": "WaterLevelObserved"}],
        "notification": {"endpoint": {"uri": uri}},
    }
    for key, value in extra.items():
        if key == "notification":
            body["notification"] = {**body["notification"], **value}
        else:
            body[key] = value
    return body


def subscribe(client: TestClient, body: dict[str, Any], **headers: str) -> str:
    r = client.post(S, json=body, headers=headers)
    assert r.status_code == 201, r.text
    location: str = r.headers["location"]
    return location.rsplit("/", 1)[1]


def set_level(client: TestClient, level: float, entity_id: str = SID) -> None:
    r = client.patch(f"{E}/{entity_id}/attrs", json={"waterLevel": {"value": level}})
    assert r.status_code == 204, r.text


def levels(notes: list[dict[str, Any]]) -> list[float]:
    return [d["waterLevel"]["value"] for n in notes for d in n["data"]]


def problem(resp: Any, status: int, kind: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["type"] == PROBLEM + kind
    return body


# -- CRUD -------------------------------------------------------------------------------------
def test_create_retrieve_update_delete(client: TestClient, receiver: Receiver) -> None:
    body = subscription(
        receiver.url,
        id="urn:ngsi-ld:Subscription:river",
        subscriptionName="river alarm",
        watchedAttributes=["waterLevel"],
        q="waterLevel>3",
        notification={"attributes": ["waterLevel"], "format": "keyValues"},
    )
    r = client.post(S, json=body)
    assert r.status_code == 201
    assert r.headers["location"] == f"{S}/urn:ngsi-ld:Subscription:river"
    got = client.get(f"{S}/urn:ngsi-ld:Subscription:river").json()
    assert got["id"] == "urn:ngsi-ld:Subscription:river"
    assert got["type"] == "Subscription"
    assert got["subscriptionName"] == "river alarm"
    assert got["entities"] == [{"type": "WaterLevelObserved"}]
    assert got["watchedAttributes"] == ["waterLevel"]
    assert got["q"] == "waterLevel>3"
    assert got["isActive"] is True
    assert got["status"] == "active"
    assert got["notificationTrigger"] == ["attributeCreated", "attributeUpdated"]
    note = got["notification"]
    assert note["attributes"] == ["waterLevel"]
    assert note["format"] == "keyValues"
    assert note["endpoint"] == {"uri": receiver.url, "accept": "application/json"}
    assert note["timesSent"] == 0
    assert note["timesFailed"] == 0
    assert "lastNotification" not in note

    r = client.post(S, json=body)
    problem(r, 409, "AlreadyExists")

    r = client.patch(
        f"{S}/urn:ngsi-ld:Subscription:river", json={"isActive": False, "throttling": 5}
    )
    assert r.status_code == 204, r.text
    got = client.get(f"{S}/urn:ngsi-ld:Subscription:river").json()
    assert got["isActive"] is False
    assert got["status"] == "paused"
    assert got["throttling"] == 5
    assert got["q"] == "waterLevel>3"  # untouched members stay

    assert client.delete(f"{S}/urn:ngsi-ld:Subscription:river").status_code == 204
    problem(client.get(f"{S}/urn:ngsi-ld:Subscription:river"), 404, "ResourceNotFound")
    problem(client.delete(f"{S}/urn:ngsi-ld:Subscription:river"), 404, "ResourceNotFound")
    problem(client.patch(f"{S}/urn:ngsi-ld:Subscription:river", json={}), 404, "ResourceNotFound")


def test_list_pages_with_count_and_is_tenant_scoped(client: TestClient, receiver: Receiver) -> None:
    ids = [subscribe(client, subscription(receiver.url)) for _ in range(5)]
    subscribe(client, subscription(receiver.url), **{"NGSILD-Tenant": "sano"})
    r = client.get(S, params={"limit": 2, "offset": 1, "count": "true"})
    assert r.status_code == 200
    assert [s["id"] for s in r.json()] == ids[1:3]
    assert r.headers["NGSILD-Results-Count"] == "5"
    assert "offset=3" in r.headers["Link"]
    assert len(client.get(S, headers={"NGSILD-Tenant": "sano"}).json()) == 1
    problem(client.get(f"{S}/{ids[0]}", headers={"NGSILD-Tenant": "sano"}), 404, "ResourceNotFound")


def test_a_context_compacts_what_it_expanded(client: TestClient, receiver: Receiver) -> None:
    ctx = {"WaterLevelObserved": "https://example.org/WLO", "level": "https://example.org/lv"}
    body = subscription(receiver.url, watchedAttributes=["level"], **{"@context": ctx})
    r = client.post(S, json=body, headers={"Content-Type": "application/ld+json"})
    assert r.status_code == 201, r.text
    sub_id = r.headers["location"].rsplit("/", 1)[1]
    plain = client.get(f"{S}/{sub_id}").json()
    assert plain["entities"] == [{"type": "https://example.org/WLO"}]
    assert plain["watchedAttributes"] == ["https://example.org/lv"]


@pytest.mark.parametrize(
    ("change", "member"),
    [
        ({"type": "Thing"}, "type"),
        ({"entities": []}, "entities"),
        ({"entities": [{"id": "urn:x:1"}]}, "entities[0].type"),
        ({"entities": [{"type": "T", "id": "not a uri"}]}, "entities[0].id"),
        ({"entities": [{"type": "T", "idPattern": "(a"}]}, "entities[0].idPattern"),
        ({"entities": [{"type": "T", "colour": "red"}]}, "entities[0].colour"),
        ({"watchedAttributes": []}, "watchedAttributes"),
        ({"watchedAttributes": [3]}, "watchedAttributes"),
        ({"notificationTrigger": ["entityExploded"]}, "notificationTrigger"),
        ({"q": "waterLevel>>3"}, "q"),
        ({"scopeQ": "//"}, "scopeQ"),
        ({"geoQ": {"georel": "near;maxDistance==10", "geometry": "Point"}}, "geoQ.coordinates"),
        ({"geoQ": {"georel": "inside", "geometry": "Circle", "coordinates": [1, 2]}}, "geoQ."),
        ({"lang": 7}, "lang"),
        ({"throttling": -1}, "throttling"),
        ({"timeInterval": "often"}, "timeInterval"),
        ({"expiresAt": "tomorrow"}, "expiresAt"),
        ({"isActive": "yes"}, "isActive"),
        ({"status": "active"}, "status"),
        ({"jsonldContext": "not a uri"}, "jsonldContext"),
        ({"colour": "red"}, "colour"),
        ({"notification": {"endpoint": {"uri": "ftp://x/y"}}}, "notification.endpoint.uri"),
        ({"notification": {"endpoint": {"uri": "mqtt://h"}}}, "notification.endpoint.uri"),
        ({"notification": {"format": "pretty"}}, "notification.format"),
        ({"notification": {"attributes": "waterLevel"}}, "notification.attributes"),
        ({"notification": {"sysAttrs": "true"}}, "notification.sysAttrs"),
        ({"notification": {"showChanges": 1}}, "notification.showChanges"),
        ({"notification": {"timesSent": 3}}, "notification.timesSent"),
        (
            {"notification": {"endpoint": {"uri": "http://x/y", "accept": "text/plain"}}},
            "notification.endpoint.accept",
        ),
        (
            {"notification": {"endpoint": {"uri": "http://x/y", "receiverInfo": [{"key": "A"}]}}},
            "notification.endpoint.receiverInfo[0]",
        ),
        (
            {
                "notification": {
                    "endpoint": {
                        "uri": "mqtt://x/y",
                        "notifierInfo": [{"key": "MQTT-QoS", "value": "3"}],
                    }
                }
            },
            "notification.endpoint.notifierInfo",
        ),
        ({"timeInterval": 60, "watchedAttributes": ["waterLevel"]}, "watchedAttributes"),
        ({"timeInterval": 60, "throttling": 5}, "throttling"),
    ],
)
def test_invalid_subscriptions_name_the_member(
    client: TestClient, change: dict[str, Any], member: str
) -> None:
    body = subscription("http://127.0.0.1:9/n")
    if "notification" in change:
        note = change["notification"]
        body["notification"] = {**body["notification"], **note}
        if "endpoint" not in note:
            body["notification"]["endpoint"] = {"uri": "http://127.0.0.1:9/n"}
    else:
        body.update(change)
    detail = problem(client.post(S, json=body), 400, "BadRequestData")["detail"]
    # the project's query-language errors read "Invalid <member>: ..."
    assert detail.removeprefix("Invalid ").startswith(member), detail
    assert client.get(S).json() == []


def test_missing_notification_and_selectors_are_refused(client: TestClient) -> None:
    r = client.post(S, json={"type": "Subscription", "entities": [{"type": "T"}]})
    assert problem(r, 400, "BadRequestData")["detail"].startswith("notification")
    r = client.post(
        S, json={"type": "Subscription", "notification": {"endpoint": {"uri": "http://x/y"}}}
    )
    assert problem(r, 400, "BadRequestData")["detail"].startswith("entities")


# -- delivery ---------------------------------------------------------------------------------
def test_changes_notify_with_the_standard_payload(client: TestClient, receiver: Receiver) -> None:
    sub_id = subscribe(
        client,
        subscription(
            receiver.url,
            notification={
                "endpoint": {
                    "uri": receiver.url,
                    "receiverInfo": [{"key": "X-City", "value": "Sano"}],
                }
            },
        ),
        **{"NGSILD-Tenant": "sano"},
    )
    assert client.post(E, json=sensor(), headers={"NGSILD-Tenant": "sano"}).status_code == 201
    (note,) = receiver.wait(1)
    assert note["type"] == "Notification"
    assert note["id"].startswith("urn:ngsi-ld:Notification:")
    assert note["subscriptionId"] == sub_id
    assert note["notifiedAt"].endswith("Z")
    (entity,) = note["data"]
    assert entity["id"] == SID
    assert entity["type"] == "WaterLevelObserved"
    assert entity["waterLevel"]["value"] == 1.5
    headers = receiver.headers[0]
    assert headers["Content-Type"] == "application/json"
    assert "ngsi-ld-core-context" in headers["Link"]
    assert headers["NGSILD-Tenant"] == "sano"
    assert headers["X-City"] == "Sano"
    wait_until(
        lambda: (
            client.get(f"{S}/{sub_id}", headers={"NGSILD-Tenant": "sano"}).json()["notification"][
                "timesSent"
            ]
            == 1
        )
    )
    got = client.get(f"{S}/{sub_id}", headers={"NGSILD-Tenant": "sano"}).json()["notification"]
    assert got["status"] == "ok"
    assert got["lastSuccess"] == got["lastNotification"]
    assert got["timesFailed"] == 0


def test_ld_json_notifications_carry_the_context(client: TestClient, receiver: Receiver) -> None:
    subscribe(
        client,
        subscription(
            receiver.url,
            notification={"endpoint": {"uri": receiver.url, "accept": "application/ld+json"}},
        ),
    )
    client.post(E, json=sensor())
    (note,) = receiver.wait(1)
    assert "ngsi-ld-core-context" in str(note["@context"])
    assert receiver.headers[0]["Content-Type"] == "application/ld+json"


def test_watched_attributes_q_and_type_filter_changes(
    client: TestClient, receiver: Receiver
) -> None:
    subscribe(
        client,
        subscription(receiver.url, watchedAttributes=["waterLevel"], q="waterLevel>3"),
    )
    client.post(E, json=sensor(level=1.0))  # q false: no notification
    client.post(
        E,
        json={
            "id": "urn:ngsi-ld:Shelter:1",
            "type": "Shelter",
            "waterLevel": {"type": "Property", "value": 9},
        },
    )  # another type
    r = client.patch(f"{E}/{SID}/attrs", json={"name": {"value": "renamed"}})
    assert r.status_code == 204  # not watched
    set_level(client, 3.5)
    set_level(client, 2.0)  # q false again
    set_level(client, 4.5)
    notes = receiver.wait(2)
    assert levels(notes) == [3.5, 4.5]


def test_id_pattern_and_geo_query_select_entities(client: TestClient, receiver: Receiver) -> None:
    subscribe(
        client,
        subscription(
            receiver.url,
            entities=[{"type": "WaterLevelObserved", "idPattern": "akiyama-[23]$"}],
            geoQ={
                "georel": "near;maxDistance==150",
                "geometry": "Point",
                "coordinates": [139.5813, 36.3144],
            },
        ),
    )
    for n in (1, 2, 3, 5):
        client.post(E, json=sensor(n))  # 2 and 3 match the pattern; 3 is ~0 m, 2 ~90 m away
    client.post(E, json=sensor(6))
    set_level(client, 7.0, "urn:ngsi-ld:WaterLevelObserved:akiyama-2")
    notes = receiver.wait(3)
    assert [n["data"][0]["id"][-1] for n in notes] == ["2", "3", "2"]


def test_formats_attributes_and_show_changes(client: TestClient, receiver: Receiver) -> None:
    kv_id = subscribe(
        client,
        subscription(
            receiver.url,
            notification={"format": "keyValues", "attributes": ["waterLevel"]},
        ),
    )
    concise_id = subscribe(
        client,
        subscription(receiver.url, notification={"format": "concise", "sysAttrs": True}),
    )
    changes_id = subscribe(
        client,
        subscription(
            receiver.url,
            watchedAttributes=["waterLevel"],
            notification={"showChanges": True, "attributes": ["waterLevel"]},
        ),
    )
    client.post(E, json=sensor(level=1.0))
    set_level(client, 2.0)
    notes = receiver.wait(6)
    by_format: dict[str, list[dict[str, Any]]] = {}
    for n in notes:
        by_format.setdefault(n["subscriptionId"], []).append(n["data"][0])
    kv, concise, changes = by_format[kv_id], by_format[concise_id], by_format[changes_id]
    assert kv[-1] == {"id": SID, "type": "WaterLevelObserved", "waterLevel": 2.0}
    assert concise[-1]["waterLevel"]["value"] == 2.0
    assert "type" not in concise[-1]["waterLevel"]
    assert concise[-1]["name"]["value"] == "秋山川 1"
    assert "type" not in concise[-1]["name"]
    assert "modifiedAt" in concise[-1]
    assert changes[-1]["waterLevel"]["previousValue"] == 1.0
    assert changes[-1]["waterLevel"]["value"] == 2.0
    assert "previousValue" not in changes[0]["waterLevel"]


def test_delete_triggers(client: TestClient, receiver: Receiver) -> None:
    subscribe(
        client,
        subscription(receiver.url, notificationTrigger=["entityDeleted", "attributeDeleted"]),
    )
    client.post(E, json=sensor())
    client.post(E, json=sensor(2))
    assert client.delete(f"{E}/{SID}/attrs/name").status_code == 204
    assert client.delete(f"{E}/{SID}").status_code == 204
    # a purge reaches the subscription too
    r = client.delete(E, params={"type": "WaterLevelObserved"})
    assert r.status_code == 204
    notes = receiver.wait(3)
    attr_deleted, deleted, purged = (n["data"][0] for n in notes)
    assert attr_deleted["name"]["value"] == "urn:ngsi-ld:null"
    assert attr_deleted["waterLevel"]["value"] == 1.5
    assert deleted == {"id": SID, "type": "WaterLevelObserved", "deletedAt": deleted["deletedAt"]}
    assert purged["id"] == "urn:ngsi-ld:WaterLevelObserved:akiyama-2"


def test_paused_and_expired_subscriptions_stay_quiet(
    client: TestClient, receiver: Receiver
) -> None:
    paused = subscribe(client, subscription(receiver.url, isActive=False))
    expired = subscribe(client, subscription(receiver.url, expiresAt="2020-01-01T00:00:00Z"))
    assert client.get(f"{S}/{expired}").json()["status"] == "expired"
    live = subscribe(client, subscription(receiver.url))
    client.post(E, json=sensor())
    set_level(client, 2.0)
    # the live subscription's second notification arrives after anything the others sent
    notes = receiver.wait(2)
    assert {n["subscriptionId"] for n in notes} == {live}
    assert client.patch(f"{S}/{paused}", json={"isActive": True}).status_code == 204
    set_level(client, 3.0)
    notes = receiver.wait(4)
    assert sorted(n["subscriptionId"] for n in notes[2:]) == sorted([live, paused])


# -- delivery you can trust -------------------------------------------------------------------
def test_a_receiver_down_then_up_gets_everything_in_order(
    client: TestClient, receiver: Receiver
) -> None:
    clock = fake_clock(client)
    sub_id = subscribe(client, subscription(receiver.url, watchedAttributes=["waterLevel"]))
    receiver.status = 503
    client.post(E, json=sensor(level=0.5))
    for level in (1.0, 2.0, 3.0, 4.0):
        set_level(client, level)
    # the worker retries with back-off: 1 s, 2 s, 4 s ... capped at 60 s
    for _ in range(8):
        wait_until(lambda: bool(clock.waiters))
        advance(client, clock, 60)
    wait_until(lambda: bool(clock.waiters))
    status = client.get(f"{S}/{sub_id}").json()["notification"]
    assert status["timesFailed"] == 9
    assert status["status"] == "failed"
    assert "lastSuccess" not in status
    assert receiver.received == []
    receiver.status = 204
    advance(client, clock, 60)
    notes = receiver.wait(5)
    assert levels(notes) == [0.5, 1.0, 2.0, 3.0, 4.0]
    wait_until(lambda: client.get(f"{S}/{sub_id}").json()["notification"]["timesSent"] == 14)
    status = client.get(f"{S}/{sub_id}").json()["notification"]
    assert status["status"] == "ok"
    assert status["timesFailed"] == 9
    assert status["lastSuccess"] > status["lastFailure"]


def test_a_dead_receiver_does_not_block_others(client: TestClient, receiver: Receiver) -> None:
    fake_clock(client)
    dead = subscribe(client, subscription("http://127.0.0.1:9/nobody-listens"))
    subscribe(client, subscription(receiver.url))
    client.post(E, json=sensor(level=0.5))
    for level in (1.0, 2.0):
        set_level(client, level)
    assert levels(receiver.wait(3)) == [0.5, 1.0, 2.0]
    wait_until(lambda: client.get(f"{S}/{dead}").json()["notification"]["timesFailed"] >= 1)


def test_a_restart_mid_stream_loses_nothing(tmp_path: Path, receiver: Receiver) -> None:
    receiver.status = 503
    with make_client(tmp_path) as c1:
        fake_clock(c1)  # failed attempts wait for a clock that never moves
        subscribe(c1, subscription(receiver.url, watchedAttributes=["waterLevel"]))
        c1.post(E, json=sensor(level=0.5))
        for level in (1.0, 2.0):
            set_level(c1, level)
    assert receiver.received == []
    receiver.status = 204
    with make_client(tmp_path) as c2:
        for level in (3.0, 4.0):
            set_level(c2, level)
        assert levels(receiver.wait(5)) == [0.5, 1.0, 2.0, 3.0, 4.0]


def test_deleting_a_subscription_drops_its_queue(client: TestClient, receiver: Receiver) -> None:
    clock = fake_clock(client)
    receiver.status = 503
    doomed = subscribe(client, subscription(receiver.url))
    client.post(E, json=sensor())
    wait_until(lambda: bool(clock.waiters))
    assert client.delete(f"{S}/{doomed}").status_code == 204
    receiver.status = 204
    advance(client, clock, 60)
    kept = subscribe(client, subscription(receiver.url))
    set_level(client, 9.0)
    (note,) = receiver.wait(1)
    assert note["subscriptionId"] == kept


def test_throttling_sends_what_was_queued_as_one_notification(
    client: TestClient, receiver: Receiver
) -> None:
    clock = fake_clock(client)
    subscribe(client, subscription(receiver.url, throttling=10))
    client.post(E, json=sensor(level=0.5))
    receiver.wait(1)
    for level in (1.0, 2.0, 3.0):
        set_level(client, level)
    sender = sender_of(client.app.broker)  # type: ignore[attr-defined]
    wait_until(lambda: sender.backlog() == 3)
    wait_until(lambda: bool(clock.waiters))  # the worker waits for the period to pass
    advance(client, clock, 5)
    assert len(receiver.received) == 1
    advance(client, clock, 5)
    notes = receiver.wait(2)
    assert levels(notes) == [0.5, 1.0, 2.0, 3.0]
    assert len(notes) == 2


# -- periodic notifications (timeInterval) ----------------------------------------------------
T0 = 1_900_000_000.0  # the wall-clock time (POSIX seconds, in 2030) periodic tests start at
DRY = "urn:ngsi-ld:WaterLevelObserved:dry"


def periodic(client: TestClient) -> Periodic:
    """Return the periodic notifier with its loop stopped: from now on the test tells the time."""
    p = periodic_of(client.app.broker)  # type: ignore[attr-defined]
    assert client.portal is not None
    client.portal.call(p.stop)
    return p


def tick(client: TestClient, p: Periodic, now: float) -> int:
    assert client.portal is not None
    queued: int = client.portal.call(p.tick, now)
    return queued


def at(posix: float) -> str:
    return datetime.fromtimestamp(posix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def by_id(note: dict[str, Any]) -> dict[str, float]:
    return {d["id"].rsplit("-", 1)[1]: d["waterLevel"]["value"] for d in note["data"]}


def test_time_interval_notifies_the_current_state_each_interval_not_on_changes(
    client: TestClient, receiver: Receiver
) -> None:
    p = periodic(client)
    for n, level in ((1, 1.0), (2, 2.0), (3, 7.0)):
        assert client.post(E, json=sensor(n, level=level)).status_code == 201
    client.post(E, json={"id": "urn:ngsi-ld:Shelter:1", "type": "Shelter"})
    sub_id = subscribe(client, subscription(receiver.url, timeInterval=60, q="waterLevel<5"))
    assert client.get(f"{S}/{sub_id}").json()["timeInterval"] == 60
    assert tick(client, p, T0) == 0  # the first interval starts
    set_level(client, 1.5)  # changes do not notify
    client.post(E, json=sensor(4, level=4.0))
    assert tick(client, p, T0 + 59) == 0
    assert tick(client, p, T0 + 60) == 1
    (note,) = receiver.wait(1)  # a change notification would have been queued before it
    assert note["type"] == "Notification"
    assert note["subscriptionId"] == sub_id
    assert by_id(note) == {"1": 1.5, "2": 2.0, "4": 4.0}  # 3 fails q, the shelter the type
    set_level(client, 3.0)
    assert tick(client, p, T0 + 90) == 0
    assert tick(client, p, T0 + 120) == 1
    notes = receiver.wait(2)
    assert by_id(notes[1]) == {"1": 3.0, "2": 2.0, "4": 4.0}
    # rounds missed (a suspended host) are skipped, not sent in a burst
    assert tick(client, p, T0 + 250) == 1
    assert tick(client, p, T0 + 299) == 0
    # nothing matches: nothing is sent
    assert client.delete(E, params={"type": "WaterLevelObserved"}).status_code == 204
    assert tick(client, p, T0 + 300) == 0
    assert len(receiver.wait(3)) == 3


def test_time_interval_respects_attributes_format_and_selectors(
    client: TestClient, receiver: Receiver
) -> None:
    p = periodic(client)
    for n in (1, 2, 3):
        client.post(E, json=sensor(n, level=float(n)))
    client.post(E, json={"id": DRY, "type": "WaterLevelObserved", "name": {"value": "dry"}})
    kv = subscribe(
        client,
        subscription(
            receiver.url,
            timeInterval=10,
            notification={
                "format": "keyValues",
                "attributes": ["waterLevel"],
                "endpoint": {"uri": receiver.url, "accept": "application/ld+json"},
            },
        ),
    )
    concise = subscribe(
        client,
        subscription(
            receiver.url,
            timeInterval=10,
            entities=[
                {"type": "WaterLevelObserved", "id": "urn:ngsi-ld:WaterLevelObserved:akiyama-2"},
                {"type": "WaterLevelObserved", "idPattern": "akiyama-[12]$"},
            ],
            notification={"format": "concise", "sysAttrs": True},
        ),
    )
    tick(client, p, T0)
    assert tick(client, p, T0 + 10) == 2
    notes = {n["subscriptionId"]: n for n in receiver.wait(2)}
    kv_note = notes[kv]
    assert "ngsi-ld-core-context" in str(kv_note["@context"])
    # only entities with one of the attributes, and only those attributes
    assert sorted(kv_note["data"], key=lambda d: str(d["id"])) == [
        {"id": f"urn:ngsi-ld:WaterLevelObserved:akiyama-{n}", "type": "WaterLevelObserved"}
        | {"waterLevel": float(n)}
        for n in (1, 2, 3)
    ]
    data = notes[concise]["data"]
    assert sorted(d["id"][-1] for d in data) == ["1", "2"]  # selectors' union, no duplicates
    assert all("modifiedAt" in d and "type" not in d["waterLevel"] for d in data)
    assert data[0]["name"]["value"].startswith("秋山川")
    ld = [h for h, n in zip(receiver.headers, receiver.received, strict=True) if n is kv_note]
    assert ld[0]["Content-Type"] == "application/ld+json"


def test_time_interval_stops_when_paused_expired_or_deleted(
    client: TestClient, receiver: Receiver
) -> None:
    p = periodic(client)
    client.post(E, json=sensor())
    paused = subscribe(client, subscription(receiver.url, timeInterval=60))
    expiring = subscribe(client, subscription(receiver.url, timeInterval=60, expiresAt=at(T0 + 90)))
    doomed = subscribe(client, subscription(receiver.url, timeInterval=60))
    assert tick(client, p, T0) == 0
    assert tick(client, p, T0 + 60) == 3
    assert {n["subscriptionId"] for n in receiver.wait(3)} == {paused, expiring, doomed}
    assert client.patch(f"{S}/{paused}", json={"isActive": False}).status_code == 204
    assert client.delete(f"{S}/{doomed}").status_code == 204
    assert tick(client, p, T0 + 120) == 0
    assert tick(client, p, T0 + 180) == 0
    assert client.patch(f"{S}/{paused}", json={"isActive": True}).status_code == 204
    set_level(client, 8.0)
    assert tick(client, p, T0 + 200) == 0  # resuming starts a fresh interval ...
    assert tick(client, p, T0 + 240) == 0  # ... rather than keeping the paused schedule
    assert tick(client, p, T0 + 260) == 1
    notes = receiver.wait(4)
    assert notes[3]["subscriptionId"] == paused
    assert levels(notes[3:]) == [8.0]


def test_time_interval_refuses_change_only_members_on_update(client: TestClient) -> None:
    watched = subscribe(client, subscription("http://127.0.0.1:9/n", watchedAttributes=["x"]))
    r = client.patch(f"{S}/{watched}", json={"timeInterval": 60})
    assert problem(r, 400, "BadRequestData")["detail"].startswith("watchedAttributes")
    timed = subscribe(client, subscription("http://127.0.0.1:9/n", timeInterval=60))
    r = client.patch(f"{S}/{timed}", json={"throttling": 5})
    assert problem(r, 400, "BadRequestData")["detail"].startswith("throttling")
    assert "throttling" not in client.get(f"{S}/{timed}").json()


def test_periodic_notifications_reach_a_receiver_down_then_up_in_order(
    client: TestClient, receiver: Receiver
) -> None:
    clock = fake_clock(client)
    p = periodic(client)
    receiver.status = 503
    client.post(E, json=sensor(level=1.0))
    sub_id = subscribe(client, subscription(receiver.url, timeInterval=60))
    tick(client, p, T0)
    for n, level in enumerate((2.0, 3.0, 4.0), 1):
        set_level(client, level)
        assert tick(client, p, T0 + 60 * n) == 1
    for _ in range(3):
        wait_until(lambda: bool(clock.waiters))  # the worker waits to retry
        advance(client, clock, 60)
    # the attempt the last advance started has failed too: the worker sleeps again, so no
    # attempt is in flight when the receiver comes back
    wait_until(lambda: bool(clock.waiters))
    assert client.get(f"{S}/{sub_id}").json()["notification"]["timesFailed"] >= 3
    assert receiver.received == []
    receiver.status = 204
    wait_until(lambda: bool(clock.waiters))
    advance(client, clock, 60)
    assert levels(receiver.wait(3)) == [2.0, 3.0, 4.0]


def test_periodic_notifications_survive_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    receiver.status = 503
    with make_client(tmp_path) as c1:
        fake_clock(c1)  # failed attempts wait for a clock that never moves
        p = periodic(c1)
        c1.post(E, json=sensor(level=1.0))
        sub_id = subscribe(c1, subscription(receiver.url, timeInterval=60))
        tick(c1, p, T0)
        for n, level in enumerate((2.0, 3.0), 1):
            set_level(c1, level)
            assert tick(c1, p, T0 + 60 * n) == 1
        wait_until(lambda: c1.get(f"{S}/{sub_id}").json()["notification"]["timesFailed"] >= 1)
    assert receiver.received == []
    receiver.status = 204
    with make_client(tmp_path) as c2:
        assert levels(receiver.wait(2)) == [2.0, 3.0]
        assert c2.get(f"{S}/{sub_id}").json()["timeInterval"] == 60


def test_the_broker_runs_periodic_notifications_on_its_own(
    client: TestClient, receiver: Receiver
) -> None:
    client.post(E, json=sensor(level=1.0))
    sub_id = subscribe(client, subscription(receiver.url, timeInterval=0.1))
    notes = receiver.wait(2)  # the background loop on the wall clock, no test tick
    assert [n["subscriptionId"] for n in notes[:2]] == [sub_id, sub_id]
    assert levels(notes[:2]) == [1.0, 1.0]


def test_lang_picks_the_language_of_notified_language_properties(
    client: TestClient, receiver: Receiver
) -> None:
    subscribe(client, subscription(receiver.url, lang="en", notification={"format": "keyValues"}))
    label = {"type": "LanguageProperty", "languageMap": {"ja": "秋山川", "en": "Akiyama River"}}
    client.post(E, json=sensor(level=1.0, label=label))
    (note,) = receiver.wait(1)
    assert note["data"][0]["label"] == "Akiyama River"


def test_a_long_outage_keeps_memory_bounded_and_loses_nothing(
    client: TestClient, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cityos.broker import notify

    monkeypatch.setattr(notify, "MAX_QUEUE", 3)
    clock = fake_clock(client)
    subscribe(client, subscription(receiver.url, watchedAttributes=["waterLevel"]))
    receiver.status = 503
    client.post(E, json=sensor(level=0.0))
    for level in range(1, 12):
        set_level(client, float(level))
    wait_until(lambda: bool(clock.waiters))  # the first attempt failed; back-off waits
    sender = sender_of(client.app.broker)  # type: ignore[attr-defined]
    assert sender.backlog() <= 3  # the other notifications wait in the outbox, not in memory
    receiver.status = 204
    advance(client, clock, 60)
    notes = receiver.wait(12)
    assert levels(notes) == [float(n) for n in range(12)]
