"""What the history stores, engine-neutral: the rows a change records and the buckets read back.

Both history engines (sqlite_history, pg_history) import these, so that they record the same
instances with the same columns, select with the same SQL fragments (``?`` placeholders) and
summarise aggregates the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from cityos.broker import typesel
from cityos.broker.model import VALUE_MEMBER, Instance
from cityos.broker.temporal import Bucket, TemporalQuery, to_micros
from cityos.storage.base import Change

#: timeproperty -> the column holding it
COLUMN: Final = {"observedAt": "t_obs", "createdAt": "t_cre", "modifiedAt": "t_mod"}
_SYSTEM: Final = frozenset({"createdAt", "modifiedAt"})


def members(inst: Instance) -> dict[str, Any]:
    """Return an instance without its system members (what a change is compared on)."""
    return {k: v for k, v in inst.items() if k not in _SYSTEM}


def value_columns(inst: Instance) -> tuple[float | None, str | None]:
    """Return (num, val): a numeric value for aggregation, else the value as JSON."""
    member = VALUE_MEMBER.get(inst.get("type", ""), "value")
    value = inst.get(member)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value), None
    return None, orjson.dumps(value).decode()


def instance_row(
    hid: int, attr: str, inst: Instance, created: int, modified: int
) -> tuple[Any, ...]:
    """Return the (hid, attr, ds, t_obs, t_cre, t_mod, num, val, inst) row of an instance."""
    observed = inst.get("observedAt")
    num, val = value_columns(inst)
    return (
        hid,
        attr,
        inst.get("datasetId") or "",
        to_micros(observed) if observed else created,
        created,
        modified,
        num,
        val,
        orjson.dumps(members(inst)).decode(),
    )


def recorded_instances(change: Change) -> tuple[list[tuple[str, Instance]], bool]:
    """Return the (attribute, instance) pairs a change adds or alters, and whether its
    types may have changed."""
    new = change.new
    if new is None:
        return [], False  # deleting keeps the history (clause 6.19)
    old_attrs: dict[str, list[Instance]] = (change.old or {}).get("attrs", {})
    pending: list[tuple[str, Instance]] = []
    for attr, insts in new.get("attrs", {}).items():
        if old_attrs.get(attr) is insts:
            continue  # a merge or patch left this attribute's instances untouched
        before = {i.get("datasetId"): i for i in old_attrs.get(attr, ())}
        for inst in insts:
            prev = before.get(inst.get("datasetId"))
            if prev is None or members(prev) != members(inst):
                pending.append((attr, inst))
    new_types = change.old is None or change.old.get("type") != new["type"]
    return pending, new_types


def bucket(ds: str, start: int, end: int, agg: list[Any]) -> Bucket:
    """Return the Bucket of (count, distinct, sum, numbers, min, max, sumsq) of one period."""
    count, distinct, total, numbers, lo, hi, sumsq = agg
    return Bucket(
        dataset=ds or None,
        start=start,
        end=end,
        count=int(count),
        distinct=int(distinct),
        sum=total,
        numbers=int(numbers),
        min=lo,
        max=hi,
        sumsq=sumsq,
    )


def compile_types(expr: typesel.TypeExpr, expand: Callable[[str], str]) -> tuple[str, list[Any]]:
    """Compile a type selection to a condition on history_types (``?`` placeholders)."""
    params: list[Any] = []

    def walk(node: typesel.TypeExpr) -> str:
        if isinstance(node, typesel.TypeName):
            params.append(expand(node.name))
            return (
                "EXISTS (SELECT 1 FROM history_types t WHERE t.tenant=h.tenant AND t.type=? "
                "AND t.hid=h.hid)"
            )
        joiner = " AND " if isinstance(node, typesel.TypeAnd) else " OR "
        return "(" + joiner.join(walk(x) for x in node.items) + ")"

    return walk(expr), params


def time_range(tq: TemporalQuery, col: str) -> tuple[str, list[Any]]:
    """Return the condition (``?`` placeholders) keeping col within the query's range."""
    sql, params = "", []
    if tq.lower is not None:
        sql += f" AND {col} >= ?"
        params.append(tq.lower)
    if tq.upper is not None:
        sql += f" AND {col} < ?"
        params.append(tq.upper)
    return sql, params
