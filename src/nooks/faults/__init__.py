"""Software-implemented fault injection (SWIFI) for drivers: mutate code as it is loaded."""

from nooks.faults.coverage import LineRecorder
from nooks.faults.loader import install, last_site, uninstall
from nooks.faults.mutate import (
    FAULT_TYPES,
    Fault,
    NoSite,
    Site,
    mutate,
    mutate_at,
    mutated_source,
    sites,
)

__all__ = [
    "FAULT_TYPES",
    "Fault",
    "LineRecorder",
    "NoSite",
    "Site",
    "install",
    "last_site",
    "mutate",
    "mutate_at",
    "mutated_source",
    "sites",
    "uninstall",
]
