"""MQTT south-bound ingestion through a real Mosquitto (127.0.0.1:1883)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import MQTT_HOST, MQTT_PORT, make_client, require_mosquitto, wait_for
from starlette.testclient import TestClient

from cityos.iot.mqtt import route

E = "/ngsi-ld/v1/entities"


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        ("/json/k1/dev1/attrs", b"{}", ("json", "k1", "dev1", None)),
        ("/ul/k1/dev1/attrs", b"t|1", ("ul", "k1", "dev1", None)),
        ("/json/k1/dev1/attrs/t", b"1", ("json", "k1", "dev1", "t")),
        ("/ul/k1/dev1/attrs/t", b"1", ("ul", "k1", "dev1", "t")),
        ("/k1/dev1/attrs", b' {"t": 1}', ("json", "k1", "dev1", None)),  # legacy: JSON body
        ("/k1/dev1/attrs", b"t|1", ("ul", "k1", "dev1", None)),  # legacy: UltraLight body
        ("/k1/dev1/attrs/t", b"{", ("ul", "k1", "dev1", "t")),  # a raw single value
        ("/json/k1/dev1/cmdexe", b"{}", None),
        ("json/k1/dev1/attrs", b"{}", None),
        ("/json//dev1/attrs", b"{}", None),
        ("/json/k1/dev1/attrs/", b"1", None),
    ],
)
def test_topics_route_like_the_iot_agents(
    topic: str, payload: bytes, expected: tuple[str, str, str, str | None] | None
) -> None:
    assert route(topic, payload) == expected


@pytest.fixture
def mqtt_app(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    require_mosquitto()
    key = f"k{uuid.uuid4().hex[:12]}"
    # a group of our own, so that no other cityos on this machine shares our messages
    with make_client(
        tmp_path, mqtt_url=f"mqtt://{MQTT_HOST}:{MQTT_PORT}", mqtt_group=f"g{key}"
    ) as c:
        wait_for(lambda: c.get("/iot/about").json()["mqtt"]["connected"], "subscribed")
        r = c.post(
            "/iot/groups",
            json={"groups": [{"apikey": key, "resource": "", "entity_type": "Thing"}]},
        )
        assert r.status_code == 201, r.text
        r = c.post(
            "/iot/devices",
            json={
                "devices": [
                    {
                        "device_id": "gauge001",
                        "entity_name": "urn:ngsi-ld:WaterObserved:mqtt-test",
                        "entity_type": "WaterObserved",
                        "attributes": [
                            {
                                "object_id": "l",
                                "name": "waterLevel",
                                "type": "Number",
                                "metadata": {"unitCode": {"type": "Text", "value": "MTR"}},
                            }
                        ],
                    }
                ]
            },
        )
        assert r.status_code == 201, r.text
        yield c, key


def publish(*messages: tuple[str, bytes | str]) -> None:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect(MQTT_HOST, MQTT_PORT)
    pub.loop_start()
    try:
        for topic, payload in messages:
            pub.publish(topic, payload, qos=1).wait_for_publish(timeout=5)
    finally:
        pub.loop_stop()
        pub.disconnect()


def level(c: TestClient) -> Any:
    r = c.get(f"{E}/urn:ngsi-ld:WaterObserved:mqtt-test", params={"options": "keyValues"})
    return r.json().get("waterLevel") if r.status_code == 200 else None


def test_json_measure_reaches_the_entity(mqtt_app: tuple[TestClient, str]) -> None:
    c, key = mqtt_app
    publish((f"/json/{key}/gauge001/attrs", '{"l": 1.25, "TimeInstant": "2019-10-12T08:00:00Z"}'))
    wait_for(lambda: level(c) == 1.25, "the measure")
    e = c.get(f"{E}/urn:ngsi-ld:WaterObserved:mqtt-test").json()
    assert e["waterLevel"]["unitCode"] == "MTR"
    assert e["waterLevel"]["observedAt"] == "2019-10-12T08:00:00.000000Z"


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        ("/ul/{key}/gauge001/attrs", "l|2.5", 2.5),
        ("/json/{key}/gauge001/attrs/l", "2.75", 2.75),
        ("/ul/{key}/gauge001/attrs/l", "3", 3),
        ("/{key}/gauge001/attrs", '{"l": 1.5}', 1.5),
        ("/{key}/gauge001/attrs", "l|1.75", 1.75),
    ],
)
def test_every_topic_form_is_understood(
    mqtt_app: tuple[TestClient, str], topic: str, payload: str, expected: float
) -> None:
    c, key = mqtt_app
    publish((topic.format(key=key), payload))
    wait_for(lambda: level(c) == expected, f"{topic} to arrive")


def test_bad_messages_change_nothing_and_are_counted(mqtt_app: tuple[TestClient, str]) -> None:
    c, key = mqtt_app
    publish(
        (f"/json/{key}/gauge001/attrs", '{"l": 1.0}'),
        (f"/json/{key}/gauge001/attrs", '{"l": "high", "x": 1}'),  # not a number: all refused
        (f"/json/{key}/gauge001/attrs", "{not json"),
        ("/json/nosuchkey/gauge001/attrs", '{"l": 9}'),
        (f"/json/{key}/gauge001/attrs", '{"l": 1.5}'),
    )
    wait_for(lambda: level(c) == 1.5, "the last good measure")
    history = c.get(
        "/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:WaterObserved:mqtt-test",
        params={"attrs": "waterLevel", "options": "temporalValues"},
    ).json()
    assert [v[0] for v in history["waterLevel"]["values"]] == [1.0, 1.5]
    expected = {"accepted": 2, "refused:BAD_REQUEST": 2, "refused:DEVICE_GROUP_NOT_FOUND": 1}
    # messages of other devices and keys are written concurrently: wait for all five
    wait_for(lambda: c.get("/iot/about").json()["measures"] == expected, "the counts")


def test_one_devices_burst_stays_in_order(mqtt_app: tuple[TestClient, str]) -> None:
    c, key = mqtt_app
    values = [round(0.01 * n, 2) for n in range(1, 201)]
    publish(*((f"/json/{key}/gauge001/attrs", f'{{"l": {v}}}') for v in values))
    wait_for(lambda: level(c) == values[-1], "the burst")
    history = c.get(
        "/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:WaterObserved:mqtt-test",
        params={"attrs": "waterLevel", "options": "temporalValues", "lastN": "1000"},
    ).json()
    assert [v[0] for v in history["waterLevel"]["values"]] == values


def test_a_reading_over_a_line_raises_the_alert(mqtt_app: tuple[TestClient, str]) -> None:
    c, key = mqtt_app
    gauge = {
        "id": "urn:ngsi-ld:WaterObserved:mqtt-test",
        "type": "WaterObserved",
        "standbyLevel": 1.6,
        "cautionLevel": 2.4,
        "evacuationJudgementLevel": 2.8,
        "dangerLevel": 3.2,
    }
    assert c.post(E, json=gauge).status_code == 201
    publish((f"/json/{key}/gauge001/attrs", '{"l": 3.3}'))
    alert = wait_for(
        lambda: (
            c.get(f"{E}/urn:ngsi-ld:Alert:flood-mqtt-test", params={"options": "keyValues"})
            .json()
            .get("floodAlertLevel")
        ),
        "the alert",
    )
    assert alert == 4
