"""Serving the published files: types, validators, 304, gzip, HEAD, and nothing outside."""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Router
from starlette.testclient import TestClient

from cityos.http.middleware.errors import ErrorMiddleware, not_found_app
from cityos.http.middleware.slashes import TrailingSlashMiddleware
from cityos.http.routing import grouped
from cityos.portal.publisher import atomic_write, write_files
from cityos.portal.static import CachePolicy, PublicFiles, PublicFront, cache_policy
from cityos.settings import SettingsError, from_env

PAGE = ("<!doctype html><title>佐野市 水位</title>" + "<p>秋山川 2.31 m</p>" * 200).encode()
JSON = b'{"gauges": [' + b",".join(b'{"level": 2.31}' for _ in range(200)) + b"]}"


def app_for(root: Path, how: str) -> Any:
    """Serve root as routes inside the app's middleware, or in front of the app."""
    files = PublicFiles(root, recheck=0)  # these tests change files behind the server's back
    if how == "front":
        return PublicFront(ErrorMiddleware(Router([], default=not_found_app())), files)
    table = [("GET", "/public", files.handle), ("GET", "/public/{path:path}", files.handle)]
    router = Router(grouped(table), default=not_found_app())
    return ErrorMiddleware(TrailingSlashMiddleware(router))


HOW = ["routes", "front"]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "public"
    write_files(
        root,
        {
            "index.html": PAGE,
            "en/index.html": b"<!doctype html><title>Sano</title>" + b"<p>water</p>" * 100,
            "water-levels.json": JSON,
            "assets/portal.css": b"body{margin:0}",
            "assets/logo.png": b"\x89PNG\r\n\x1a\n" + bytes(100),
        },
    )
    return root


@pytest.fixture(params=HOW)
def client(site: Path, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    with TestClient(app_for(site, request.param)) as c:
        yield c


@pytest.mark.parametrize(
    ("path", "ctype"),
    [
        ("/public/water-levels.json", "application/json; charset=utf-8"),
        ("/public/index.html", "text/html; charset=utf-8"),
        ("/public/assets/portal.css", "text/css; charset=utf-8"),
        ("/public/assets/logo.png", "image/png"),
    ],
)
def test_files_have_their_type_and_validators(client: TestClient, path: str, ctype: str) -> None:
    r = client.get(path, headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200
    assert r.headers["content-type"] == ctype
    assert r.headers["etag"].startswith('"')
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["last-modified"].endswith(" GMT")
    assert "content-encoding" not in r.headers


def test_pages_and_assets_get_their_cache_lifetimes(client: TestClient) -> None:
    page = client.get("/public/water-levels.json").headers["cache-control"]
    asset = client.get("/public/assets/portal.css").headers["cache-control"]
    assert page == "public, max-age=10, stale-while-revalidate=30, stale-if-error=86400"
    assert asset == "public, max-age=3600, stale-while-revalidate=86400, stale-if-error=604800"


@pytest.mark.parametrize("path", ["/public/", "/public", "/public/en/", "/public/en"])
def test_folders_serve_their_index(client: TestClient, site: Path, path: str) -> None:
    r = client.get(path, headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200
    want = "en/index.html" if "en" in path else "index.html"
    assert r.content == (site / want).read_bytes()
    assert r.headers["content-type"] == "text/html; charset=utf-8"


def test_etag_and_if_none_match_give_304(client: TestClient) -> None:
    first = client.get("/public/water-levels.json", headers={"Accept-Encoding": "identity"})
    tag = first.headers["etag"]
    again = client.get(
        "/public/water-levels.json",
        headers={"If-None-Match": tag, "Accept-Encoding": "identity"},
    )
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == tag
    assert again.headers["cache-control"] == first.headers["cache-control"]
    weak = client.get("/public/water-levels.json", headers={"If-None-Match": f'"x", W/{tag}'})
    assert weak.status_code == 304
    other = client.get("/public/water-levels.json", headers={"If-None-Match": '"other"'})
    assert other.status_code == 200


def test_a_replaced_file_gets_a_new_etag_and_body(client: TestClient, site: Path) -> None:
    tag = client.get("/public/water-levels.json").headers["etag"]
    write_files(site, {"water-levels.json": b'{"gauges": []}'})
    r = client.get("/public/water-levels.json", headers={"If-None-Match": tag})
    assert r.status_code == 200
    assert r.content == b'{"gauges": []}'
    assert r.headers["etag"] != tag


def test_if_modified_since(client: TestClient, site: Path) -> None:
    mtime = (site / "water-levels.json").stat().st_mtime
    same = formatdate(int(mtime), usegmt=True)
    later = formatdate(int(mtime) + 60, usegmt=True)
    earlier = formatdate(int(mtime) - 60, usegmt=True)
    url = "/public/water-levels.json"
    assert client.get(url).headers["last-modified"] == same
    assert client.get(url, headers={"If-Modified-Since": same}).status_code == 304
    assert client.get(url, headers={"If-Modified-Since": later}).status_code == 304
    assert client.get(url, headers={"If-Modified-Since": earlier}).status_code == 200
    assert client.get(url, headers={"If-Modified-Since": "yesterday"}).status_code == 200
    # If-None-Match wins over If-Modified-Since (RFC 9110 13.1.3)
    r = client.get(url, headers={"If-Modified-Since": later, "If-None-Match": '"other"'})
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("accept", "zipped"),
    [
        ("gzip, deflate, br", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("*", True),
        ("identity", False),
        ("gzip;q=0", False),
        ("*;q=0", False),
        ("br", False),
    ],
)
def test_gzip_sibling_is_sent_when_accepted(
    client: TestClient, site: Path, accept: str, zipped: bool
) -> None:
    r = client.get("/public/index.html", headers={"Accept-Encoding": accept})
    assert r.status_code == 200
    assert r.headers["vary"] == "Accept-Encoding"
    if zipped:
        assert r.headers["content-encoding"] == "gzip"
        assert int(r.headers["content-length"]) == (site / "index.html.gz").stat().st_size
        assert int(r.headers["content-length"]) < len(PAGE)
    else:
        assert "content-encoding" not in r.headers
        assert int(r.headers["content-length"]) == len(PAGE)
    assert r.content == PAGE  # httpx undoes the gzip


def test_304_for_the_gzip_representation(client: TestClient) -> None:
    tag = client.get("/public/index.html", headers={"Accept-Encoding": "gzip"}).headers["etag"]
    r = client.get("/public/index.html", headers={"Accept-Encoding": "gzip", "If-None-Match": tag})
    assert r.status_code == 304
    assert r.headers["vary"] == "Accept-Encoding"


def test_a_stale_gz_sibling_is_never_sent(client: TestClient, site: Path) -> None:
    atomic_write(site / "index.html.gz", gzip.compress(b"<p>an older page</p>"))
    r = client.get("/public/index.html", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in r.headers
    assert r.content == PAGE


def test_head_has_the_headers_and_no_body(client: TestClient) -> None:
    get = client.get("/public/water-levels.json", headers={"Accept-Encoding": "gzip"})
    head = client.head("/public/water-levels.json", headers={"Accept-Encoding": "gzip"})
    assert head.status_code == 200
    assert head.content == b""
    for name in ("etag", "content-length", "content-type", "content-encoding", "last-modified"):
        assert head.headers[name] == get.headers[name]


@pytest.mark.parametrize(
    "path",
    [
        "/public/../cityos.db",
        "/public/%2e%2e/cityos.db",
        "/public/assets/../../cityos.db",
        "/public/.published.json",
        "/public/.index.html.abc.tmp",
        "/public/assets/%5c..%5ccityos.db",
        "/public/outside.html",
        "/public/linked",
        "/public/missing.html",
        "/public/assets",
    ],
)
@pytest.mark.parametrize("how", HOW)
def test_nothing_outside_the_folder_is_served(site: Path, path: str, how: str) -> None:
    secret = site.parent / "cityos.db"
    secret.write_bytes(b"SQLite format 3\x00 secret")
    (site / ".index.html.abc.tmp").write_bytes(b"half")
    (site / "outside.html").symlink_to(secret)
    (site / "linked").symlink_to(site.parent, target_is_directory=True)
    with TestClient(app_for(site, how)) as c:
        r = c.get(path)
    assert r.status_code == 404, path
    assert b"secret" not in r.content
    assert r.headers["content-type"] == "application/problem+json"


def test_other_methods_are_refused(client: TestClient) -> None:
    r = client.post("/public/index.html", content=b"x")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET"


def test_a_deleted_file_is_gone(client: TestClient, site: Path) -> None:
    assert client.get("/public/assets/portal.css").status_code == 200
    (site / "assets" / "portal.css").unlink()
    assert client.get("/public/assets/portal.css").status_code == 404


def test_served_from_memory_until_the_file_changes(site: Path) -> None:
    files = PublicFiles(site, recheck=0)
    first = files.answer("water-levels.json", "GET", [])
    assert first is not None
    # same inode, size and mtime: the cached bytes are served (the publisher always renames)
    target = site / "water-levels.json"
    st = target.stat()
    with open(target, "r+b") as f:
        f.write(b"X")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = files.answer("water-levels.json", "GET", [])
    assert again is not None
    assert again[2] == JSON
    time.sleep(0.01)
    atomic_write(target, b"[]")  # what the publisher does: a new inode
    fresh = files.answer("water-levels.json", "GET", [])
    assert fresh is not None
    assert fresh[2] == b"[]"


def test_cache_policy_from_env() -> None:
    policy = cache_policy(
        from_env({"CITYOS_PORTAL_MAX_AGE": "5", "CITYOS_PORTAL_ASSET_MAX_AGE": ""})
    )
    assert policy == CachePolicy(max_age=5)
    assert policy.header(".json").startswith("public, max-age=5, ")
    with pytest.raises(SettingsError, match="CITYOS_PORTAL_STALE_IF_ERROR"):
        from_env({"CITYOS_PORTAL_STALE_IF_ERROR": "1d"})
    with pytest.raises(SettingsError, match="CITYOS_PORTAL_MAX_AGE"):
        from_env({"CITYOS_PORTAL_MAX_AGE": "-1"})


def test_a_change_shows_within_the_recheck_time_or_at_once_after_forget(site: Path) -> None:
    files = PublicFiles(site, recheck=0.2)
    first = files.answer("water-levels.json", "GET", [])
    assert first is not None
    assert first[2] == JSON
    atomic_write(site / "water-levels.json", b"[1]")
    # inside the recheck time the remembered version is still served ...
    cached = files.answer("water-levels.json", "GET", [])
    assert cached is not None
    assert cached[2] == JSON
    time.sleep(0.25)
    # ... and after it the new one
    later = files.answer("water-levels.json", "GET", [])
    assert later is not None
    assert later[2] == b"[1]"
    atomic_write(site / "water-levels.json", b"[2]")
    files.forget()  # what the publisher calls after writing
    now = files.answer("water-levels.json", "GET", [])
    assert now is not None
    assert now[2] == b"[2]"
