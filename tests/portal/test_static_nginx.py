"""The documented nginx configuration (docs/nginx-portal.conf), run by a real nginx.

nginx must answer the published files with the same types, cache lifetimes, gzip and 304s
as cityos's own /public/ (cityos/portal/static.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest
from conftest import free_port

from cityos.portal.publisher import write_files
from cityos.portal.static import PublicFiles

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "docs" / "nginx-portal.conf"
PLACEHOLDER = "root /var/lib/cityos;"
PAGE = ("<!doctype html><title>佐野市</title>" + "<p>秋山川 2.31 m</p>" * 200).encode()
SITE = {
    "index.html": PAGE,
    "en/index.html": b"<!doctype html><title>Sano</title>" + b"<p>water</p>" * 100,
    "water-levels.json": b'{"gauges": [' + b",".join([b'{"level": 2.31}'] * 200) + b"]}",
    "assets/portal.css": b"body{margin:0}" * 50,
    "assets/portal.js": b"void 0;",
    "assets/logo.png": b"\x89PNG\r\n\x1a\n" + bytes(100),
}
WRAPPER = """
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        include {snippet};
    }}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        reason = "no nginx binary (Debian package nginx)"
        if os.environ.get("CITYOS_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " and CITYOS_REQUIRE_SERVICES=1")
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Run nginx with the documented snippet on a published site; yield (base URL, public)."""
    binary = nginx_binary()
    tmp = tmp_path_factory.mktemp("nginx")
    data_dir, prefix = tmp / "data", tmp / "prefix"
    prefix.mkdir()
    write_files(data_dir / "public", SITE)
    text = CONF.read_text()
    assert text.count(PLACEHOLDER) == 1, "the doc's config names the data dir once"
    snippet = prefix / "portal.conf"
    snippet.write_text(text.replace(PLACEHOLDER, f"root {data_dir};"))
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(WRAPPER.format(prefix=prefix, port=port, snippet=snippet))
    proc = subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            pytest.fail(f"nginx exited with {proc.returncode}: {proc.communicate()[1].decode()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "nginx did not listen within 10 s"
            time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", data_dir / "public"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


COMPARED = (
    "content-length",
    "content-type",
    "cache-control",
    "content-encoding",
    "vary",
    "x-content-type-options",
)


@pytest.mark.parametrize("path", [*SITE, "", "en/"])
@pytest.mark.parametrize("accept", ["gzip", "identity"])
def test_nginx_answers_like_cityos(nginx: tuple[str, Path], path: str, accept: str) -> None:
    base, public = nginx
    r = httpx.get(f"{base}/public/{path}", headers={"Accept-Encoding": accept})
    assert r.status_code == 200
    ours = PublicFiles(public).answer(path, "GET", [(b"accept-encoding", accept.encode())])
    assert ours is not None
    _, headers, _ = ours
    mine = {k.decode(): v.decode() for k, v in headers}
    for name in COMPARED:
        assert r.headers.get(name) == mine.get(name), (name, path, accept)
    want = path + "index.html" if path.endswith("/") or not path else path
    assert r.content == SITE[want]
    assert r.headers["last-modified"] == mine["last-modified"]


def test_nginx_revalidates_with_304(nginx: tuple[str, Path]) -> None:
    base, public = nginx
    url = f"{base}/public/water-levels.json"
    first = httpx.get(url, headers={"Accept-Encoding": "gzip"})
    tag = first.headers["etag"]
    again = httpx.get(url, headers={"Accept-Encoding": "gzip", "If-None-Match": tag})
    assert again.status_code == 304
    assert again.headers["cache-control"] == first.headers["cache-control"]
    later = formatdate((public / "water-levels.json").stat().st_mtime + 60, usegmt=True)
    assert httpx.get(url, headers={"If-Modified-Since": later}).status_code == 304
    earlier = formatdate((public / "water-levels.json").stat().st_mtime - 60, usegmt=True)
    assert httpx.get(url, headers={"If-Modified-Since": earlier}).status_code == 200


@pytest.mark.parametrize("path", [".published.json", "../data/public/index.html", "linked/x"])
def test_nginx_serves_nothing_hidden_or_linked(nginx: tuple[str, Path], path: str) -> None:
    base, public = nginx
    outside = public.parent / "secret.txt"
    outside.write_text("secret")
    link = public / "linked"
    if not link.exists():
        link.mkdir()
        (link / "x").symlink_to(outside)
    r = httpx.get(f"{base}/public/{path}")
    assert r.status_code in (403, 404), r.status_code
    assert "secret" not in r.text


def test_the_docs_show_the_tested_config() -> None:
    config = CONF.read_text()
    docs = [p.name for p in (ROOT / "docs").glob("*.md") if config in p.read_text()]
    assert docs, "paste docs/nginx-portal.conf verbatim into the portal docs"
