"""OIDC access tokens: real keys, real signatures, a JWKS file and a JWKS served over HTTP."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from cityos.auth.oidc import (
    DEFAULT_ALGORITHMS,
    OidcConfig,
    OidcConfigError,
    OidcVerifier,
    TokenRejected,
    looks_like_jwt,
)
from cityos.auth.policy import Operation, Policy, Principal

NOW = 1_780_000_000.0  # 2026-05-28
ISSUER = "https://id.city.sano.example/realms/sano"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

RSA_A = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_B = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_P256 = ec.generate_private_key(ec.SECP256R1())
ED = ed25519.Ed25519PrivateKey.generate()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def jwk(key: PrivateKey, kid: str | None, **extra: str) -> dict[str, Any]:
    """Return the public JWK of key, as an identity provider publishes it."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        out = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        out = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        out = OKPAlgorithm.to_jwk(public, as_dict=True)
    if kid is not None:
        out["kid"] = kid
    return {**out, "use": "sig", **extra}


def jwks(*keys: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


def claims(**changes: Any) -> dict[str, Any]:
    """Return the claims of a Keycloak access token for cityos, with changes (None drops one)."""
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": "cityos",
        "exp": int(NOW) + 300,
        "iat": int(NOW),
        "sub": "4c1e0d2a-0b7e-4a55-9d43-6c7f1f3f0a11",
        "typ": "Bearer",
        "azp": "river-dashboard",
        "preferred_username": "hanako",
        "realm_access": {"roles": ["steward", "offline_access", "uma_authorization"]},
        "scope": "openid profile email",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def sign(
    body: dict[str, Any], key: PrivateKey = RSA_A, alg: str = "RS256", kid: str | None = "a"
) -> str:
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_built(header: dict[str, Any], body: dict[str, Any], secret: bytes | None) -> str:
    """Return a token built without a JWT library (alg none, or HMAC with any secret)."""
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(body).encode())
    sig = (
        b"" if secret is None else hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    )
    return signing_input + "." + b64(sig)


def file_verifier(
    tmp_path: Path, *keys: dict[str, Any], **config: Any
) -> tuple[OidcVerifier, Clock]:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(*(keys or (jwk(RSA_A, "a"),))))
    clock = Clock()
    cfg = OidcConfig(issuer=ISSUER, audience=("cityos",), jwks=str(path), **config)
    return OidcVerifier(cfg, clock=clock), clock


def verify(verifier: OidcVerifier, token: str) -> Principal:
    return asyncio.run(verifier.verify(token))


def rejection(verifier: OidcVerifier, token: str) -> str:
    with pytest.raises(TokenRejected) as caught:
        verify(verifier, token)
    assert str(caught.value) == caught.value.reason
    return caught.value.reason


# -- what a valid token says ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "changes", "expected"),
    [
        pytest.param(
            {},
            {},
            Principal("user", "oidc:hanako", frozenset({"steward"}), frozenset({""})),
            id="keycloak-realm-roles",
        ),
        pytest.param(
            {},
            {"preferred_username": None},
            Principal(
                "user",
                "oidc:4c1e0d2a-0b7e-4a55-9d43-6c7f1f3f0a11",
                frozenset({"steward"}),
                frozenset({""}),
            ),
            id="sub-without-username",
        ),
        pytest.param(
            {},
            {"tenants": ["sano", "tochigi"], "realm_access": {"roles": ["admin", "operator"]}},
            Principal(
                "user",
                "oidc:hanako",
                frozenset({"admin", "operator"}),
                frozenset({"sano", "tochigi"}),
            ),
            id="tenant-list",
        ),
        pytest.param(
            {},
            {"tenants": "sano"},
            Principal("user", "oidc:hanako", frozenset({"steward"}), frozenset({"sano"})),
            id="tenant-string",
        ),
        pytest.param(
            {"tenants_claim": "city.tenants", "default_tenants": ("sano",)},
            {},
            Principal("user", "oidc:hanako", frozenset({"steward"}), frozenset({"sano"})),
            id="default-tenants",
        ),
        pytest.param(
            {},
            {"scope": "openid entities:read catalog:* bogus:read entities:fly profile"},
            Principal(
                "user",
                "oidc:hanako",
                frozenset({"steward"}),
                frozenset({""}),
                frozenset({"entities:read", "catalog:*"}),
            ),
            id="scopes-kept-and-ignored",
        ),
        pytest.param(
            {"roles_claim": "roles"},
            {"roles": "admin operator"},
            Principal("user", "oidc:hanako", frozenset({"admin", "operator"}), frozenset({""})),
            id="roles-space-string",
        ),
        pytest.param(
            {"roles_claim": "roles"},
            {"roles": "app,steward"},
            Principal("user", "oidc:hanako", frozenset({"app", "steward"}), frozenset({""})),
            id="roles-comma-string",
        ),
        pytest.param(
            {"roles_claim": "resource_access.cityos.roles"},
            {
                "resource_access": {
                    "cityos": {"roles": ["operator"]},
                    "account": {"roles": ["admin"]},
                }
            },
            Principal("user", "oidc:hanako", frozenset({"operator"}), frozenset({""})),
            id="keycloak-client-roles",
        ),
        pytest.param(
            {"role_map": {"city-data-steward": "steward", "admin": "operator"}},
            {"realm_access": {"roles": ["city-data-steward", "admin", "app", "clerk"]}},
            Principal(
                "user", "oidc:hanako", frozenset({"steward", "operator", "app"}), frozenset({""})
            ),
            id="role-map",
        ),
        pytest.param(
            {},
            {"realm_access": {"roles": ["offline_access"]}},
            Principal("user", "oidc:hanako", frozenset(), frozenset({""})),
            id="no-usable-role",
        ),
        pytest.param(
            {},
            {"realm_access": None},
            Principal("user", "oidc:hanako", frozenset(), frozenset({""})),
            id="no-roles-claim",
        ),
    ],
)
def test_a_valid_token_becomes_the_principal_its_claims_describe(
    tmp_path: Path, config: dict[str, Any], changes: dict[str, Any], expected: Principal
) -> None:
    verifier, _ = file_verifier(tmp_path, **config)
    assert verify(verifier, sign(claims(**changes))) == expected


@pytest.mark.parametrize(
    ("key", "alg"),
    [(RSA_A, "RS256"), (RSA_A, "PS256"), (RSA_A, "RS512"), (EC_P256, "ES256"), (ED, "EdDSA")],
)
def test_every_kind_of_public_key_verifies(tmp_path: Path, key: PrivateKey, alg: str) -> None:
    verifier, _ = file_verifier(tmp_path, jwk(key, "k"))
    assert verify(verifier, sign(claims(), key, alg, kid="k")).id == "oidc:hanako"


def test_the_principal_gets_exactly_what_its_roles_and_tenants_allow(tmp_path: Path) -> None:
    verifier, _ = file_verifier(tmp_path)
    policy = Policy()
    write = Operation("write", "entities", tenant="sano")
    steward = verify(verifier, sign(claims(tenants=["sano"])))
    nobody = verify(verifier, sign(claims(tenants=["sano"], realm_access={"roles": ["clerk"]})))
    elsewhere = verify(verifier, sign(claims(tenants=["tochigi"])))
    narrowed = verify(verifier, sign(claims(tenants=["sano"], scope="openid entities:read")))
    assert policy.decide(steward, write).allowed
    assert policy.decide(nobody, write).status == 403
    assert policy.decide(elsewhere, write).status == 404
    assert policy.decide(narrowed, write).status == 403
    assert policy.decide(narrowed, Operation("read", "entities", tenant="sano")).allowed


# -- what is refused -----------------------------------------------------------------------------

REJECTED = [
    pytest.param(sign(claims(exp=int(NOW) - 31)), "the token has expired", id="expired"),
    pytest.param(
        sign(claims(nbf=int(NOW) + 31)),
        "the token is not valid yet (nbf is in the future)",
        id="nbf",
    ),
    pytest.param(
        sign(claims(iat=int(NOW) + 31)),
        "the token is not valid yet (issued in the future)",
        id="iat",
    ),
    pytest.param(
        sign(claims(iss="https://evil.example/realms/sano")),
        f"wrong issuer: 'https://evil.example/realms/sano'; this service trusts {ISSUER!r}",
        id="issuer",
    ),
    pytest.param(
        sign(claims(iss=None)),
        f"wrong issuer: missing; this service trusts {ISSUER!r}",
        id="no-issuer",
    ),
    pytest.param(
        sign(claims(aud="account")),
        "wrong audience: the token is not for this service (expected 'cityos')",
        id="audience",
    ),
    pytest.param(
        sign(claims(aud=["account", "broker"])),
        "wrong audience: the token is not for this service (expected 'cityos')",
        id="audience-list",
    ),
    pytest.param(sign(claims(), RSA_B), "bad signature", id="another-key"),
    pytest.param(sign(claims(exp=None)), "the token has no expiry (exp)", id="no-exp"),
    pytest.param(
        sign(claims(exp="tomorrow")),
        "malformed token: exp is not a number of seconds",
        id="exp-text",
    ),
    pytest.param(sign(claims(), kid="zzz"), "unknown key id 'zzz'", id="unknown-kid"),
    pytest.param(
        hand_built({"alg": "none", "typ": "JWT", "kid": "a"}, claims(), None),
        "algorithm 'none' is not allowed; allowed are " + ", ".join(DEFAULT_ALGORITHMS),
        id="alg-none",
    ),
    pytest.param(
        hand_built(
            {"alg": "HS256", "typ": "JWT", "kid": "a"},
            claims(),
            RSA_A.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        ),
        "algorithm 'HS256' is not allowed; allowed are " + ", ".join(DEFAULT_ALGORITHMS),
        id="alg-confusion-hs256-with-public-key",
    ),
    pytest.param(
        hand_built({"typ": "JWT", "kid": "a"}, claims(), None),
        "algorithm (none given) is not allowed; allowed are " + ", ".join(DEFAULT_ALGORITHMS),
        id="no-alg",
    ),
    pytest.param(
        sign(claims(), EC_P256, "ES256"),
        "the key 'a' does not sign with ES256",
        id="ec-alg-rsa-key",
    ),
    pytest.param(
        sign(claims(typ="ID", aud="cityos")), "an ID token is not an access token", id="id-token"
    ),
    pytest.param(
        sign(claims(sub=None, preferred_username=None)),
        "the token names no subject (sub)",
        id="no-sub",
    ),
    pytest.param(
        "eyJhbGciOiJSUzI1NiJ9.e30", "malformed token: not a JSON Web Token", id="two-parts"
    ),
    pytest.param("cok_12345678_secret", "malformed token: not a JSON Web Token", id="api-key"),
    pytest.param(
        "eyJub3QganNvbg.eyJ9.c2ln", "malformed token: its header is not valid", id="header-not-json"
    ),
    pytest.param(sign(claims())[:-8] + "AAAAAAAA", "bad signature", id="tampered-signature"),
    pytest.param(
        sign(claims()).split(".")[0] + "." + b64(b'{"iss": 1') + "." + sign(claims()).split(".")[2],
        "bad signature",
        id="tampered-payload",
    ),
]


@pytest.mark.parametrize(("token", "reason"), REJECTED)
def test_a_bad_token_is_refused_with_a_precise_reason(
    tmp_path: Path, token: str, reason: str
) -> None:
    verifier, _ = file_verifier(tmp_path)
    assert rejection(verifier, token) == reason


def test_the_token_audience_may_be_a_list_holding_ours(tmp_path: Path) -> None:
    verifier, _ = file_verifier(tmp_path)
    assert verify(verifier, sign(claims(aud=["account", "cityos"]))).id == "oidc:hanako"


def test_a_config_with_several_audiences_accepts_any_of_them(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(jwk(RSA_A, "a")))
    cfg = OidcConfig(issuer=ISSUER, audience=("cityos", "cityos-portal"), jwks=str(path))
    verifier = OidcVerifier(cfg, clock=Clock())
    assert verify(verifier, sign(claims(aud="cityos-portal"))).id == "oidc:hanako"
    assert rejection(verifier, sign(claims(aud="account"))) == (
        "wrong audience: the token is not for this service (expected 'cityos' or 'cityos-portal')"
    )


def test_an_algorithm_left_out_of_the_config_is_refused(tmp_path: Path) -> None:
    verifier, _ = file_verifier(tmp_path, algorithms=("RS256",))
    assert verify(verifier, sign(claims())).id == "oidc:hanako"
    assert rejection(verifier, sign(claims(), alg="PS256")) == (
        "algorithm 'PS256' is not allowed; allowed are RS256"
    )


def test_a_key_bound_to_one_algorithm_does_not_verify_another(tmp_path: Path) -> None:
    verifier, _ = file_verifier(tmp_path, jwk(RSA_A, "a", alg="RS256"))
    assert verify(verifier, sign(claims())).id == "oidc:hanako"
    assert (
        rejection(verifier, sign(claims(), alg="PS256")) == "the key 'a' does not sign with PS256"
    )


@pytest.mark.parametrize(
    ("changes", "accepted"),
    [
        ({"exp": int(NOW) - 29}, True),
        ({"exp": int(NOW) - 30}, False),
        ({"nbf": int(NOW) + 29}, True),
        ({"nbf": int(NOW) + 31}, False),
        ({"iat": int(NOW) + 29}, True),
    ],
)
def test_clock_skew_is_forgiven_up_to_the_leeway(
    tmp_path: Path, changes: dict[str, Any], accepted: bool
) -> None:
    verifier, _ = file_verifier(tmp_path)
    token = sign(claims(**changes))
    if accepted:
        assert verify(verifier, token).id == "oidc:hanako"
    else:
        rejection(verifier, token)


def test_a_token_stops_working_when_it_expires_even_after_being_accepted(tmp_path: Path) -> None:
    verifier, clock = file_verifier(tmp_path, leeway=0)
    token = sign(claims(exp=int(NOW) + 20))
    assert verify(verifier, token).id == "oidc:hanako"
    clock.now = NOW + 19
    assert verify(verifier, token).id == "oidc:hanako"
    clock.now = NOW + 20
    assert rejection(verifier, token) == "the token has expired"


# -- keys from a file ----------------------------------------------------------------------------


def test_a_rotated_key_file_is_used_at_once_and_old_tokens_stop_within_a_minute(
    tmp_path: Path,
) -> None:
    verifier, clock = file_verifier(tmp_path)
    old = sign(claims())
    assert verify(verifier, old).id == "oidc:hanako"
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(jwk(RSA_B, "b")))
    os.utime(path, (NOW + 1, NOW + 1))  # a file rewritten within a clock tick still counts
    assert verify(verifier, sign(claims(), RSA_B, kid="b")).id == "oidc:hanako"
    # a token already verified is trusted for up to a minute, not beyond
    assert verify(verifier, old).id == "oidc:hanako"
    clock.now = NOW + 61
    assert rejection(verifier, old) == "unknown key id 'a'"
    assert rejection(verifier, sign(claims(), kid="a")) == "unknown key id 'a'"


def test_a_broken_key_file_keeps_the_keys_already_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    verifier, _ = file_verifier(tmp_path)
    assert verify(verifier, sign(claims(preferred_username="one"))).id == "oidc:one"
    path = tmp_path / "jwks.json"
    path.write_text('{"keys": [')  # an editor half-way through saving
    os.utime(path, (NOW + 1, NOW + 1))
    with caplog.at_level(logging.WARNING, logger="cityos.auth"):
        assert verify(verifier, sign(claims(preferred_username="two"))).id == "oidc:two"
    assert "cannot load the identity provider's keys" in caplog.text


def test_a_missing_key_file_refuses_every_token(tmp_path: Path) -> None:
    cfg = OidcConfig(issuer=ISSUER, audience=("cityos",), jwks=str(tmp_path / "gone.json"))
    verifier = OidcVerifier(cfg, clock=Clock())
    assert rejection(verifier, sign(claims())) == "the identity provider's keys could not be loaded"


def test_keycloak_encryption_and_symmetric_keys_never_verify(tmp_path: Path) -> None:
    keyset = (
        jwk(RSA_A, "sig", alg="RS256"),
        jwk(RSA_B, "enc", use="enc"),  # Keycloak also sets alg RSA-OAEP; some omit it
        {"kty": "oct", "kid": "hmac", "k": b64(b"shared secret"), "alg": "HS256"},
    )
    verifier, _ = file_verifier(tmp_path, *keyset)
    assert verify(verifier, sign(claims(), kid="sig")).id == "oidc:hanako"
    assert rejection(verifier, sign(claims(), RSA_B, kid="enc")) == "unknown key id 'enc'"
    assert rejection(verifier, sign(claims(), kid="hmac")) == "unknown key id 'hmac'"


def test_a_token_without_key_id_uses_the_only_key_and_is_refused_among_several(
    tmp_path: Path,
) -> None:
    (tmp_path / "one").mkdir()
    one, _ = file_verifier(tmp_path / "one")
    assert verify(one, sign(claims(), kid=None)).id == "oidc:hanako"
    two, _ = file_verifier(tmp_path, jwk(RSA_A, "a"), jwk(RSA_B, "b"))
    assert rejection(two, sign(claims(), kid=None)) == (
        "the token names no key id (kid) and the identity provider has several keys"
    )


# -- keys from a URL, served by a real HTTP server -----------------------------------------------


@dataclass
class KeyServer:
    """A local HTTP server publishing a JWK set, counting how often it was fetched."""

    body: bytes = field(default_factory=lambda: jwks(jwk(RSA_A, "a")))
    status: int = 200
    hits: int = 0
    port: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/realms/sano/protocol/openid-connect/certs"

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def key_server() -> Iterator[KeyServer]:
    server = KeyServer()
    server.start()
    yield server
    server.stop()


def url_verifier(url: str) -> tuple[OidcVerifier, Clock]:
    clock = Clock()
    cfg = OidcConfig(issuer=ISSUER, audience=("cityos",), jwks=url, jwks_ttl=300)
    return OidcVerifier(cfg, clock=clock), clock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_keys_are_fetched_once_at_first_use_and_again_after_their_ttl(
    key_server: KeyServer,
) -> None:
    verifier, clock = url_verifier(key_server.url)
    assert key_server.hits == 0  # nothing is fetched before a token arrives
    for n in range(3):
        assert verify(verifier, sign(claims(preferred_username=f"u{n}"))).id == f"oidc:u{n}"
    assert key_server.hits == 1
    clock.now = NOW + 301
    verify(verifier, sign(claims(exp=int(NOW) + 900, preferred_username="later")))
    assert key_server.hits == 2


def test_concurrent_first_requests_share_one_fetch(key_server: KeyServer) -> None:
    verifier, _ = url_verifier(key_server.url)

    async def many() -> list[Principal]:
        tokens = [sign(claims(preferred_username=f"u{n}")) for n in range(20)]
        return await asyncio.gather(*(verifier.verify(t) for t in tokens))

    assert [p.id for p in asyncio.run(many())] == [f"oidc:u{n}" for n in range(20)]
    assert key_server.hits == 1


def test_a_new_key_id_makes_the_keys_be_fetched_again_at_most_every_30_s(
    key_server: KeyServer,
) -> None:
    verifier, clock = url_verifier(key_server.url)
    assert verify(verifier, sign(claims())).id == "oidc:hanako"
    key_server.body = jwks(jwk(RSA_A, "a"), jwk(RSA_B, "b"))  # the provider rotates
    clock.now = NOW + 31
    assert verify(verifier, sign(claims(), RSA_B, kid="b")).id == "oidc:hanako"
    assert key_server.hits == 2
    # made-up key ids cannot make cityos hammer the provider
    for n in range(5):
        assert (
            rejection(verifier, sign(claims(), kid=f"made-up-{n}"))
            == f"unknown key id 'made-up-{n}'"
        )
    assert key_server.hits == 2
    clock.now = NOW + 62
    rejection(verifier, sign(claims(), kid="made-up-again"))
    assert key_server.hits == 3


def test_a_provider_down_at_first_use_refuses_tokens_until_it_is_back() -> None:
    server = KeyServer(port=free_port())
    verifier, clock = url_verifier(server.url)
    token = sign(claims())
    assert rejection(verifier, token) == "the identity provider's keys could not be loaded"
    server.start()
    try:
        clock.now = NOW + 31
        assert verify(verifier, token).id == "oidc:hanako"
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("status", "body"),
    [(500, b"oops"), (200, b"<html>login</html>"), (200, b'{"keys": []}'), (404, b"{}")],
)
def test_a_provider_answering_no_key_set_at_first_use_refuses_tokens(
    key_server: KeyServer, status: int, body: bytes
) -> None:
    key_server.status, key_server.body = status, body
    verifier, _ = url_verifier(key_server.url)
    assert rejection(verifier, sign(claims())) == "the identity provider's keys could not be loaded"


def test_a_provider_down_later_keeps_the_keys_already_fetched(
    key_server: KeyServer, caplog: pytest.LogCaptureFixture
) -> None:
    verifier, clock = url_verifier(key_server.url)
    assert verify(verifier, sign(claims(preferred_username="before"))).id == "oidc:before"
    key_server.stop()
    clock.now = NOW + 301
    token = sign(claims(exp=int(NOW) + 900, preferred_username="after"))
    with caplog.at_level(logging.WARNING, logger="cityos.auth"):
        assert verify(verifier, token).id == "oidc:after"
    assert "cannot load the identity provider's keys" in caplog.text


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "HS256", "HS384", "HS512", "hs256", "XY123"])
def test_a_config_refuses_symmetric_none_and_unknown_algorithms(tmp_path: Path, alg: str) -> None:
    with pytest.raises(OidcConfigError, match=repr(alg)):
        OidcConfig(issuer=ISSUER, audience=("cityos",), jwks="keys.json", algorithms=("RS256", alg))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"issuer": " "}, "issuer"),
        ({"audience": ()}, "audience"),
        ({"audience": "cityos"}, "audience"),
        ({"jwks": ""}, "JWKS"),
        ({"algorithms": ()}, "algorithm"),
        ({"role_map": {"clerk": "superuser"}}, "'superuser'"),
        ({"roles_claim": "realm_access..roles"}, "claim path"),
        ({"leeway": -1.0}, "leeway"),
        ({"jwks_ttl": 0.0}, "jwks_ttl"),
    ],
)
def test_a_config_refuses_bad_values(changes: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {"issuer": ISSUER, "audience": ("cityos",), "jwks": "keys.json"}
    with pytest.raises(OidcConfigError, match=message):
        OidcConfig(**{**base, **changes})


def env_with_keys(tmp_path: Path, **changes: str) -> dict[str, str]:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(jwk(RSA_A, "a")))
    env = {
        "CITYOS_OIDC_ISSUER": ISSUER,
        "CITYOS_OIDC_AUDIENCE": "cityos",
        "CITYOS_OIDC_JWKS": str(path),
    }
    env.update(changes)
    return {k: v for k, v in env.items() if v != "<unset>"}


@pytest.mark.parametrize("issuer", ["<unset>", "", "  "])
def test_without_an_issuer_oidc_is_off(tmp_path: Path, issuer: str) -> None:
    assert OidcConfig.from_env(env_with_keys(tmp_path, CITYOS_OIDC_ISSUER=issuer)) is None


def test_from_env_reads_every_variable(tmp_path: Path) -> None:
    env = env_with_keys(
        tmp_path,
        CITYOS_OIDC_AUDIENCE=" cityos , cityos-portal ,",
        CITYOS_OIDC_ROLES_CLAIM="resource_access.cityos.roles",
        CITYOS_OIDC_ROLE_MAP="city-admin=admin, data-steward = steward",
        CITYOS_OIDC_TENANTS_CLAIM="city_tenants",
        CITYOS_OIDC_LEEWAY="5",
    )
    cfg = OidcConfig.from_env(env)
    assert cfg is not None
    assert (cfg.issuer, cfg.audience, cfg.jwks) == (
        ISSUER,
        ("cityos", "cityos-portal"),
        env["CITYOS_OIDC_JWKS"],
    )
    assert cfg.roles_claim == "resource_access.cityos.roles"
    assert dict(cfg.role_map) == {"city-admin": "admin", "data-steward": "steward"}
    assert (cfg.tenants_claim, cfg.leeway) == ("city_tenants", 5.0)
    assert cfg.algorithms == DEFAULT_ALGORITHMS


def test_from_env_defaults_and_a_url_fetches_nothing_at_start() -> None:
    env = {
        "CITYOS_OIDC_ISSUER": ISSUER,
        "CITYOS_OIDC_AUDIENCE": "cityos",
        # nothing listens here: neither the config nor the verifier may touch it yet
        "CITYOS_OIDC_JWKS": f"http://127.0.0.1:{free_port()}/certs",
    }
    cfg = OidcConfig.from_env(env)
    assert cfg is not None
    assert cfg.jwks_is_url
    assert (cfg.roles_claim, cfg.tenants_claim, cfg.leeway) == (
        "realm_access.roles",
        "tenants",
        30.0,
    )
    assert cfg.default_tenants == ("",)
    OidcVerifier(cfg)


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"CITYOS_OIDC_AUDIENCE": "<unset>"}, "CITYOS_OIDC_AUDIENCE"),
        ({"CITYOS_OIDC_AUDIENCE": " , "}, "CITYOS_OIDC_AUDIENCE"),
        ({"CITYOS_OIDC_JWKS": "<unset>"}, "CITYOS_OIDC_JWKS"),
        ({"CITYOS_OIDC_JWKS": "/nonexistent/jwks.json"}, "CITYOS_OIDC_JWKS"),
        ({"CITYOS_OIDC_JWKS": "ftp://id.example/certs"}, "CITYOS_OIDC_JWKS"),
        ({"CITYOS_OIDC_JWKS": "https://"}, "CITYOS_OIDC_JWKS"),
        ({"CITYOS_OIDC_ROLE_MAP": "city-admin=superuser"}, "CITYOS_OIDC_ROLE_MAP"),
        ({"CITYOS_OIDC_ROLE_MAP": "city-admin"}, "CITYOS_OIDC_ROLE_MAP"),
        ({"CITYOS_OIDC_ROLE_MAP": "=admin"}, "CITYOS_OIDC_ROLE_MAP"),
        ({"CITYOS_OIDC_ROLE_MAP": "a=admin,a=app"}, "CITYOS_OIDC_ROLE_MAP"),
        ({"CITYOS_OIDC_ROLES_CLAIM": "realm_access."}, "CITYOS_OIDC_ROLES_CLAIM"),
        ({"CITYOS_OIDC_TENANTS_CLAIM": ".tenants"}, "CITYOS_OIDC_TENANTS_CLAIM"),
        ({"CITYOS_OIDC_LEEWAY": "soon"}, "CITYOS_OIDC_LEEWAY"),
        ({"CITYOS_OIDC_LEEWAY": "-1"}, "CITYOS_OIDC_LEEWAY"),
        ({"CITYOS_OIDC_LEEWAY": "nan"}, "CITYOS_OIDC_LEEWAY"),
    ],
)
def test_from_env_names_the_variable_that_is_wrong(
    tmp_path: Path, changes: dict[str, str], variable: str
) -> None:
    with pytest.raises(OidcConfigError, match=variable):
        OidcConfig.from_env(env_with_keys(tmp_path, **changes))


@pytest.mark.parametrize(
    "content", [b"", b"not json", b'{"keys": {}}', b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}']
)
def test_from_env_refuses_a_key_file_without_signing_keys(tmp_path: Path, content: bytes) -> None:
    env = env_with_keys(tmp_path)
    Path(env["CITYOS_OIDC_JWKS"]).write_bytes(content)
    with pytest.raises(OidcConfigError, match="CITYOS_OIDC_JWKS"):
        OidcConfig.from_env(env)


# -- telling a JWT from other credentials --------------------------------------------------------


@pytest.mark.parametrize(
    ("credential", "expected"),
    [
        (sign(claims()), True),
        (hand_built({"alg": "none"}, claims(), None), True),  # so it is refused, not ignored
        ("cok_0123abcd_" + "x" * 43, False),
        ("cityos_" + "y" * 43, False),
        ("eyJhbGciOiJSUzI1NiJ9.e30", False),
        ("abc.def.ghi", False),
        ("eyJ.a b.c", False),
        ("", False),
    ],
)
def test_looks_like_jwt(credential: str, expected: bool) -> None:
    assert looks_like_jwt(credential) is expected
