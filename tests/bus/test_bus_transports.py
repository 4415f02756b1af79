"""Every transport delivers each event to every worker, and claim() has exactly one winner.

The Redis and NATS cases run against the real servers of this machine, each test in a fresh
namespace; they skip when a server is absent, and fail instead under CITYOS_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import nats
import nats.js.errors
import pytest
import redis.asyncio as aioredis

from cityos.bus import RECONNECTED, Bus, InProcessBus, NatsBus, RedisBus, Subscription

T = TypeVar("T")

REDIS_URL = os.environ.get("CITYOS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("CITYOS_TEST_NATS_URL", "nats://127.0.0.1:4222")
_ADDRESSES = {"redis": ("127.0.0.1", 6379), "nats": ("127.0.0.1", 4222)}


def require(kind: str) -> None:
    """Skip (or fail under CITYOS_REQUIRE_SERVICES=1) when the server for kind is not running."""
    if kind == "memory":
        return
    host, port = _ADDRESSES[kind]
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError as exc:
        reason = f"no {kind} server on {host}:{port} ({exc})"
        if os.environ.get("CITYOS_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " and CITYOS_REQUIRE_SERVICES=1")
        pytest.skip(reason)


async def _drop_bucket(bucket: str) -> None:
    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().delete_key_value(bucket)
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await nc.close()


BusFactory = Callable[[], Bus]


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture(params=["memory", "redis", "nats"])
def kind(request: pytest.FixtureRequest) -> str:
    require(request.param)
    return str(request.param)


@pytest.fixture(params=["redis", "nats"])
def shared_kind(request: pytest.FixtureRequest) -> str:
    """A transport that links separate bus instances, as separate workers."""
    require(request.param)
    return str(request.param)


def factory(kind: str, namespace: str) -> BusFactory:
    def make() -> Bus:
        if kind == "redis":
            return RedisBus(REDIS_URL, namespace, connect_timeout=5)
        if kind == "nats":
            return NatsBus(NATS_URL, namespace, connect_timeout=5)
        return InProcessBus(namespace)

    return make


@pytest.fixture
def make_bus(kind: str, namespace: str) -> Iterator[BusFactory]:
    yield factory(kind, namespace)
    if kind == "nats":
        asyncio.run(_drop_bucket(f"{namespace}-claims"))


@pytest.fixture
def make_worker(shared_kind: str, namespace: str) -> Iterator[BusFactory]:
    yield factory(shared_kind, namespace)
    if shared_kind == "nats":
        asyncio.run(_drop_bucket(f"{namespace}-claims"))


def run(coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    """Run coro on a fresh event loop; a hang fails the test instead of blocking the run."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


async def take(sub: Subscription, n: int, within: float = 5) -> list[bytes]:
    """Return the next n payloads of sub."""
    out: list[bytes] = []
    async with asyncio.timeout(within):
        async for payload in sub:
            out.append(payload)
            if len(out) == n:
                break
    return out


async def nothing_more(sub: Subscription, wait: float = 0.3) -> bool:
    """Return True when sub receives nothing within wait seconds."""
    try:
        async with asyncio.timeout(wait):
            await sub.__anext__()
    except TimeoutError:
        return True
    return False


def test_each_worker_receives_every_event_of_every_worker(make_worker: BusFactory) -> None:
    async def scenario() -> None:
        async with make_worker() as a, make_worker() as b:
            subs = [a.subscribe("entity"), b.subscribe("entity")]
            other = b.subscribe("cache")
            for i in range(20):
                await a.publish("entity", b"a%d" % i)
                await b.publish("entity", b"b%d" % i)
            for sub in subs:
                got = await take(sub, 40)
                # each publisher's events arrive in the order it sent them
                assert [p for p in got if p.startswith(b"a")] == [b"a%d" % i for i in range(20)]
                assert [p for p in got if p.startswith(b"b")] == [b"b%d" % i for i in range(20)]
            assert await nothing_more(other)

    run(scenario())


def test_every_local_subscriber_receives_every_event(make_bus: BusFactory) -> None:
    async def scenario() -> None:
        async with make_bus() as bus:
            first, second = bus.subscribe("snapshot"), bus.subscribe("snapshot")
            await bus.publish("snapshot", b"portal")
            await bus.publish("snapshot.partial", b"not for us")
            assert await take(first, 1) == [b"portal"]
            assert await take(second, 1) == [b"portal"]
            assert await nothing_more(first)

    run(scenario())


def test_a_closed_subscription_ends_and_receives_nothing(make_bus: BusFactory) -> None:
    async def scenario() -> None:
        async with make_bus() as bus:
            kept = bus.subscribe("entity")
            gone = bus.subscribe("entity")
            gone.close()
            await bus.publish("entity", b"after")
            assert [p async for p in gone] == []
            assert await take(kept, 1) == [b"after"]

    run(scenario())


def test_claim_has_exactly_one_winner_among_two_workers(make_worker: BusFactory) -> None:
    async def scenario() -> None:
        async with make_worker() as a, make_worker() as b:

            async def round_() -> int:
                tries = [w.claim("notify:urn:ngsi-ld:Sub:1#42", 1.0) for w in (a, b) * 50]
                return sum(await asyncio.gather(*tries))

            assert await round_() == 1
            assert await round_() == 0  # still held
            assert await a.claim("snapshot:portal", 1.0)  # other keys are independent
            await asyncio.sleep(1.3)
            assert await round_() == 1  # the ttl passed: exactly one new winner

    run(scenario())


def test_claim_has_exactly_one_winner_in_one_process(make_bus: BusFactory) -> None:
    async def scenario() -> None:
        async with make_bus() as bus:
            tries = [bus.claim("job", 0.5) for _ in range(100)]
            assert sum(await asyncio.gather(*tries)) == 1
            assert not await bus.claim("job", 0.5)
            await asyncio.sleep(0.8)
            assert sum(await asyncio.gather(*(bus.claim("job", 0.5) for _ in range(100)))) == 1

    run(scenario())


@pytest.mark.parametrize("ttl", [0, -1.0, float("nan")])
def test_claim_refuses_a_ttl_that_is_not_positive(make_bus: BusFactory, ttl: float) -> None:
    async def scenario() -> None:
        async with make_bus() as bus:
            with pytest.raises(ValueError, match="ttl"):
                await bus.claim("job", ttl)

    run(scenario())


def test_topics_under_bus_are_reserved_for_the_bus() -> None:
    bus = InProcessBus()
    bus.subscribe(RECONNECTED)
    for topic in ("bus", RECONNECTED):
        with pytest.raises(ValueError, match="reserved"):
            run(bus.publish(topic, b""))
    run(bus.publish("busy", b""))


@pytest.mark.parametrize("topic", ["", "a b", "a..b", ".a", "a.", "a*", "a>", "エントリ"])
def test_bad_topics_are_refused(topic: str) -> None:
    bus = InProcessBus()
    with pytest.raises(ValueError, match="topic"):
        bus.subscribe(topic)
    with pytest.raises(ValueError, match="topic"):
        run(bus.publish(topic, b"x"))


def test_a_slow_subscriber_keeps_the_newest_events_within_its_backlog() -> None:
    async def scenario() -> None:
        async with InProcessBus(backlog=3) as bus:
            sub = bus.subscribe("cache")
            for i in range(5):
                await bus.publish("cache", b"%d" % i)
            assert await take(sub, 3) == [b"2", b"3", b"4"]
            assert sub.dropped == 2

    run(scenario())


def test_close_ends_subscribers_and_leaves_no_task(make_bus: BusFactory) -> None:
    async def scenario() -> None:
        bus = make_bus()
        await bus.start()
        sub = bus.subscribe("entity")
        received: list[bytes] = []
        first = asyncio.Event()

        async def consume() -> None:
            async for payload in sub:
                received.append(payload)
                first.set()

        consumer = asyncio.create_task(consume())
        await bus.publish("entity", b"one")
        await asyncio.wait_for(first.wait(), 5)
        await bus.close()
        await asyncio.wait_for(consumer, 2)  # the `async for` loop ended by itself
        assert received == [b"one"]
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(scenario())


def test_start_fails_clearly_when_the_server_is_unreachable(shared_kind: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    bus: Bus = (
        RedisBus(f"redis://:secret@127.0.0.1:{port}/0", connect_timeout=1)
        if shared_kind == "redis"
        else NatsBus(f"nats://user:secret@127.0.0.1:{port}", connect_timeout=1)
    )

    async def scenario() -> None:
        with pytest.raises(ConnectionError, match="CITYOS_BUS_URL") as err:
            await bus.start()
        assert "secret" not in str(err.value)
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(scenario())


def test_redis_subscriber_survives_a_dropped_connection(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    require("redis")

    async def scenario() -> None:
        admin = aioredis.Redis.from_url(REDIS_URL)
        try:
            async with RedisBus(REDIS_URL, namespace) as a, RedisBus(REDIS_URL, namespace) as b:
                sub = b.subscribe("entity")
                reconnected = b.subscribe(RECONNECTED)
                listeners = [
                    c
                    for c in await admin.client_list()
                    if c["name"] == b.client_name and int(c["psub"]) > 0
                ]
                assert len(listeners) == 2  # one per worker
                for c in listeners:
                    await admin.client_kill_filter(_id=c["id"])
                # at-most-once: events sent while it reconnects are lost, later ones arrive
                deadline = time.monotonic() + 15
                got: list[bytes] = []
                while not got and time.monotonic() < deadline:
                    await a.publish("entity", b"after the drop")
                    with contextlib.suppress(TimeoutError):
                        got = await take(sub, 1, within=0.2)
                assert got == [b"after the drop"]
                assert await take(reconnected, 1) == [b""]  # so b knows its caches may be stale
                now = {
                    c["id"]
                    for c in await admin.client_list()
                    if c["name"] == b.client_name and int(c["psub"]) > 0
                }
                assert len(now) == 2
                assert not now & {c["id"] for c in listeners}
        finally:
            await admin.aclose()

    with caplog.at_level(logging.WARNING, logger="cityos.bus"):
        run(scenario())
    assert "lost Redis pub/sub" in caplog.text


def test_nats_claims_cannot_outlive_the_bucket_window(namespace: str) -> None:
    require("nats")

    async def scenario() -> None:
        async with NatsBus(NATS_URL, namespace, claim_window=60) as first:
            with pytest.raises(ValueError, match="window"):
                await first.claim("job", 61)
        # a later worker with the default window adopts the shorter one of the existing bucket
        async with NatsBus(NATS_URL, namespace) as later:
            with pytest.raises(ValueError, match="window"):
                await later.claim("job", 61)
            assert await later.claim("job", 60)

    try:
        run(scenario())
    finally:
        asyncio.run(_drop_bucket(f"{namespace}-claims"))


class Proxy:
    """A TCP relay to a real server whose connections the test can cut, as a network drop."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def cut(self) -> None:
        """Close every relayed connection; new ones are still accepted."""
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        finally:
            dst.transport.abort()


def test_nats_subscriber_survives_a_dropped_connection(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    require("nats")

    async def scenario() -> None:
        async with (
            Proxy(4222) as proxy,
            NatsBus(NATS_URL, namespace) as a,
            NatsBus(proxy.url, namespace) as b,
        ):
            sub = b.subscribe("entity")
            reconnected = b.subscribe(RECONNECTED)
            proxy.cut()
            assert await take(reconnected, 1, within=10) == [b""]
            got: list[bytes] = []
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                await a.publish("entity", b"after the drop")
                with contextlib.suppress(TimeoutError):
                    got = await take(sub, 1, within=0.2)
            assert got == [b"after the drop"]
            assert await b.claim("after-the-drop", 5)

    try:
        with caplog.at_level(logging.WARNING, logger="cityos.bus"):
            run(scenario())
    finally:
        asyncio.run(_drop_bucket(f"{namespace}-claims"))
    assert "disconnected from NATS" in caplog.text
