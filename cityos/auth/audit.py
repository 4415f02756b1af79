"""The audit log's records, their hash chain and its verification (pure: no SQL, no I/O).

Every write, credential change, policy change and admin action becomes one record. Records
are numbered 1, 2, 3 ... without gaps, and each carries the hash of the one before it
(``prev``) and a hash of its own content (``hash``: sha256 of the canonical JSON of every
field but ``hash``). Editing, deleting or reordering stored records therefore breaks the chain
where it happened, and `verify_chain` says where. The store also keeps the latest head (seq
and hash) in a row of its own, so deleting the last records is detected too.

What the chain cannot do: someone able to rewrite the whole database can rewrite the whole
chain, head included, and it will verify. The defence is to keep the head somewhere else
(`cityos audit head`, printed to a ticket, another machine, a daily e-mail) and check it later
(`cityos audit verify --expect-head SEQ HASH`): a rewritten log no longer holds that record
with that hash.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

#: the ``prev`` of record 1
GENESIS: Final = "0" * 64

Outcome = Literal["ok", "denied", "error"]
OUTCOMES: Final[frozenset[str]] = frozenset({"ok", "denied", "error"})

#: what a verification found; "intact" or the first problem
Kind = Literal["intact", "edited", "deleted", "reordered", "inserted"]

# Limits keep one record small: the log records who did what, not the payloads themselves.
MAX_NAME = 200  # actor, action, tenant
MAX_TARGET = 1000
MAX_DETAIL = 4096  # bytes of canonical JSON

_ACTION = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
_HASH = re.compile(r"[0-9a-f]{64}")
_FIELDS: Final = ("seq", "at", "actor", "action", "target", "tenant", "outcome", "detail", "prev")


class AuditError(ValueError):
    """An entry that cannot be recorded (the message names the field)."""


def canonical(value: Any) -> bytes:
    """Return the canonical JSON of value: sorted keys, no spaces, UTF-8, no NaN."""
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise AuditError(f"not representable as canonical JSON: {exc}") from None


def utc_now() -> datetime:
    """Return the current time in UTC (the default clock)."""
    return datetime.now(UTC)


def timestamp(when: datetime) -> str:
    """Return when as UTC ISO 8601 with microseconds, e.g. 2026-11-25T09:00:00.000000Z."""
    if when.tzinfo is None:
        raise AuditError("the clock must return timezone-aware datetimes")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Entry:
    """What happened, before it becomes a numbered, chained record."""

    actor: str  # key:cok_ab12cd34, user:tanaka, anonymous, system
    action: str  # entity.create, key.revoke, policy.change, portal.surge ...
    target: str = ""  # an entity id, a dataset name, a key prefix
    tenant: str = ""  # "" is the default tenant
    outcome: Outcome = "ok"
    detail: Mapping[str, Any] = field(default_factory=dict)  # small JSON object

    def __post_init__(self) -> None:
        for name in ("actor", "action", "tenant"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > MAX_NAME:
                raise AuditError(f"{name} must be a string of at most {MAX_NAME} characters")
        if not self.actor:
            raise AuditError("actor must not be empty (use 'anonymous' or 'system')")
        if not _ACTION.fullmatch(self.action):
            raise AuditError(f"action must look like 'entity.create', not {self.action!r}")
        if not isinstance(self.target, str) or len(self.target) > MAX_TARGET:
            raise AuditError(f"target must be a string of at most {MAX_TARGET} characters")
        if self.outcome not in OUTCOMES:
            raise AuditError(f"outcome must be one of {sorted(OUTCOMES)}, not {self.outcome!r}")
        if not isinstance(self.detail, Mapping):
            raise AuditError("detail must be a JSON object")
        canonical([self.actor, self.action, self.target, self.tenant])  # UTF-8 encodable
        if len(canonical(dict(self.detail))) > MAX_DETAIL:
            raise AuditError(f"detail must be at most {MAX_DETAIL} bytes of JSON")


@dataclass(frozen=True, slots=True)
class Record:
    """One numbered, chained record of the audit log."""

    seq: int
    at: str
    actor: str
    action: str
    target: str
    tenant: str
    outcome: str
    detail: dict[str, Any]
    prev: str
    hash: str

    def content(self) -> dict[str, Any]:
        """Return every field but hash, as hashed."""
        return {name: getattr(self, name) for name in _FIELDS}

    def as_dict(self) -> dict[str, Any]:
        """Return every field, hash included (the export's form)."""
        return {**self.content(), "hash": self.hash}

    def content_matches(self) -> bool:
        """Tell whether hash is the hash of the record's content."""
        return content_hash(self.content()) == self.hash


def content_hash(content: Mapping[str, Any]) -> str:
    """Return the sha256 (hex) of the canonical JSON of a record's content."""
    return hashlib.sha256(canonical(dict(content))).hexdigest()


def chain(entry: Entry, *, seq: int, at: datetime, prev: str) -> Record:
    """Make record number seq of entry, following the record whose hash is prev."""
    # A round trip through canonical JSON makes the detail exactly what is stored and read
    # back later (tuples become lists, int keys strings), so the hash verifies after reading.
    detail: dict[str, Any] = json.loads(canonical(dict(entry.detail)))
    content: dict[str, Any] = {
        "seq": seq,
        "at": timestamp(at),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "tenant": entry.tenant,
        "outcome": entry.outcome,
        "detail": detail,
        "prev": prev,
    }
    return Record(**content, hash=content_hash(content))


def record_from_dict(data: Mapping[str, Any]) -> Record:
    """Read a record back from its exported form; raise AuditError if a field is wrong."""
    try:
        record = Record(**{name: data[name] for name in (*_FIELDS, "hash")})
    except KeyError as exc:
        raise AuditError(f"record lacks the field {exc.args[0]!r}") from None
    if not isinstance(record.seq, int) or isinstance(record.seq, bool):
        raise AuditError("seq must be an integer")
    text_fields = ("at", "actor", "action", "target", "tenant", "outcome", "prev", "hash")
    for name in text_fields:
        if not isinstance(getattr(record, name), str):
            raise AuditError(f"{name} must be a string")
    if not isinstance(record.detail, dict):
        raise AuditError("detail must be a JSON object")
    return record


@dataclass(frozen=True, slots=True)
class Head:
    """The latest record's number and hash (seq 0 and GENESIS for an empty log)."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq} {self.hash}"


EMPTY: Final = Head(0, GENESIS)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A stored row that is not a record any more (a field of the wrong type, bad JSON)."""

    seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """The result of a verification: intact, or the first problem and where it is."""

    kind: Kind
    message: str
    seq: int | None = None  # the record the problem is reported at
    records: int = 0  # how many records were read
    head: Head = EMPTY  # the last record read

    @property
    def ok(self) -> bool:
        """Tell whether the log is intact."""
        return self.kind == "intact"


def verify_chain(
    rows: Iterable[Record | Unreadable],
    *,
    head: Head | None,
    seq_of_hash: Callable[[str], int | None],
    expect: Head | None = None,
) -> Verdict:
    """Walk records in seq order and report the first broken link, or that all is intact.

    head is the stored head (None if its row is missing); seq_of_hash finds which record
    has a given hash (to tell a moved record from an edited one; called only on a problem);
    expect is a head kept elsewhere earlier, which must still be in the log, same hash.
    """
    if expect is not None and not _HASH.fullmatch(expect.hash):
        raise AuditError("the expected head's hash must be 64 lowercase hex digits")
    last = EMPTY
    count = 0
    kept: str | None = None  # the hash of record expect.seq, as read
    for row in rows:
        count += 1
        expected = last.seq + 1
        if row.seq < expected:
            return Verdict(
                "inserted",
                f"record {row.seq} is not part of the chain (records are numbered from 1)",
                row.seq,
                count,
                last,
            )
        if row.seq > expected:
            return Verdict("deleted", _gap(expected, row.seq), expected, count, last)
        if isinstance(row, Unreadable):
            msg = f"content of record {row.seq} does not match its hash ({row.reason})"
            return Verdict("edited", msg, row.seq, count, last)
        problem = _link_problem(row, last, seq_of_hash)
        if problem is not None:
            kind, at, message = problem
            return Verdict(kind, message, at, count, last)
        last = Head(row.seq, row.hash)
        if expect is not None and row.seq == expect.seq:
            kept = row.hash
    stored = head if head is not None else EMPTY
    if stored.seq > last.seq:
        msg = f"the log ends at {last.seq} but its head says {stored.seq}"
        return Verdict("deleted", msg, last.seq + 1, count, last)
    if stored.seq < last.seq:
        msg = (
            f"the log goes on to {last.seq} but its head says {stored.seq}: records "
            f"{stored.seq + 1}..{last.seq} were not appended by cityos, or the head was reset"
        )
        return Verdict("inserted", msg, stored.seq + 1, count, last)
    if stored.hash != last.hash:
        msg = f"record {last.seq} was rewritten: its hash is not the one the head holds"
        return Verdict("edited", msg, last.seq, count, last)
    if expect is not None and expect.seq > 0:
        if expect.seq > last.seq:
            msg = f"the log ends at {last.seq} but the head kept elsewhere is at {expect.seq}"
            return Verdict("deleted", msg, last.seq + 1, count, last)
        if kept != expect.hash:
            msg = (
                f"record {expect.seq} does not have the hash kept elsewhere "
                f"({expect.hash[:12]}…): the log was rewritten at or before record {expect.seq}"
            )
            return Verdict("edited", msg, expect.seq, count, last)
    return Verdict(
        "intact", f"audit log intact: {count} records, head {last.hash}", None, count, last
    )


def _gap(expected: int, found: int) -> str:
    if expected == 1:
        where = f"the log starts at {found}"
    else:
        where = f"{expected - 1} is followed by {found}"
    if found == expected + 1:
        return f"record {expected} is missing ({where})"
    return f"records {expected}..{found - 1} are missing ({where})"


def _link_problem(
    row: Record, last: Head, seq_of_hash: Callable[[str], int | None]
) -> tuple[Kind, int, str] | None:
    """Return (kind, seq, message) if row does not follow last correctly."""
    content_ok = row.content_matches()
    if content_ok and row.prev == last.hash:
        return None
    # Which record does row say it follows? A record moved to another seq still holds the
    # prev of its true place, so its content verifies once seq is put back.
    followed = 0 if row.prev == GENESIS else seq_of_hash(row.prev)
    moved_from = None if followed is None else followed + 1
    if not content_ok:
        if moved_from is not None and moved_from != row.seq:
            original = {**row.content(), "seq": moved_from}
            if content_hash(original) == row.hash:
                msg = f"record {moved_from} is stored as record {row.seq} (records were reordered)"
                return "reordered", row.seq, msg
        return "edited", row.seq, f"content of record {row.seq} does not match its hash"
    # The row is self-consistent but follows another record than the one before it.
    if followed is not None:
        after = "starts a new chain" if followed == 0 else f"follows record {followed}"
        msg = f"record {row.seq} {after}, not record {last.seq} (records were reordered)"
        return "reordered", row.seq, msg
    if last.seq == 0:
        msg = (
            "record 1 does not start the chain: earlier records were removed and the log "
            "renumbered, or record 1 was rewritten"
        )
        return "edited", row.seq, msg
    # It follows a record that no longer exists: the one before it was rewritten and
    # re-hashed (or, less likely, this one's link was rewritten).
    msg = (
        f"record {last.seq} was rewritten: record {row.seq} was chained to a different "
        f"hash ({row.prev[:12]}…, now {last.hash[:12]}…)"
    )
    return "edited", last.seq, msg
