"""Domains against real child processes: calls, bulk data, kernel calls, tracking,
concurrency, deferred calls, injected faults, restarts and native mode."""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from nooks.domain.config import FAULTS
from nooks.domain.host import Domain
from nooks.domain.native import NativeDomain
from nooks.domain.spec import DriverSpec, Limits
from nooks.drivers.probe import ProbeError, ProbeInterface, ProbeKernel, ProbeKernelInterface
from nooks.errors import DomainDown, DomainFailed, DomainMisbehaved, FailureKind, InterfaceError
from tests.conftest import Snapshot

pytestmark = pytest.mark.timeout(120)


def probe(**kw: Any) -> DriverSpec:
    kw.setdefault("deadline", 2.0)
    return DriverSpec(target="nooks.drivers.probe:Probe", interface=ProbeInterface,
                      kernel=ProbeKernelInterface, kernel_impl=ProbeKernel, name="probe", **kw)


@pytest.fixture
def domain(no_leaks: Snapshot) -> Iterator[Domain]:
    d = Domain(probe())
    yield d
    d.close()
    assert ProbeKernel.live == []


def test_calls_and_ordinary_errors(domain: Domain) -> None:
    assert domain.call("add", 2, 3) == 5
    assert domain.call("add", a=2, b=40) == 42
    with pytest.raises(ProbeError) as e:
        domain.call("fail_with", 28)
    assert e.value.errno == 28
    assert domain.state == "live"  # an ordinary error is not a failure


def test_ordinary_error_with_a_bad_value_is_misbehaviour(domain: Domain) -> None:
    with pytest.raises(DomainMisbehaved, match=r"raised a bad ProbeError.*>= 1"):
        domain.call("fail_with", 0)


def test_host_errors_do_not_fail_the_driver(domain: Domain) -> None:
    with pytest.raises(InterfaceError, match="no method"):
        domain.call("nope")
    with pytest.raises(InterfaceError, match="add"):
        domain.call("add", 1)
    with pytest.raises(InterfaceError, match=r"Expected `int`, got `str`"):
        domain.call("add", "one", 2)
    with pytest.raises(InterfaceError, match="message limit"):
        domain.call("echo", bytes(5 << 20))
    assert domain.call("add", 1, 2) == 3
    assert domain.state == "live"


SIZES = [0, 1, 4096, 16 << 10, (16 << 10) + 1, 128 << 10, 1 << 20, (1 << 20) + 1, 3 << 20]


@pytest.mark.parametrize("size", SIZES)
def test_bulk_data_arrives_intact_both_ways(domain: Domain, size: int) -> None:
    rng = random.Random(size)
    data = rng.randbytes(size)
    back = domain.call("echo", data)
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    assert domain.call("sink", data) == size


def test_arena_slots_are_returned(domain: Domain) -> None:
    inc = domain.incarnation
    assert inc.karena is not None and inc.darena is not None
    for _ in range(3 * inc.karena.slots.count):
        domain.call("echo", bytes(64 << 10))
    assert inc.karena.slots.in_use == 0 and inc.darena.slots.in_use == 0


def test_kernel_calls_hand_out_tracked_objects_released_on_death(domain: Domain) -> None:
    assert domain.call("counter", 5) == 7
    assert domain.call("counter", 10) == 12
    assert [c.value for c in ProbeKernel.live] == [7, 12]
    held = list(ProbeKernel.live)
    assert domain.incarnation.tracker.counts() == {"counter": 2}
    with pytest.raises(DomainFailed):
        domain.call("crash_segv")
    domain.restart()
    assert ProbeKernel.live == [] and all(c.released for c in held)
    assert domain.call("counter", 1) == 3


def test_many_threads_many_calls_in_flight(domain: Domain) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(t: int) -> None:
        try:
            start.wait(timeout=10)
            for i in range(300):
                assert domain.call("add", i, t) == i + t
                if i % 50 == 0:
                    assert domain.call("echo", bytes([t]) * (64 << 10)) == bytes([t]) * (64 << 10)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors
    assert domain.calls >= 8 * 300


def test_threaded_domain_serves_concurrent_kernel_calls(no_leaks: Snapshot) -> None:
    with Domain(probe(threads=4)) as d:
        results: list[int] = []
        lock = threading.Lock()

        def worker(t: int) -> None:
            for _ in range(20):
                v = d.call("counter", t)
                with lock:
                    results.append(v - t)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
        assert results == [2] * 80
    assert ProbeKernel.live == []


def test_deferred_calls_are_batched_and_settled(domain: Domain) -> None:
    calls_before = domain.calls
    results = [domain.defer("add", i, 1) for i in range(100)]
    bad = domain.defer("fail_with", 5)
    domain.flush()
    assert [r.result() for r in results] == [i + 1 for i in range(100)]
    with pytest.raises(ProbeError):
        bad.result()
    assert domain.calls - calls_before == 101


def test_deferred_calls_fail_together_when_the_driver_dies(domain: Domain) -> None:
    ok = domain.defer("add", 1, 1)
    boom = domain.defer("crash_segv")
    with pytest.raises(DomainFailed):
        domain.flush()
    with pytest.raises(DomainFailed):
        ok.result()
    with pytest.raises(DomainFailed):
        boom.result()


EXPECTED = {"segv": FailureKind.CRASHED, "abort": FailureKind.CRASHED,
            "exit": FailureKind.CRASHED, "exception": FailureKind.MISBEHAVED,
            "hang": FailureKind.HUNG, "memory": FailureKind.RESOURCE}


@pytest.mark.parametrize("fault", FAULTS)
def test_injected_faults(fault: str, no_leaks: Snapshot) -> None:
    with Domain(probe(deadline=5.0 if fault == "memory" else 1.0,
                      limits=Limits(address_space=256 << 20))) as d:
        assert d.call("add", 1, 1) == 2
        report = d.inject(fault)  # returns once the failure is seen
        assert report.kind == EXPECTED[fault]
        with pytest.raises(DomainDown) as e:
            d.call("add", 1, 1)
        assert e.value.report is report
        old = d.pid
        d.restart()
        assert d.pid != old
        assert d.call("add", 2, 2) == 4
        assert [r.kind for r in d.failures] == [EXPECTED[fault]]


def test_constructor_failure_is_reported(no_leaks: Snapshot) -> None:
    spec = probe()
    bad = DriverSpec(target="nooks.drivers.probe:ProbeError", interface=ProbeInterface,
                     args=("not an errno", "extra"), deadline=spec.deadline)
    with pytest.raises(DomainMisbehaved, match="TypeError") as e:
        Domain(bad, warm_spare=False)
    assert e.value.report.call == "construct"


def test_missing_driver_module_is_reported(no_leaks: Snapshot) -> None:
    bad = DriverSpec(target="no_such_module_anywhere:Driver", interface=ProbeInterface)
    with pytest.raises(DomainMisbehaved, match="ModuleNotFoundError"):
        Domain(bad, warm_spare=False)


def test_seccomp_domain_still_serves(no_leaks: Snapshot) -> None:
    with Domain(probe(limits=Limits(seccomp=()))) as d:
        assert d.call("add", 1, 2) == 3
        assert d.call("echo", bytes(200 << 10)) == bytes(200 << 10)
        assert d.call("counter", 1) == 3
        for _ in range(64):
            d.defer("null")
        d.flush()


def test_native_mode_gives_the_same_results() -> None:
    nat = NativeDomain(probe())
    with Domain(probe()) as iso:
        for name, args in [("add", (3, 4)), ("echo", (b"x" * 70000,)), ("counter", (9,)),
                           ("sink", (b"abc",))]:
            assert nat.call(name, *args) == iso.call(name, *args)
        with pytest.raises(ProbeError):
            nat.call("fail_with", 3)
    nat.close()
    # native mode tracks nothing, so its counter is never released: only the
    # isolated domain's was
    assert [c.value for c in ProbeKernel.live] == [11]
    ProbeKernel.live.clear()
