"""OIDC bearer tokens: verify a JWT access token from the city's identity provider.

`OidcVerifier.verify` checks a token against the provider's public keys (a JWKS file or URL,
loaded lazily and cached) and the configured issuer and audience, and returns the `Principal`
its claims describe; anything wrong raises `TokenRejected` with a sentence safe to show the
client. Only public-key algorithms are accepted: no `none`, no HS*, whatever the token says.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final, Protocol
from urllib.parse import urlsplit

import httpx
import jwt
from jwt.algorithms import AllowedPublicKeys

from cityos.auth.policy import ACTIONS, ALL, AREAS, ROLES, Principal

__all__ = [
    "DEFAULT_ALGORITHMS",
    "Fetch",
    "OidcConfig",
    "OidcConfigError",
    "OidcVerifier",
    "TokenRejected",
    "fetch_url",
    "looks_like_jwt",
]

log = logging.getLogger("cityos.auth")

DEFAULT_ALGORITHMS: Final = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "EdDSA",
)
#: every algorithm a config may allow, with the key type it needs
_KEY_TYPES: Final[Mapping[str, str]] = MappingProxyType(
    {
        **{f"{family}{bits}": "RSA" for family in ("RS", "PS") for bits in (256, 384, 512)},
        **{f"ES{bits}": "EC" for bits in (256, 384, 512)},
        "EdDSA": "OKP",
    }
)
#: a verified token is trusted without checking its signature again for at most this long
CACHE_SECONDS: Final = 60.0
CACHE_SIZE: Final = 10_000
#: an unknown key id, or a failed fetch, makes the key URL be fetched again at most this often
REFETCH_SECONDS: Final = 30.0
FETCH_TIMEOUT: Final = 5.0
_MAX_TOKEN: Final = 16 * 1024
_MAX_JWKS: Final = 1024 * 1024
KEYS_UNAVAILABLE: Final = "the identity provider's keys could not be loaded"
_JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# members of a private JWK: dropped, so a key set published by mistake with them still
# yields public keys only
_PRIVATE: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

#: get a URL's body; raise httpx.HTTPError, OSError or ValueError when it cannot
Fetch = Callable[[str], Awaitable[bytes]]


class OidcConfigError(ValueError):
    """The OIDC configuration is missing a part or has one cityos refuses."""


class TokenRejected(Exception):
    """A bearer token was not accepted; the reason is safe to show the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """Which identity provider to trust and how its claims map to cityos principals."""

    issuer: str
    #: the token's `aud` must contain one of these
    audience: tuple[str, ...]
    #: a local file path or an http(s) URL of the provider's JSON Web Key Set
    jwks: str
    #: dotted path to the roles (a list, or a space- or comma-separated string)
    roles_claim: str = "realm_access.roles"
    #: IdP role -> cityos role; an unmapped role named like a cityos role maps to itself
    role_map: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: dotted path to the tenants (a list, or one tenant as a string)
    tenants_claim: str = "tenants"
    #: the tenants of a token without the tenants claim ('' is the default tenant)
    default_tenants: tuple[str, ...] = ("",)
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway: float = 30.0
    jwks_ttl: float = 300.0

    def __post_init__(self) -> None:
        if not isinstance(self.issuer, str) or not self.issuer.strip():
            raise OidcConfigError("the OIDC issuer must not be empty")
        if not isinstance(self.audience, tuple) or not self.audience or not all(self.audience):
            raise OidcConfigError("the OIDC audience must be a non-empty tuple of names")
        if not self.jwks.strip():
            raise OidcConfigError("the OIDC JWKS (a file path or an http(s) URL) is required")
        if not self.algorithms:
            raise OidcConfigError("at least one signature algorithm must be allowed")
        for alg in self.algorithms:
            _check_algorithm(alg)
        for claim in (self.roles_claim, self.tenants_claim):
            if not claim or not all(claim.split(".")):
                raise OidcConfigError(f"claim path {claim!r} is not a dotted path of names")
        for idp_role, role in self.role_map.items():
            if not idp_role or role not in ROLES:
                raise OidcConfigError(
                    f"role map entry {idp_role!r} -> {role!r}: the cityos roles are "
                    + ", ".join(sorted(ROLES))
                )
        if not isinstance(self.default_tenants, tuple):
            raise OidcConfigError("default_tenants must be a tuple of tenant names")
        if not (math.isfinite(self.leeway) and self.leeway >= 0):
            raise OidcConfigError("the leeway must be a number of seconds, 0 or more")
        if not (math.isfinite(self.jwks_ttl) and self.jwks_ttl > 0):
            raise OidcConfigError("jwks_ttl must be a positive number of seconds")
        # read-only, so the checks above stay true
        object.__setattr__(self, "role_map", MappingProxyType(dict(self.role_map)))

    @property
    def jwks_is_url(self) -> bool:
        """Return True when the key set is fetched over HTTP rather than read from a file."""
        return _is_url(self.jwks)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OidcConfig | None:
        """Return the configuration in CITYOS_OIDC_* variables (None when there is no issuer)."""
        issuer = env.get("CITYOS_OIDC_ISSUER", "").strip()
        if not issuer:
            return None
        audience = tuple(a.strip() for a in env.get("CITYOS_OIDC_AUDIENCE", "").split(","))
        audience = tuple(a for a in audience if a)
        if not audience:
            raise OidcConfigError(
                "CITYOS_OIDC_AUDIENCE is required with CITYOS_OIDC_ISSUER: the audience "
                "(client id) cityos's tokens are issued for, comma-separated"
            )
        jwks = env.get("CITYOS_OIDC_JWKS", "").strip()
        if not jwks:
            raise OidcConfigError(
                "CITYOS_OIDC_JWKS is required with CITYOS_OIDC_ISSUER: the identity "
                "provider's key set, a file path or an http(s) URL"
            )
        _check_jwks_setting(jwks)
        return cls(
            issuer=issuer,
            audience=audience,
            jwks=jwks,
            roles_claim=_claim_path(env, "ROLES_CLAIM", "realm_access.roles"),
            role_map=_role_map(env.get("CITYOS_OIDC_ROLE_MAP", "")),
            tenants_claim=_claim_path(env, "TENANTS_CLAIM", "tenants"),
            leeway=_leeway(env.get("CITYOS_OIDC_LEEWAY", "").strip()),
        )


def _check_algorithm(alg: str) -> None:
    if alg in _KEY_TYPES:
        return
    if alg.lower() == "none" or alg.upper().startswith("HS"):
        raise OidcConfigError(
            f"algorithm {alg!r} is refused: only public-key signatures are accepted "
            "(never none or HS*)"
        )
    raise OidcConfigError(
        f"unknown signature algorithm {alg!r}; allowed are " + ", ".join(_KEY_TYPES)
    )


def _is_url(text: str) -> bool:
    return "://" in text


def _check_jwks_setting(jwks: str) -> None:
    if _is_url(jwks):
        parts = urlsplit(jwks)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise OidcConfigError(f"CITYOS_OIDC_JWKS={jwks!r} is not an http(s) URL")
        return
    path = Path(jwks)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise OidcConfigError(
            f"CITYOS_OIDC_JWKS: cannot read the key set file {jwks}: {exc.strerror}"
        ) from exc
    try:
        if not _parse_jwks(text):
            raise ValueError("it holds no usable signing key")
    except ValueError as exc:
        raise OidcConfigError(f"CITYOS_OIDC_JWKS: {jwks} is not a JWK set: {exc}") from exc


def _claim_path(env: Mapping[str, str], var: str, default: str) -> str:
    text = env.get(f"CITYOS_OIDC_{var}", "").strip()
    if text and not all(text.split(".")):
        raise OidcConfigError(f"CITYOS_OIDC_{var}={text!r} is not a dotted claim path (a.b.c)")
    return text or default


def _leeway(text: str) -> float:
    if not text:
        return 30.0
    try:
        leeway = float(text)
    except ValueError:
        leeway = -1.0
    if not (math.isfinite(leeway) and 0 <= leeway <= 3600):
        raise OidcConfigError(
            f"CITYOS_OIDC_LEEWAY={text!r} must be a number of seconds from 0 to 3600"
        )
    return leeway


def _role_map(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        idp_role, eq, role = (part.strip() for part in entry.partition("="))
        if not eq or not idp_role or not role:
            raise OidcConfigError(
                f"CITYOS_OIDC_ROLE_MAP entry {entry!r} is not idp-role=cityos-role"
            )
        if role not in ROLES:
            raise OidcConfigError(
                f"CITYOS_OIDC_ROLE_MAP maps {idp_role!r} to {role!r}, which is not a cityos "
                "role (" + ", ".join(sorted(ROLES)) + ")"
            )
        if idp_role in out:
            raise OidcConfigError(f"CITYOS_OIDC_ROLE_MAP names {idp_role!r} twice")
        out[idp_role] = role
    return out


def looks_like_jwt(credential: str) -> bool:
    """Return True when credential has the shape of a JWT (three base64url parts, `eyJ...`)."""
    return _JWT.fullmatch(credential) is not None


# -- keys ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    kty: str
    #: the algorithm the key set binds the key to, if it says
    alg: str | None
    key: AllowedPublicKeys


def _parse_jwks(body: bytes | str) -> tuple[_Key, ...]:
    """Return the signing keys of a JWK set; raise ValueError when it is not one."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ValueError("not JSON") from exc
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError('not a JSON object with a "keys" list')
    out: list[_Key] = []
    for jwk in data["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue  # encryption keys (Keycloak publishes one) never sign tokens
        kty, alg, kid = jwk.get("kty"), jwk.get("alg"), jwk.get("kid")
        if kty not in ("RSA", "EC", "OKP") or (alg is not None and alg not in _KEY_TYPES):
            continue  # symmetric keys (`oct`) above all: no HMAC secret is ever a key here
        if kid is not None and not isinstance(kid, str):
            continue
        public = {k: v for k, v in jwk.items() if k not in _PRIVATE}
        try:
            key = jwt.PyJWK(public).key
        except jwt.PyJWTError as exc:
            log.warning("ignoring key %r of the identity provider's key set: %s", kid, exc)
            continue
        out.append(_Key(kid, kty, alg, key))
    return tuple(out)


def _pick(keys: tuple[_Key, ...], kid: str | None) -> _Key | None:
    if kid is None:
        return keys[0] if len(keys) == 1 else None
    return next((k for k in keys if k.kid == kid), None)


class _KeySource(Protocol):
    async def key(self, kid: str | None) -> _Key: ...


def _missing(kid: str | None) -> TokenRejected:
    if kid is None:
        return TokenRejected(
            "the token names no key id (kid) and the identity provider has several keys"
        )
    return TokenRejected(f"unknown key id {_shown(kid)}")


def _shown(text: str) -> str:
    """Return a client-supplied value quoted and cut short for an error message."""
    return repr(text if len(text) <= 64 else text[:64] + "…")


class _FileKeys:
    """Keys from a local file, read again whenever the file changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._seen: tuple[int, int] | None = None
        self._keys: tuple[_Key, ...] = ()

    async def key(self, kid: str | None) -> _Key:
        self._reload()
        if not self._keys:
            raise TokenRejected(KEYS_UNAVAILABLE)
        found = _pick(self._keys, kid)
        if found is None:
            raise _missing(kid)
        return found

    def _reload(self) -> None:
        # a stat per verified (uncached) token: cheap, and a rotated file is used at once
        try:
            st = self._path.stat()
            seen = (st.st_mtime_ns, st.st_size)
        except OSError:
            seen = (-1, -1)
        if seen == self._seen:
            return
        self._seen = seen  # a broken file is reported once, not on every request
        try:
            self._keys = _checked(_parse_jwks(self._path.read_bytes()))
        except (OSError, ValueError) as exc:
            # keep the keys we have: a half-written file must not lock everyone out
            log.warning("cannot load the identity provider's keys from %s: %s", self._path, exc)


def _checked(keys: tuple[_Key, ...]) -> tuple[_Key, ...]:
    if not keys:
        raise ValueError("the key set holds no usable signing key")
    return keys


class _UrlKeys:
    """Keys fetched from a URL: cached for a while, fetched again for a new key id."""

    def __init__(self, url: str, fetch: Fetch, ttl: float, clock: Callable[[], float]) -> None:
        self._url = url
        self._fetch = fetch
        self._ttl = ttl
        self._clock = clock
        self._keys: tuple[_Key, ...] | None = None
        self._fresh_until = -math.inf
        self._attempted = -math.inf
        self._generation = 0  # fetches attempted so far
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None) -> _Key:
        if self._clock() >= self._fresh_until:
            await self._refresh()
        if self._keys is None:
            raise TokenRejected(KEYS_UNAVAILABLE)
        found = _pick(self._keys, kid)
        if found is None and kid is not None and self._clock() >= self._attempted + REFETCH_SECONDS:
            # the provider may have rotated its keys since the last fetch
            await self._refresh()
            found = _pick(self._keys, kid)
        if found is None:
            raise _missing(kid)
        return found

    async def _refresh(self) -> None:
        generation = self._generation
        async with self._lock:
            if self._generation != generation:
                return  # another request fetched while this one waited: one fetch serves all
            now = self._clock()
            self._attempted = now
            try:
                self._keys = _checked(_parse_jwks(await self._fetch(self._url)))
            except (httpx.HTTPError, OSError, ValueError) as exc:
                # keep the keys we have; ask again later, not on every request
                log.warning("cannot load the identity provider's keys from %s: %s", self._url, exc)
                self._fresh_until = now + min(self._ttl, REFETCH_SECONDS)
            else:
                self._fresh_until = now + self._ttl
            finally:
                self._generation += 1


async def fetch_url(url: str) -> bytes:
    """Return the body of a GET of url (5 s timeout); raise httpx.HTTPError on failure."""
    async with httpx.AsyncClient(timeout=FETCH_TIMEOUT) as client:
        response = await client.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        if len(response.content) > _MAX_JWKS:
            raise ValueError(f"the key set is larger than {_MAX_JWKS} bytes")
        return response.content


# -- verification --------------------------------------------------------------------------------


class OidcVerifier:
    """Turn the identity provider's access tokens into principals, keeping verified ones a while."""

    def __init__(
        self,
        config: OidcConfig,
        *,
        clock: Callable[[], float] = time.time,
        fetch: Fetch | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._keys: _KeySource
        if config.jwks_is_url:
            self._keys = _UrlKeys(config.jwks, fetch or fetch_url, config.jwks_ttl, clock)
        else:
            self._keys = _FileKeys(Path(config.jwks))
        #: sha256 of a token -> (its principal, until when it is trusted)
        self._cache: dict[bytes, tuple[Principal, float]] = {}

    async def verify(self, token: str) -> Principal:
        """Return the principal of a valid access token; raise TokenRejected otherwise."""
        now = self._clock()
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        hit = self._cache.get(digest)
        if hit is not None and now < hit[1]:
            return hit[0]
        claims = await self._claims(token)
        now = self._clock()
        exp = self._check(claims, now)
        principal = self._principal(claims)
        self._cache.pop(digest, None)
        while len(self._cache) >= CACHE_SIZE:
            del self._cache[next(iter(self._cache))]  # the oldest: entries live a minute at most
        self._cache[digest] = (principal, min(exp, now + CACHE_SECONDS))
        return principal

    async def _claims(self, token: str) -> dict[str, object]:
        """Return the claims of token once its signature is verified with the provider's key."""
        if len(token) > _MAX_TOKEN or not looks_like_jwt(token):
            raise TokenRejected("malformed token: not a JSON Web Token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRejected("malformed token: its header is not valid") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.config.algorithms:
            shown = _shown(alg) if isinstance(alg, str) else "(none given)"
            raise TokenRejected(
                f"algorithm {shown} is not allowed; allowed are "
                + ", ".join(self.config.algorithms)
            )
        if kid is not None and not isinstance(kid, str):
            raise TokenRejected("malformed token: its key id (kid) is not a string")
        key = await self._keys.key(kid)
        # the token's alg is only trusted within the allowlist and must suit the key:
        # an RSA key never verifies an EC signature, a key bound to RS256 never PS256
        if _KEY_TYPES[alg] != key.kty or (key.alg is not None and key.alg != alg):
            raise TokenRejected(f"the key {_shown(key.kid or '')} does not sign with {alg}")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                options={
                    "verify_signature": True,
                    "enforce_minimum_key_length": True,
                    # claims are checked below, against our clock
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "verify_sub": False,
                    "verify_jti": False,
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise TokenRejected("bad signature") from exc
        except jwt.InvalidKeyError as exc:
            raise TokenRejected(
                f"the key {_shown(key.kid or '')} does not sign with {alg}"
            ) from exc
        except jwt.PyJWTError as exc:
            raise TokenRejected("malformed token: it cannot be decoded") from exc
        return dict(claims)

    def _check(self, claims: Mapping[str, object], now: float) -> float:
        """Return the expiry of verified claims that are for us and valid now, or raise."""
        cfg = self.config
        iss = claims.get("iss")
        if iss != cfg.issuer:
            given = _shown(iss) if isinstance(iss, str) else "missing"
            raise TokenRejected(f"wrong issuer: {given}; this service trusts {cfg.issuer!r}")
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not set(cfg.audience) & {a for a in auds if isinstance(a, str)}:
            raise TokenRejected(
                "wrong audience: the token is not for this service (expected "
                + " or ".join(repr(a) for a in cfg.audience)
                + ")"
            )
        exp = _time(claims, "exp")
        if exp is None:
            raise TokenRejected("the token has no expiry (exp)")
        if now >= exp + cfg.leeway:
            raise TokenRejected("the token has expired")
        nbf, iat = _time(claims, "nbf"), _time(claims, "iat")
        if nbf is not None and now + cfg.leeway < nbf:
            raise TokenRejected("the token is not valid yet (nbf is in the future)")
        if iat is not None and now + cfg.leeway < iat:
            raise TokenRejected("the token is not valid yet (issued in the future)")
        typ = claims.get("typ")
        if isinstance(typ, str) and typ.lower() == "id":
            # Keycloak marks ID tokens so; they prove a login to a client, not access to us
            raise TokenRejected("an ID token is not an access token")
        if not _subject(claims):
            raise TokenRejected("the token names no subject (sub)")
        return exp

    def _principal(self, claims: Mapping[str, object]) -> Principal:
        """Return the principal that verified claims describe."""
        cfg = self.config
        roles: set[str] = set()
        for name in _names(_claim(claims, cfg.roles_claim), split=True):
            role = cfg.role_map.get(name, name if name in ROLES else None)
            if role is not None:
                roles.add(role)
        raw_tenants = _claim(claims, cfg.tenants_claim)
        tenants = (
            frozenset(cfg.default_tenants)
            if raw_tenants is None
            else frozenset(_names(raw_tenants, split=False))
        )
        scopes = frozenset(s for s in _names(claims.get("scope"), split=True) if _is_scope(s))
        return Principal(
            "user",
            id=f"oidc:{_subject(claims)}",
            roles=frozenset(roles),
            tenants=tenants,
            scopes=scopes or frozenset({ALL}),
        )


def _time(claims: Mapping[str, object], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenRejected(f"malformed token: {name} is not a number of seconds")
    return float(value)


def _subject(claims: Mapping[str, object]) -> str:
    for name in ("preferred_username", "sub"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def _claim(claims: Mapping[str, object], path: str) -> object:
    """Return the value at a dotted path (`realm_access.roles`), None when absent."""
    value: object = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _names(value: object, *, split: bool) -> list[str]:
    """Return the strings of a list claim, or of a string claim (split, or as one name)."""
    if isinstance(value, str):
        return value.replace(",", " ").split() if split else [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _is_scope(scope: str) -> bool:
    if scope == ALL:
        return True
    area, colon, action = scope.partition(":")
    return bool(colon) and area in AREAS and (action in ACTIONS or action == ALL)
