"""The crash matrix: every way a driver can fail, and how nooks must classify it.

Each case names a method of the probe driver that fails in one way, the kind
of failure the host must report, and a pattern its report must match. The
matrix is run by the test suite and shown by ``nooks demo``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from nooks.domain.host import Domain
from nooks.domain.spec import DriverSpec, Limits
from nooks.drivers.probe import ProbeInterface, ProbeKernel, ProbeKernelInterface
from nooks.errors import DomainFailed, FailureKind, FailureReport


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    kind: FailureKind
    pattern: str  # matched against "detail | signal | traceback"
    deadline: float = 1.0  # per-call deadline for the probe


MATRIX: tuple[Case, ...] = (
    Case("segfault (ctypes)", "crash_segv", FailureKind.CRASHED, r"SIGSEGV"),
    Case("abort", "crash_abort", FailureKind.CRASHED, r"SIGABRT"),
    Case("os._exit(0)", "crash_exit", FailureKind.CRASHED, r"exited with status 0"),
    Case("unhandled exception", "crash_exception", FailureKind.MISBEHAVED,
         r"KeyError.*lost its key"),
    Case("endless loop", "crash_hang", FailureKind.HUNG, r"deadline"),
    Case("memory blow-up", "crash_memory", FailureKind.RESOURCE, r"MemoryError", deadline=10.0),
    Case("write into kernel arena", "crash_kernel_arena", FailureKind.CRASHED, r"SIGSEGV"),
    Case("kernel call, bad argument", "crash_bad_kernel_call", FailureKind.MISBEHAVED,
         r"counter_add: Expected `int`, got `str` - at `n`"),
    Case("kernel call, foreign object", "crash_foreign_object", FailureKind.MISBEHAVED,
         r"counter id 987654 is not held"),
    Case("result of the wrong type", "wrong_type", FailureKind.MISBEHAVED,
         r"wrong_type returned a bad result: Expected `int`, got `str`"),
    Case("garbage on the channel", "crash_garbage", FailureKind.MISBEHAVED,
         r"garbage on the channel"),
    Case("syscall outside seccomp list", "crash_syscall", FailureKind.MISBEHAVED, r"SIGSYS"),
)

MEMORY_LIMIT = 256 << 20


def spec_for(case: Case) -> DriverSpec:
    """The probe driver, limited the way the matrix needs."""
    limits = Limits(address_space=MEMORY_LIMIT,
                    seccomp=() if case.method == "crash_syscall" else None)
    return DriverSpec(target="nooks.drivers.probe:Probe", interface=ProbeInterface,
                      kernel=ProbeKernelInterface, kernel_impl=ProbeKernel,
                      name=f"probe-{case.method}", deadline=case.deadline, limits=limits)


@dataclass(frozen=True)
class Outcome:
    case: Case
    report: FailureReport | None
    detect_ms: float
    restart_ms: float
    works_after: bool

    @property
    def ok(self) -> bool:
        r = self.report
        if r is None or r.kind != self.case.kind or not self.works_after:
            return False
        text = " | ".join(x for x in (r.detail, r.signal or "", r.traceback or "") if x)
        return re.search(self.case.pattern, text) is not None and r.call == self.case.method


def run_case(case: Case, domain: Domain | None = None) -> Outcome:
    """Make the probe fail as ``case`` says; report how it was seen and if it came back."""
    own = domain is None
    d = domain or Domain(spec_for(case))
    try:
        d.wait_spare()
        report = None
        t0 = time.monotonic()
        try:
            d.call(case.method)
        except DomainFailed as e:
            report = e.report
        detect_ms = (time.monotonic() - t0) * 1e3
        r = d.restart()
        works = d.call("add", 20, 22) == 42
        return Outcome(case, report, detect_ms, r.constructed_ms, works)
    finally:
        if own:
            d.close()
