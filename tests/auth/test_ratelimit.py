"""Token-bucket rate limits with a controllable clock: bursts, refills, Retry-After, memory."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cityos.auth.ratelimit import Limit, RateLimiter, Verdict


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(rate: float, burst: float, **kw: int) -> tuple[RateLimiter, Clock]:
    clock = Clock()
    return RateLimiter(Limit(rate, burst), clock=clock, **kw), clock


def test_a_burst_is_allowed_then_refused_with_retry_after() -> None:
    rl, _ = limiter(rate=1, burst=5)
    assert [rl.take("k").allowed for _ in range(5)] == [True] * 5
    assert rl.take("k") == Verdict(False, 1)
    assert rl.take("k") == Verdict(False, 1)  # refusals take nothing


def test_tokens_refill_over_time_up_to_the_burst() -> None:
    rl, clock = limiter(rate=2, burst=4)  # one token every half second
    for _ in range(4):
        rl.take("k")
    assert not rl.take("k").allowed
    clock.now += 0.5
    assert rl.take("k").allowed
    assert not rl.take("k").allowed
    clock.now += 3600  # a long pause refills to the burst, no further
    assert [rl.take("k").allowed for _ in range(5)] == [True] * 4 + [False]


@pytest.mark.parametrize(
    ("rate", "waited", "retry_after"),
    [
        (1.0, 0.0, 1),  # one token a second, none left: 1 s
        (0.1, 0.0, 10),  # one token in 10 s
        (0.1, 2.5, 8),  # 7.5 s left, rounded up
        (0.1, 9.0, 1),  # 1 s left
        (0.1, 9.9, 1),  # 0.1 s left: never "0", which means no wait
        (1 / 60, 0.0, 60),  # 60/min
        (1 / 3600, 600.0, 3000),  # 1/h, 10 minutes in
    ],
)
def test_retry_after_is_the_whole_seconds_until_the_next_token(
    rate: float, waited: float, retry_after: int
) -> None:
    rl, clock = limiter(rate=rate, burst=1)
    assert rl.take("k").allowed
    clock.now += waited
    assert rl.take("k") == Verdict(False, retry_after)
    clock.now += retry_after  # waiting as told is enough
    assert rl.take("k").allowed


def test_keys_are_independent() -> None:
    rl, _ = limiter(rate=1, burst=2)
    assert [rl.take("cok_aaaaaaaa").allowed for _ in range(3)] == [True, True, False]
    assert [rl.take("203.0.113.7").allowed for _ in range(3)] == [True, True, False]
    assert not rl.take("cok_aaaaaaaa").allowed


def test_idle_buckets_are_forgotten() -> None:
    rl, clock = limiter(rate=1, burst=10)
    for n in range(100):
        rl.take(f"10.0.0.{n}")
    assert len(rl) == 100
    clock.now += 10  # every bucket is full again: keeping them would change nothing
    rl.take("10.0.1.1")
    assert len(rl) == 1


def test_memory_is_bounded_under_a_flood_of_addresses() -> None:
    rl, clock = limiter(rate=1, burst=10, max_keys=50)
    rl.take("steady")
    for n in range(10_000):
        clock.now += 0.0001
        rl.take(f"flood-{n}")
        assert len(rl) <= 51
    # the least recently used went first; a recent key keeps its (emptied) bucket
    for _ in range(9):
        rl.take("flood-9999")
    assert not rl.take("flood-9999").allowed


def test_a_bucket_in_use_is_not_forgotten_too_early() -> None:
    rl, clock = limiter(rate=1, burst=10)
    for _ in range(10):
        rl.take("k")
    clock.now += 9.5  # not full yet: 9.5 tokens
    rl.take("other")
    assert [rl.take("k").allowed for _ in range(10)] == [True] * 9 + [False]


@pytest.mark.parametrize(
    ("text", "rate", "burst"),
    [
        ("20/s", 20.0, 20.0),
        ("600/min:100", 10.0, 100.0),
        ("1000/h", 1000 / 3600, 1000.0),
        (" 0.5/s : 3 ", 0.5, 3.0),
        ("0.5/s", 0.5, 1.0),
    ],
)
def test_limits_are_written_per_unit_with_an_optional_burst(
    text: str, rate: float, burst: float
) -> None:
    assert Limit.parse(text) == Limit(rate, burst)


@pytest.mark.parametrize("text", ["", "20", "20/day", "0/s", "-1/s", "10/s:0", "ten/s", "10/s:"])
def test_a_bad_limit_is_refused_with_its_form(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        Limit.parse(text)


@given(
    rate=st.floats(0.01, 100),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 5), min_size=1, max_size=200),
)
def test_no_sequence_of_requests_gets_more_than_burst_plus_refill(
    rate: float, burst: int, gaps: list[float]
) -> None:
    rl, clock = limiter(rate=rate, burst=burst)
    start = clock.now
    allowed = 0
    for gap in gaps:
        clock.now += gap
        verdict = rl.take("k")
        allowed += verdict.allowed
        assert verdict.allowed or verdict.retry_after >= 1
    assert allowed <= burst + rate * (clock.now - start) + 1e-6
