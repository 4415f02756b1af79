"""What the dump tests share: the CLI, an app on a data dir, a sample entity, a free port."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.cli import main
from cityos.settings import Settings


def cli(*args: str, stdin: str | None = None) -> Result:
    """Run `cityos ARGS` in-process; return click's result."""
    return CliRunner().invoke(main, list(args), input=stdin)


def make_client(data_dir: Path) -> TestClient:
    """Return a client of a real app on data_dir (auth off, no remote contexts)."""
    return TestClient(create_app(Settings(data_dir=data_dir, remote_contexts=False)))


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


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
