"""A fake domain for testing a class's spec: a model driver in this process that fails
on cue.

``FakeDomain`` answers ``call`` from a *model* driver (an object with the class's
interface methods, built by ``make_driver(store)`` at every start, so that what
lives in ``store`` survives a restart and what lives in the model does not) and
has the surface of ``nooks.domain.host.Domain`` the engine uses: ``call``,
``restart``, ``condemn``, ``owns``, ``inject``, ``on_idle_failure``. It fails
when a ``Trigger`` matches:

* ``phase``: where the call is made — ``"passive"`` (a request the engine passes
  on), ``"reinit"``, ``"replay"`` (the spec's re-initialisation and replay of
  a fresh driver), ``"restart"`` (the construction of a fresh driver itself);
* ``at``: which call of that phase (0: the first), or ``op``: the first call of
  that name;
* ``failure``: ``crash``, ``hang``, ``misbehave``, ``limit`` (the four kinds a
  domain reports), or an exception to raise as the driver's own answer;
* ``request``: only calls made while the test's request of that number is
  served (``FakeDomain.request``, set by the test);
* ``times``: how many calls in a row fail;
* ``after``: whether the call's work is done before it fails (its effect is
  there, its answer lost), or not at all.

Every call is logged in ``log`` as (phase, op, args), so a test can assert what
reached the driver, in what order, and how often.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nooks.errors import DomainFailed, FailureKind, FailureReport

KINDS = {"crash": FailureKind.CRASHED, "hang": FailureKind.HUNG,
         "misbehave": FailureKind.MISBEHAVED, "limit": FailureKind.RESOURCE}
FAILURES = tuple(KINDS)


@dataclass
class Trigger:
    phase: str
    failure: str | BaseException
    at: int | None = 0
    op: str | None = None
    times: int = 1
    after: bool = False  # fail after the driver did the call's work (its answer is lost)
    request: int | None = None  # only while the test's request of this number is served
    fired: int = 0

    def matches(self, phase: str, op: str, index: int, request: int | None) -> bool:
        if self.fired >= self.times or phase != self.phase:
            return False
        if self.request is not None and request != self.request:
            return False
        if self.op is not None:
            return op == self.op
        return self.at is None or index >= self.at


class _Iface:
    """What the engine reads of a domain's interface."""

    def __init__(self, unexpected: Callable[[Exception], BaseException] | None) -> None:
        self.unexpected = unexpected


@dataclass
class _Restart:
    ready_ms: float = 0.0
    constructed_ms: float = 0.0


@dataclass
class _Spec:
    start_deadline: float = 10.0
    deadline: float = 10.0
    label: str = "fake"


class FakeDomain:
    """A domain whose driver is a model in this process, failing on cue."""

    def __init__(self, make_driver: Callable[[Any], Any], store: Any = None, *,
                 name: str = "fake",
                 unexpected: Callable[[Exception], BaseException] | None = None) -> None:
        self.make_driver = make_driver
        self.store = store
        self.name = name
        self.spec = _Spec(label=name)
        self.iface = _Iface(unexpected)
        self.triggers: list[Trigger] = []
        self.log: list[tuple[str, str, tuple[Any, ...]]] = []
        self.phase = "passive"
        self.request: int | None = None  # the test's request being served, if it says
        self.generation = 0
        self.restarts = 0
        self.condemned: list[tuple[str, FailureKind]] = []
        self.on_idle_failure: Callable[[FailureReport], None] | None = None
        self.calls = 0
        self.fault_site: str | None = None
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        # a test may hold a restart here (to make requests meet a recovery under way)
        self.restart_gate: threading.Event | None = None
        self.restart_started = threading.Event()
        self.driver = make_driver(store)

    # -- what a test sets up -------------------------------------------------------------

    def fail(self, phase: str, failure: str | BaseException, *, at: int | None = 0,
             op: str | None = None, times: int = 1, after: bool = False,
             request: int | None = None) -> Trigger:
        t = Trigger(phase, failure, at=at, op=op, times=times, after=after, request=request)
        self.triggers.append(t)
        return t

    def report(self, failure: str, op: str | None = None) -> FailureReport:
        return FailureReport(kind=KINDS[failure], detail=f"injected {failure}",
                             driver=self.name, call=op)

    # -- the domain's surface ------------------------------------------------------------

    def call(self, op: str, *args: Any, lenient: Any = (), **_: Any) -> Any:
        with self._lock:
            phase = self.phase
            index = self._counts.get(phase, 0)
            self._counts[phase] = index + 1
            self.log.append((phase, op, args))
            self.calls += 1
            trigger = next((t for t in self.triggers
                            if t.matches(phase, op, index, self.request)), None)
            if trigger is not None:
                trigger.fired += 1
        method = getattr(self.driver, op)
        if trigger is None:
            return method(*args)
        if trigger.after:
            method(*args)
        self._fire(trigger.failure, op)

    def _fire(self, failure: str | BaseException, op: str) -> None:
        if isinstance(failure, BaseException):
            raise failure
        raise DomainFailed.of(self.report(failure, op))

    def restart(self) -> _Restart:
        self.restart_started.set()
        if self.restart_gate is not None:
            self.restart_gate.wait(30)
        with self._lock:
            index = self._counts.get("restart", 0)
            self._counts["restart"] = index + 1
            self.log.append(("restart", "construct", ()))
            trigger = next((t for t in self.triggers
                            if t.matches("restart", "construct", index, None)), None)
            if trigger is not None:
                trigger.fired += 1
        if trigger is not None:
            self._fire(trigger.failure, "construct")
        self.restarts += 1
        self.generation += 1
        self.driver = self.make_driver(self.store)
        return _Restart()

    def condemn(self, detail: str, call: str,
                kind: FailureKind = FailureKind.MISBEHAVED) -> FailureReport:
        self.condemned.append((detail, kind))
        return FailureReport(kind=kind, detail=detail, driver=self.name, call=call)

    def owns(self, pid: int) -> bool:
        return False

    def forks_refused(self) -> bool:
        return False

    def inject(self, fault: str, timeout: float = 5.0) -> FailureReport:
        return self.report("crash", None)

    def inject_later(self, fault: str) -> None:
        self.fail("passive", "crash", at=None)

    def wait_spare(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<FakeDomain {self.name} gen={self.generation} phase={self.phase}>"
