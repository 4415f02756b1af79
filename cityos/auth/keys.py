"""API keys for apps and devices: their format, hashing, validation and stored form.

A key reads `cok_<8 hex>_<43 url-safe characters>`: the 8 hex digits are its visible prefix
(shown by `cityos keys list`, used to revoke it), the rest a 256-bit secret. Only the sha256
of the whole key is stored: keys are random, so a slow password hash would add nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from cityos.auth.policy import ACTIONS, ALL, AREAS, ROLES, Principal

MARK: Final = "cok_"
_KEY = re.compile(r"^cok_([0-9a-f]{8})_([A-Za-z0-9_\-]{43})$")
_PREFIX = re.compile(r"^[0-9a-f]{8}$")
#: tenant names as NGSILD-Tenant allows them; '' is the default tenant
_TENANT = re.compile(r"^[A-Za-z0-9_.:\-]{0,128}$")
_DURATION = re.compile(r"^(\d+)([mhdw])$")
_UNIT_SECONDS: Final = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: last_used is written at most this often per key (seconds): a busy key costs no writes
TOUCH_EVERY: Final = 60.0


class KeyInputError(ValueError):
    """A key's name, role, tenant, scope or expiry is not acceptable."""


@dataclass(frozen=True, slots=True)
class Credential:
    """A stored API key: everything but the key itself."""

    id: int
    prefix: str
    name: str
    roles: tuple[str, ...]
    tenants: tuple[str, ...]
    scopes: tuple[str, ...]
    created: float  # seconds since the epoch, like every time here
    expires: float | None = None
    revoked: float | None = None
    last_used: float | None = None

    def active(self, now: float) -> bool:
        """Return True when the key is neither revoked nor expired at now."""
        return self.revoked is None and (self.expires is None or now < self.expires)

    def principal(self) -> Principal:
        """Return the principal a request presenting this key acts as."""
        return Principal(
            "key",
            id=f"key:{self.prefix}",
            roles=frozenset(self.roles),
            tenants=frozenset(self.tenants),
            scopes=frozenset(self.scopes),
        )


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly made key: the plaintext (shown once), its prefix and its hash."""

    plaintext: str
    prefix: str
    digest: str


def new_key() -> NewKey:
    """Make a random key."""
    prefix = secrets.token_hex(4)
    plaintext = f"{MARK}{prefix}_{secrets.token_urlsafe(32)}"
    return NewKey(plaintext, prefix, digest(plaintext))


def digest(plaintext: str) -> str:
    """Return the stored form of a key: its sha256, hex."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def prefix_of(presented: str) -> str | None:
    """Return the prefix of a well-formed key, or None (a malformed key is simply not found)."""
    m = _KEY.match(presented)
    return m.group(1) if m else None


def matches(stored_digest: str, presented: str) -> bool:
    """Return True when presented is the key whose digest is stored (constant time)."""
    return hmac.compare_digest(stored_digest.encode(), digest(presented).encode())


def check_prefix(prefix: str) -> str:
    """Return a key prefix as `keys list` shows it, or raise KeyInputError."""
    prefix = prefix.removeprefix(MARK).rstrip("_…")
    if not _PREFIX.match(prefix):
        raise KeyInputError(f"{prefix!r} is not a key prefix (8 hex digits, as `keys list` shows)")
    return prefix


def check_request(
    name: str,
    roles: Iterable[str],
    tenants: Iterable[str],
    scopes: Iterable[str],
    *,
    expires: float | None,
    now: float,
) -> tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Return a new key's checked name, roles, tenants and scopes; refuse a past expiry."""
    checked = check_name(name), check_roles(roles), check_tenants(tenants), check_scopes(scopes)
    if expires is not None and expires <= now:
        raise KeyInputError("an expiry must be in the future")
    return checked


def check_name(name: str) -> str:
    """Return a key's name without surrounding blanks, or raise KeyInputError."""
    name = name.strip()
    if not name or len(name) > 200:
        raise KeyInputError("a key needs a name of 1-200 characters")
    return name


def check_roles(roles: Iterable[str]) -> tuple[str, ...]:
    """Return the roles, sorted and unique, or raise KeyInputError."""
    out = tuple(sorted(set(roles)))
    if not out:
        raise KeyInputError("a key needs at least one role: " + ", ".join(sorted(ROLES)))
    unknown = [r for r in out if r not in ROLES]
    if unknown:
        raise KeyInputError(f"unknown role {unknown[0]!r}; roles: " + ", ".join(sorted(ROLES)))
    return out


def check_tenants(tenants: Iterable[str]) -> tuple[str, ...]:
    """Return the tenants ('' the default one, `*` all), sorted and unique, or raise."""
    out = tuple(sorted(set(tenants)))
    if not out:
        raise KeyInputError("a key needs at least one tenant ('' is the default one, '*' all)")
    for t in out:
        if t != ALL and not _TENANT.match(t):
            raise KeyInputError(f"{t!r} is not a tenant name (0-128 of A-Z a-z 0-9 _ . : -)")
    return (ALL,) if ALL in out else out


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Return the scopes (`area:action`, `area:*`, `*`; none given: `*`), or raise."""
    out = tuple(sorted(set(scopes))) or (ALL,)
    for s in out:
        area, _, action = s.partition(":")
        if s != ALL and (area not in AREAS or (action not in ACTIONS and action != ALL)):
            raise KeyInputError(
                f"{s!r} is not a scope: write area:action (e.g. entities:read) or '*'; "
                "areas: " + ", ".join(sorted(AREAS)) + "; actions: " + ", ".join(sorted(ACTIONS))
            )
    return (ALL,) if ALL in out else out


def parse_expiry(text: str, now: float) -> float:
    """Return when a key given `90d`, `12h`, `2027-01-01` or an ISO time expires (epoch)."""
    text = text.strip()
    m = _DURATION.match(text)
    if m:
        seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        if seconds <= 0:
            raise KeyInputError("an expiry must be in the future")
        return now + seconds
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise KeyInputError(
            f"{text!r} is not an expiry: write a duration (30m, 12h, 90d, 4w) or a date "
            "(2027-01-01, UTC unless a zone is given)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    at = when.timestamp()
    if at <= now:
        raise KeyInputError(f"{text} is already past")
    return at
