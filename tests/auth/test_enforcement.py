"""CITYOS_AUTH=on: writes need a credential the policy allows, every write is audited."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import (
    CITYOS,
    engine_env,
    free_port,
    make_client,
    make_key,
    sensor,
    storage_of,
    wait_for,
)
from starlette.testclient import TestClient

from cityos.auth import context
from cityos.auth.audit import Record
from cityos.auth.context import Identity
from cityos.cli import main
from cityos.settings import Settings, SettingsError, from_env
from cityos.storage import engines

JSON = {"Content-Type": "application/json"}
ENTITY = sensor(1)
ENTITY_URL = f"/ngsi-ld/v1/entities/{ENTITY['id']}"
GROUP = {
    "services": [{"apikey": "k1", "entity_type": "Thing", "resource": "/iot/json"}],
}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path, auth="on") as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **JSON}


def records(client: TestClient) -> list[Record]:
    """Return the audit log of requests, once the records of answered ones are written."""
    assert client.portal is not None
    client.portal.call(client.app.guard.drain)  # type: ignore[attr-defined]
    found: list[Record] = client.portal.call(client.app.audit.records)  # type: ignore[attr-defined]
    return [r for r in found if r.action != "policy.change"]  # the one at start


def post_entity(client: TestClient, headers: dict[str, str]) -> int:
    return client.post("/ngsi-ld/v1/entities", json=ENTITY, headers=headers).status_code


def test_anonymous_write_is_refused_and_writes_nothing(client: TestClient) -> None:
    r = client.post("/ngsi-ld/v1/entities", json=ENTITY, headers=JSON)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 401
    assert "credential" in r.json()["detail"]
    assert client.get(ENTITY_URL).status_code == 404


def test_steward_key_writes_with_either_header(client: TestClient) -> None:
    key = make_key(client, "steward")
    assert post_entity(client, bearer(key)) == 201
    r = client.delete(ENTITY_URL, headers={"X-API-Key": key})
    assert r.status_code == 204


def test_read_only_app_key_is_forbidden_to_write(client: TestClient) -> None:
    key = make_key(client, "app", scopes=("entities:read",))
    r = client.post("/ngsi-ld/v1/entities", json=ENTITY, headers=bearer(key))
    assert r.status_code == 403
    assert "entities:write" in r.json()["detail"]


def test_key_of_another_tenant_sees_the_tenant_as_missing(client: TestClient) -> None:
    key = make_key(client, "steward", tenants=("A",))
    headers = {**bearer(key), "NGSILD-Tenant": "B"}
    r = client.post("/ngsi-ld/v1/entities", json=ENTITY, headers=headers)
    assert r.status_code == 404
    assert r.json()["type"].endswith("NonexistentTenant")
    assert post_entity(client, {**bearer(key), "NGSILD-Tenant": "A"}) == 201


def test_revoked_and_unknown_keys_get_401(client: TestClient) -> None:
    key = make_key(client, "steward")
    assert post_entity(client, bearer(key)) == 201  # now cached
    assert client.portal is not None
    client.portal.call(client.app.identity.revoke, key[4:12])  # type: ignore[attr-defined]
    r = client.delete(ENTITY_URL, headers=bearer(key))
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    unknown = "cok_00000000_" + "A" * 43
    assert client.delete(ENTITY_URL, headers=bearer(unknown)).status_code == 401
    # an invalid key is refused on reads too: it is a mistake worth telling
    assert client.get(ENTITY_URL, headers=bearer(unknown)).status_code == 401


def test_iot_provisioning_needs_an_operator(client: TestClient) -> None:
    steward, operator = make_key(client, "steward"), make_key(client, "operator")
    r = client.post("/iot/services", json=GROUP, headers=JSON)
    assert r.status_code == 401
    assert r.json()["name"] == "UNAUTHORIZED"  # the IoT Agent's error shape
    assert client.post("/iot/services", json=GROUP, headers=bearer(steward)).status_code == 403
    assert client.post("/iot/services", json=GROUP, headers=bearer(operator)).status_code == 201


def test_surge_switch_needs_an_operator(client: TestClient) -> None:
    steward = make_key(client, "steward")
    assert client.put("/admin/portal/surge", json={"surge": True}).status_code == 401
    r = client.put("/admin/portal/surge", json={"surge": True}, headers=bearer(steward))
    assert r.status_code == 403
    assert client.get("/admin/portal/surge").status_code == 401
    operator = make_key(client, "operator")
    assert client.get("/admin/portal/surge", headers=bearer(operator)).json()["surge"] is False


def test_catalog_accepts_ckan_tokens_and_refuses_anonymous(client: TestClient) -> None:
    assert client.portal is not None
    token = client.portal.call(client.app.catalog.meta.create_token, "tanaka")  # type: ignore[attr-defined]
    r = client.post("/api/3/action/package_create", json={"name": "rivers"})
    assert r.status_code == 401
    assert r.json()["success"] is False
    assert r.json()["error"]["__type"] == "Authorization Error"
    headers = {"Authorization": token}
    r = client.post("/api/3/action/package_create", json={"name": "rivers"}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["result"]["creator_user_id"] == "tanaka"
    assert records(client)[-1].actor == "token:tanaka"


def test_catalog_accepts_a_steward_api_key(client: TestClient) -> None:
    key = make_key(client, "steward")
    r = client.post("/api/3/action/package_create", json={"name": "rivers"}, headers=bearer(key))
    assert r.status_code == 200, r.text
    assert r.json()["result"]["creator_user_id"] == f"key:{key[4:12]}"


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    with make_client(tmp_path, auth="on", rate_limit="1/min:2") as c:
        assert c.get("/ngsi-ld/v1/types").status_code == 200
        assert c.get("/ngsi-ld/v1/types").status_code == 200
        r = c.get("/ngsi-ld/v1/types")
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) == 60  # one token per minute
        assert c.get("/-/health").status_code == 200  # never limited
        key = make_key(c, "steward")  # keys have their own, separate buckets
        assert c.get("/ngsi-ld/v1/types", headers=bearer(key)).status_code == 200


def test_every_write_is_audited_and_the_chain_verifies(tmp_path: Path) -> None:
    with make_client(tmp_path, auth="on") as c:
        key = make_key(c, "steward")
        assert post_entity(c, JSON) == 401
        assert post_entity(c, bearer(key)) == 201
        assert post_entity(c, bearer(key)) == 409
        c.get(ENTITY_URL)  # reads are not audited
        got = [(r.actor, r.action, r.target, r.outcome, r.detail) for r in records(c)]
    prefix = key[4:12]
    assert got == [
        ("anonymous", "entities.post", "/ngsi-ld/v1/entities", "denied", {"status": 401}),
        (f"key:{prefix}", "entities.post", "/ngsi-ld/v1/entities", "ok", {"status": 201}),
        (f"key:{prefix}", "entities.post", "/ngsi-ld/v1/entities", "error", {"status": 409}),
    ]
    runner = CliRunner(env=engine_env(tmp_path))
    verified = runner.invoke(main, ["audit", "verify", "--data-dir", str(tmp_path)])
    assert verified.exit_code == 0, verified.output
    assert verified.output.startswith("audit log intact: 4 records")  # with the policy


def test_writes_are_audited_with_auth_off_too(tmp_path: Path) -> None:
    with make_client(tmp_path) as c:
        assert post_entity(c, JSON) == 201
        assert [(r.actor, r.outcome) for r in records(c)] == [("anonymous", "ok")]


def test_key_changes_by_the_cli_are_audited(tmp_path: Path) -> None:
    runner = CliRunner(env=engine_env(tmp_path))
    args = ["--name", "gauges", "--role", "operator", "--tenant", "", "--data-dir", str(tmp_path)]
    made = runner.invoke(main, ["keys", "create", *args])
    assert made.exit_code == 0, made.output
    prefix = made.stdout.strip()[4:12]
    revoked = runner.invoke(main, ["keys", "revoke", prefix, "--data-dir", str(tmp_path)])
    assert revoked.exit_code == 0, revoked.output
    exported = runner.invoke(main, ["audit", "export", "--data-dir", str(tmp_path)])
    lines = exported.stdout.splitlines()
    assert len(lines) == 2
    for action, line in zip(("create", "revoke"), lines, strict=True):
        assert f'"action":"key.{action}"' in line
        assert f'"target":"key:{prefix}"' in line


def test_security_headers_and_cors(tmp_path: Path) -> None:
    origin = "https://app.example.org"
    with make_client(tmp_path, auth="on", cors_origins=(origin,)) as c:
        r = c.get("/ngsi-ld/v1/types", headers={"Origin": origin})
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["access-control-allow-origin"] == origin
        # a preflight needs no key
        pre = c.options(
            "/ngsi-ld/v1/entities",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        )
        assert pre.status_code == 204
        assert "Authorization" in pre.headers["access-control-allow-headers"]


def _serve(tmp_path: Path, host: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [CITYOS, "serve", "--host", host, "--port", str(free_port()), "--data-dir", str(tmp_path)],
        env={**os.environ, "CITYOS_AUTH": "off", **engine_env(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_serve_refuses_auth_off_beyond_loopback(tmp_path: Path) -> None:
    proc = _serve(tmp_path, "0.0.0.0")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert b"CITYOS_AUTH=off is only allowed on a loopback address" in err
    assert b"Traceback" not in err


def test_serve_warns_about_auth_off_on_loopback(tmp_path: Path) -> None:
    proc = _serve(tmp_path, "127.0.0.1")
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert first.startswith(b"WARNING: CITYOS_AUTH=off")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("192.168.1.5", False), ("::", False),
     ("cityos.example.org", False)],
)  # fmt: skip
def test_auth_off_is_honoured_only_on_loopback(host: str, loopback: bool) -> None:
    settings = Settings(host=host)
    assert settings.loopback is loopback
    assert (settings.exposure_error() is None) is loopback
    assert Settings(host=host, auth="on").exposure_error() is None


def test_auth_settings_are_read_and_checked() -> None:
    s = from_env({"CITYOS_AUTH": "on", "CITYOS_CORS_ORIGINS": "https://a.example, *"})
    assert (s.auth, s.cors_origins) == ("on", ("https://a.example", "*"))
    assert (s.rate_limit, s.key_rate_limit) == ("600/min:100", "6000/min:1000")
    for env, needle in (
        ({"CITYOS_RATE_LIMIT": "lots"}, "CITYOS_RATE_LIMIT"),
        ({"CITYOS_KEY_RATE_LIMIT": "0/s"}, "CITYOS_KEY_RATE_LIMIT"),
        ({"CITYOS_CORS_ORIGINS": "app.example.org"}, "CITYOS_CORS_ORIGINS"),
    ):
        with pytest.raises(SettingsError, match=needle):
            from_env(env)


def test_portal_pages_carry_a_csp_that_allows_their_inline_styles(tmp_path: Path) -> None:
    with make_client(tmp_path) as c:
        page = wait_for(lambda: (r := c.get("/public/")).status_code == 200 and r, "the portal")
        lite = c.get("/public/lite.html")
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "strict-origin-when-cross-origin"
    csp = page.headers["content-security-policy"]
    assert "style-src 'self' 'unsafe-inline'" in csp
    assert "script-src 'self';" in csp  # never inline scripts
    assert lite.status_code == 200
    assert "content-security-policy" in lite.headers


@pytest.mark.parametrize(
    ("authorization", "api_key", "expected"),
    [
        ("Bearer cok_x", None, "cok_x"),
        ("bearer  tok ", None, "tok"),
        ("tok", None, "tok"),  # CKAN clients send the bare token
        ("Basic dXNlcjpwdw==", None, None),  # a proxy's own login is not a credential here
        ("Basic dXNlcjpwdw==", "cok_y", "cok_y"),
        (None, "cok_y", "cok_y"),
        (None, None, None),
    ],
)
def test_presented_credential(
    authorization: str | None, api_key: str | None, expected: str | None
) -> None:
    assert context.presented(authorization, api_key) == expected


def test_revocation_elsewhere_takes_effect_within_the_cache_ttl(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = storage_of(tmp_path)  # made here: it may set up a schema

    async def run() -> list[bool]:
        await store.start()
        try:
            keys = engines.keys(store)
            await keys.setup()
            cred, plaintext = await keys.create_key("app", roles=["steward"], tenants=[""])
            identity = Identity(keys, ttl=30, clock=lambda: now[0])
            seen = [(await identity.identify(plaintext)).valid]
            await keys.revoke(cred.prefix)  # as `cityos keys revoke` in another process
            now[0] += 29
            seen.append((await identity.identify(plaintext)).valid)
            now[0] += 2
            seen.append((await identity.identify(plaintext)).valid)
            return seen
        finally:
            await store.close()

    assert asyncio.run(run()) == [True, True, False]


def test_catalog_tokens_are_cached_like_keys(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = storage_of(tmp_path)  # made here: it may set up a schema
    valid = {"tok-tanaka": "tanaka"}
    asked: list[str] = []

    async def token_user(token: str) -> str | None:
        asked.append(token)
        return valid.get(token)

    async def run() -> list[tuple[bool, str]]:
        await store.start()
        try:
            keys = engines.keys(store)
            await keys.setup()
            identity = Identity(keys, token_user=token_user, ttl=30, clock=lambda: now[0])
            seen = []
            for _ in range(3):
                found = await identity.identify("tok-tanaka")
                seen.append((found.valid, found.principal.id))
            del valid["tok-tanaka"]  # revoked by `cityos token revoke` elsewhere
            now[0] += 31
            found = await identity.identify("tok-tanaka")
            seen.append((found.valid, found.principal.id))
            return seen
        finally:
            await store.close()

    assert asyncio.run(run()) == [(True, "token:tanaka")] * 3 + [(False, "")]
    assert asked == ["tok-tanaka", "tok-tanaka"]  # once, then once more after the ttl
