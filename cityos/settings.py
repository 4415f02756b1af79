"""Configuration, read once from the environment and the command line."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from cityos.auth.oidc import OidcConfig, OidcConfigError

DEFAULT_MAX_BODY = 8 * 1024 * 1024
DEFAULT_CATALOG_TITLE = "オープンデータカタログ"
#: anonymous requests per client address, and requests per API key (ratelimit.Limit format)
DEFAULT_RATE_LIMIT = "600/min:100"
DEFAULT_KEY_RATE_LIMIT = "6000/min:1000"


class SettingsError(ValueError):
    """A setting has a value cityos refuses to start with."""


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = field(default_factory=lambda: Path("cityos-data"))
    database_url: str | None = None
    auth: str = "off"
    context_dir: Path | None = None
    remote_contexts: bool = True
    max_body: int = DEFAULT_MAX_BODY
    public_url: str | None = None
    sqlite_sync: str = "NORMAL"
    query_threads: int = 2
    history_retention: int | None = None  # seconds of attribute history kept; None: forever
    mqtt_url: str | None = None  # mqtt://host:port of the broker devices publish to; None: no MQTT
    mqtt_group: str = "cityos"  # shared-subscription group, so several workers split the load
    device_check: float = 60.0  # seconds between checks for silent devices
    live_interval: float = 5.0  # seconds between rebuilds of one live catalog dataset
    catalog_title: str = DEFAULT_CATALOG_TITLE  # shown on catalog pages, DCAT, status_show
    # the resident portal: a map tile URL template (None: the offline map only) and the
    # Cache-Control lifetimes of published pages (max-age, stale-while-revalidate,
    # stale-if-error) and of assets (max-age), in seconds
    portal_tile_url: str | None = None
    portal_cache: tuple[int, int, int, int] = (10, 30, 86400, 3600)
    rate_limit: str = DEFAULT_RATE_LIMIT
    key_rate_limit: str = DEFAULT_KEY_RATE_LIMIT
    cors_origins: tuple[str, ...] = ()  # origins whose scripts may call the APIs; `*` any
    # entity types anyone may read, and the tenants where they may (comma-separated; None:
    # the policy's defaults, the public safety types in the default tenant)
    public_types: str | None = None
    public_tenants: str | None = None
    oidc: OidcConfig | None = None  # the city's identity provider (CITYOS_OIDC_*); None: off
    # several workers: the bus between them (None: one worker), the namespace of this
    # installation's names on it, how many worker processes `cityos serve` starts, and how
    # long a worker holds notifications it took before another may take them over (seconds)
    bus_url: str | None = None
    bus_namespace: str = "cityos"
    workers: int = 1
    notify_lease: float = 30.0

    @property
    def loopback(self) -> bool:
        """Return True when the server listens only on this machine (127.0.0.0/8, ::1)."""
        return is_loopback(self.host)

    def exposure_error(self) -> str | None:
        """Return why these settings must not serve (auth off beyond loopback), or None."""
        if self.auth == "off" and not self.loopback:
            return (
                f"CITYOS_AUTH=off is only allowed on a loopback address, not {self.host}: "
                "anyone on the network could write; set CITYOS_AUTH=on (and create keys with "
                "`cityos keys create`) or listen on 127.0.0.1"
            )
        return None

    def workers_error(self) -> str | None:
        """Return why these settings cannot run `workers` processes, or None."""
        if self.workers < 1:
            return f"CITYOS_WORKERS / --workers must be at least 1, got {self.workers}"
        if self.workers == 1:
            return None
        if self.engine != "postgresql":
            return (
                f"{self.workers} workers need PostgreSQL (CITYOS_DATABASE_URL=postgresql://...): "
                "SQLite has one writer, so it serves one worker (docs/production.md)"
            )
        if self.bus_url is None:
            return (
                f"{self.workers} workers need a bus to tell each other of changes: set "
                "CITYOS_BUS_URL=redis://127.0.0.1:6379/0 or nats://127.0.0.1:4222 (docs/bus.md)"
            )
        return None

    @property
    def mqtt(self) -> tuple[str, int, str | None, str | None] | None:
        """Return (host, port, username, password) of CITYOS_MQTT_URL, or None when unset."""
        if self.mqtt_url is None:
            return None
        return parse_mqtt_url(self.mqtt_url)

    @property
    def sqlite_path(self) -> Path:
        """Return the SQLite database file this configuration uses."""
        url = self.database_url
        if url is None:
            return self.data_dir / "cityos.db"
        if url.startswith("sqlite:///"):
            return Path(url[len("sqlite:///") :])
        if url.startswith("sqlite://"):
            return Path(url[len("sqlite://") :])
        if self.engine == "postgresql":
            raise SettingsError(
                "CITYOS_DATABASE_URL names PostgreSQL: this command works on a SQLite "
                "installation only so far (docs/postgres.md)"
            )
        raise SettingsError(
            f"CITYOS_DATABASE_URL: unsupported scheme in {url!r}; "
            "use sqlite:///path or postgresql://user@host/db"
        )

    @property
    def database_label(self) -> str:
        """Return where the data is, for people: the SQLite file or the PostgreSQL URL."""
        if self.engine == "postgresql":
            parts = urlsplit(self.database_url or "")
            host = parts.hostname or ""
            port = f":{parts.port}" if parts.port else ""
            return f"postgresql://{host}{port}{parts.path}"  # no user or password
        return str(self.sqlite_path)

    @property
    def engine(self) -> str:
        """Return the storage engine the database URL names: "sqlite" or "postgresql"."""
        url = self.database_url or ""
        if url.startswith(("postgresql://", "postgres://")):
            return "postgresql"
        return "sqlite"

    @property
    def base_url(self) -> str:
        """Return the URL clients reach this server at (used for hosted @contexts)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.host}:{self.port}"

    def with_overrides(self, **values: Any) -> Settings:
        """Return a copy with the given non-None values applied."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


def is_loopback(host: str) -> bool:
    """Return True for localhost and addresses in 127.0.0.0/8 or ::1."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def _rate_limit(env: dict[str, str], name: str, default: str) -> str:
    from cityos.auth.ratelimit import Limit

    raw = env.get(name, "").strip() or default
    try:
        Limit.parse(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None
    return raw


_TYPE_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*|[a-z][a-z0-9+.\-]*:[^\s,]+")
_TENANT_NAME: Final = re.compile(r"-|[A-Za-z0-9_.:\-]{1,128}")


def _names(env: dict[str, str], name: str, pattern: re.Pattern[str]) -> str | None:
    raw = env.get(name)
    if raw is None:
        return None
    for item in (part.strip() for part in raw.split(",")):
        if item and not pattern.fullmatch(item):
            raise SettingsError(f"{name}: {item!r} is not a valid name")
    return raw


def _oidc(env: dict[str, str]) -> OidcConfig | None:
    try:
        return OidcConfig.from_env(env)
    except OidcConfigError as exc:
        raise SettingsError(str(exc)) from None


def _origins(env: dict[str, str]) -> tuple[str, ...]:
    raw = env.get("CITYOS_CORS_ORIGINS", "")
    out = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in out:
        parts = urlsplit(origin)
        if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc):
            raise SettingsError(
                f"CITYOS_CORS_ORIGINS: {origin!r} is not an origin (https://app.example.org or *)"
            )
    return out


def parse_mqtt_url(url: str) -> tuple[str, int, str | None, str | None]:
    """Split mqtt://[user[:password]@]host[:port] into its parts, refusing anything else."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname or parts.path not in {"", "/"}:
        raise SettingsError(
            f"CITYOS_MQTT_URL must look like mqtt://host:1883 or mqtt://user:password@host:1883, "
            f"got {url!r}"
        )
    try:
        port = parts.port or 1883
    except ValueError:
        raise SettingsError(f"CITYOS_MQTT_URL: bad port in {url!r}") from None
    return parts.hostname, port, parts.username, parts.password


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


def _seconds(env: dict[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value < 0:
        raise SettingsError(f"{name} must be a whole number of seconds >= 0, got {value}")
    return value


def _bus_url(env: dict[str, str]) -> str | None:
    from cityos.bus.url import check_bus_url

    raw = env.get("CITYOS_BUS_URL", "").strip()
    if not raw:
        return None
    try:
        check_bus_url(raw)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return raw


def _bus_namespace(env: dict[str, str]) -> str:
    raw = env.get("CITYOS_BUS_NAMESPACE", "").strip() or "cityos"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", raw):
        raise SettingsError(
            f"CITYOS_BUS_NAMESPACE must be one word of A-Z a-z 0-9 _ -, got {raw!r}"
        )
    return raw


def _retention(env: dict[str, str]) -> int | None:
    raw = env.get("CITYOS_HISTORY_RETENTION", "").strip()
    if not raw:
        return None
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    if raw[-1:] not in units or not raw[:-1].isdigit() or int(raw[:-1]) == 0:
        raise SettingsError(
            f"CITYOS_HISTORY_RETENTION must be a positive number of d, h, m or s "
            f"(e.g. 400d, 12h), got {raw!r}"
        )
    return int(raw[:-1]) * units[raw[-1]]


def from_env(env: dict[str, str] | None = None) -> Settings:
    """Read settings from CITYOS_* environment variables."""
    e = dict(os.environ if env is None else env)
    auth = e.get("CITYOS_AUTH", "off").strip().lower()
    if auth not in {"off", "on"}:
        raise SettingsError(f"CITYOS_AUTH must be 'off' or 'on', got {auth!r}")
    sync = e.get("CITYOS_SQLITE_SYNC", "NORMAL").upper()
    if sync not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise SettingsError(f"CITYOS_SQLITE_SYNC must be OFF, NORMAL, FULL or EXTRA, got {sync!r}")
    port = _int(e, "CITYOS_PORT", 8000)
    if not 0 <= port <= 65535:
        raise SettingsError(f"CITYOS_PORT must be 0-65535, got {port}")
    ctx_dir = e.get("CITYOS_CONTEXT_DIR")
    s = Settings(
        host=e.get("CITYOS_HOST", "127.0.0.1"),
        port=port,
        data_dir=Path(e.get("CITYOS_DATA_DIR", "cityos-data")),
        database_url=e.get("CITYOS_DATABASE_URL") or None,
        auth=auth,
        context_dir=Path(ctx_dir) if ctx_dir else None,
        remote_contexts=e.get("CITYOS_REMOTE_CONTEXTS", "on").lower() not in {"off", "0", "no"},
        max_body=_int(e, "CITYOS_MAX_BODY", DEFAULT_MAX_BODY),
        public_url=e.get("CITYOS_PUBLIC_URL") or None,
        sqlite_sync=sync,
        query_threads=max(1, _int(e, "CITYOS_QUERY_THREADS", 2)),
        history_retention=_retention(e),
        mqtt_url=e.get("CITYOS_MQTT_URL") or None,
        mqtt_group=e.get("CITYOS_MQTT_GROUP") or "cityos",
        device_check=float(max(1, _int(e, "CITYOS_DEVICE_CHECK", 60))),
        live_interval=float(max(1, _int(e, "CITYOS_LIVE_INTERVAL", 5))),
        catalog_title=e.get("CITYOS_CATALOG_TITLE") or DEFAULT_CATALOG_TITLE,
        portal_tile_url=e.get("CITYOS_PORTAL_TILE_URL") or None,
        portal_cache=(
            _seconds(e, "CITYOS_PORTAL_MAX_AGE", 10),
            _seconds(e, "CITYOS_PORTAL_STALE_WHILE_REVALIDATE", 30),
            _seconds(e, "CITYOS_PORTAL_STALE_IF_ERROR", 86400),
            _seconds(e, "CITYOS_PORTAL_ASSET_MAX_AGE", 3600),
        ),
        rate_limit=_rate_limit(e, "CITYOS_RATE_LIMIT", DEFAULT_RATE_LIMIT),
        key_rate_limit=_rate_limit(e, "CITYOS_KEY_RATE_LIMIT", DEFAULT_KEY_RATE_LIMIT),
        cors_origins=_origins(e),
        public_types=_names(e, "CITYOS_PUBLIC_TYPES", _TYPE_NAME),
        public_tenants=_names(e, "CITYOS_PUBLIC_TENANTS", _TENANT_NAME),
        oidc=_oidc(e),
        bus_url=_bus_url(e),
        bus_namespace=_bus_namespace(e),
        workers=_int(e, "CITYOS_WORKERS", 1),
        notify_lease=float(_int(e, "CITYOS_NOTIFY_LEASE", 30)),
    )
    if s.notify_lease < 1:
        raise SettingsError(
            f"CITYOS_NOTIFY_LEASE must be at least 1 second, got {s.notify_lease:g}"
        )
    if error := s.workers_error():
        raise SettingsError(error)
    _ = s.mqtt  # validate the MQTT URL early
    if s.engine == "sqlite":
        _ = s.sqlite_path  # validate the URL scheme early
    return s
