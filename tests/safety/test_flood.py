"""River-gauge alert levels: every line up and down, hysteresis, overflow, Alert entities."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from cityos.safety.flood import (
    ALERT_LEVELS,
    STATUSES,
    AlertChange,
    ChangeKind,
    ReferenceLevels,
    Status,
    alert_change,
    alert_entity,
    alert_level,
    level_status,
)

# Plausible lines for the 秋山川 赤坂町 gauge (demo values, not official ones).
AKASAKA = ReferenceLevels(standby=1.60, caution=2.40, evacuation_judgement=2.80, danger=3.20)
H = 0.05


@pytest.mark.parametrize(
    ("reading", "level", "status"),
    [
        (0.90, 0, "normal"),
        (1.59, 0, "normal"),
        (1.60, 0, "standby"),
        (2.39, 0, "standby"),
        (2.40, 2, "caution"),
        (2.79, 2, "caution"),
        (2.80, 3, "evacuationJudgement"),
        (3.19, 3, "evacuationJudgement"),
        (3.20, 4, "danger"),
        (4.50, 4, "danger"),
    ],
)
def test_rising_reading_reaches_each_line_exactly_at_it(
    reading: float, level: int, status: str
) -> None:
    assert alert_level(reading, AKASAKA, 0) == level
    assert level_status(reading, AKASAKA, "normal") == status


@pytest.mark.parametrize(
    ("previous", "line", "lower"),
    [(2, 2.40, 0), (3, 2.80, 2), (4, 3.20, 3)],
)
def test_falling_reading_keeps_the_level_until_it_drops_past_the_band(
    previous: int, line: float, lower: int
) -> None:
    assert alert_level(line - 0.01, AKASAKA, previous) == previous
    assert alert_level(line - H + 0.001, AKASAKA, previous) == previous
    assert alert_level(line - H - 0.01, AKASAKA, previous) == lower


@pytest.mark.parametrize(
    ("previous", "line", "lower"),
    [
        ("standby", 1.60, "normal"),
        ("caution", 2.40, "standby"),
        ("evacuationJudgement", 2.80, "caution"),
        ("danger", 3.20, "evacuationJudgement"),
    ],
)
def test_falling_status_keeps_the_name_until_it_drops_past_the_band(
    previous: Status, line: float, lower: Status
) -> None:
    assert level_status(line - 0.01, AKASAKA, previous) == previous
    assert level_status(line - H - 0.01, AKASAKA, previous) == lower


def test_a_steep_fall_clears_several_levels_at_once() -> None:
    assert alert_level(1.00, AKASAKA, 4) == 0
    assert level_status(1.00, AKASAKA, "danger") == "normal"


def test_a_lower_previous_level_does_not_hold_back_a_rise() -> None:
    assert alert_level(3.25, AKASAKA, 2) == 4


def test_custom_hysteresis_widens_the_band() -> None:
    assert alert_level(3.05, AKASAKA, 4, hysteresis_m=0.20) == 4
    assert alert_level(3.05, AKASAKA, 4, hysteresis_m=0.10) == 3


def _run(readings: list[float], hysteresis_m: float) -> list[int]:
    levels, level = [], 0
    for reading in readings:
        level = alert_level(reading, AKASAKA, level, hysteresis_m=hysteresis_m)
        levels.append(level)
    return levels


def test_readings_bouncing_on_a_line_raise_one_alert_and_do_not_flap() -> None:
    bouncing = [2.38, 2.41, 2.37, 2.42, 2.36, 2.40, 2.37]
    levels = _run(bouncing, H)
    changes = [alert_change(a, b) for a, b in zip([0, *levels], levels, strict=False)]
    assert levels == [0, 2, 2, 2, 2, 2, 2]
    assert [c.kind for c in changes if c] == ["raised"]
    # Without hysteresis the same readings raise and clear the alert every time.
    assert _run(bouncing, 0.0) == [0, 2, 0, 2, 0, 2, 0]


def test_reported_overflow_is_level_5_whatever_the_reading() -> None:
    assert alert_level(2.00, AKASAKA, 0, overflow=True) == 5
    assert level_status(2.00, AKASAKA, "caution", overflow=True) == "overflow"
    # Once overflow is no longer reported, the reading decides again.
    assert alert_level(3.30, AKASAKA, 5) == 4
    assert level_status(3.30, AKASAKA, "overflow") == "danger"


def test_crisis_management_gauge_overflows_at_its_overflow_start_level() -> None:
    refs = ReferenceLevels(1.0, 1.5, 1.8, 2.1, overflow_start=2.6)
    assert alert_level(2.59, refs, 0) == 4
    assert alert_level(2.60, refs, 0) == 5
    assert level_status(2.60, refs, "danger") == "overflow"
    assert alert_level(2.58, refs, 5) == 5
    assert alert_level(2.50, refs, 5) == 4


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((2.4, 1.6, 2.8, 3.2), "caution"),
        ((1.6, 2.4, 2.4, 3.2), "evacuation_judgement"),
        ((1.6, 2.4, 2.8, 2.7), "danger"),
        ((1.6, 2.4, 2.8, 3.2, 3.2), "overflow_start"),
        ((float("nan"), 2.4, 2.8, 3.2), "standby"),
        ((1.6, float("inf"), 2.8, 3.2), "caution"),
        ((1.6, 2.4, "2.8", 3.2), "evacuation_judgement"),
        ((True, 2.4, 2.8, 3.2), "standby"),
    ],
)
def test_invalid_reference_levels_are_refused_naming_the_field(
    args: tuple[object, ...], field: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        ReferenceLevels(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: alert_level(float("nan"), AKASAKA, 0), "level_m"),
        (lambda: alert_level(2.0, AKASAKA, 1), "previous"),
        (lambda: alert_level(2.0, AKASAKA, 0, hysteresis_m=-0.1), "hysteresis_m"),
        (lambda: level_status(2.0, AKASAKA, "flooding"), "previous"),  # type: ignore[arg-type]
        (lambda: alert_change(0, 6), "current"),
    ],
)
def test_invalid_arguments_are_refused_naming_the_field(call: object, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        call()  # type: ignore[operator]


@st.composite
def reference_levels(draw: st.DrawFn) -> ReferenceLevels:
    gap = st.floats(min_value=0.01, max_value=3.0)
    standby = draw(st.floats(min_value=-5.0, max_value=10.0))
    caution = standby + draw(gap)
    judgement = caution + draw(gap)
    danger = judgement + draw(gap)
    overflow = draw(st.one_of(st.none(), gap.map(lambda g: danger + g)))
    return ReferenceLevels(standby, caution, judgement, danger, overflow)


readings = st.floats(min_value=-10.0, max_value=30.0)
bands = st.floats(min_value=0.0, max_value=1.0)


@settings(max_examples=400)
@given(reference_levels(), st.sampled_from(ALERT_LEVELS), readings, readings, bands)
def test_level_is_monotonic_in_the_reading(
    refs: ReferenceLevels, previous: int, a: float, b: float, band: float
) -> None:
    low, high = sorted((a, b))
    assert alert_level(low, refs, previous, hysteresis_m=band) <= alert_level(
        high, refs, previous, hysteresis_m=band
    )


@settings(max_examples=400)
@given(reference_levels(), st.sampled_from(STATUSES), readings, readings, bands)
def test_status_is_monotonic_in_the_reading(
    refs: ReferenceLevels, previous: Status, a: float, b: float, band: float
) -> None:
    low, high = sorted((a, b))
    rank_low = STATUSES.index(level_status(low, refs, previous, hysteresis_m=band))
    rank_high = STATUSES.index(level_status(high, refs, previous, hysteresis_m=band))
    assert rank_low <= rank_high


@settings(max_examples=300)
@given(
    reference_levels(),
    st.lists(readings, min_size=1, max_size=20),
    st.lists(readings, max_size=20),
    bands,
)
def test_a_rise_then_fall_back_below_the_band_returns_to_zero(
    refs: ReferenceLevels, up: list[float], down: list[float], band: float
) -> None:
    rising = sorted(up)
    peak = rising[-1]
    end = min(refs.caution - band - 0.01, peak)
    falling = sorted([*(min(x, peak) for x in down), end], reverse=True)
    levels, level = [], 0
    for reading in [*rising, *falling]:
        level = alert_level(reading, refs, level, hysteresis_m=band)
        levels.append(level)
    up_levels, down_levels = levels[: len(rising)], levels[len(rising) - 1 :]
    assert up_levels == sorted(up_levels)
    assert down_levels == sorted(down_levels, reverse=True)
    assert levels[-1] == 0


@pytest.mark.parametrize(
    ("previous", "current", "kind"),
    [
        (0, 2, "raised"),
        (0, 4, "raised"),
        (2, 4, "escalated"),
        (4, 5, "escalated"),
        (4, 3, "lowered"),
        (5, 2, "lowered"),
        (3, 0, "cleared"),
    ],
)
def test_alert_change_names_the_transition(previous: int, current: int, kind: ChangeKind) -> None:
    assert alert_change(previous, current) == AlertChange(kind, previous, current)


def test_no_alert_change_when_the_level_stays() -> None:
    assert alert_change(3, 3) is None


GAUGE = "urn:ngsi-ld:WaterObserved:sano-akiyama-akasaka"
JST = timezone(timedelta(hours=9))
AT = datetime(2019, 10, 12, 20, 40, tzinfo=JST)


def _alert(previous: int, current: int) -> dict[str, Any]:
    change = alert_change(previous, current)
    assert change is not None
    return alert_entity(
        change,
        gauge_id=GAUGE,
        station_ja="秋山川 赤坂町",
        station_en="Akiyama River at Akasaka",
        issued_at=AT,
    )


def test_alert_entity_describes_the_level_in_japanese_then_english() -> None:
    alert = _alert(3, 4)
    assert alert["description"] == {
        "type": "Property",
        "value": "秋山川 赤坂町: 氾濫危険水位に到達（警戒レベル4相当） / "
        "Akiyama River at Akasaka: flood danger level reached (alert level 4 equivalent)",
    }
    assert alert["category"] == {"type": "Property", "value": "naturalDisaster"}
    assert alert["subCategory"] == {"type": "Property", "value": "flood"}
    assert alert["alertSource"] == {"type": "Relationship", "object": GAUGE}
    assert alert["dateIssued"] == {
        "type": "Property",
        "value": {"@type": "DateTime", "@value": "2019-10-12T11:40:00Z"},
    }
    assert alert["data"] == {
        "type": "Property",
        "value": {"change": "escalated", "fromLevel": 3, "toLevel": 4},
    }


@pytest.mark.parametrize(
    ("previous", "current", "severity", "phrase"),
    [
        (0, 2, "low", "氾濫注意水位に到達（警戒レベル2相当）"),
        (2, 3, "medium", "避難判断水位に到達（警戒レベル3相当）"),
        (3, 4, "high", "氾濫危険水位に到達（警戒レベル4相当）"),
        (4, 5, "critical", "氾濫発生（警戒レベル5相当）"),
        (4, 3, "medium", "避難判断水位まで低下（警戒レベル3相当）"),
        (2, 0, "informational", "氾濫注意水位を下回った（警戒レベル相当なし）"),
    ],
)
def test_alert_severity_and_phrase_follow_the_new_level(
    previous: int, current: int, severity: str, phrase: str
) -> None:
    alert = _alert(previous, current)
    assert alert["severity"] == {"type": "Property", "value": severity}
    assert alert["floodAlertLevel"] == {"type": "Property", "value": current}
    assert str(alert["description"]["value"]).startswith(f"秋山川 赤坂町: {phrase} / ")


def test_raised_alert_starts_validity_and_cleared_alert_ends_it() -> None:
    raised, cleared = _alert(0, 2), _alert(2, 0)
    assert "validFrom" in raised
    assert "validTo" not in raised
    assert "validTo" in cleared
    assert "validFrom" not in cleared


def test_alert_entity_needs_an_aware_time() -> None:
    change = AlertChange("raised", 0, 2)
    with pytest.raises(ValueError, match=r"^issued_at: "):
        alert_entity(
            change,
            gauge_id=GAUGE,
            station_ja="a",
            station_en="b",
            issued_at=datetime(2019, 10, 12, 20, 40),
        )


def test_broker_accepts_the_alert_entity(client: TestClient) -> None:
    alert_id = "urn:ngsi-ld:Alert:sano-akiyama-akasaka-flood"
    r = client.post("/ngsi-ld/v1/entities", json={"id": alert_id, **_alert(0, 2)})
    assert r.status_code == 201, r.text
    got = client.get(f"/ngsi-ld/v1/entities/{alert_id}", params={"options": "keyValues"}).json()
    assert got["type"] == "Alert"
    assert got["severity"] == "low"
    assert got["floodAlertLevel"] == 2
    assert got["alertSource"] == GAUGE
    assert got["dateIssued"] == {"@type": "DateTime", "@value": "2019-10-12T11:40:00Z"}
    assert datetime.fromisoformat(got["validFrom"]["@value"]) == AT.astimezone(UTC)
