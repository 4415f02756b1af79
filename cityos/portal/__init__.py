"""Resident-facing pages: water levels, shelters and alerts as static HTML with JSON twins."""

from cityos.portal.site import build_site

__all__ = ["build_site"]
