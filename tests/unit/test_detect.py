"""Failure classification: how a dead or misbehaving domain is reported."""

from __future__ import annotations

import signal

import pytest

from nooks.domain import detect
from nooks.errors import (
    DomainCrashed,
    DomainFailed,
    DomainHung,
    DomainMisbehaved,
    DomainResource,
    FailureKind,
    FailureReport,
)


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGABRT, signal.SIGKILL, signal.SIGBUS])
def test_killed_by_an_ordinary_signal_is_crashed(sig: signal.Signals) -> None:
    r = detect.classify_exit(-int(sig), driver="drv", pid=42, call="read")
    assert r.kind is FailureKind.CRASHED
    assert r.signal == sig.name
    assert sig.name in r.detail
    assert r.exit_status is None
    assert (r.driver, r.pid, r.call) == ("drv", 42, "read")


@pytest.mark.parametrize("sig", [signal.SIGXCPU, signal.SIGXFSZ])
def test_resource_signals_are_resource(sig: signal.Signals) -> None:
    r = detect.classify_exit(-int(sig))
    assert r.kind is FailureKind.RESOURCE
    assert r.signal == sig.name


def test_sigsys_is_misbehaved() -> None:
    r = detect.classify_exit(-int(signal.SIGSYS))
    assert r.kind is FailureKind.MISBEHAVED
    assert r.signal == "SIGSYS"
    assert "SIGSYS" in r.detail


def test_unknown_signal_number_is_named_by_number() -> None:
    r = detect.classify_exit(-200)
    assert r.kind is FailureKind.CRASHED
    assert r.signal == "signal 200"


def test_clean_exit_without_report_is_crashed() -> None:
    r = detect.classify_exit(0, driver="drv")
    assert r.kind is FailureKind.CRASHED
    assert r.detail == "exited with status 0"
    assert r.exit_status == 0
    assert r.signal is None


def test_exit_failure_reported_is_misbehaved() -> None:
    r = detect.classify_exit(detect.EXIT_FAILURE_REPORTED)
    assert r.kind is FailureKind.MISBEHAVED
    assert "report was lost" in r.detail


@pytest.mark.parametrize("status", [1, 2, 255])
def test_other_exit_statuses_are_crashed(status: int) -> None:
    r = detect.classify_exit(status)
    assert r.kind is FailureKind.CRASHED
    assert r.detail == f"exited with status {status}"
    assert r.exit_status == status


def test_exit_resource_is_resource() -> None:
    r = detect.classify_exit(detect.EXIT_RESOURCE, driver="drv", pid=7, call="alloc")
    assert r.kind is FailureKind.RESOURCE
    assert r.exit_status == detect.EXIT_RESOURCE
    assert (r.driver, r.pid, r.call) == ("drv", 7, "alloc")


@pytest.mark.parametrize("kind", list(FailureKind))
def test_from_domain_keeps_a_known_kind(kind: FailureKind) -> None:
    r = detect.from_domain(kind.value, "it broke", "Traceback ...", driver="drv", pid=3,
                           call="ioctl")
    assert r.kind is kind
    assert r.detail == "it broke"
    assert r.traceback == "Traceback ..."
    assert (r.driver, r.pid, r.call) == ("drv", 3, "ioctl")


def test_from_domain_with_empty_traceback_has_none() -> None:
    r = detect.from_domain("crashed", "x", "")
    assert r.traceback is None


def test_from_domain_unknown_kind_is_misbehaved_and_says_so() -> None:
    r = detect.from_domain("exploded", "original detail", "tb")
    assert r.kind is FailureKind.MISBEHAVED
    assert "exploded" in r.detail
    assert "original detail" in r.detail


def test_host_verdict_keeps_what_it_is_given() -> None:
    r = detect.host_verdict(FailureKind.HUNG, "too slow", driver="d", pid=1, call="c",
                            traceback="tb")
    assert r == FailureReport(kind=FailureKind.HUNG, detail="too slow", driver="d", pid=1,
                              call="c", traceback="tb")


@pytest.mark.parametrize(("kind", "cls"), [
    (FailureKind.CRASHED, DomainCrashed),
    (FailureKind.HUNG, DomainHung),
    (FailureKind.MISBEHAVED, DomainMisbehaved),
    (FailureKind.RESOURCE, DomainResource),
])
def test_domain_failed_of_maps_each_kind_to_its_subclass(
        kind: FailureKind, cls: type[DomainFailed]) -> None:
    report = FailureReport(kind=kind, detail="d", driver="drv", call="op")
    exc = DomainFailed.of(report)
    assert type(exc) is cls
    assert exc.kind is kind
    assert exc.report is report
    assert str(exc) == f"drv {kind.value} during op: d"


def test_every_kind_has_a_subclass() -> None:
    for kind in FailureKind:
        assert DomainFailed.of(FailureReport(kind=kind, detail="")).kind is kind
