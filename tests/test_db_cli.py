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


def test_the_operator_commands_work_on_postgresql(pg_database: str, tmp_path: Path) -> None:
    from conftest import pg_schema_url

    env = {"CITYOS_DATABASE_URL": pg_schema_url(pg_database)}
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    made = runner.invoke(main, ["keys", "create", "--name", "clerk", "--role", "steward",
                                "--tenant", "", *data], env=env)  # fmt: skip
    assert made.exit_code == 0, made.output
    listed = runner.invoke(main, ["keys", "list", *data], env=env)
    assert "clerk" in listed.output
    user = runner.invoke(
        main,
        ["users", "create", "tanaka", "--role", "admin", "--password-stdin", *data],
        env=env,
        input="akiyama-river-2019\n",
    )
    assert user.exit_code == 0, user.output
    verified = runner.invoke(main, ["audit", "verify", *data], env=env)
    assert verified.exit_code == 0, verified.output
    assert verified.output.startswith("audit log intact: 2 records")  # key.create, user.create
    # nothing of it went into a SQLite file
    assert not (tmp_path / "cityos.db").exists()
    # the dump reads PostgreSQL too (tests/dump/test_dump_engines.py has the round trips)
    dumped = runner.invoke(main, ["export", str(tmp_path / "x.gz"), *data], env=env)
    assert dumped.exit_code == 0, dumped.output
    assert "1 key" in dumped.output
    assert "1 user" in dumped.output


def test_serve_says_plainly_when_the_database_is_newer_or_unreachable(
    pg_database: str, tmp_path: Path
) -> None:
    import asyncio
    import os
    import subprocess

    from conftest import CITYOS, admin_sql, free_port, pg_schema_url

    url = pg_schema_url(pg_database)
    assert CliRunner().invoke(main, ["db", "upgrade", "--database-url", url]).exit_code == 0
    asyncio.run(admin_sql(url, "INSERT INTO schema_migrations(version) VALUES (9999)"))
    for database, said in (
        (url, "from a newer cityos"),
        ("postgresql://x@127.0.0.1:1/x", "cannot reach the database"),
    ):
        done = subprocess.run(
            [CITYOS, "serve", "--port", str(free_port()), "--data-dir", str(tmp_path)],
            env={**os.environ, "CITYOS_DATABASE_URL": database},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1
        assert said in done.stderr
        assert "Traceback" not in done.stderr
