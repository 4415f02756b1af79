"""Settings come from CITYOS_* variables; unsafe or unknown values refuse to start."""

from __future__ import annotations

from pathlib import Path

import pytest

from cityos.settings import SettingsError, from_env


def test_defaults() -> None:
    s = from_env({})
    assert (s.host, s.port, s.data_dir) == ("127.0.0.1", 8000, Path("cityos-data"))
    assert s.sqlite_path == Path("cityos-data/cityos.db")
    assert s.auth == "off"


def test_environment_overrides(tmp_path: Path) -> None:
    s = from_env(
        {
            "CITYOS_HOST": "0.0.0.0",
            "CITYOS_PORT": "9000",
            "CITYOS_DATA_DIR": str(tmp_path),
            "CITYOS_CONTEXT_DIR": str(tmp_path / "ctx"),
            "CITYOS_AUTH": "off",
            "CITYOS_REMOTE_CONTEXTS": "off",
            "CITYOS_MAX_BODY": "1000",
        }
    )
    assert (s.host, s.port, s.max_body) == ("0.0.0.0", 9000, 1000)
    assert s.sqlite_path == tmp_path / "cityos.db"
    assert s.context_dir == tmp_path / "ctx"
    assert s.remote_contexts is False
    assert from_env({"CITYOS_DATABASE_URL": "sqlite:////srv/city.db"}).sqlite_path == Path(
        "/srv/city.db"
    )


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CITYOS_PORT": "eighty"}, "CITYOS_PORT"),
        ({"CITYOS_PORT": "70000"}, "CITYOS_PORT"),
        ({"CITYOS_AUTH": "maybe"}, "CITYOS_AUTH"),
        ({"CITYOS_DATABASE_URL": "mysql://localhost/city"}, "CITYOS_DATABASE_URL"),
        ({"CITYOS_SQLITE_SYNC": "SOMETIMES"}, "CITYOS_SQLITE_SYNC"),
    ],
)
def test_bad_values_are_refused(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        from_env(env)


def test_a_postgresql_url_names_no_sqlite_file() -> None:
    settings = from_env({"CITYOS_DATABASE_URL": "postgresql://cityos:secret@db:5432/city"})
    assert settings.engine == "postgresql"
    assert settings.database_label == "postgresql://db:5432/city"  # no password shown
    with pytest.raises(SettingsError, match="works on a SQLite installation only so far"):
        _ = settings.sqlite_path
