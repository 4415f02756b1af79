"""Who the current request acts as: its credential, found once and kept in a contextvar.

`Identity.identify` turns a presented key (`cok_...`), identity provider's token (a JWT, checked
by `oidc.OidcVerifier`) or catalog token into a `Principal`. Keys
and tokens found in the store are cached for `ttl` seconds, so a busy app costs no read per
request; a revocation through `Identity.revoke` (this process) drops the key at once, one made
by `cityos keys revoke` or `cityos token revoke` in another process takes effect here within
`ttl` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from cityos.auth import keys
from cityos.auth.keys import Credential
from cityos.auth.oidc import OidcVerifier, TokenRejected, looks_like_jwt
from cityos.auth.policy import (
    ANONYMOUS,
    EVERYTHING,
    Decision,
    Operation,
    Policy,
    Principal,
    Reading,
)

if TYPE_CHECKING:
    from cityos.storage.engines import Keys

#: seconds a found key is trusted without asking the store again
CACHE_TTL: Final = 30.0
#: the name of the cache of found API keys on the bus (key: a revoked key's prefix)
KEYS_CACHE: Final = "auth.keys"
#: the name of the cache of found catalog API tokens on the bus (a token was revoked)
TOKENS_CACHE: Final = "auth.tokens"
#: a catalog (CKAN) API token acts as a data steward of the default tenant: it could already
#: create and change datasets before keys existed, and tokens carry no tenant of their own
TOKEN_ROLES: Final = frozenset({"steward"})
TOKEN_TENANTS: Final = frozenset({""})


@dataclass(frozen=True, slots=True)
class Access:
    """Who the request acts as, and what the policy lets it read in the request's area."""

    principal: Principal
    reading: Reading
    #: the policy enforced; None when nothing is (auth off)
    policy: Policy | None = None


#: outside a request, or with auth off (nothing bound): anonymous, and nothing restricted
_NOBODY: Final = Access(ANONYMOUS, EVERYTHING)
_current: ContextVar[Access] = ContextVar("cityos_access", default=_NOBODY)
_UNCHECKED: Final = Decision(True, "access is not enforced")


def current() -> Principal:
    """Return the principal of the request being handled (anonymous outside one)."""
    return _current.get().principal


def reading() -> Reading:
    """Return what the request being handled may read of its area (everything with auth off)."""
    return _current.get().reading


def decide(op: Operation, *, for_anyone: bool = False) -> Decision:
    """Return the enforced policy's decision on op for the current principal (auth off: yes).

    For what an endpoint learns only from the request's body, such as the entity types a new
    subscription watches. With for_anyone, decide for a caller without a credential instead
    (whether something may be published).
    """
    access = _current.get()
    if access.policy is None:
        return _UNCHECKED
    return access.policy.decide(ANONYMOUS if for_anyone else access.principal, op)


def bind(
    principal: Principal, reading: Reading = EVERYTHING, policy: Policy | None = None
) -> Token[Access]:
    """Make principal, its reading and the enforced policy current; reset with the token."""
    return _current.set(Access(principal, reading, policy))


def bind_access(access: Access) -> Token[Access]:
    """Make access the current one; reset with the returned token."""
    return _current.set(access)


def reset(token: Token[Access]) -> None:
    """Restore what was bound before bind returned token."""
    _current.reset(token)


def presented(authorization: str | None, api_key: str | None) -> str | None:
    """Return the credential of `Authorization` (Bearer or bare, as CKAN sends) or `X-API-Key`."""
    raw = (authorization or "").strip()
    if raw.lower().startswith("bearer "):
        raw = raw[7:].strip()
    elif " " in raw:
        raw = ""  # another scheme (Basic for a proxy in front): not ours to judge
    raw = raw or (api_key or "").strip()
    return raw or None


@dataclass(frozen=True, slots=True)
class Found:
    """What identification found: a principal, or that the credential is not valid."""

    principal: Principal
    valid: bool = True
    key_id: int | None = None
    #: why a credential is not valid, safe to tell the client ("the token has expired")
    reason: str = ""


class Identity:
    """Find the principal of a presented credential, with a short cache of found keys."""

    def __init__(
        self,
        store: Keys,
        *,
        token_user: Callable[[str], Awaitable[str | None]] | None = None,
        oidc: OidcVerifier | None = None,
        ttl: float = CACHE_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._token_user = token_user
        self._oidc = oidc
        self._ttl = ttl
        self._clock = clock
        #: sha256 of a key -> (its credential, until when it is trusted, what it identifies)
        self._cache: dict[str, tuple[Credential, float, Found]] = {}
        #: sha256 of a catalog token -> (until when it is trusted, what it identifies)
        self._tokens: dict[str, tuple[float, Found]] = {}
        #: tells the other workers a key was revoked (the app sets it when there are others)
        self.announce: Callable[[str], Awaitable[None]] | None = None

    async def identify(self, credential: str | None) -> Found:
        """Return the principal of a presented credential (None: anonymous)."""
        if credential is None:
            return Found(ANONYMOUS)
        if credential.startswith(keys.MARK):
            return await self._key(credential)
        if self._oidc is not None and looks_like_jwt(credential):
            try:
                return Found(await self._oidc.verify(credential))
            except TokenRejected as exc:
                return Found(ANONYMOUS, valid=False, reason=exc.reason)
        return await self._token(credential)

    async def _token(self, token: str) -> Found:
        now = self._clock()
        digest = keys.digest(token)
        hit = self._tokens.get(digest)
        if hit is not None and now < hit[0]:
            return hit[1]
        user = await self._token_user(token) if self._token_user else None
        if user is None:
            self._tokens.pop(digest, None)
            return Found(ANONYMOUS, valid=False)
        found = Found(
            Principal("token", id=f"token:{user}", roles=TOKEN_ROLES, tenants=TOKEN_TENANTS)
        )
        if len(self._tokens) > 10_000:
            self._tokens.clear()
        self._tokens[digest] = (now + self._ttl, found)
        return found

    async def _key(self, plaintext: str) -> Found:
        now = self._clock()
        digest = keys.digest(plaintext)
        hit = self._cache.get(digest)
        if hit is not None and now < hit[1]:
            return hit[2]  # the same principal object: nothing rebuilt per request
        cred = await self.store.find(plaintext, now=now)
        if cred is None:
            # unknown keys are not cached: a key made a moment ago must work at once
            self._cache.pop(digest, None)
            return Found(ANONYMOUS, valid=False)
        until = now + self._ttl
        if cred.expires is not None:
            until = min(until, cred.expires)
        if len(self._cache) > 10_000:  # bounded: keys are few, but presented ones need not be
            self._cache.clear()
        found = Found(cred.principal(), key_id=cred.id)
        self._cache[digest] = (cred, until, found)
        return found

    async def touch(self, key_id: int) -> None:
        """Record that a key was used (at most one write a minute per key)."""
        await self.store.touch(key_id, now=self._clock())

    async def revoke(self, prefix: str) -> Credential | None:
        """Revoke a key and stop trusting it in this process and the other workers at once."""
        found = await self.store.revoke(prefix, now=self._clock())
        self.forget(prefix)
        if self.announce is not None:
            await self.announce(prefix)
        return found

    def forget_tokens(self) -> None:
        """Drop every cached catalog token (one was revoked; they are looked up again)."""
        self._tokens.clear()

    def forget(self, prefix: str) -> None:
        """Drop the cached key with this prefix."""
        for digest, (cred, _, _) in list(self._cache.items()):
            if cred.prefix == prefix:
                del self._cache[digest]
