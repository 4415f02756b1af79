"""The admin pages with CITYOS_AUTH=on: sign-in, sessions, CSRF, roles, keys, staff, audit."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import make_client, sensor
from starlette.testclient import TestClient

from cityos.auth.audit import Record
from cityos.auth.keys import Credential
from cityos.auth.users import REFUSED, User

PASSWORD = "correct horse battery"
ENTITY = sensor(1)
JSON = {"Content-Type": "application/json"}
PAGES = ["/admin/", "/admin/keys", "/admin/users", "/admin/audit"]
TWINS = ["/admin/me.json", "/admin/keys.json", "/admin/users.json", "/admin/audit.json"]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path, auth="on") as c:
        yield c


def add_user(client: TestClient, name: str, *roles: str, tenants: tuple[str, ...] = ("*",)) -> User:
    create = functools.partial(
        client.app.users.create,  # type: ignore[attr-defined]
        name,
        PASSWORD,
        roles=roles,
        tenants=tenants,
    )
    assert client.portal is not None
    user: User = client.portal.call(create)
    return user


def login(client: TestClient, name: str, password: str = PASSWORD) -> httpx.Response:
    client.cookies.clear()
    form = client.get("/admin/login")
    token = re.search(r'name="token" value="([^"]+)"', form.text)
    assert token is not None
    data = {"name": name, "password": password, "token": token.group(1)}
    return client.post("/admin/login", data=data, follow_redirects=False)


def signed_in(client: TestClient, name: str, *roles: str, **kw: tuple[str, ...]) -> str:
    """Create a user, sign in as them; return their session token."""
    add_user(client, name, *roles, **kw)
    assert login(client, name).status_code == 303
    return str(client.cookies["cityos_session"])


def csrf(client: TestClient, page: str = "/admin/") -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(page).text)
    assert found is not None
    return found.group(1)


def keys(client: TestClient) -> list[Credential]:
    assert client.portal is not None
    found: list[Credential] = client.portal.call(client.app.identity.store.list_keys)  # type: ignore[attr-defined]
    return found


def users(client: TestClient) -> list[User]:
    assert client.portal is not None
    found: list[User] = client.portal.call(client.app.users.store.list_users)  # type: ignore[attr-defined]
    return found


def records(client: TestClient) -> list[Record]:
    assert client.portal is not None
    client.portal.call(client.app.guard.drain)  # type: ignore[attr-defined]
    found: list[Record] = client.portal.call(client.app.audit.records)  # type: ignore[attr-defined]
    # the records of accounts and keys (the app records other things too, e.g. its policy)
    return [r for r in found if r.action.startswith(("user.", "key."))]


def as_session(client: TestClient, token: str, path: str) -> httpx.Response:
    """GET path with only this session cookie."""
    client.cookies.clear()
    return client.get(path, headers={"cookie": f"cityos_session={token}"}, follow_redirects=False)


def make_key(client: TestClient, **form: str | list[str]) -> httpx.Response:
    data = {"name": "dashboard", "role": "steward", **form}
    if "csrf" not in data:
        data["csrf"] = csrf(client, "/admin/keys")
    return client.post("/admin/keys", data=data)


# -- signing in ------------------------------------------------------------------------------------


def test_pages_send_visitors_to_sign_in_and_twins_answer_401(client: TestClient) -> None:
    for page in PAGES:
        r = client.get(page, follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (303, "/admin/login"), page
    for twin in TWINS:
        assert client.get(twin).status_code == 401, twin
    r = client.get("/admin/login")
    assert r.status_code == 200
    assert "ログイン" in r.text
    assert "Sign in" in r.text


def test_sign_in_gives_a_strict_http_only_cookie_and_shows_who(client: TestClient) -> None:
    add_user(client, "tanaka", "admin")
    r = login(client, "tanaka")
    assert (r.status_code, r.headers["location"]) == (303, "/admin/")
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("cityos_session="))
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/admin" in cookie
    assert "Secure" not in cookie  # plain http (loopback development)
    home = client.get("/admin/")
    assert "user:tanaka" in home.text
    me = client.get("/admin/me.json").json()
    assert (me["actor"], me["roles"], me["tenants"]) == ("user:tanaka", ["admin"], ["*"])


def test_the_session_cookie_is_secure_over_https(client: TestClient) -> None:
    add_user(client, "tanaka", "admin")
    form = client.get("https://testserver/admin/login")
    token = re.search(r'name="token" value="([^"]+)"', form.text)
    assert token is not None
    assert "Secure" in form.headers["set-cookie"]
    data = {"name": "tanaka", "password": PASSWORD, "token": token.group(1)}
    r = client.post("https://testserver/admin/login", data=data, follow_redirects=False)
    assert r.status_code == 303
    assert "Secure" in r.headers["set-cookie"]


def test_cookies_are_secure_behind_a_tls_proxy_when_the_public_url_is_https(
    tmp_path: Path,
) -> None:
    # nginx terminates TLS and forwards plain http: the public URL says what users see
    with make_client(tmp_path, auth="on", public_url="https://data.sano.example") as proxied:
        add_user(proxied, "tanaka", "admin")
        form = proxied.get("/admin/login")
        assert "Secure" in form.headers["set-cookie"]
        # the browser sends the Secure cookie back over https, to nginx, which forwards http
        token = re.search(r'name="token" value="([^"]+)"', form.text)
        assert token is not None
        data = {"name": "tanaka", "password": PASSWORD, "token": token.group(1)}
        cookie = {"cookie": f"cityos_login={proxied.cookies.get('cityos_login') or token.group(1)}"}
        r = proxied.post("/admin/login", data=data, headers=cookie, follow_redirects=False)
        assert r.status_code == 303
        session = next(
            c for c in r.headers.get_list("set-cookie") if c.startswith("cityos_session")
        )
        assert "Secure" in session


def test_wrong_password_and_unknown_name_get_the_same_answer(client: TestClient) -> None:
    add_user(client, "tanaka", "admin")
    wrong = login(client, "tanaka", "not the password")
    unknown = login(client, "nobody", PASSWORD)
    assert wrong.status_code == unknown.status_code == 403
    assert REFUSED in wrong.text
    assert REFUSED in unknown.text
    assert wrong.text.replace("tanaka", "nobody") == unknown.text.replace(
        re.findall(r'name="token" value="([^"]+)"', unknown.text)[0],
        re.findall(r'name="token" value="([^"]+)"', wrong.text)[0],
    )
    assert "cityos_session" not in client.cookies
    logins = [(r.actor, r.target, r.outcome, r.detail) for r in records(client)]
    assert logins == [
        ("anonymous", "user:tanaka", "denied", {"result": "failed"}),
        ("anonymous", "user:nobody", "denied", {"result": "unknown"}),
    ]


def test_five_wrong_passwords_lock_even_the_right_one_out(client: TestClient) -> None:
    add_user(client, "tanaka", "admin")
    for _ in range(5):
        assert login(client, "tanaka", "not the password").status_code == 403
    locked = login(client, "tanaka")
    assert locked.status_code == 403
    assert REFUSED in locked.text  # the same words as a wrong password
    assert [r.action for r in records(client) if r.action == "user.lock"] == ["user.lock"]
    assert client.portal is not None
    client.portal.call(client.app.users.store.unlock, "tanaka")  # type: ignore[attr-defined]
    assert login(client, "tanaka").status_code == 303


def test_the_sign_in_form_needs_its_own_token(client: TestClient) -> None:
    add_user(client, "tanaka", "admin")
    client.get("/admin/login")
    data = {"name": "tanaka", "password": PASSWORD, "token": "forged"}
    r = client.post("/admin/login", data=data, follow_redirects=False)
    assert r.status_code == 403
    assert "cityos_session" not in client.cookies


def test_logout_ends_the_session(client: TestClient) -> None:
    token = signed_in(client, "tanaka", "admin")
    r = client.post("/admin/logout", data={"csrf": csrf(client)}, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/admin/login")
    assert as_session(client, token, "/admin/").status_code == 303  # the old cookie is dead
    assert [r.action for r in records(client)][-1] == "user.logout"


# -- CSRF, Origin and roles ------------------------------------------------------------------------


@pytest.mark.parametrize("given", [None, "", "wrong-token"])
@pytest.mark.parametrize(
    ("path", "form"),
    [
        ("/admin/keys", {"name": "x", "role": "steward"}),
        ("/admin/users", {"name": "kato", "role": "admin", "password": PASSWORD,
                          "password2": PASSWORD}),
        ("/admin/users/sato/disable", {}),
        ("/admin/logout", {}),
    ],
)  # fmt: skip
def test_posts_without_the_sessions_csrf_token_are_refused(
    client: TestClient, given: str | None, path: str, form: dict[str, str]
) -> None:
    add_user(client, "sato", "steward")
    token = signed_in(client, "tanaka", "admin")
    data = form if given is None else {**form, "csrf": given}
    r = client.post(path, data=data, follow_redirects=False)
    assert r.status_code == 403
    assert "Error" in r.text
    assert keys(client) == []
    assert [(u.name, u.disabled) for u in users(client)] == [("sato", False), ("tanaka", False)]
    assert as_session(client, token, "/admin/").status_code == 200  # still signed in


def test_another_sessions_csrf_token_does_not_do(client: TestClient) -> None:
    signed_in(client, "sato", "admin")
    theirs = csrf(client)
    signed_in(client, "tanaka", "admin")
    assert make_key(client, csrf=theirs).status_code == 403
    assert keys(client) == []


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://testserver.evil"])
def test_a_form_from_another_origin_is_refused(client: TestClient, origin: str) -> None:
    signed_in(client, "tanaka", "admin")
    token = csrf(client)
    data = {"csrf": token, "name": "x", "role": "steward"}
    r = client.post("/admin/keys", data=data, headers={"origin": origin})
    assert r.status_code == 403
    assert keys(client) == []
    ok = client.post("/admin/keys", data=data, headers={"origin": "http://testserver"})
    assert ok.status_code == 201
    assert len(keys(client)) == 1


@pytest.mark.parametrize(
    ("role", "denied"),
    [
        ("steward", PAGES[1:] + TWINS[1:]),
        ("operator", PAGES[1:] + TWINS[1:]),
        ("admin", []),
    ],
)
def test_a_role_lacking_the_right_gets_403(
    client: TestClient, role: str, denied: list[str]
) -> None:
    signed_in(client, "sato", role)
    for path in PAGES + TWINS:
        status = client.get(path).status_code
        assert status == (403 if path in denied else 200), path
    r = client.post("/admin/keys", data={"csrf": csrf(client), "name": "x", "role": "admin"})
    assert r.status_code == (403 if denied else 201)
    assert len(keys(client)) == (0 if denied else 1)


def test_a_tenant_admin_manages_only_their_tenant(client: TestClient) -> None:
    add_user(client, "other", "steward", tenants=("city-b",))
    signed_in(client, "a-admin", "admin", tenants=("city-a",))
    assert make_key(client, tenants="city-a").status_code == 201
    assert make_key(client, tenants="city-b").status_code == 403
    assert make_key(client, tenants="*").status_code == 403
    listed = client.get("/admin/users.json").json()["users"]
    assert [u["name"] for u in listed] == ["a-admin"]
    assert [k.tenants for k in keys(client)] == [("city-a",)]


# -- API keys --------------------------------------------------------------------------------------


def test_a_key_made_on_the_page_is_shown_once_works_and_is_revoked_at_once(
    client: TestClient,
) -> None:
    signed_in(client, "tanaka", "admin")
    made = make_key(client, tenants="", scopes="", expires="30d")
    assert made.status_code == 201
    assert made.headers["cache-control"] == "no-store"
    plaintext = re.findall(r"cok_[0-9a-f]{8}_[A-Za-z0-9_\-]{43}", made.text)
    assert len(plaintext) == 1
    key = plaintext[0]
    bearer = {"Authorization": f"Bearer {key}", **JSON}
    assert client.post("/ngsi-ld/v1/entities", json=ENTITY, headers=bearer).status_code == 201
    # never shown again: not on the page, not in its twin
    assert key not in client.get("/admin/keys").text
    listed = client.get("/admin/keys.json").json()["keys"]
    assert key not in str(listed)
    assert [(k["name"], k["roles"], k["state"]) for k in listed] == [
        ("dashboard", ["steward"], "active")
    ]
    prefix = listed[0]["prefix"]
    r = client.post(f"/admin/keys/{prefix}/revoke", data={"csrf": csrf(client)})
    assert r.status_code == 200
    assert f"{prefix}" in r.text
    # the key was trusted a moment ago (cached): the revocation reaches this process at once
    assert client.delete(ENTITY_URL, headers=bearer).status_code == 401
    assert client.get("/admin/keys.json").json()["keys"][0]["state"] == "revoked"


ENTITY_URL = f"/ngsi-ld/v1/entities/{ENTITY['id']}"


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"name": ""}, "a key needs a name"),
        ({"role": []}, "at least one role"),
        ({"tenants": "a b/c"}, "not a tenant name"),
        ({"scopes": "nothing:here"}, "not a scope"),
        ({"expires": "yesterday"}, "not an expiry"),
    ],
)
def test_bad_key_forms_say_why_and_make_nothing(
    client: TestClient, form: dict[str, str | list[str]], message: str
) -> None:
    signed_in(client, "tanaka", "admin")
    r = make_key(client, **form)
    assert r.status_code == 400
    assert message in r.text
    assert keys(client) == []


def test_an_admin_key_may_read_the_json_twins(client: TestClient) -> None:
    assert client.portal is not None
    store = client.app.identity.store  # type: ignore[attr-defined]
    create = functools.partial(store.create_key, "ops", roles=["admin"], tenants=["*"])
    _, key = client.portal.call(create)
    bearer = {"Authorization": f"Bearer {key}"}
    assert client.get("/admin/keys.json", headers=bearer).json()["keys"][0]["name"] == "ops"
    assert client.get("/admin/audit.json", headers=bearer).status_code == 200
    # but a key posts no forms: they need a session's token
    assert client.get("/admin/keys", headers=bearer, follow_redirects=False).status_code == 303


# -- staff accounts --------------------------------------------------------------------------------


def test_staff_made_on_the_page_sign_in_and_disabling_ends_their_sessions(
    client: TestClient,
) -> None:
    admin = signed_in(client, "tanaka", "admin")
    token = csrf(client)
    form = {"csrf": token, "name": "sato", "display_name": "佐藤", "role": "operator",
            "tenants": "", "password": PASSWORD, "password2": PASSWORD}  # fmt: skip
    r = client.post("/admin/users", data=form)
    assert r.status_code == 200
    assert "佐藤" in r.text
    assert login(client, "sato").status_code == 303
    sato = str(client.cookies["cityos_session"])
    assert client.get("/admin/me.json").json()["roles"] == ["operator"]

    client.cookies.clear()
    headers = {"cookie": f"cityos_session={admin}"}
    r = client.post("/admin/users/sato/disable", data={"csrf": token}, headers=headers)
    assert r.status_code == 200
    assert as_session(client, sato, "/admin/").status_code == 303  # their session ended
    assert login(client, "sato").status_code == 403

    client.cookies.clear()
    r = client.post("/admin/users/sato/enable", data={"csrf": token}, headers=headers)
    assert r.status_code == 200
    assert login(client, "sato").status_code == 303


def test_unlock_on_the_page_lifts_a_lock(client: TestClient) -> None:
    admin = signed_in(client, "tanaka", "admin")
    token = csrf(client)
    add_user(client, "sato", "steward")
    for _ in range(5):
        login(client, "sato", "not the password")
    assert login(client, "sato").status_code == 403
    client.cookies.clear()
    headers = {"cookie": f"cityos_session={admin}"}
    listed = client.get("/admin/users.json", headers=headers).json()["users"]
    assert {u["name"]: u["state"] for u in listed}["sato"] == "locked"
    r = client.post("/admin/users/sato/unlock", data={"csrf": token}, headers=headers)
    assert r.status_code == 200
    assert login(client, "sato").status_code == 303


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"name": "a b"}, "not a user name"),
        ({"password": "short", "password2": "short"}, "at least 12"),
        ({"password2": "something else"}, "differ"),
        ({"role": "app"}, "not a role for people"),
        ({"name": "tanaka"}, "exists already"),
    ],
)
def test_bad_user_forms_say_why_and_make_nothing(
    client: TestClient, form: dict[str, str], message: str
) -> None:
    signed_in(client, "tanaka", "admin")
    data = {"csrf": csrf(client), "name": "sato", "role": "steward", "password": PASSWORD,
            "password2": PASSWORD, **form}  # fmt: skip
    r = client.post("/admin/users", data=data)
    assert r.status_code == 400
    assert message in r.text
    assert PASSWORD not in r.text  # passwords are never sent back
    assert [u.name for u in users(client)] == ["tanaka"]


def test_an_admin_cannot_disable_themselves(client: TestClient) -> None:
    signed_in(client, "tanaka", "admin")
    r = client.post("/admin/users/tanaka/disable", data={"csrf": csrf(client)})
    assert r.status_code == 400
    assert not users(client)[0].disabled


# -- the audit log ---------------------------------------------------------------------------------


def test_every_change_on_the_pages_is_audited_in_the_users_name(client: TestClient) -> None:
    signed_in(client, "tanaka", "admin")
    make_key(client)
    prefix = keys(client)[0].prefix
    client.post(f"/admin/keys/{prefix}/revoke", data={"csrf": csrf(client)})
    form = {"csrf": csrf(client), "name": "sato", "role": "steward", "password": PASSWORD,
            "password2": PASSWORD}  # fmt: skip
    client.post("/admin/users", data=form)
    for action in ("disable", "enable", "unlock"):
        client.post(f"/admin/users/sato/{action}", data={"csrf": csrf(client)})
    client.post("/admin/logout", data={"csrf": csrf(client)})
    found = [(r.actor, r.action, r.target) for r in records(client)]
    assert found == [
        ("user:tanaka", "user.login", "user:tanaka"),
        ("user:tanaka", "key.create", f"key:{prefix}"),
        ("user:tanaka", "key.revoke", f"key:{prefix}"),
        ("user:tanaka", "user.create", "user:sato"),
        ("user:tanaka", "user.disable", "user:sato"),
        ("user:tanaka", "user.enable", "user:sato"),
        ("user:tanaka", "user.unlock", "user:sato"),
        ("user:tanaka", "user.logout", "user:tanaka"),
    ]


def test_the_audit_page_shows_head_verdict_and_latest_records(client: TestClient) -> None:
    signed_in(client, "tanaka", "admin")
    token = csrf(client)
    for n in range(60):  # within the burst the per-address rate limit allows
        make_key(client, csrf=token, name=f"key-{n}")
    doc = client.get("/admin/audit.json").json()
    assert doc["verify"]["ok"] is True
    head = doc["head"]["seq"]
    assert head >= 61
    assert [r["seq"] for r in doc["records"]] == list(range(head, head - 50, -1))
    page = client.get("/admin/audit")
    assert doc["head"]["hash"] in page.text
    assert "intact" in page.text
    assert "key-59" not in page.text  # records show their target, not their detail
    assert page.text.count("key.create") == 50


# -- what the pages are made of --------------------------------------------------------------------


def test_pages_have_no_inline_script_a_csp_and_are_never_cached(client: TestClient) -> None:
    signed_in(client, "tanaka", "admin")
    for path in [*PAGES, "/admin/login"]:
        r = client.get(path)
        assert r.status_code == 200, path
        assert "<script" not in r.text
        assert " style=" not in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["cache-control"] == "no-store"
        assert 'lang="ja"' in r.text
    css = client.get("/admin/assets/admin.css")
    assert css.headers["content-type"].startswith("text/css")
