"""Notification delivery through a real MQTT broker (Mosquitto on 127.0.0.1:1883)."""

from __future__ import annotations

import queue
import uuid
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from conftest import MQTT_HOST, MQTT_PORT, require_mosquitto, sensor
from starlette.testclient import TestClient

from cityos.broker.notify import backoff

S = "/ngsi-ld/v1/subscriptions"
E = "/ngsi-ld/v1/entities"


def _mosquitto() -> None:
    require_mosquitto()


def test_backoff_doubles_up_to_a_cap() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff(30) == 60.0


@pytest.mark.parametrize(("version", "qos"), [("mqtt3.1.1", "0"), ("mqtt5.0", "1")])
def test_mqtt_subscription_reaches_a_real_subscriber(
    client: TestClient, version: str, qos: str
) -> None:
    _mosquitto()
    topic = f"cityos/test/{uuid.uuid4()}"
    got: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
    subscribed: queue.Queue[bool] = queue.Queue()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda _c, _u, msg: got.put((msg.qos, orjson.loads(msg.payload)))
    sub.on_subscribe = lambda *_: subscribed.put(True)
    sub.on_connect = lambda c, *_: c.subscribe(topic, qos=2)
    sub.connect(MQTT_HOST, MQTT_PORT)
    sub.loop_start()
    try:
        assert subscribed.get(timeout=10)
        r = client.post(
            S,
            json={
                "type": "Subscription",
                "entities": [{"type": "WaterLevelObserved"}],
                "notification": {
                    "format": "keyValues",
                    "endpoint": {
                        "uri": f"mqtt://{MQTT_HOST}:{MQTT_PORT}/{topic}",
                        "notifierInfo": [
                            {"key": "MQTT-Version", "value": version},
                            {"key": "MQTT-QoS", "value": qos},
                        ],
                        "receiverInfo": [{"key": "X-City", "value": "Sano"}],
                    },
                },
            },
        )
        assert r.status_code == 201, r.text
        sub_id = r.headers["location"].rsplit("/", 1)[1]
        assert client.post(E, json=sensor(level=2.5)).status_code == 201
        msg_qos, message = got.get(timeout=10)
        assert msg_qos == int(qos)
        assert message["metadata"]["Content-Type"] == "application/json"
        assert message["metadata"]["X-City"] == "Sano"
        body = message["body"]
        assert body["type"] == "Notification"
        assert body["subscriptionId"] == sub_id
        assert body["data"][0]["waterLevel"] == 2.5
    finally:
        sub.loop_stop()
        sub.disconnect()
