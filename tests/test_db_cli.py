"""`cityos db upgrade`, and what the server says when pointed at PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from cityos.cli import main
from cityos.storage import pg_schema


def test_db_upgrade_applies_migrations_once(pg_database: str) -> None:
    from conftest import pg_schema_url

    url = pg_schema_url(pg_database)
    runner = CliRunner()
    first = runner.invoke(main, ["db", "upgrade", "--database-url", url])
    assert first.exit_code == 0, first.output
    shipped = ", ".join(str(m.version) for m in pg_schema.migrations())
    assert first.output == f"applied migrations {shipped}\n"
    again = runner.invoke(main, ["db", "upgrade"], env={"CITYOS_DATABASE_URL": url})
    assert (again.exit_code, again.output) == (0, "the schema is up to date\n")


def test_db_upgrade_says_what_is_wrong(tmp_path: Path) -> None:
    runner = CliRunner()
    down = runner.invoke(main, ["db", "upgrade", "--database-url", "postgresql://x@127.0.0.1:1/x"])
    assert down.exit_code == 1
    assert "cannot reach the database" in down.output
    sqlite = runner.invoke(main, ["db", "upgrade"], env={"CITYOS_DATABASE_URL": None})
    assert (sqlite.exit_code, sqlite.output.split(":")[0]) == (0, "SQLite")
    odd = runner.invoke(main, ["db", "upgrade", "--database-url", "mysql://x/y"])
    assert odd.exit_code == 2
    assert "unsupported scheme" in odd.output


def test_serve_refuses_postgresql_until_every_store_is_ported(tmp_path: Path) -> None:
    r = CliRunner().invoke(
        main,
        ["serve", "--data-dir", str(tmp_path)],
        env={"CITYOS_DATABASE_URL": "postgresql://postgres@127.0.0.1/test"},
    )
    assert r.exit_code == 2
    assert "holds NGSI-LD entities only so far" in r.output
    assert "cityos db upgrade" in r.output
