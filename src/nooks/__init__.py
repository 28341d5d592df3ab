"""nooks: driver isolation and recovery for user-space Linux drivers.

The public API, re-exported from the modules that own it. The names are loaded
when first used: a domain process, which imports ``nooks.domain.child``, does
not pay for the host's side of the API.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nooks.domain.host import Deferred, Domain, Restart
    from nooks.domain.native import NativeDomain
    from nooks.domain.spec import DriverSpec, Limits
    from nooks.domain.tracker import ObjectId, ObjectTracker
    from nooks.errors import (
        Closed,
        DomainCrashed,
        DomainFailed,
        DomainHung,
        DomainMisbehaved,
        DomainResource,
        FailureKind,
        FailureReport,
        InterfaceError,
        NooksError,
        RecoveryFailed,
    )
    from nooks.wrappers import Interface, Ordinary, Tracked, declare

_HOMES = {
    "Deferred": "nooks.domain.host", "Domain": "nooks.domain.host",
    "Restart": "nooks.domain.host", "NativeDomain": "nooks.domain.native",
    "DriverSpec": "nooks.domain.spec", "Limits": "nooks.domain.spec",
    "ObjectId": "nooks.domain.tracker", "ObjectTracker": "nooks.domain.tracker",
    "Interface": "nooks.wrappers", "Ordinary": "nooks.wrappers",
    "Tracked": "nooks.wrappers", "declare": "nooks.wrappers",
    **{name: "nooks.errors" for name in (
        "Closed", "DomainCrashed", "DomainFailed", "DomainHung", "DomainMisbehaved",
        "DomainResource", "FailureKind", "FailureReport", "InterfaceError", "NooksError",
        "RecoveryFailed")},
}

__all__ = [
    "Closed", "Deferred", "Domain", "DomainCrashed", "DomainFailed", "DomainHung",
    "DomainMisbehaved", "DomainResource", "DriverSpec", "FailureKind", "FailureReport",
    "Interface", "InterfaceError", "Limits", "NativeDomain", "NooksError", "ObjectId",
    "ObjectTracker", "Ordinary", "RecoveryFailed", "Restart", "Tracked", "declare",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'nooks' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
