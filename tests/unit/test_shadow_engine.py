"""The shadow engine's rules, against a fake domain: lenient re-issue of requests that
raised, violations, requests from the driver being recovered, and revival of a
driver that could not be brought back."""

from __future__ import annotations

import errno
import time
import types
from collections.abc import Callable
from typing import Any, cast

import pytest

from nooks.domain.host import Domain
from nooks.errors import (
    DomainFailed,
    FailureKind,
    FailureReport,
    RecoveryFailed,
    Restarting,
)
from nooks.shadow import engine
from nooks.shadow.engine import Shadow
from nooks.shadow.spec import ClassSpec

Behaviour = Callable[["FakeDomain", str, tuple[Any, ...], bool], Any]


class FakeIface:
    unexpected: Any = staticmethod(lambda e: OSError(errno.EINVAL, "invalid"))


class FakeDomain:
    """Answers calls with ``behaviour``; counts restarts; can be made unable to restart."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.name = "fake"
        self.iface = FakeIface()
        self.generation = 0
        self.restarts = 0
        self.restart_fails = 0
        self.calls: list[tuple[str, bool]] = []
        self.building_pids: set[int] = set()
        self.condemned: list[tuple[str, FailureKind]] = []
        self.refused_forks = 0  # forks its task limit refused (not yet looked at)

    def forks_refused(self) -> bool:
        refused, self.refused_forks = self.refused_forks, 0
        return refused > 0

    def call(self, op: str, *args: Any, lenient: Any = (), **_: Any) -> Any:
        self.calls.append((op, "TypeError" in lenient))
        return self.behaviour(self, op, args, "TypeError" in lenient)

    def condemn(self, detail: str, call: str,
                kind: FailureKind = FailureKind.MISBEHAVED) -> FailureReport:
        self.condemned.append((detail, kind))
        return FailureReport(kind=kind, detail=detail, driver=self.name, call=call)

    def restart(self) -> Any:
        if self.restart_fails:
            self.restart_fails -= 1
            raise DomainFailed.of(FailureReport(kind=FailureKind.CRASHED, detail="no spare",
                                                driver=self.name, call="construct"))
        self.restarts += 1
        self.generation += 1

        class R:
            constructed_ms = 1.0
        return R()

    def owns(self, pid: int) -> bool:
        return pid in self.building_pids


class Spec(ClassSpec):
    """A minimal class: ctx pid is args[0]; errors are OSError; busy is EBUSY."""

    def __init__(self) -> None:
        self.own_answers = 0

    def suspect(self, op: str, args: tuple[Any, ...], error: BaseException,
                domain: Any) -> bool:
        return isinstance(error, OSError) and error.errno in (errno.EIO, errno.EMFILE)

    def busy(self, op: str) -> BaseException:
        return OSError(errno.EBUSY, "busy")

    def poison(self, op: str, report: FailureReport) -> BaseException:
        return OSError(errno.EIO, "poisoned")

    def violation(self, op: str, args: tuple[Any, ...], result: Any) -> str | None:
        return "too long" if op == "read" and len(result) > args[1] else None

    def requester(self, op: str, args: tuple[Any, ...]) -> int | None:
        return args[0] if args and isinstance(args[0], int) else None

    def answer_own(self, op: str, args: tuple[Any, ...]) -> Any:
        self.own_answers += 1
        return "beneath"


def raised(kind: str = "TypeError") -> DomainFailed:
    return DomainFailed.of(FailureReport(kind=FailureKind.MISBEHAVED, detail=f"{kind}: x",
                                         driver="fake", call="op", exception=kind))


def shadow(behaviour: Behaviour) -> tuple[Shadow[Spec], FakeDomain, Spec]:
    d = FakeDomain(behaviour)
    spec = Spec()
    return Shadow(cast(Domain, d), spec, block_timeout=1.0), d, spec


def test_a_request_that_raises_twice_is_answered_as_the_framework_does() -> None:
    def behaviour(d: FakeDomain, op: str, args: tuple[Any, ...], lenient: bool) -> Any:
        if lenient:
            raise d.iface.unexpected(None)
        raise raised()

    s, d, _ = shadow(behaviour)
    with pytest.raises(OSError, match="invalid") as e:
        s.call("chmod", 0)
    assert e.value.errno == errno.EINVAL
    assert d.restarts == 1  # one recovery, not three and a poison
    assert d.calls == [("chmod", False), ("chmod", True)]
    with pytest.raises(OSError, match="invalid"):
        s.call("chmod", 0)  # within the window: lenient at once, no restart
    assert d.restarts == 1 and d.calls[-1] == ("chmod", True)
    assert s.poisoned == 0


def test_a_request_that_a_fresh_driver_serves_is_not_lenient_later() -> None:
    def behaviour(d: FakeDomain, op: str, args: tuple[Any, ...], lenient: bool) -> Any:
        if d.generation == 0:
            raise raised()
        return "fine"

    s, d, _ = shadow(behaviour)
    assert s.call("chmod", 0) == "fine"
    assert s.call("chmod", 0) == "fine"
    assert d.calls[-1] == ("chmod", False)


def test_a_violation_is_never_passed_on() -> None:
    s, d, _ = shadow(lambda d, op, args, lenient: b"x" * 10)
    with pytest.raises(OSError, match="poisoned") as e:
        s.call("read", 0, 4)
    assert e.value.errno == errno.EIO
    assert len(d.condemned) == 3 and s.poisoned == 1


def test_out_of_descriptors_is_a_resource_failure() -> None:
    def behaviour(d: FakeDomain, op: str, args: tuple[Any, ...], lenient: bool) -> Any:
        if d.generation == 0:
            raise OSError(errno.EMFILE, "Too many open files")
        return 7

    s, d, _ = shadow(behaviour)
    assert s.call("open", 0) == 7
    assert [k for _, k in d.condemned] == [FailureKind.RESOURCE]


def test_eagain_after_the_task_limit_refused_a_fork_is_a_resource_failure() -> None:
    def behaviour(d: FakeDomain, op: str, args: tuple[Any, ...], lenient: bool) -> Any:
        if op == "mkdir" and d.generation == 0:
            d.refused_forks += 1  # the driver forked past its limit and passes EAGAIN on
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        if op == "lock":
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")  # its own
        return 0

    s, d, _ = shadow(behaviour)
    assert s.call("mkdir", 0) == 0  # a fresh driver, with no processes yet, does it
    assert d.condemned and [k for _, k in d.condemned] == [FailureKind.RESOURCE]
    assert "task limit" in d.condemned[0][0]
    with pytest.raises(OSError, match="temporarily") as e:  # no fork refused: its own answer
        s.call("lock", 0)
    assert e.value.errno == errno.EAGAIN and len(d.condemned) == 1


def test_the_recovering_driver_is_answered_without_waiting() -> None:
    """Its constructor stats its own mountpoint while the recovery waits for it."""
    answers: list[Any] = []

    def behaviour(d: FakeDomain, op: str, args: tuple[Any, ...], lenient: bool) -> Any:
        if op == "crash" and d.generation == 0:
            raise DomainFailed.of(FailureReport(kind=FailureKind.CRASHED, detail="segv",
                                                driver="fake", call=op))
        return "from the driver"

    s, d, spec = shadow(behaviour)
    real_restart = d.restart

    def restart() -> Any:
        d.building_pids = {4242}
        answers.append(s.call("getattr", 4242))  # the new driver asks its own mount
        answers.append(s.call("getattr", 4242))
        d.building_pids = set()
        return real_restart()

    d.restart = restart  # type: ignore[method-assign]
    assert s.call("crash", 1) == "from the driver"
    assert answers == ["beneath", "beneath"] and spec.own_answers == 2


def test_restarting_waits_for_the_recovery_then_goes_on() -> None:
    state = {"n": 0}

    def behaviour(d: FakeDomain, op: str, args: tuple[Any, ...], lenient: bool) -> Any:
        state["n"] += 1
        if state["n"] < 3:
            raise Restarting("between drivers")
        return "served"

    s, _, _ = shadow(behaviour)
    assert s.call("getattr", 0) == "served"


def test_a_dead_driver_is_tried_again_after_a_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    fake = types.SimpleNamespace(monotonic=lambda: now[0], time=time.time)
    monkeypatch.setattr(engine, "time", fake)  # the engine's clock only

    def behaviour(d: FakeDomain, op: str, args: tuple[Any, ...], lenient: bool) -> Any:
        if d.generation == 0:
            raise DomainFailed.of(FailureReport(kind=FailureKind.CRASHED, detail="segv",
                                                driver="fake", call=op))
        return "back"

    s, d, _ = shadow(behaviour)
    d.restart_fails = 3  # every attempt of the first recovery fails
    with pytest.raises(OSError, match="poisoned"):
        s.call("getattr", 0)
    assert isinstance(s.dead, RecoveryFailed) and s.dead.report is not None
    with pytest.raises(OSError, match="poisoned"):
        s.call("getattr", 0)  # too soon: poisoned at once, no attempt
    assert d.restarts == 0
    now[0] += engine.REVIVE_FIRST + 0.1
    assert s.call("getattr", 0) == "back"
    assert s.dead is None and d.restarts == 1
    assert [r.ok for r in s.recoveries] == [False, True]


def test_a_handle_answered_by_a_driver_gone_since_is_asked_again_as_a_reissue() -> None:
    """The driver created the file, answered, and died before the answer was recorded:
    the new driver is asked again, without O_EXCL (the file is there: its own)."""
    import os

    from nooks.fs.kit import Disk, MemoryFs
    from nooks.fs.spec import ROOT_CTX, FsShadow
    from nooks.testing import FakeDomain

    holder: list[Shadow[FsShadow]] = []

    class DiesAfterCreating(MemoryFs):
        def create(self, ctx: Any, path: str, mode: int, flags: int) -> int:
            fd = super().create(ctx, path, mode, flags)
            if fake.restarts == 0:  # the first driver dies once its answer is on its way
                holder[0].recover_now(fake.report("crash"), holder[0].generation)
            return fd

    fake = FakeDomain(DiesAfterCreating, Disk())
    s = Shadow(cast(Domain, fake), FsShadow())
    holder.append(s)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    assert s.call("create", ROOT_CTX, "/a", 0o644, flags) == 1
    creates = [a for _, op, a in fake.log if op == "create"]
    assert len(creates) == 2 and creates[1][3] == flags & ~os.O_EXCL


def test_an_answer_whose_check_meets_a_dead_driver_stands() -> None:
    """mkdir worked; the driver died before its postcondition could be checked: the
    application is told it worked, not EEXIST from sending it again."""
    from nooks.errors import DomainDown
    from nooks.fs.kit import Disk, MemoryFs
    from nooks.fs.spec import ROOT_CTX, FsShadow
    from nooks.testing import FakeDomain

    fake = FakeDomain(MemoryFs, Disk())
    s = Shadow(cast(Domain, fake), FsShadow())
    fake.fail("passive", DomainDown(fake.report("crash", "getattr")), op="getattr")
    assert s.call("mkdir", ROOT_CTX, "/d", 0o755) == 0
    assert [op for _, op, _ in fake.log].count("mkdir") == 1
