"""Failure detection policy: how a dead or misbehaving domain is classified.

Pure functions of what the host observed; no I/O. The rules:

* the domain's own ``Failure`` message, when it sent one before exiting, names
  the kind (an unexpected exception is *misbehaved*, MemoryError *resource*);
* otherwise a signal decides: SIGXCPU/SIGXFSZ are *resource*, SIGSYS (a
  syscall outside the seccomp allow-list) is *misbehaved*, any other is *crashed*;
* an exit without a report is *crashed*, with its status;
* a reason the host itself recorded (a deadline, a bad reply) wins over the exit
  it caused by killing the domain.
"""

from __future__ import annotations

import signal

from nooks.errors import FailureKind, FailureReport

RESOURCE_SIGNALS = frozenset({signal.SIGXCPU, signal.SIGXFSZ})
MISBEHAVED_SIGNALS = frozenset({signal.SIGSYS})

# exit statuses of the domain runtime (nooks.domain.child)
EXIT_FAILURE_REPORTED = 70
EXIT_RESOURCE = 71


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def classify_exit(returncode: int, *, driver: str = "", pid: int = 0,
                  call: str | None = None) -> FailureReport:
    """The report for a domain that exited with ``returncode`` (Popen's convention)."""
    if returncode < 0:
        sig = -returncode
        name = signal_name(sig)
        kind = FailureKind.CRASHED
        if sig in RESOURCE_SIGNALS:
            kind = FailureKind.RESOURCE
        elif sig in MISBEHAVED_SIGNALS:
            kind = FailureKind.MISBEHAVED
        return FailureReport(kind=kind, detail=f"killed by {name}", driver=driver, pid=pid,
                             call=call, signal=name)
    if returncode == EXIT_FAILURE_REPORTED:
        return FailureReport(kind=FailureKind.MISBEHAVED,
                             detail="failed (it reported why, but the report was lost)",
                             driver=driver, pid=pid, call=call, exit_status=returncode)
    if returncode == EXIT_RESOURCE:
        return FailureReport(kind=FailureKind.RESOURCE, detail="ran out of memory",
                             driver=driver, pid=pid, call=call, exit_status=returncode)
    return FailureReport(kind=FailureKind.CRASHED, detail=f"exited with status {returncode}",
                         driver=driver, pid=pid, call=call, exit_status=returncode)


def from_domain(kind: str, detail: str, traceback: str, *, driver: str = "", pid: int = 0,
                call: str | None = None, exception: str = "") -> FailureReport:
    """The report for a domain that described its own failure."""
    try:
        k = FailureKind(kind)
    except ValueError:
        k = FailureKind.MISBEHAVED
        detail = f"unknown failure kind {kind!r}: {detail}"
    return FailureReport(kind=k, detail=detail, driver=driver, pid=pid, call=call,
                         traceback=traceback or None,
                         exception=exception or None)


def host_verdict(kind: FailureKind, detail: str, *, driver: str = "", pid: int = 0,
                 call: str | None = None, traceback: str | None = None) -> FailureReport:
    """The report for a failure the host found itself (deadline, bad reply, garbage)."""
    return FailureReport(kind=kind, detail=detail, driver=driver, pid=pid, call=call,
                         traceback=traceback)
