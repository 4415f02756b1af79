"""`cityos audit`: verify the audit log's hash chain, export it as JSON lines, show its head."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, TypeVar

import click

from cityos.auth.audit import AuditError, Head, canonical
from cityos.datadir import DATA_DIR, with_storage
from cityos.storage import engines
from cityos.storage.base import Storage
from cityos.storage.engines import Audit

T = TypeVar("T")


def _run(data_dir: Path | None, job: Callable[[Audit], Awaitable[T]]) -> T:
    """Run job on the audit log of the data dir."""

    async def run(store: Storage) -> T:
        audit = engines.audit(store)
        await audit.setup()
        return await job(audit)

    return with_storage(data_dir, run)


@click.group("audit")
def audit_group() -> None:
    """Verify, export and anchor the tamper-evident audit log."""


@audit_group.command("verify")
@click.option(
    "--expect-head",
    type=(int, str),
    default=None,
    metavar="SEQ HASH",
    help="A head printed earlier by `cityos audit head`; it must still be in the log",
)
@DATA_DIR
def verify(expect_head: tuple[int, str] | None, data_dir: Path | None) -> None:
    """Check every record's hash and link; exit 1 and say where the chain breaks."""
    expect = None if expect_head is None else Head(expect_head[0], expect_head[1].lower())
    try:
        verdict = _run(data_dir, lambda audit: audit.verify(expect))
    except AuditError as exc:
        raise click.UsageError(str(exc)) from None
    if verdict.ok:
        click.echo(verdict.message)
        return
    click.echo(f"audit log damaged: {verdict.message}")
    sys.exit(1)


@audit_group.command("export")
@click.option(
    "--since",
    type=click.IntRange(min=0),
    default=0,
    metavar="SEQ",
    help="Only records after SEQ (the last one you already have)",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default=Path("-"),
    help="File to write the JSON lines to; - (the default) is standard output",
)
@DATA_DIR
def export(since: int, output: Path, data_dir: Path | None) -> None:
    """Write records as JSON lines, one canonical object per record, in seq order."""

    async def job(audit: Audit) -> tuple[int, int, int]:
        if str(output) == "-":
            return await _write(audit, since, sys.stdout)
        with output.open("w", encoding="utf-8", newline="\n") as out:
            return await _write(audit, since, out)

    try:
        count, first, last = _run(data_dir, job)
    except AuditError as exc:
        raise click.ClickException(str(exc)) from None
    span = f" ({first}..{last})" if count else ""
    click.echo(f"exported {count} records{span}", err=True)


async def _write(audit: Audit, since: int, out: IO[str]) -> tuple[int, int, int]:
    """Write every record after since to out; return how many, the first and last seq."""
    count, first, last = 0, 0, since
    while page := await audit.records(after_seq=last):
        for record in page:
            out.write(canonical(record.as_dict()).decode() + "\n")
        count += len(page)
        first = first or page[0].seq
        last = page[-1].seq
    out.flush()
    return count, first, last


@audit_group.command("head")
@DATA_DIR
def head(data_dir: Path | None) -> None:
    """Print the latest record's seq and hash; keep them elsewhere to check later."""
    click.echo(str(_run(data_dir, lambda audit: audit.head())))
