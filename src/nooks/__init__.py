"""nooks: driver isolation and recovery for user-space Linux drivers.

The public API, re-exported from the modules that own it.
"""

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

__all__ = [
    "Closed",
    "Deferred",
    "Domain",
    "DomainCrashed",
    "DomainFailed",
    "DomainHung",
    "DomainMisbehaved",
    "DomainResource",
    "DriverSpec",
    "FailureKind",
    "FailureReport",
    "Interface",
    "InterfaceError",
    "Limits",
    "NativeDomain",
    "NooksError",
    "ObjectId",
    "ObjectTracker",
    "Ordinary",
    "RecoveryFailed",
    "Restart",
    "Tracked",
    "declare",
]
