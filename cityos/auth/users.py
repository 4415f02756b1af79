"""Staff accounts: names, roles, argon2id passwords, lockout, and signing in (no SQL, no HTTP).

A city's staff sign in to the admin pages with a name and a password. Passwords are hashed
with argon2id (argon2-cffi's defaults; a stored hash made with older parameters is replaced at
the next successful sign-in). Five wrong passwords within 15 minutes lock the account for 15
minutes; a locked, disabled or unknown account gets the very same answer as a wrong password,
after the same amount of hashing work, so the answer tells an attacker nothing.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from cityos.auth import keys
from cityos.auth.keys import KeyInputError
from cityos.auth.policy import ROLES, Principal

if TYPE_CHECKING:
    from cityos.storage.engines import Users

#: roles a person can hold ("app" is for keys only)
STAFF_ROLES: Final[frozenset[str]] = ROLES - {"app"}
MIN_PASSWORD: Final = 12
MAX_PASSWORD: Final = 1024
#: this many wrong passwords within FAILURE_WINDOW seconds lock the account for LOCK_SECONDS
MAX_FAILURES: Final = 5
FAILURE_WINDOW: Final = 15 * 60.0
LOCK_SECONDS: Final = 15 * 60.0
#: the one answer to every refused sign-in
REFUSED: Final = "ログインできません: 名前かパスワードが違います / Wrong name or password"

_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


class UserInputError(ValueError):
    """A user's name, display name, role, tenant or password is not acceptable."""


@dataclass(frozen=True, slots=True)
class User:
    """A stored staff account: everything but its password hash."""

    name: str
    display_name: str
    roles: tuple[str, ...]
    tenants: tuple[str, ...]
    created: float  # seconds since the epoch
    disabled: bool = False
    last_login: float | None = None
    #: wrong passwords counted since first_failure (reset by a right one or a lock)
    failures: int = 0
    first_failure: float | None = None
    locked_until: float | None = None

    def locked(self, now: float) -> bool:
        """Return True while the account is locked after too many wrong passwords."""
        return self.locked_until is not None and now < self.locked_until

    def state(self, now: float) -> str:
        """Return "disabled", "locked" or "active"."""
        if self.disabled:
            return "disabled"
        return "locked" if self.locked(now) else "active"

    def as_dict(self, now: float) -> dict[str, Any]:
        """Return the account as its JSON views show it (times in UTC ISO 8601)."""
        return {
            "name": self.name,
            "display_name": self.display_name,
            "roles": list(self.roles),
            "tenants": list(self.tenants),
            "created": _iso(self.created),
            "last_login": _iso(self.last_login),
            "locked_until": _iso(self.locked_until) if self.locked(now) else None,
            "state": self.state(now),
        }

    def principal(self) -> Principal:
        """Return the principal this user acts as once signed in."""
        return Principal(
            "user",
            id=f"user:{self.name}",
            roles=frozenset(self.roles),
            tenants=frozenset(self.tenants),
        )


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_name(name: str) -> str:
    """Return a user name, or raise UserInputError."""
    if not _NAME.match(name):
        raise UserInputError(f"{name[:80]!r} is not a user name: 1-64 of A-Z a-z 0-9 . _ @ -")
    return name


def check_display_name(text: str) -> str:
    """Return a display name without surrounding blanks (0-200 characters), or raise."""
    text = text.strip()
    if len(text) > 200 or any(ord(c) < 32 for c in text):
        raise UserInputError("a display name is at most 200 characters on one line")
    return text


def check_roles(roles: Iterable[str]) -> tuple[str, ...]:
    """Return a person's roles, sorted and unique, or raise UserInputError."""
    out = tuple(sorted(set(roles)))
    choices = ", ".join(sorted(STAFF_ROLES))
    if not out:
        raise UserInputError(f"a user needs at least one role: {choices}")
    for role in out:
        if role not in STAFF_ROLES:
            raise UserInputError(f"{role!r} is not a role for people; roles: {choices}")
    return out


def check_tenants(tenants: Iterable[str]) -> tuple[str, ...]:
    """Return the tenants ('' the default one, `*` all), sorted and unique, or raise."""
    try:
        return keys.check_tenants(tenants)
    except KeyInputError as exc:
        raise UserInputError(str(exc).replace("a key", "a user")) from None


def check_password(password: str) -> str:
    """Return an acceptable password, or raise UserInputError."""
    if len(password) < MIN_PASSWORD:
        raise UserInputError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise UserInputError(f"a password is at most {MAX_PASSWORD} characters")
    return password


def after_failure(user: User, now: float) -> User:
    """Return the user after one more wrong password at now (locked on the fifth in a window)."""
    if user.first_failure is None or now - user.first_failure > FAILURE_WINDOW:
        failures, first = 1, now
    else:
        failures, first = user.failures + 1, user.first_failure
    if failures >= MAX_FAILURES:
        return replace(user, failures=0, first_failure=None, locked_until=now + LOCK_SECONDS)
    return replace(user, failures=failures, first_failure=first)


class Passwords:
    """argon2id hashing, with a dummy hash to spend the same time on unknown names."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        self._dummy: str | None = None

    def hash(self, password: str) -> str:
        """Return the argon2id hash of password."""
        return self.hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        """Return True when password matches the stored hash (None: check a dummy, say no)."""
        if stored is None:
            if self._dummy is None:
                self._dummy = self.hasher.hash("cityos dummy password, never valid")
            self._verify(self._dummy, password)  # the work only: a match means nothing here
            return False
        return self._verify(stored, password)

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        """Return True when stored was made with other parameters than the current ones."""
        try:
            return self.hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True


Result = Literal["ok", "failed", "locked", "disabled", "unknown"]


@dataclass(frozen=True, slots=True)
class SignIn:
    """The outcome of a sign-in: the user on success, and what happened (for the audit log)."""

    result: Result
    user: User | None = None
    #: True when this attempt locked the account
    locked_now: bool = False
    rehashed: bool = False

    @property
    def ok(self) -> bool:
        """Return True when the user is signed in."""
        return self.result == "ok"


class Accounts:
    """Create, change and sign in staff accounts kept in a user store."""

    def __init__(
        self,
        store: Users,
        *,
        passwords: Passwords | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.passwords = passwords or Passwords()
        self.clock = clock

    async def create(
        self,
        name: str,
        password: str,
        *,
        roles: Iterable[str],
        tenants: Iterable[str],
        display_name: str = "",
    ) -> User:
        """Store a new account; raise UserInputError if the name is taken or input is bad."""
        user = User(
            name=check_name(name),
            display_name=check_display_name(display_name),
            roles=check_roles(roles),
            tenants=check_tenants(tenants),
            created=self.clock(),
        )
        digest = await asyncio.to_thread(self.passwords.hash, check_password(password))
        if not await self.store.insert(user, digest):
            raise UserInputError(f"a user named {name!r} exists already")
        return user

    async def set_password(self, name: str, password: str) -> User | None:
        """Change a password and end the user's sessions; None if there is no such user."""
        digest = await asyncio.to_thread(self.passwords.hash, check_password(password))
        return await self.store.set_password(name, digest, end_sessions=True)

    async def sign_in(self, name: str, password: str) -> SignIn:
        """Check a name and password; count failures, lock, rehash, note the time of login."""
        if len(password) > MAX_PASSWORD:
            # refused all the same, after the hashing work of a password of the longest length
            password = password[:MAX_PASSWORD]
        found = await self.store.get_with_hash(name) if _NAME.match(name) else None
        user, stored = found if found is not None else (None, None)
        now = self.clock()
        usable = user is not None and not user.disabled and not user.locked(now)
        # the same hashing work in every case: the time taken tells nothing
        right = await asyncio.to_thread(self.passwords.verify, stored if usable else None, password)
        if user is None:
            return SignIn("unknown")
        if user.disabled:
            return SignIn("disabled", user)
        if user.locked(now):
            return SignIn("locked", user)
        if not right:
            after = await self.store.record_failure(user.name, now)
            locked_now = after is not None and after.locked(now)
            return SignIn("locked" if locked_now else "failed", after or user, locked_now)
        rehashed = False
        assert stored is not None
        if self.passwords.needs_rehash(stored):
            digest = await asyncio.to_thread(self.passwords.hash, password)
            await self.store.set_password(user.name, digest, end_sessions=False)
            rehashed = True
        signed = await self.store.record_login(user.name, now)
        return SignIn("ok", signed or user, rehashed=rehashed)
