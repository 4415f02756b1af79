"""Datasets, resources, organizations, groups, tags, licenses and tokens over the Action API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import engine_env, make_client
from starlette.testclient import TestClient

from cityos.cli import main

PACKAGE_KEYS = {
    "author",
    "author_email",
    "creator_user_id",
    "extras",
    "groups",
    "id",
    "isopen",
    "license_id",
    "license_title",
    "license_url",
    "maintainer",
    "maintainer_email",
    "metadata_created",
    "metadata_modified",
    "name",
    "notes",
    "num_resources",
    "num_tags",
    "organization",
    "owner_org",
    "private",
    "relationships_as_object",
    "relationships_as_subject",
    "resources",
    "state",
    "tags",
    "title",
    "type",
    "url",
    "version",
}
RESOURCE_KEYS = {
    "cache_last_updated",
    "cache_url",
    "created",
    "datastore_active",
    "description",
    "format",
    "hash",
    "id",
    "last_modified",
    "metadata_modified",
    "mimetype",
    "mimetype_inner",
    "name",
    "package_id",
    "position",
    "resource_type",
    "size",
    "state",
    "url",
    "url_type",
}


class Api:
    """Call actions like a CKAN client: POST JSON with a token, or GET a query string."""

    def __init__(self, client: TestClient, token: str) -> None:
        self.c = client
        self.token = token

    def post(self, action: str, /, auth: bool = True, **params: Any) -> tuple[int, Any]:
        headers = {"Authorization": self.token} if auth else {}
        r = self.c.post(f"/api/3/action/{action}", json=params, headers=headers)
        body = r.json()
        return r.status_code, body["result"] if body.get("success") else body.get("error", body)

    def get(self, action: str, /, **params: Any) -> tuple[int, Any]:
        r = self.c.get(f"/api/3/action/{action}", params=params)
        body = r.json()
        return r.status_code, body["result"] if body.get("success") else body.get("error", body)

    def ok(self, action: str, /, **params: Any) -> Any:
        status, result = self.post(action, **params)
        assert status == 200, result
        return result


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with make_client(tmp_path) as c:
        token = c.portal.call(c.app.catalog.meta.create_token, "admin")  # type: ignore[attr-defined]
        a = Api(c, token)
        a.ok("organization_create", name="sano", title="佐野市", description="栃木県佐野市")
        yield a


def shelters(**extra: Any) -> dict[str, Any]:
    return {
        "name": "evacuation-sites",
        "title": "指定緊急避難場所一覧",
        "notes": "佐野市の指定緊急避難場所",
        "owner_org": "sano",
        "license_id": "jp-pdl-1.0",
        "tags": [{"name": "避難"}, {"name": "防災"}],
        "extras": [{"key": "spatial", "value": "佐野市"}],
        "resources": [{"url": "https://example.jp/shelters.csv", "name": "一覧 (CSV)"}],
        **extra,
    }


def test_package_create_and_show_give_ckan_keys(api: Api) -> None:
    created = api.ok("package_create", **shelters())
    assert set(created) == PACKAGE_KEYS
    status, shown = api.get("package_show", id="evacuation-sites")
    assert status == 200
    assert shown == created
    assert api.get("package_show", id=created["id"])[1] == created
    assert shown["license_title"] == "公共データ利用規約 (第1.0版) PDL 1.0"
    assert shown["isopen"] is True
    assert shown["organization"]["title"] == "佐野市"
    assert shown["tags"][0] == {
        "display_name": "避難",
        "id": shown["tags"][0]["id"],
        "name": "避難",
        "state": "active",
        "vocabulary_id": None,
    }
    assert (shown["num_tags"], shown["num_resources"], shown["type"]) == (2, 1, "dataset")
    res = shown["resources"][0]
    assert set(res) == RESOURCE_KEYS
    assert (res["format"], res["datastore_active"], res["position"]) == ("CSV", False, 0)
    assert res["package_id"] == created["id"]
    # CKAN's timestamp form: ISO, microseconds, no zone
    assert len(shown["metadata_modified"]) == 26
    assert not shown["metadata_modified"].endswith("Z")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "A"}, "name"),
        ({"name": "Has Spaces"}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"owner_org": "nowhere"}, "owner_org"),
        ({"tags": [{"name": "a"}]}, "tags"),
        ({"tags": [{"name": "bad/tag"}]}, "tags"),
        ({"extras": [{"key": "title", "value": "x"}]}, "extras"),
        ({"private": "maybe"}, "private"),
        ({"url": "javascript:alert(1)"}, "url"),
        ({"author_email": "not-an-email"}, "author_email"),
        ({"groups": [{"name": "no-group"}]}, "groups"),
        ({"resources": "nope"}, "resources"),
    ],
)
def test_invalid_datasets_are_refused_and_nothing_is_stored(
    api: Api, changes: dict[str, Any], field: str
) -> None:
    status, error = api.post("package_create", **shelters(**changes))
    assert status == 409
    assert error["__type"] == "Validation Error"
    assert field in error
    assert api.get("package_list")[1] == []


def test_japanese_tags_and_names_taken(api: Api) -> None:
    api.ok("package_create", **shelters(tags=[{"name": "避難 所"}, {"name": "AED-1.0"}]))
    status, error = api.post("package_create", **shelters())
    assert status == 409
    assert error["name"] == ["That URL is already in use."]


def test_writes_need_a_valid_token(api: Api) -> None:
    status, error = api.post("package_create", auth=False, **shelters())
    assert status == 403
    assert error["__type"] == "Authorization Error"
    r = api.c.post(
        "/api/3/action/package_create", json=shelters(), headers={"Authorization": "wrong"}
    )
    assert r.status_code == 403
    assert api.get("package_list")[1] == []


def test_update_replaces_and_patch_merges(api: Api) -> None:
    created = api.ok("package_create", **shelters(version="1.0"))
    patched = api.ok("package_patch", id="evacuation-sites", notes="更新しました")
    assert patched["notes"] == "更新しました"
    assert patched["version"] == "1.0"
    assert patched["tags"] == created["tags"]
    assert patched["resources"][0]["id"] == created["resources"][0]["id"]
    assert patched["metadata_modified"] > created["metadata_modified"]
    assert patched["metadata_created"] == created["metadata_created"]
    updated = api.ok(
        "package_update",
        id=created["id"],
        name="evacuation-sites",
        title="避難場所",
        owner_org="sano",
        resources=[{"url": "https://example.jp/new.json", "name": "JSON"}],
    )
    assert updated["version"] is None  # left out: cleared
    assert updated["tags"] == []
    assert [r["format"] for r in updated["resources"]] == ["JSON"]
    assert api.get("package_show", id="evacuation-sites")[1] == updated


def test_delete_hides_from_list_and_search_but_show_works_for_a_user(api: Api) -> None:
    created = api.ok("package_create", **shelters())
    assert api.ok("package_delete", id="evacuation-sites") is None
    assert api.get("package_list")[1] == []
    assert api.get("package_search", q="避難")[1]["count"] == 0
    assert api.get("package_show", id=created["id"])[0] == 403
    shown = api.ok("package_show", id=created["id"])
    assert shown["state"] == "deleted"


def test_private_datasets_are_hidden_from_anonymous_callers(api: Api) -> None:
    api.ok("package_create", **shelters(private=True))
    assert api.get("package_list")[1] == []
    status, error = api.get("package_show", id="evacuation-sites")
    assert (status, error["__type"]) == (403, "Authorization Error")
    assert api.ok("package_show", id="evacuation-sites")["private"] is True


def test_unknown_dataset_and_ignored_extra_parameters(api: Api) -> None:
    status, error = api.get("package_show", id="nope")
    assert (status, error["__type"]) == (404, "Not Found Error")
    api.ok("package_create", **shelters())
    # ckanapi dump sends these; CKAN ignores parameters it does not know
    shown = api.ok(
        "package_show",
        id="evacuation-sites",
        include_datasets=False,
        include_password_hash=True,
        include_users=False,
    )
    assert shown["name"] == "evacuation-sites"


def test_package_list_is_sorted_and_paged(api: Api) -> None:
    for n in ("c-set", "a-set", "b-set"):
        api.ok("package_create", name=n, owner_org="sano")
    assert api.get("package_list")[1] == ["a-set", "b-set", "c-set"]
    assert api.get("package_list", limit="1", offset="1")[1] == ["b-set"]


def test_resource_upload_is_stored_served_and_removed(api: Api, tmp_path: Path) -> None:
    pkg = api.ok("package_create", **shelters(resources=[]))
    data = "名称,住所\n佐野市文化会館,佐野市高砂町\n".encode()
    r = api.c.post(
        "/api/3/action/resource_create",
        data={"package_id": "evacuation-sites", "description": "避難所の一覧"},
        files={"upload": ("避難所 一覧.csv", data, "text/csv")},
        headers={"Authorization": api.token},
    )
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert set(res) >= RESOURCE_KEYS
    assert res["url_type"] == "upload"
    assert (res["format"], res["size"], res["mimetype"]) == ("CSV", len(data), "text/csv")
    import hashlib

    assert res["hash"] == hashlib.sha256(data).hexdigest()
    path = f"/dataset/{pkg['id']}/resource/{res['id']}/download/避難所_一覧.csv"
    assert res["url"].endswith(path)
    got = api.c.get(path)
    assert got.status_code == 200
    assert got.content == data
    assert api.ok("package_show", id=pkg["id"])["num_resources"] == 1
    assert api.get("resource_show", id=res["id"])[1] == res
    # datastore helper's contract: resource_patch sets datastore_active and bumps the dataset
    before = api.ok("package_show", id=pkg["id"])["metadata_modified"]
    patched = api.ok("resource_patch", id=res["id"], datastore_active=True)
    assert patched["datastore_active"] is True
    assert patched["url"] == res["url"]
    after = api.ok("package_show", id=pkg["id"])
    assert after["metadata_modified"] > before
    assert after["resources"][0]["datastore_active"] is True
    assert api.ok("resource_delete", id=res["id"]) is None
    assert api.c.get(path).status_code == 404
    assert not (tmp_path / "catalog" / "files" / res["id"]).exists()
    assert api.get("resource_show", id=res["id"])[0] == 404


def test_resource_update_replaces_the_upload(api: Api) -> None:
    api.ok("package_create", **shelters(resources=[]))
    h = {"Authorization": api.token}
    r = api.c.post(
        "/api/3/action/resource_create",
        data={"package_id": "evacuation-sites"},
        files={"upload": ("a.csv", b"x\n1\n", "text/csv")},
        headers=h,
    ).json()["result"]
    r2 = api.c.post(
        "/api/3/action/resource_update",
        data={"id": r["id"], "name": "新しい版"},
        files={"upload": ("b.json", b'{"x": 1}', "application/octet-stream")},
        headers=h,
    ).json()["result"]
    assert (r2["id"], r2["name"], r2["format"]) == (r["id"], "新しい版", "JSON")
    assert r2["mimetype"] == "application/json"
    assert api.c.get(r2["url"].split("8000", 1)[1]).content == b'{"x": 1}'
    assert api.c.get(r["url"].split("8000", 1)[1]).status_code == 404
    by_url = api.ok("resource_update", id=r["id"], url="https://example.jp/x.xml")
    assert by_url["url_type"] is None
    assert api.c.get(r2["url"].split("8000", 1)[1]).status_code == 404


def test_resource_create_errors(api: Api) -> None:
    status, error = api.post("resource_create", url="https://example.jp/a.csv")
    assert (status, error["package_id"]) == (409, ["Missing value"])
    status, error = api.post("resource_create", package_id="nope", url="https://x/a.csv")
    assert status == 404
    status, error = api.post("resource_show", id="nope")
    assert status == 404


def test_deleting_a_dataset_removes_its_files(api: Api, tmp_path: Path) -> None:
    api.ok("package_create", **shelters(resources=[]))
    r = api.c.post(
        "/api/3/action/resource_create",
        data={"package_id": "evacuation-sites"},
        files={"upload": ("a.csv", b"x\n", "text/csv")},
        headers={"Authorization": api.token},
    ).json()["result"]
    assert (tmp_path / "catalog" / "files" / r["id"] / "a.csv").exists()
    api.ok("package_delete", id="evacuation-sites")
    assert not (tmp_path / "catalog" / "files" / r["id"]).exists()


def test_organizations_and_groups(api: Api) -> None:
    api.ok("organization_create", name="tochigi", title="栃木県")
    api.ok("group_create", name="bosai", title="防災")
    api.ok("package_create", **shelters(groups=[{"name": "bosai"}]))
    status, error = api.post("organization_create", name="sano")
    assert (status, error["name"]) == (409, ["Group name already exists in database"])
    assert api.get("organization_list")[1] == ["sano", "tochigi"]  # by title: 佐 < 栃
    assert api.get("organization_list", sort="package_count desc")[1][0] == "sano"
    full = api.get("organization_list", all_fields="true")[1]
    assert [(o["name"], o["package_count"]) for o in full] == [("sano", 1), ("tochigi", 0)]
    assert api.get("organization_list", limit="1", offset="1")[1] == ["tochigi"]
    org = api.get("organization_show", id="sano", include_datasets="true")[1]
    assert (org["title"], org["package_count"], org["is_organization"]) == ("佐野市", 1, True)
    assert [p["name"] for p in org["packages"]] == ["evacuation-sites"]
    assert api.get("organization_show", id="nope")[0] == 404
    assert api.get("group_list")[1] == ["bosai"]
    grp = api.get("group_show", id="bosai")[1]
    assert (grp["type"], grp["package_count"]) == ("group", 1)
    assert api.get("package_show", id="evacuation-sites")[1]["groups"][0]["name"] == "bosai"
    assert api.get("organization_list", sort="colour")[0] == 409


def test_tag_list_license_list_status_and_help(api: Api) -> None:
    api.ok("package_create", **shelters())
    assert api.get("tag_list")[1] == ["避難", "防災"]
    assert api.get("tag_list", query="避")[1] == ["避難"]
    licenses = {lic["id"]: lic for lic in api.get("license_list")[1]}
    assert licenses["jp-pdl-1.0"]["title"] == "公共データ利用規約 (第1.0版) PDL 1.0"
    assert {"cc-by-4.0", "cc-by", "cc-zero", "odc-odbl", "other-open", "notspecified"} <= set(
        licenses
    )
    status = api.get("status_show")[1]
    assert status["ckan_version"].startswith("2.")
    assert api.get("help_show", name="package_search")[1].startswith("Search datasets")
    assert api.get("help_show", name="nope")[0] == 404


def test_token_cli_creates_lists_and_revokes(tmp_path: Path) -> None:
    runner = CliRunner(env=engine_env(tmp_path))
    made = runner.invoke(main, ["token", "create", "--user", "editor", "--data-dir", str(tmp_path)])
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[0]
    assert token.startswith("cityos_")
    listed = runner.invoke(main, ["token", "list", "--data-dir", str(tmp_path)])
    assert "editor" in listed.stdout
    assert token not in listed.stdout  # only a prefix is shown
    with make_client(tmp_path) as c:
        r = c.post(
            "/api/3/action/organization_create",
            json={"name": "sano"},
            headers={"Authorization": token},
        )
        assert r.status_code == 200
        assert r.json()["result"]["users"] == [{"name": "editor", "capacity": "admin"}]
    assert "never" not in runner.invoke(main, ["token", "list", "--data-dir", str(tmp_path)]).stdout
    prefix = token[:12]
    revoked = runner.invoke(main, ["token", "revoke", prefix, "--data-dir", str(tmp_path)])
    assert revoked.exit_code == 0, revoked.output
    again = runner.invoke(main, ["token", "revoke", prefix, "--data-dir", str(tmp_path)])
    assert again.exit_code != 0
    with make_client(tmp_path) as c:
        r = c.post(
            "/api/3/action/group_create", json={"name": "x1"}, headers={"Authorization": token}
        )
        assert r.status_code == 403


def test_concurrent_resource_writes_to_one_dataset_lose_nothing(api: Api) -> None:
    import asyncio

    from cityos.catalog import registry
    from cityos.catalog.registry import Context

    api.ok("package_create", **shelters(resources=[]))
    catalog = api.c.app.catalog  # type: ignore[attr-defined]

    async def many() -> None:
        ctx = Context(catalog=catalog, system=True)
        await asyncio.gather(
            *(
                registry.call(
                    ctx,
                    "resource_create",
                    {"package_id": "evacuation-sites", "url": f"https://example.jp/{i}.csv"},
                )
                for i in range(12)
            )
        )

    api.c.portal.call(many)
    shown = api.ok("package_show", id="evacuation-sites")
    assert shown["num_resources"] == 12
    assert sorted(r["url"] for r in shown["resources"]) == sorted(
        f"https://example.jp/{i}.csv" for i in range(12)
    )
    assert [r["position"] for r in shown["resources"]] == list(range(12))
