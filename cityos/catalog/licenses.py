"""The licenses datasets may carry (license_list), with Japan's PDL 1.0 first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class License:
    id: str
    title: str
    url: str
    od_conformance: str  # "approved" for open licenses, else "not reviewed"

    @property
    def is_open(self) -> bool:
        return self.od_conformance == "approved"

    def as_dict(self) -> dict[str, Any]:
        """Return the license_list entry (CKAN's keys)."""
        return {
            "id": self.id,
            "title": self.title,
            "url": self.url,
            "status": "active",
            "maintainer": "",
            "family": "",
            "domain_content": False,
            "domain_data": False,
            "domain_software": False,
            "od_conformance": self.od_conformance,
            "osd_conformance": "not reviewed",
            "is_generic": self.id in ("other-open", "other-pd", "other-at", "other-nc"),
            "is_okd_compliant": self.is_open,
            "is_osi_compliant": False,
        }


LICENSES: Final = (
    License(
        "jp-pdl-1.0",
        "公共データ利用規約 (第1.0版) PDL 1.0",
        "https://www.digital.go.jp/resources/open_data/public_data_license_v1.0",
        "approved",
    ),
    License(
        "cc-by-4.0",
        "Creative Commons Attribution 4.0 (CC BY 4.0)",
        "https://creativecommons.org/licenses/by/4.0/",
        "approved",
    ),
    License(
        "cc-by",
        "Creative Commons Attribution",
        "http://www.opendefinition.org/licenses/cc-by",
        "approved",
    ),
    License(
        "cc-by-sa",
        "Creative Commons Attribution Share-Alike",
        "http://www.opendefinition.org/licenses/cc-by-sa",
        "approved",
    ),
    License(
        "cc-zero",
        "Creative Commons CCZero (CC0)",
        "http://www.opendefinition.org/licenses/cc-zero",
        "approved",
    ),
    License(
        "odc-by",
        "Open Data Commons Attribution License",
        "http://www.opendefinition.org/licenses/odc-by",
        "approved",
    ),
    License(
        "odc-odbl",
        "Open Data Commons Open Database License (ODbL)",
        "http://www.opendefinition.org/licenses/odc-odbl",
        "approved",
    ),
    License(
        "odc-pddl",
        "Open Data Commons Public Domain Dedication and License (PDDL)",
        "http://www.opendefinition.org/licenses/odc-pddl",
        "approved",
    ),
    License("other-open", "Other (Open)", "", "approved"),
    License("other-pd", "Other (Public Domain)", "", "approved"),
    License("other-at", "Other (Attribution)", "", "approved"),
    License(
        "cc-nc",
        "Creative Commons Non-Commercial (Any)",
        "http://creativecommons.org/licenses/by-nc/2.0/",
        "not reviewed",
    ),
    License("other-nc", "Other (Non-Commercial)", "", "not reviewed"),
    License("other-closed", "Other (Not Open)", "", "not reviewed"),
    License("notspecified", "License not specified", "", "not reviewed"),
)
BY_ID: Final = {lic.id: lic for lic in LICENSES}


def fields(license_id: str | None) -> dict[str, Any]:
    """Return a dataset's license_title, license_url (when known) and isopen."""
    lic = BY_ID.get(license_id or "")
    if lic is None:
        # CKAN shows an unknown id as its own title and calls it not open
        return (
            {"license_title": license_id or None, "isopen": False}
            if license_id
            else {"isopen": False}
        )
    out: dict[str, Any] = {"license_title": lic.title, "isopen": lic.is_open}
    if lic.url:
        out["license_url"] = lic.url
    return out
