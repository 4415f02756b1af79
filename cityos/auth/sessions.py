"""Sessions of signed-in staff: a random cookie token, of which only the sha256 is stored.

A session ends 30 minutes after its last use, 8 hours after sign-in whatever happens, at
logout, and when its user is disabled, deleted or given a new password. Each carries a CSRF
token that every form posted in it must repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from cityos.auth.users import User

if TYPE_CHECKING:
    from cityos.storage.engines import Users

COOKIE: Final = "cityos_session"
IDLE_SECONDS: Final = 30 * 60.0
ABSOLUTE_SECONDS: Final = 8 * 3600.0
#: last_seen is written at most this often per session (seconds): browsing costs few writes
TOUCH_EVERY: Final = 60.0


def new_token() -> str:
    """Return a fresh session token: 32 random bytes, URL-safe."""
    return secrets.token_urlsafe(32)


def digest(token: str) -> str:
    """Return the stored form of a session token: its sha256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def same_token(expected: str, given: str) -> bool:
    """Return True when given is expected (constant time)."""
    return hmac.compare_digest(expected.encode(), given.encode())


@dataclass(frozen=True, slots=True)
class Session:
    """A stored session: whose it is, its CSRF token and its times (not the token)."""

    digest: str
    user: str
    csrf: str
    created: float
    last_seen: float

    def expired(self, now: float) -> bool:
        """Return True once the session was idle too long or is too old."""
        return now - self.last_seen > IDLE_SECONDS or now - self.created > ABSOLUTE_SECONDS


@dataclass(frozen=True, slots=True)
class Current:
    """A live session and its (enabled) user, as found from a cookie."""

    session: Session
    user: User


class Sessions:
    """Start, find and end sessions kept in a user store."""

    def __init__(self, store: Users, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    async def start(self, user: User) -> tuple[str, Session]:
        """Start a session for user; return its token (for the cookie) and the session."""
        token, now = new_token(), self.clock()
        session = Session(digest(token), user.name, secrets.token_urlsafe(32), now, now)
        await self.store.insert_session(session)
        return token, session

    async def find(self, token: str | None) -> Current | None:
        """Return the live session of a cookie's token and its user; None if none."""
        if not token or len(token) > 100:
            return None
        found = await self.store.get_session(digest(token))
        if found is None:
            return None
        session, user = found
        now = self.clock()
        if session.expired(now) or user.disabled:
            await self.store.delete_session(session.digest)
            return None
        if now - session.last_seen >= TOUCH_EVERY:
            await self.store.touch_session(session.digest, now)
        return Current(session, user)

    async def end(self, token: str | None) -> None:
        """End the session of a cookie's token (nothing if there is none)."""
        if token:
            await self.store.delete_session(digest(token))
