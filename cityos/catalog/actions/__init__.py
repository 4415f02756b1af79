"""Every CKAN action, registered on import (see catalog/registry.py)."""

from cityos.catalog.actions import datastore, live, packages, site  # noqa: F401
