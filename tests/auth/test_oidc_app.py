"""Tokens of the city's identity provider through the real app (CITYOS_AUTH=on, CITYOS_OIDC_*)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from conftest import make_client
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.testclient import TestClient

from cityos.settings import SettingsError, from_env

ISSUER = "https://id.sano.example/realms/sano"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
E = "/ngsi-ld/v1/entities"
BUILDING = {"id": "urn:ngsi-ld:Building:city-hall", "type": "Building"}


def token(key: rsa.RSAPrivateKey = KEY, **changes: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": "cityos",
        "exp": now + 300,
        "iat": now,
        "sub": "f81d4fae",
        "preferred_username": "tanaka",
        "realm_access": {"roles": ["city-data-team", "offline_access"]},
        "typ": "Bearer",
    }
    claims.update(changes)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    jwks = tmp_path / "jwks.json"
    public = RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True)
    jwks.write_text(json.dumps({"keys": [{**public, "kid": "k1", "use": "sig"}]}))
    env = {
        "CITYOS_OIDC_ISSUER": ISSUER,
        "CITYOS_OIDC_AUDIENCE": "cityos",
        "CITYOS_OIDC_JWKS": str(jwks),
        "CITYOS_OIDC_ROLE_MAP": "city-data-team=steward",
    }
    with make_client(tmp_path, auth="on", oidc=from_env(env).oidc) as c:
        yield c


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def test_a_token_of_the_provider_acts_with_its_mapped_role(client: TestClient) -> None:
    assert client.post(E, json=BUILDING, headers=bearer(token())).status_code == 201
    r = client.get(f"{E}/{BUILDING['id']}", headers=bearer(token()))
    assert r.status_code == 200
    assert client.get(f"{E}/{BUILDING['id']}").status_code == 404  # restricted to anonymous
    assert client.portal is not None
    client.portal.call(client.app.guard.drain)  # type: ignore[attr-defined]
    records = client.portal.call(client.app.audit.records)  # type: ignore[attr-defined]
    assert records[-1].actor == "oidc:tanaka"
    assert records[0].action == "policy.change"
    assert records[0].detail["oidc_issuer"] == ISSUER


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (lambda: token(exp=int(time.time()) - 3600), "the token has expired"),
        (lambda: token(iss="https://evil.example"), "wrong issuer"),
        (lambda: token(aud="another-service"), "wrong audience"),
        (lambda: token(OTHER), "bad signature"),
        (
            lambda: jwt.encode({"sub": "x"}, key=None, algorithm="none"),  # type: ignore[arg-type]
            "algorithm 'none' is not allowed",
        ),
    ],
)
def test_a_bad_token_is_refused_with_its_reason_and_changes_nothing(
    client: TestClient, bad: Any, reason: str
) -> None:
    r = client.post(E, json=BUILDING, headers=bearer(bad()))
    assert r.status_code == 401
    assert reason in r.json()["detail"]
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="cityos", error="invalid_token"')
    assert reason in challenge
    assert client.get(f"{E}/{BUILDING['id']}", headers=bearer(token())).status_code == 404


def test_a_token_without_a_usable_role_may_read_only_public_data(client: TestClient) -> None:
    nobody = token(realm_access={"roles": ["offline_access"]})
    r = client.post(E, json=BUILDING, headers=bearer(nobody))
    assert r.status_code == 403
    assert (
        client.get(E, params={"type": "WaterObserved"}, headers=bearer(nobody)).status_code == 200
    )
    assert client.get(E, params={"type": "Building"}, headers=bearer(nobody)).status_code == 403


def test_provider_settings_are_checked_at_start(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="CITYOS_OIDC_AUDIENCE"):
        from_env({"CITYOS_OIDC_ISSUER": ISSUER, "CITYOS_OIDC_JWKS": str(tmp_path / "x.json")})
    assert from_env({}).oidc is None
