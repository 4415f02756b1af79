"""The NGSI-LD temporal API's domain: parameters, periods and temporal representations.

GS CIM 009 clauses 4.5.7-4.5.9 and 4.5.19 (representations), 6.3.10 (paging of instances) and
6.18-6.22 (operations). Times travel as integer microseconds since the Unix epoch (UTC), so
instants written with different UTC offsets compare correctly.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, Protocol

from cityos.broker import clock
from cityos.broker.errors import BadRequestData
from cityos.broker.model import VALUE_MEMBER, Instance
from cityos.broker.normalize import Expander, Normalizer, check_name, parse_datetime
from cityos.broker.render import RenderOptions, TermCompactor, render_entity

__all__ = [
    "AGGR_METHODS",
    "INSTANCE_LIMIT",
    "AttrHistory",
    "Bucket",
    "Duration",
    "HistoryEntity",
    "HistoryRow",
    "Page",
    "Retention",
    "TemporalQuery",
    "cut_pages",
    "from_micros",
    "instance_id",
    "instance_patch",
    "parse_duration",
    "parse_instance_id",
    "period_bounds",
    "render_aggregated",
    "render_temporal",
    "temporal_attributes",
    "temporal_query",
    "to_micros",
]

#: instances returned per attribute before a response is cut (206 with Content-Range)
INSTANCE_LIMIT: Final = 1000
#: calendar periods (months, years) are enumerated; more than this many is refused
MAX_CALENDAR_PERIODS: Final = 10_000
AGGR_METHODS: Final = (
    "totalCount",
    "distinctCount",
    "sum",
    "avg",
    "min",
    "max",
    "stddev",
    "sumsq",
)
TIMEPROPERTIES: Final = ("observedAt", "createdAt", "modifiedAt")
#: attribute type -> the member holding its simplified temporal values (clause 4.5.9)
VALUES_MEMBER: Final[dict[str, str]] = {
    "Property": "values",
    "GeoProperty": "values",
    "Relationship": "objects",
    "LanguageProperty": "languageMaps",
    "JsonProperty": "jsons",
    "VocabProperty": "vocabs",
    "ListProperty": "valueLists",
    "ListRelationship": "objectLists",
}

log = logging.getLogger("cityos.temporal")

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)
_DURATION = re.compile(
    r"^P(?!$)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?"
    r"(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d{1,6})?)S)?)?$"
)

Timerel = Literal["before", "after", "between"]
Timeproperty = Literal["observedAt", "createdAt", "modifiedAt"]


# -- times -----------------------------------------------------------------------------------
def to_micros(value: str) -> int:
    """Return an ISO 8601 DateTime (validated before) as microseconds since the epoch."""
    dt = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _US


def from_micros(us: int) -> str:
    """Return microseconds since the epoch as a UTC DateTime, fractions only when present."""
    dt = _EPOCH + timedelta(microseconds=us)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{dt.microsecond:06d}Z" if dt.microsecond else "Z")


def _time_param(params: Mapping[str, Any], name: str) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    return to_micros(parse_datetime(raw, name))


@dataclass(frozen=True, slots=True)
class Duration:
    """An ISO 8601 duration: calendar months plus a fixed number of microseconds."""

    months: int
    micros: int

    def add_to(self, us: int, times: int = 1) -> int:
        """Return the instant `times` periods after us (months clamp to the month's end)."""
        if self.months:
            dt = _EPOCH + timedelta(microseconds=us)
            y, m = divmod(dt.month - 1 + self.months * times, 12)
            year, month = dt.year + y, m + 1
            day = min(dt.day, calendar.monthrange(year, month)[1])
            us = (dt.replace(year=year, month=month, day=day) - _EPOCH) // _US
        return us + self.micros * times


def parse_duration(raw: str, name: str = "aggrPeriodDuration") -> Duration:
    """Parse an ISO 8601 duration such as PT1H, P1D, P1W or P1M."""
    m = _DURATION.match(raw)
    if m is None:
        raise BadRequestData(f"{name}: {raw!r} is not an ISO 8601 duration (e.g. PT1H, P1D)")
    y, mo, w, d, h, mi = (int(g) if g else 0 for g in m.groups()[:6])
    seconds = float(m.group(7) or 0)
    micros = (((w * 7 + d) * 24 + h) * 60 + mi) * 60_000_000 + round(seconds * 1_000_000)
    months = y * 12 + mo
    if months == 0 and micros == 0:
        raise BadRequestData(f"{name}: {raw!r} is a zero duration")
    return Duration(months, micros)


# -- the query -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TemporalQuery:
    """The temporal part of a query: which instances, and how to summarise them."""

    timerel: Timerel | None = None
    time_at: int | None = None
    end_time_at: int | None = None
    timeproperty: Timeproperty = "observedAt"
    last_n: int | None = None
    aggr_methods: tuple[str, ...] = ()
    period: Duration | None = None

    @property
    def lower(self) -> int | None:
        """Return the first instant included (None: unbounded)."""
        if self.timerel == "after":
            assert self.time_at is not None
            return self.time_at + 1  # after is strict
        if self.timerel == "between":
            return self.time_at
        return None

    @property
    def upper(self) -> int | None:
        """Return the first instant excluded (None: unbounded)."""
        if self.timerel == "before":
            return self.time_at
        if self.timerel == "between":
            return self.end_time_at
        return None


def temporal_query(params: Mapping[str, Any], *, aggregated: bool) -> TemporalQuery:
    """Parse timerel, timeAt, endTimeAt, timeproperty, lastN, aggrMethods, aggrPeriodDuration."""
    timerel = params.get("timerel")
    time_at = _time_param(params, "timeAt")
    end_time_at = _time_param(params, "endTimeAt")
    if timerel is not None:
        if timerel not in ("before", "after", "between"):
            raise BadRequestData(f"timerel: {timerel!r} is not one of before, after, between")
        if time_at is None:
            raise BadRequestData(f"timeAt: required with timerel={timerel}")
        if timerel == "between":
            if end_time_at is None:
                raise BadRequestData("endTimeAt: required with timerel=between")
            if end_time_at <= time_at:
                raise BadRequestData("endTimeAt: must be later than timeAt")
        elif end_time_at is not None:
            raise BadRequestData(f"endTimeAt: only allowed with timerel=between, not {timerel}")
    elif time_at is not None:
        raise BadRequestData("timerel: required when timeAt is given")
    elif end_time_at is not None:
        raise BadRequestData("timerel: required when endTimeAt is given (use between)")
    prop = params.get("timeproperty", "observedAt")
    if prop not in TIMEPROPERTIES:
        raise BadRequestData(f"timeproperty: {prop!r} is not one of {', '.join(TIMEPROPERTIES)}")
    last_n = None
    raw_n = params.get("lastN")
    if raw_n is not None:
        try:
            last_n = int(raw_n)
        except (TypeError, ValueError):
            raise BadRequestData(f"lastN: must be a positive integer, got {raw_n!r}") from None
        if last_n < 1:
            raise BadRequestData(f"lastN: must be a positive integer, got {raw_n!r}")
    methods: tuple[str, ...] = ()
    period = None
    raw_m, raw_p = params.get("aggrMethods"), params.get("aggrPeriodDuration")
    if aggregated:
        if raw_m is None:
            raise BadRequestData("aggrMethods: required with options=aggregatedValues")
        items = [m.strip() for m in str(raw_m).split(",")]
        for m in items:
            if m not in AGGR_METHODS:
                raise BadRequestData(f"aggrMethods: {m!r} is not one of {', '.join(AGGR_METHODS)}")
        methods = tuple(dict.fromkeys(items))
        if raw_p is not None:
            period = parse_duration(str(raw_p))
    elif raw_m is not None or raw_p is not None:
        name = "aggrMethods" if raw_m is not None else "aggrPeriodDuration"
        raise BadRequestData(f"{name}: only allowed with options=aggregatedValues")
    return TemporalQuery(
        timerel=timerel,
        time_at=time_at,
        end_time_at=end_time_at,
        timeproperty=prop,
        last_n=last_n,
        aggr_methods=methods,
        period=period,
    )


# -- what storage returns ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One recorded attribute instance."""

    iid: int
    t: int  # the queried timeproperty
    observed: int  # observedAt, else the time it was recorded
    created: int
    modified: int
    inst: Instance  # as stored (expanded names), without createdAt/modifiedAt


@dataclass(slots=True)
class AttrHistory:
    rows: list[HistoryRow]
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class Bucket:
    """The aggregates of one attribute instance (datasetId) over one period."""

    dataset: str | None
    start: int
    end: int
    count: int
    distinct: int
    sum: float | None
    numbers: int
    min: float | None
    max: float | None
    sumsq: float | None


@dataclass(slots=True)
class HistoryEntity:
    id: str
    types: list[str]
    attrs: dict[str, AttrHistory] = field(default_factory=dict)
    #: attribute -> its type and buckets (aggregatedValues only)
    aggregates: dict[str, tuple[str, list[Bucket]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Page:
    """The instance range a cut response covers (clause 6.3.10)."""

    first: int
    last: int


def instance_id(iid: int) -> str:
    """Return the instanceId URI of a recorded instance."""
    return f"urn:cityos:instance:{iid}"


def parse_instance_id(raw: str) -> int | None:
    """Return the row number an instanceId names, or None when it is not one of ours."""
    prefix = "urn:cityos:instance:"
    if raw.startswith(prefix) and raw[len(prefix) :].isdigit():
        return int(raw[len(prefix) :])
    return None


def cut_pages(entities: list[HistoryEntity], descending: bool) -> Page | None:
    """Cut every attribute at the same instant when one was truncated; return the range.

    Rows come in retrieval order (newest first for lastN) and leave in time order. A client
    asks for the next page from the range's end: attributes that were not truncated are cut
    too, so the next page neither repeats nor skips an instance.
    """
    ends = [a.rows[-1].t for e in entities for a in e.attrs.values() if a.truncated and a.rows]
    page = None
    if ends:
        cut = max(ends) if descending else min(ends)
        first: int | None = None
        for e in entities:
            for a in e.attrs.values():
                a.rows = [r for r in a.rows if (r.t >= cut if descending else r.t <= cut)]
                if a.rows:
                    t0 = a.rows[0].t
                    if first is None or (t0 > first if descending else t0 < first):
                        first = t0
        page = Page(cut if first is None else first, cut)
    if descending:
        for e in entities:
            for a in e.attrs.values():
                a.rows.reverse()
    return page


def period_bounds(lower: int, upper: int, period: Duration | None) -> list[tuple[int, int]]:
    """Return the [start, end) periods from lower to upper (one period when None)."""
    if period is None:
        return [(lower, upper)]
    out: list[tuple[int, int]] = []
    k = 0
    start = lower
    while start < upper:
        end = period.add_to(lower, k + 1)
        out.append((start, end))
        if len(out) > MAX_CALENDAR_PERIODS:
            raise BadRequestData(
                f"aggrPeriodDuration: more than {MAX_CALENDAR_PERIODS} periods in the range; "
                "use a longer period or a shorter range"
            )
        k += 1
        start = end
    return out


# -- rendering -------------------------------------------------------------------------------
def _with_system(row: HistoryRow) -> Instance:
    inst = dict(row.inst)
    inst["instanceId"] = instance_id(row.iid)
    inst["createdAt"] = from_micros(row.created)
    inst["modifiedAt"] = from_micros(row.modified)
    return inst


def render_temporal(
    entity: HistoryEntity,
    ctx: TermCompactor,
    opts: RenderOptions,
    *,
    simplified: bool,
) -> dict[str, Any]:
    """Render one entity's history, normalized or simplified (temporalValues)."""
    head = render_entity({"id": entity.id, "type": entity.types, "attrs": {}}, ctx, opts)
    out: dict[str, Any] = dict(head)
    if opts.sys_attrs:
        times = [r.created for a in entity.attrs.values() for r in a.rows]
        if times:
            out["createdAt"] = from_micros(min(times))
            out["modifiedAt"] = from_micros(
                max(r.modified for a in entity.attrs.values() for r in a.rows)
            )
    for iri, hist in entity.attrs.items():
        if not hist.rows:
            continue
        if simplified:
            values = _simplified(hist.rows, ctx, opts)
            if values:
                out[ctx.compact_iri(iri)] = values
            continue
        doc = {"id": entity.id, "type": [], "attrs": {iri: [_with_system(r) for r in hist.rows]}}
        # A datasetId filter keeps the instances; several instances share one datasetId here,
        # which the entity renderer allows.
        rendered = render_entity(
            doc,
            ctx,
            RenderOptions(
                format="normalized",
                sys_attrs=opts.sys_attrs,
                lang=opts.lang,
                dataset_ids=opts.dataset_ids,
            ),
        )
        for key, val in rendered.items():
            if key not in ("id", "type"):
                out[key] = val if isinstance(val, list) else [val]
    return out


def _simplified(rows: list[HistoryRow], ctx: TermCompactor, opts: RenderOptions) -> Any:
    groups: dict[str | None, dict[str, Any]] = {}
    for r in rows:
        ds = r.inst.get("datasetId")
        if opts.dataset_ids is not None and (ds or "@none") not in opts.dataset_ids:
            continue
        atype = str(r.inst.get("type", "Property"))
        member = VALUE_MEMBER.get(atype, "value")
        value = r.inst.get(member)
        if atype == "VocabProperty":
            value = (
                [ctx.compact_vocab_value(v) for v in value]
                if isinstance(value, list)
                else ctx.compact_vocab_value(str(value))
            )
        group = groups.get(ds)
        if group is None:
            group = groups[ds] = {"type": atype}
            if ds is not None:
                group["datasetId"] = ds
        group.setdefault(VALUES_MEMBER.get(atype, "values"), []).append([value, from_micros(r.t)])
    items = list(groups.values())
    if not items:
        return None
    return items[0] if len(items) == 1 else items


def _aggregate_value(b: Bucket, method: str) -> float | int | None:
    if method == "totalCount":
        return b.count
    if method == "distinctCount":
        return b.distinct
    if b.numbers == 0 or b.sum is None:
        return None
    if method == "sum":
        return b.sum
    if method == "avg":
        return b.sum / b.numbers
    if method == "min":
        return b.min
    if method == "max":
        return b.max
    assert b.sumsq is not None
    if method == "sumsq":
        return b.sumsq
    # population standard deviation from the sums SQL computed (SQLite has no stddev)
    mean = b.sum / b.numbers
    return math.sqrt(max(0.0, b.sumsq / b.numbers - mean * mean))


def render_aggregated(
    entity: HistoryEntity, ctx: TermCompactor, opts: RenderOptions, methods: tuple[str, ...]
) -> dict[str, Any]:
    """Render one entity's aggregated values (clause 4.5.19): [[value, start, end], ...]."""
    out = render_entity({"id": entity.id, "type": entity.types, "attrs": {}}, ctx, opts)
    for iri, (atype, buckets) in entity.aggregates.items():
        groups: dict[str | None, dict[str, Any]] = {}
        for b in buckets:
            if opts.dataset_ids is not None and (b.dataset or "@none") not in opts.dataset_ids:
                continue
            group = groups.get(b.dataset)
            if group is None:
                group = groups[b.dataset] = {"type": atype}
                if b.dataset is not None:
                    group["datasetId"] = b.dataset
                for m in methods:
                    group[m] = []
            for m in methods:
                value = _aggregate_value(b, m)
                if value is not None:
                    group[m].append([value, from_micros(b.start), from_micros(b.end)])
        items = list(groups.values())
        if items:
            out[ctx.compact_iri(iri)] = items[0] if len(items) == 1 else items
    return out


# -- payloads --------------------------------------------------------------------------------
def temporal_attributes(
    payload: dict[str, Any], ctx: Expander, now: str, skip: frozenset[str]
) -> dict[str, list[Instance]]:
    """Return the instances of a temporal payload: each attribute an instance or an array."""
    norm = Normalizer(ctx, now)
    attrs: dict[str, list[Instance]] = {}
    for key, raw in payload.items():
        if key in skip:
            continue
        check_name(key, key)
        iri = ctx.expand_term(key)
        if iri in attrs:
            raise BadRequestData(f"{key}: attribute given twice (after @context expansion)")
        if isinstance(raw, list):
            if not raw:
                raise BadRequestData(f"{key}: needs at least one instance")
            attrs[iri] = [norm.instance(x, f"{key}[{i}]") for i, x in enumerate(raw)]
        else:
            attrs[iri] = [norm.instance(raw, key)]
    return attrs


def instance_patch(
    raw: Any, attr: str, iri: str, ctx: Expander, now: str
) -> Callable[[Instance], Instance]:
    """Return how a Modify Attribute Instance fragment changes the stored instance."""
    frag = raw
    if isinstance(raw, dict) and len(raw) == 1:
        ((key, value),) = raw.items()
        if key == attr or ctx.expand_term(key) == iri:
            frag = value[0] if isinstance(value, list) and len(value) == 1 else value
    if not isinstance(frag, dict) or not frag:
        raise BadRequestData(f"{attr}: the fragment must be an attribute instance object")
    norm = Normalizer(ctx, now)

    def apply(current: Instance) -> Instance:
        given = dict(frag)
        atype = str(given.setdefault("type", current.get("type", "Property")))
        member = VALUE_MEMBER.get(atype, "value")
        if member not in given:
            if "value" in given:
                given[member] = given.pop("value")
            elif atype == current.get("type") and member in current:
                given[member] = current[member]
        patch = norm.instance(given, attr)
        merged = {**current, **patch}
        if patch.get("type") != current.get("type"):
            for m in set(VALUE_MEMBER.values()) - {member}:
                merged.pop(m, None)
        return merged

    return apply


# -- retention -------------------------------------------------------------------------------
class Pruner(Protocol):
    async def prune(self, before: int) -> int: ...


class Retention:
    """Delete instances older than the retention, at start and then periodically."""

    def __init__(
        self, history: Pruner, seconds: int, leader: Callable[[], bool] = lambda: True
    ) -> None:
        self.history = history
        self.seconds = seconds
        self._leader = leader  # several workers: the leader prunes
        # often enough that history exceeds the retention by at most a tenth of it
        self.every = max(1.0, min(3600.0, seconds / 10))
        self._task: asyncio.Task[None] | None = None

    async def prune(self, now: int) -> int:
        """Delete the instances observed more than the retention before now (µs)."""
        n = await self.history.prune(now - self.seconds * 1_000_000)
        if n:
            log.info("history retention: pruned %d instances", n)
        return n

    async def start(self) -> None:
        """Prune once, then keep pruning in the background."""
        if self._leader():
            await self.prune(to_micros(clock.now()))
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop the background pruning."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            if not self._leader():
                continue
            try:
                await self.prune(to_micros(clock.now()))
            except Exception:  # keep pruning; the next round retries
                log.exception("history retention: pruning failed")
