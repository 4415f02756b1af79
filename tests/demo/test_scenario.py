"""typhoon-2019 as a timeline: the central gauge climbs every line, devices keep their intervals."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest

from cityos.demo import sano
from cityos.demo.scenario import (
    Notice,
    Opening,
    Reading,
    gauge_interval,
    reporting_floor,
    typhoon_2019,
)
from cityos.safety.flood import STATUSES, ReferenceLevels, Status, level_status

SCENARIO = typhoon_2019()
CENTRAL = next(g for g in sano.GAUGES if g.slug == sano.CENTRAL_GAUGE)


def test_the_timeline_is_sorted_and_within_the_day() -> None:
    times = [e.at for e in SCENARIO.events]
    assert times == sorted(times)
    assert SCENARIO.start <= times[0]
    assert times[-1] <= SCENARIO.end
    assert SCENARIO.start.isoformat() == "2019-10-12T06:00:00+09:00"


def test_the_central_gauge_crosses_each_line_in_turn_then_recedes() -> None:
    refs = ReferenceLevels(
        CENTRAL.standby, CENTRAL.caution, CENTRAL.evacuation_judgement, CENTRAL.danger
    )
    status: Status = "normal"
    reached: list[Status] = []
    stages = []
    for r in SCENARIO.readings(CENTRAL.device_id):
        stage = r.values["waterLevel"]
        stages.append(stage)
        status = level_status(stage, refs, status)
        if status not in reached:
            reached.append(status)
    assert reached == ["normal", "standby", "caution", "evacuationJudgement", "danger"]
    peak = max(stages)
    assert stages[-1] < CENTRAL.danger < peak  # the water recedes below the danger line
    assert SCENARIO.peak_alert_level() == 4


@pytest.mark.parametrize("gauge", sano.GAUGES, ids=lambda g: g.slug)
def test_gauges_report_at_their_intervals(gauge: sano.Gauge) -> None:
    readings = SCENARIO.readings(gauge.device_id)
    assert readings[0].at == SCENARIO.start  # the first heartbeat
    for before, after in itertools.pairwise(readings):
        stage = before.values["waterLevel"]
        gap = after.at - before.at
        if stage >= reporting_floor(gauge):
            assert gap == gauge_interval(gauge, stage), (gauge.slug, before.at)
        else:
            # Below the floor only a daily heartbeat, or the first reading back above it.
            heartbeat = after.at.date() != before.at.date()
            assert heartbeat or after.values["waterLevel"] >= reporting_floor(gauge)
            assert gap <= timedelta(days=1)


def test_a_crisis_management_gauge_reports_every_2_minutes_near_the_top() -> None:
    gaps = set()
    for g in sano.GAUGES:
        if g.crisis_management:
            readings = SCENARIO.readings(g.device_id)
            assert all(r.values["waterLevel"] < (g.overflow_start or 0) for r in readings)
            gaps |= {b.at - a.at for a, b in itertools.pairwise(readings)}
    assert {timedelta(minutes=2), timedelta(minutes=5)} <= gaps


def test_shelters_open_after_level_3_and_fill_to_a_mix_of_crowding() -> None:
    level3 = next(
        e.at
        for e in SCENARIO.events
        if isinstance(e, Notice) and e.gauge == sano.CENTRAL_GAUGE and e.alert_level == 3
    )
    openings = {e.entity_id: e.at for e in SCENARIO.events if isinstance(e, Opening)}
    assert len(openings) >= 10
    assert min(openings.values()) > level3
    shares = []
    for s in sano.SHELTERS:
        counts = SCENARIO.readings(s.device_id)
        if s.id not in openings:
            assert counts == []
            assert "flood" not in s.hazards
            continue
        assert counts
        assert counts[0].at > openings[s.id]
        peak = max(r.values["occupancy"] for r in counts)
        assert peak <= s.capacity
        shares.append(peak / s.capacity)
    bands = {0 if x < 0.3 else 1 if x < 0.6 else 2 if x < 0.8 else 3 for x in shares}
    assert bands == {0, 1, 2, 3}  # vacant, slightly crowded, crowded and full shelters


def test_readings_carry_only_raw_measures() -> None:
    keys = {k for e in SCENARIO.events if isinstance(e, Reading) for k in e.values}
    assert keys == {"waterLevel", "precipitation", "occupancy"}
    assert all(s in STATUSES for s in (e.status for e in SCENARIO.events if isinstance(e, Notice)))
