"""Dumps of a whole installation: `cityos export` writes one, `cityos import-dump` loads one."""

from cityos.dump.export import export_installation
from cityos.dump.format import FORMAT, VERSION, DumpError, DumpReader, DumpWriter
from cityos.dump.installation import Installation
from cityos.dump.pg_installation import PgInstallation
from cityos.dump.restore import import_dump

__all__ = [
    "FORMAT",
    "VERSION",
    "DumpError",
    "DumpReader",
    "DumpWriter",
    "Installation",
    "PgInstallation",
    "export_installation",
    "import_dump",
]
