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
from cityos.dump.restore import import_dump


def _installation(data_dir: Path | None) -> Installation:
    from cityos.cli import _settings
    from cityos.settings import SettingsError

    settings = _settings(data_dir=data_dir)
    try:
        return Installation.of(settings)
    except SettingsError as exc:  # PostgreSQL: the dump reads and writes SQLite files so far
        raise click.ClickException(str(exc)) from None


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
    """Write the whole installation into FILE (.jsonl.gz); safe while the server runs."""
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
    """Load a dump written by `cityos export` into an empty installation (stop the server)."""
    inst = _installation(data_dir)
    try:
        counts = asyncio.run(import_dump(file, inst, _progress("imported")))
    except DumpError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"import failed, nothing was imported: {exc}") from None
    click.echo(f"imported {_summary(counts)} into {inst.db.parent}", err=True)
