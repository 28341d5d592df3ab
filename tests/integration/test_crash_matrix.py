"""The crash matrix: each way a driver fails is detected as the right kind, within a
bounded time, while another domain keeps serving, and nothing leaks."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from nooks.domain.host import Domain
from nooks.domain.spec import DriverSpec
from nooks.drivers.probe import ProbeInterface, ProbeKernel
from nooks.tools.crashes import MATRIX, Case, run_case, spec_for
from tests.conftest import Snapshot

# detection takes at most the case's deadline plus the time to notice it
SLACK_S = 3.0


class Bystander:
    """A second domain served from a thread for the whole test."""

    def __init__(self) -> None:
        self.domain = Domain(DriverSpec(target="nooks.drivers.probe:Probe",
                                        interface=ProbeInterface, name="bystander"))
        self.domain.wait_spare()  # started in the background: up before anything is counted
        self.served = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                assert self.domain.call("add", self.served, 1) == self.served + 1
                self.served += 1
        except BaseException as e:
            self.errors.append(e)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.domain.close()


@pytest.fixture(scope="module")
def bystander() -> Iterator[Bystander]:
    b = Bystander()
    yield b
    b.close()
    assert not b.errors


@pytest.mark.parametrize("case", MATRIX, ids=[c.method for c in MATRIX])
def test_failure_is_detected_classified_and_recovered(case: Case, bystander: Bystander) -> None:
    before = Snapshot.take()
    served_before = bystander.served
    t0 = time.monotonic()
    outcome = run_case(case)
    elapsed = time.monotonic() - t0

    report = outcome.report
    assert report is not None, "the failure was not detected"
    assert report.kind == case.kind, report
    assert report.call == case.method
    assert outcome.ok, report
    assert outcome.detect_ms / 1e3 < case.deadline + SLACK_S
    assert elapsed < case.deadline + SLACK_S + 5
    # the other domain kept serving all along
    assert not bystander.errors
    assert bystander.served > served_before
    # nothing leaked: processes, sockets, pidfds, arenas, tracked host objects
    assert before.leaks() == []
    assert ProbeKernel.live == []


def test_driver_traceback_is_carried_back() -> None:
    case = next(c for c in MATRIX if c.method == "crash_exception")
    outcome = run_case(case)
    assert outcome.report is not None
    tb = outcome.report.traceback or ""
    assert "Traceback" in tb and "crash_exception" in tb and "KeyError" in tb


def test_idle_death_is_noticed(no_leaks: Snapshot) -> None:
    """A driver killed while no call is in flight is noticed by the monitor."""
    import os
    import signal

    d = Domain(spec_for(MATRIX[0]))
    try:
        assert d.pid is not None
        os.kill(d.pid, signal.SIGKILL)
        report = d.wait_failed(timeout=5)
        assert report is not None
        assert report.kind.value == "crashed" and report.signal == "SIGKILL"
        assert report.call is None
        assert d.state == "failed"
    finally:
        d.close()


def test_kernel_arena_is_mapped_read_only_in_the_domain(no_leaks: Snapshot) -> None:
    d = Domain(spec_for(MATRIX[0]))
    try:
        with open(f"/proc/{d.pid}/maps") as f:
            maps = f.read().splitlines()
        kernel = [line for line in maps if "-kernel (deleted)" in line]
        domain = [line for line in maps if "-domain (deleted)" in line]
        assert len(kernel) == 1 and kernel[0].split()[1] == "r--s"
        assert len(domain) == 1 and domain[0].split()[1] == "rw-s"
    finally:
        d.close()
