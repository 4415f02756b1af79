"""Choose the bus transport from CITYOS_BUS_URL."""

from __future__ import annotations

from urllib.parse import urlsplit

from cityos.bus.base import DEFAULT_NAMESPACE, Bus, redact
from cityos.bus.memory import InProcessBus
from cityos.bus.nats_bus import NatsBus
from cityos.bus.redis_bus import RedisBus


def check_bus_url(url: str) -> str:
    """Return url's scheme (redis, rediss or nats), or raise ValueError naming CITYOS_BUS_URL."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("redis", "rediss", "nats"):
        raise ValueError(
            f"CITYOS_BUS_URL: unsupported bus {redact(url)!r}; use redis://host:6379/0, "
            "rediss://host:6380/0 or nats://host:4222 (leave it unset for a single worker)"
        )
    return scheme


def bus_from_url(url: str | None, namespace: str = DEFAULT_NAMESPACE) -> Bus:
    """Return an unstarted bus for url: None or "" is in-process, else Redis or NATS."""
    if url is None or not url.strip():
        return InProcessBus(namespace)
    url = url.strip()
    if check_bus_url(url) == "nats":
        return NatsBus(url, namespace)
    return RedisBus(url, namespace)
