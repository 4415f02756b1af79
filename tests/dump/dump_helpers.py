"""What the dump tests share: the CLI, an app on a data dir, a sample entity, a free port,
an installation with something in every section, and what users see of one.

Every helper takes the PostgreSQL URL of the installation (None: SQLite in the data dir).
"""

from __future__ import annotations

import gzip
import re
import socket
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner, Result
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.cli import main
from cityos.settings import Settings

E = "/ngsi-ld/v1/entities"
API = "/api/3/action/"
PASSWORD = "a long enough passphrase 2026"
CITY2 = {"NGSILD-Tenant": "city2"}


def cli(*args: str, stdin: str | None = None, url: str | None = None) -> Result:
    """Run `cityos ARGS` in-process (on the PostgreSQL database at url, if given)."""
    env = {"CITYOS_DATABASE_URL": url} if url else None
    return CliRunner().invoke(main, list(args), input=stdin, env=env)


def make_client(data_dir: Path, url: str | None = None, **overrides: Any) -> TestClient:
    """Return a client of a real app on data_dir (auth off unless overridden, no remote
    contexts)."""
    settings = Settings(data_dir=data_dir, remote_contexts=False, database_url=url)
    return TestClient(create_app(settings.with_overrides(**overrides)))


def sensor(n: int = 1, level: float = 1.5) -> dict[str, Any]:
    """Return a water-level sensor entity near Sano's Akiyama river."""
    return {
        "id": f"urn:ngsi-ld:WaterLevelObserved:akiyama-{n}",
        "type": "WaterLevelObserved",
        "waterLevel": {"type": "Property", "value": level, "observedAt": "2026-11-25T10:00:00Z"},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [139.5783 + n * 0.001, 36.3144]},
        },
    }


def create_bins(client: TestClient, count: int, batch: int) -> None:
    """Create Bin entities 0..count-1 (fill = their number), batch of them per request."""
    for start in range(0, count, batch):
        body = [
            {"id": f"urn:ngsi-ld:Bin:{n}", "type": "Bin", "fill": {"type": "Property", "value": n}}
            for n in range(start, min(count, start + batch))
        ]
        r = client.post("/ngsi-ld/v1/entityOperations/create", json=body)
        assert r.status_code == 201, r.text


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def raw_lines(path: Path) -> list[bytes]:
    """Return a dump's lines as written."""
    with gzip.open(path, "rb") as f:
        return f.read().splitlines()


def write_lines(path: Path, rows: list[bytes]) -> Path:
    """Write rows as a gzipped dump (to damage one on purpose); return path."""
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(rows) + b"\n")
    return path


def dump_lines(path: Path) -> list[bytes]:
    """Return a dump's lines, the header without its creation time."""
    lines = raw_lines(path)
    header = orjson.loads(lines[0])
    del header["created"]
    return [orjson.dumps(header), *lines[1:]]


def sections(path: Path) -> dict[str, int]:
    """Return how many records each section of a dump holds."""
    counts: dict[str, int] = {}
    for line in dump_lines(path)[1:]:
        section = orjson.loads(line)["section"]
        counts[section] = counts.get(section, 0) + 1
    return counts


def observe(data_dir: Path, url: str | None = None) -> dict[str, Any]:
    """Return what users see of an installation through its public APIs."""
    with make_client(data_dir, url) as c:
        seen: dict[str, Any] = {
            "sensors": c.get(E, params={"type": "WaterLevelObserved", "limit": 1000}).json(),
            "city2": c.get(E, params={"type": "WaterLevelObserved"}, headers=CITY2).json(),
            "shelters": c.get(E, params={"type": "EvacuationShelter", "limit": 1000}).json(),
            "history": c.get(
                "/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:WaterLevelObserved:akiyama-1",
                params={"attrs": "waterLevel"},
            ).json(),
            "packages": c.get(API + "package_list").json()["result"],
            "organizations": c.get(API + "organization_list").json()["result"],
            "search": c.get(API + "package_search", params={"q": "避難"}).json()["result"],
        }
        resources = [
            r["id"]
            for name in seen["packages"]
            for r in c.get(API + "package_show", params={"id": name}).json()["result"]["resources"]
        ]
        seen["datastore"] = {
            rid: [
                c.get(API + "datastore_search", params={"resource_id": rid, **q}).json()
                for q in ({}, {"q": "佐野"})
            ]
            for rid in resources
        }
        seen["live"] = c.get(API + "package_show", params={"id": "sano-river-levels"}).json()
    return seen


def files(root: Path) -> dict[str, bytes]:
    """Return the uploaded files of the installation in data dir root, by path."""
    base = root / "catalog" / "files"
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*") if p.is_file()}


def build(src: Path, url: str | None = None) -> str:
    """Make an installation with something in every section; return its API key."""
    demo = cli("demo", "--no-serve", "--data-dir", str(src), url=url)
    assert demo.exit_code == 0, demo.output
    made = cli(
        "keys", "create", "--name", "gateway", "--role", "app", "--tenant", "",
        "--data-dir", str(src), url=url,
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    key = re.search(r"cok_\S+", made.output)
    assert key is not None
    user = cli(
        "users", "create", "hanako", "--role", "operator", "--password-stdin",
        "--data-dir", str(src), stdin=PASSWORD + "\n", url=url,
    )  # fmt: skip
    assert user.exit_code == 0, user.output
    with make_client(src, url) as c:
        for n in (1, 2):
            assert c.post(E, json=sensor(n)).status_code == 201
        assert c.post(E, json=sensor(7, level=0.4), headers=CITY2).status_code == 201
        # nobody listens there: the notification stays in the outbox
        body = {
            "type": "Subscription",
            "entities": [{"type": "WaterLevelObserved"}],
            "notification": {"endpoint": {"uri": f"http://127.0.0.1:{free_port()}/notify"}},
        }
        assert c.post("/ngsi-ld/v1/subscriptions", json=body).status_code == 201
        patch = {"waterLevel": {"type": "Property", "value": 2.9}}
        r = c.patch(E + "/urn:ngsi-ld:WaterLevelObserved:akiyama-1/attrs", json=patch)
        assert r.status_code == 204, r.text
    return key.group(0)
