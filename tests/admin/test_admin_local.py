"""The admin pages with CITYOS_AUTH=off: a local administrator, no sign-in, a banner saying so."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_client
from starlette.testclient import TestClient

from cityos.auth.audit import Record


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path, auth="off") as c:
        yield c


def csrf(client: TestClient, page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(page).text)
    assert found is not None
    return found.group(1)


def records(client: TestClient) -> list[Record]:
    assert client.portal is not None
    found: list[Record] = client.portal.call(client.app.audit.records)  # type: ignore[attr-defined]
    # the records of accounts and keys (the app records other things too, e.g. its policy)
    return [r for r in found if r.action.startswith(("user.", "key."))]


@pytest.mark.parametrize("page", ["/admin/", "/admin/keys", "/admin/users", "/admin/audit"])
def test_pages_open_without_sign_in_under_a_banner(client: TestClient, page: str) -> None:
    r = client.get(page)
    assert r.status_code == 200
    assert "CITYOS_AUTH=off" in r.text
    assert 'class="banner"' in r.text


def test_sign_in_is_not_needed(client: TestClient) -> None:
    r = client.get("/admin/login", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/admin/")
    assert client.get("/admin/me.json").json()["actor"] == "local:admin"


def test_changes_still_need_the_pages_token_and_are_audited(client: TestClient) -> None:
    form = {"name": "dash", "role": "app", "scopes": "entities:read"}
    assert client.post("/admin/keys", data=form).status_code == 403  # a forged form
    token = csrf(client, "/admin/keys")
    made = client.post("/admin/keys", data={**form, "csrf": token})
    assert made.status_code == 201
    assert re.search(r"cok_[0-9a-f]{8}_", made.text)
    assert [(r.actor, r.action) for r in records(client)] == [("local:admin", "key.create")]
