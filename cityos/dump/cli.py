"""`cityos export` and `cityos import-dump`: move a whole installation through one file."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import click

from cityos.datadir import DATA_DIR
from cityos.dump.export import export_installation
from cityos.dump.format import DumpError
from cityos.dump.installation import Installation
from cityos.dump.pg_installation import PgInstallation
from cityos.dump.restore import import_dump


def _installation(data_dir: Path | None) -> Installation | PgInstallation:
    from cityos.cli import _settings

    settings = _settings(data_dir=data_dir)
    if settings.engine == "postgresql":
        return PgInstallation.of(settings)
    return Installation.of(settings)


def _where(inst: Installation | PgInstallation) -> str:
    return inst.label if isinstance(inst, PgInstallation) else str(inst.db.parent)


def _progress(verb: str) -> Callable[[int, str], None]:
    def report(n: int, section: str) -> None:
        click.echo(f"  {verb} {n} records ({section} ...)", err=True)

    return report


def _summary(counts: Counter[str]) -> str:
    total = sum(counts.values())
    parts = ", ".join(f"{n} {section}" for section, n in sorted(counts.items()))
    return f"{total} records" + (f" ({parts})" if parts else "")


@click.command("export")
@click.argument("file", type=click.Path(dir_okay=False, writable=True, path_type=Path))
@DATA_DIR
def export_command(file: Path, data_dir: Path | None) -> None:
    """Write the whole installation into FILE (.jsonl.gz); safe while the server runs.

    Works on SQLite and PostgreSQL (CITYOS_DATABASE_URL); the file loads into either.
    """
    inst = _installation(data_dir)
    try:
        counts = export_installation(inst, file, _progress("exported"))
    except DumpError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {file}: {exc}") from None
    click.echo(f"exported {_summary(counts)} into {file}", err=True)


@click.command("import-dump")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@DATA_DIR
def import_command(file: Path, data_dir: Path | None) -> None:
    """Load a dump written by `cityos export` into an empty installation (stop the server).

    The dump may come from either engine; on PostgreSQL the load is one transaction.
    """
    inst = _installation(data_dir)
    try:
        counts = asyncio.run(import_dump(file, inst, _progress("imported")))
    except DumpError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"import failed, nothing was imported: {exc}") from None
    click.echo(f"imported {_summary(counts)} into {_where(inst)}", err=True)
