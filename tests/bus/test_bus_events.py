"""Events survive the trip through the bus intact; anything else is logged and skipped."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

import cityos.bus
from cityos.bus import (
    BadEvent,
    CacheDrop,
    EntityChanged,
    Event,
    InProcessBus,
    NatsBus,
    RedisBus,
    SnapshotDue,
    SubscriptionChanged,
    bus_from_url,
    decode_event,
    encode_event,
    parse_event,
    publish_event,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "bus.md"
JST = timezone(timedelta(hours=9))

EVENTS: list[Event] = [
    EntityChanged(
        "sano", "urn:ngsi-ld:WaterLevelObserved:akiyama-1", datetime(2026, 11, 25, tzinfo=UTC)
    ),
    EntityChanged("", "urn:ngsi-ld:Bus:1", datetime(2026, 11, 25, 19, 0, 0, 123456, tzinfo=JST)),
    SubscriptionChanged("sano", "urn:ngsi-ld:Subscription:flood"),
    CacheDrop("jsonld-context", "https://example.org/ctx.jsonld"),
    CacheDrop("catalog-facets"),
    SnapshotDue("portal"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_comes_back_equal(event: Event) -> None:
    assert parse_event(encode_event(event)) == event
    assert decode_event(encode_event(event)) == event


def test_encoding_is_plain_json_that_names_the_event() -> None:
    data = orjson.loads(encode_event(EVENTS[0]))
    assert data == {
        "event": "entity.changed",
        "tenant": "sano",
        "id": "urn:ngsi-ld:WaterLevelObserved:akiyama-1",
        "at": "2026-11-25T00:00:00+00:00",
    }


def test_an_entity_change_needs_a_time_zone() -> None:
    with pytest.raises(ValueError, match="time zone"):
        EntityChanged("sano", "urn:x", datetime(2026, 11, 25))


MALFORMED: list[tuple[bytes, str]] = [
    (b"", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"{", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'"entity.changed"', "not a JSON object"),
    (b"{}", "unknown event None"),
    (b'{"event": "entity.exploded", "tenant": "", "id": "x"}', "unknown event"),
    (b'{"event": 7}', "unknown event"),
    (b'{"event": "snapshot.due"}', "missing 'name'"),
    (b'{"event": "snapshot.due", "name": "portal", "force": true}', "unknown fields"),
    (b'{"event": "snapshot.due", "name": 3}', "'name' must be a string"),
    (b'{"event": "snapshot.due", "name": null}', "'name' must be a string"),
    (b'{"event": "cache.drop", "name": "c", "key": 5}', "'key' must be a string"),
    (b'{"event": "entity.changed", "tenant": "", "id": "x", "at": "yesterday"}', "time zone"),
    (
        b'{"event": "entity.changed", "tenant": "", "id": "x", "at": "2026-11-25T10:00"}',
        "time zone",
    ),
    (b'{"event": "entity.changed", "tenant": "", "id": "x", "at": 1764064800}', "time zone"),
]


@pytest.mark.parametrize(("payload", "why"), MALFORMED)
def test_malformed_payloads_are_refused_with_the_reason(payload: bytes, why: str) -> None:
    with pytest.raises(BadEvent, match=why.replace("(", r"\(")):
        parse_event(payload)


def test_decode_logs_and_skips_what_it_cannot_read(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cityos.bus"):
        assert decode_event(b'{"event": "entity.exploded"}') is None
    assert "skipped a malformed event" in caplog.text
    assert "entity.exploded" in caplog.text


def test_a_worker_skips_malformed_payloads_and_keeps_consuming(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> list[Event]:
        async with InProcessBus() as bus:
            sub = bus.subscribe("snapshot")
            await bus.publish("snapshot", b"garbage")
            await bus.publish("snapshot", b'{"event": "snapshot.due", "name": 1}')
            await publish_event(bus, SnapshotDue("portal"))
            await bus.publish("snapshot", b"[]")
            await publish_event(bus, SnapshotDue("catalog"))
            got: list[Event] = []
            async for payload in sub:
                event = decode_event(payload)
                if event is not None:
                    got.append(event)
                if len(got) == 2:
                    break
            return got

    with caplog.at_level(logging.WARNING, logger="cityos.bus"):
        got = asyncio.run(scenario())
    assert got == [SnapshotDue("portal"), SnapshotDue("catalog")]
    assert caplog.text.count("skipped a malformed event") == 3


@pytest.mark.parametrize(
    ("url", "cls"),
    [
        (None, InProcessBus),
        ("", InProcessBus),
        ("  ", InProcessBus),
        ("redis://127.0.0.1:6379/0", RedisBus),
        ("rediss://:pw@cache.sano.example:6380/1", RedisBus),
        ("REDIS://127.0.0.1", RedisBus),
        ("nats://127.0.0.1:4222", NatsBus),
    ],
)
def test_bus_from_url_picks_the_transport(url: str | None, cls: type) -> None:
    assert type(bus_from_url(url)) is cls


@pytest.mark.parametrize(
    "url", ["amqp://u:hunter2@mq:5672", "127.0.0.1:6379", "http://hunter2@x", "memory"]
)
def test_bus_from_url_refuses_other_urls_naming_the_setting(url: str) -> None:
    with pytest.raises(ValueError, match="CITYOS_BUS_URL") as err:
        bus_from_url(url)
    assert "hunter2" not in str(err.value)


def test_a_namespace_must_be_one_word() -> None:
    with pytest.raises(ValueError, match="namespace"):
        bus_from_url(None, namespace="a.b")


def test_public_names_are_pinned_and_documented() -> None:
    assert sorted(cityos.bus.__all__) == [
        "BadEvent",
        "Bus",
        "CacheDrop",
        "EntityChanged",
        "Event",
        "InProcessBus",
        "NatsBus",
        "RECONNECTED",
        "RedisBus",
        "SnapshotDue",
        "Subscription",
        "SubscriptionChanged",
        "bus_from_url",
        "decode_event",
        "encode_event",
        "parse_event",
        "publish_event",
    ]
    doc = DOCS.read_text(encoding="utf-8")
    assert "CITYOS_BUS_URL" in doc
    names = ("claim", "publish", "subscribe", cityos.bus.RECONNECTED)
    for name in (*names, *cityos.bus.events.EVENT_TYPES):
        assert name in doc, f"docs/bus.md does not mention {name}"
    for cls in cityos.bus.events.EVENT_TYPES.values():
        assert f"`{cls.topic}`" in doc, f"docs/bus.md does not give the topic of {cls.kind}"
