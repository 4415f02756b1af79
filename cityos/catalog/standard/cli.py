"""`cityos import FILE --dataset KIND`: a standard-dataset CSV into the catalog.

The file is checked first, before the database is opened: a file with errors changes
nothing (unless --partial, which imports the rows without errors). The report goes to
standard output, Japanese first and English second; the exit status is 0 when imported (or,
with --dry-run, importable), 1 when refused, 2 for a usage error.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cityos.broker.errors import NgsiError
from cityos.catalog.errors import CkanError
from cityos.catalog.standard.report import Outcome, render
from cityos.catalog.standard.schemas import KINDS
from cityos.catalog.standard.validate import Validation, validate
from cityos.datadir import DATA_DIR
from cityos.settings import Settings, SettingsError, from_env

if TYPE_CHECKING:
    from cityos.catalog.standard.importer import ImportOptions, ImportResult

#: Sano City, the importer's default publisher (importer.SANO)
DEFAULT_ORGANIZATION = "sano-city"


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--dataset",
    "kind",
    required=True,
    type=click.Choice(list(KINDS)),
    help="Which standard dataset the file is (自治体標準オープンデータセット)",
)
@click.option("--partial", is_flag=True, help="Import the rows without errors, skip the others")
@click.option(
    "--organization",
    default=DEFAULT_ORGANIZATION,
    show_default=True,
    help="Publishing organization (created when missing)",
)
@DATA_DIR
@click.option("--dry-run", is_flag=True, help="Only check the file and print the report")
def import_command(
    file: Path,
    kind: str,
    partial: bool,
    organization: str,
    data_dir: Path | None,
    dry_run: bool,
) -> None:
    """Import a standard municipal dataset file into the catalog."""
    # the importer pulls in the broker: loaded here, not on every `cityos` command
    from cityos.catalog.standard.importer import ImportOptions, check_organization

    try:
        check_organization(organization)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--organization") from None
    settings = _settings(data_dir)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {file}: {exc.strerror}", param_hint="FILE") from None
    v = validate(data, KINDS[kind])
    ok = v.importable(partial=partial)
    if dry_run or not ok:
        _echo(render(v, Outcome(0, refused=not ok, dry_run=dry_run)))
        raise SystemExit(0 if ok else 1)
    options = ImportOptions(organization=organization, source_name=file.name)
    try:
        result = asyncio.run(_import(settings, v, options))
    except (CkanError, NgsiError) as exc:  # the catalog or broker refused a write: exit 1
        raise click.ClickException(f"取り込み失敗 / import failed: {exc}") from None
    _echo(render(v, Outcome(result.rows, refused=False)))
    _echo(_written(result))


def _settings(data_dir: Path | None) -> Settings:
    from cityos.storage.sqlite import SchemaError, check_schema

    try:
        settings = from_env().with_overrides(data_dir=data_dir)
        # PostgreSQL checks its schema when the store starts
        if settings.engine == "sqlite" and settings.sqlite_path.exists():
            check_schema(settings.sqlite_path)
    except (SettingsError, SchemaError) as exc:
        raise click.UsageError(str(exc)) from None
    # an import talks to no devices: no MQTT subscriber, whatever the environment says
    return dataclasses.replace(settings, mqtt_url=None)


async def _import(settings: Settings, v: Validation, options: ImportOptions) -> ImportResult:
    """Run the app's life (storage, catalog, portal publisher) around the import."""
    from cityos.app import create_app
    from cityos.catalog.standard.importer import import_dataset

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app: Any = create_app(settings)
    async with app.lifespan(app):
        return await import_dataset(app.catalog, v, options)


def _written(result: ImportResult) -> list[str]:
    ds = result.dataset
    lines = [f"データセット / dataset: {ds['name']} 「{ds['title']}」 ({ds['id']})"]
    for res in ds.get("resources", []):
        active = " + datastore" if res.get("datastore_active") else ""
        lines.append(f"  {res.get('format')}: {res.get('url')}{active}")
    if result.entities or result.entities_removed:
        lines.append(
            f"NGSI-LD: {result.entities}件を登録、{result.entities_removed}件を削除 / "
            f"{result.entities} entities written, {result.entities_removed} removed"
        )
    return lines


def _echo(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)
