"""One exception hierarchy for nooks.

Errors say whose fault they are:

* ``Closed``: *your* code closed or stopped the thing you used.
* ``InterfaceError``: the *host* broke an interface (a bad declaration, a call
  with arguments the declaration does not allow). It never fails a driver.
* ``DomainFailed`` and its kinds: the *driver* failed; the report says how.
  ``DomainDown``: it had failed before the call, which was never sent.
* ``Unavailable``: nobody's fault yet, the driver cannot take the call *now*
  (``Restarting``: it is being replaced; the call was not sent): try again.
* ``Poisoned``: this request fails the driver every time it is tried; it
  fails alone (``report`` is the last failure).
* ``BadAnswer``: the driver answered, but what it said cannot be passed on.
* ``RecoveryFailed``: a driver could not be brought back (``report`` is the
  last attempt's failure, ``__cause__`` the exception).
* ``LimitExceeded``: a driver asked the host to hold more than a bound allows.
* ``CheckerError``: a tool the host runs on a driver's work (a filesystem
  checker) gave no verdict; nobody is blamed.

A driver class answers its clients with subclasses of these (the web class's
503 is an ``Unavailable``, its 500 a ``Poisoned``).
"""

from __future__ import annotations

import enum

import msgspec


class FailureKind(enum.StrEnum):
    """How a driver failed."""

    CRASHED = "crashed"  # the domain exited or was killed by a signal
    HUNG = "hung"  # a call passed its deadline
    MISBEHAVED = "misbehaved"  # wrapper violation, garbage, unexpected exception
    RESOURCE = "resource"  # a resource limit was hit


class FailureReport(msgspec.Struct, frozen=True, kw_only=True):
    """What the host knows about one driver failure.

    ``call`` names the call in flight when the failure was detected, if any;
    ``traceback`` is the driver's own traceback, as text, when it had one.
    """

    kind: FailureKind
    detail: str
    driver: str = ""
    pid: int = 0
    call: str | None = None
    signal: str | None = None
    exit_status: int | None = None
    traceback: str | None = None
    exception: str | None = None  # the driver raised this (a type name)

    def __str__(self) -> str:
        where = f" during {self.call}" if self.call else ""
        return f"{self.driver or 'driver'} {self.kind.value}{where}: {self.detail}"


class NooksError(Exception):
    """Base of every error nooks raises."""


class Closed(NooksError):
    """The domain, channel or host was closed by its owner."""


class InterfaceError(NooksError):
    """The host side broke an interface: a bad declaration or a bad call."""


class DomainFailed(NooksError):
    """The driver in a domain failed; ``report`` says how."""

    kind: FailureKind = FailureKind.CRASHED

    def __init__(self, report: FailureReport) -> None:
        super().__init__(str(report))
        self.report = report

    @staticmethod
    def of(report: FailureReport) -> DomainFailed:
        """The exception class that matches ``report.kind``."""
        cls = _BY_KIND[report.kind]
        return cls(report)


class DomainCrashed(DomainFailed):
    kind = FailureKind.CRASHED


class DomainHung(DomainFailed):
    kind = FailureKind.HUNG


class DomainMisbehaved(DomainFailed):
    kind = FailureKind.MISBEHAVED


class DomainResource(DomainFailed):
    kind = FailureKind.RESOURCE


_BY_KIND: dict[FailureKind, type[DomainFailed]] = {
    FailureKind.CRASHED: DomainCrashed,
    FailureKind.HUNG: DomainHung,
    FailureKind.MISBEHAVED: DomainMisbehaved,
    FailureKind.RESOURCE: DomainResource,
}


class DomainDown(NooksError):
    """A call found the driver already failed: it was never sent (``report`` says why)."""

    def __init__(self, report: FailureReport) -> None:
        super().__init__(str(report))
        self.report = report


class Unavailable(NooksError):
    """The driver cannot take the call now (it is being recovered, or a bound on
    waiting was reached); the call may be made again later."""


class Restarting(Unavailable):
    """The driver is being replaced after a failure: the call was not sent; it can be
    made again once the recovery is over."""


class Poisoned(NooksError):
    """The request failed the driver every time it was tried (``report``: the last
    failure); it fails alone, the driver goes on serving others."""

    def __init__(self, message: str, report: FailureReport | None = None) -> None:
        super().__init__(message)
        self.report = report


class BadAnswer(NooksError):
    """The driver answered, but its answer cannot be passed on (it would break the
    protocol the host speaks to its clients)."""


class CheckerError(NooksError):
    """A checker the host runs on a driver's work could not be run, or gave no
    verdict: nothing is judged."""


class NotTaken(NooksError):
    """A fault injected into a driver did not take effect (nothing was changed)."""


class LimitExceeded(NooksError):
    """A driver asked the host to hold more than a bound allows (posted writes,
    queued kernel calls, objects, message sizes): a *resource* failure of the driver.
    Raised by host-side kernel-call implementations."""


class OutOfTasks(NooksError):
    """Inside a domain: the driver failed because the domain's task limit refused a
    fork (it answered EAGAIN); the domain fails with it, as a *resource* failure."""


class RecoveryFailed(NooksError):
    """A failed driver could not be restarted or re-initialised; ``report`` is the
    failure of the last attempt, when there was one (raised ``from`` that failure)."""

    def __init__(self, message: str, report: FailureReport | None = None) -> None:
        super().__init__(message)
        self.report = report
