"""Stored audit rows read back as records, the same way on every engine (pure: no SQL)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from cityos.auth.audit import AuditError, Record, Unreadable, canonical

#: the audit_log columns, in the order parse_row expects them
COLUMNS: Final = "seq, at, actor, action, target, tenant, outcome, detail, prev, hash"


def row_values(record: Record) -> tuple[Any, ...]:
    """Return a record's column values in COLUMNS order, as stored."""
    return (
        record.seq,
        record.at,
        record.actor,
        record.action,
        record.target,
        record.tenant,
        record.outcome,
        canonical(record.detail).decode(),
        record.prev,
        record.hash,
    )


def parse_row(row: Sequence[Any]) -> Record | Unreadable:
    """Return the record a stored row holds, or why it holds none."""
    try:
        detail = json.loads(row[7])
    except ValueError:
        return Unreadable(row[0], "its detail is not JSON")
    if not isinstance(detail, dict):
        return Unreadable(row[0], "its detail is not a JSON object")
    seq, at, actor, action, target, tenant, outcome, _, prev, hash_ = row
    return Record(seq, at, actor, action, target, tenant, outcome, detail, prev, hash_)


def readable(row: Sequence[Any]) -> Record:
    """Return the record a stored row holds; raise AuditError if it holds none."""
    item = parse_row(row)
    if isinstance(item, Unreadable):
        raise AuditError(f"record {item.seq} cannot be read: {item.reason}")
    return item
