"""The shadow-driver engine: class-generic logging, spoofing and recovery.

A ``Shadow`` stands between the host and a ``Domain``. Every request goes
through ``Shadow.call``. The engine itself knows no driver class: a small
``ClassSpec`` per class says what to log, how to answer while the driver is
down, how to replay and which re-issued requests count as done.

Modes and rules:

* *passive*: requests go to the driver; the spec records the state-changing
  ones in its log (compacted: a release cancels its open) and may rewrite the
  result (e.g. hand out stable virtual handles).
* *active* (recovering): each request is answered by the strategy its kind
  has in the spec — answer from the log, act busy, block the caller (bounded),
  queue (block, then run), or drop.
* *recovery*: one thread recovers; the failed domain is released and replaced
  from the warm spare, the spec re-initialises the driver and replays its log,
  then the generation advances and blocked callers go on.
* *in-flight requests* that failed with the driver are re-issued after
  recovery if the spec says they may be (else they are answered "busy"); the
  spec decides if an error on a re-issue means "already done".
* *poison*: a request that has failed the driver ``max_tries`` times fails
  alone with the spec's poison error. Re-issued requests run one at a time, so
  a repeat failure is pinned on the request that caused it.
* *second opinions*: an error the spec calls suspect (one a correct driver
  rarely or never gives, e.g. EIO), or a result the spec doubts (a
  postcondition that does not hold, e.g. a directory that is not there after
  mkdir), condemns the driver as misbehaved; it is recovered and the request
  re-issued, and only if the fresh driver gives the same answer does the
  caller see it (that answer is then trusted, without restarts, for
  ``trust_seconds``).
* every recovery is recorded (``Recovery``).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from nooks.domain.host import Domain
from nooks.errors import (
    Closed,
    DomainDown,
    DomainFailed,
    FailureKind,
    FailureReport,
    NotTaken,
    RecoveryFailed,
    Restarting,
)

log = logging.getLogger(__name__)


class Strategy(enum.Enum):
    FROM_LOG = "answer from log"
    BUSY = "act busy"
    BLOCK = "block caller"
    QUEUE = "queue request"
    DROP = "drop request"


class Recovery(msgspec.Struct, frozen=True, kw_only=True):
    """One recovery: what failed, how long it took, what was replayed."""

    kind: str
    detail: str
    call: str | None
    at: float  # wall-clock time of the failure
    duration_ms: float
    replayed: int
    restart_ms: float
    ok: bool = True


class Answered(Exception):
    """Raised by ``ClassSpec.translate``: the request needs no driver, ``value`` answers it."""

    def __init__(self, value: Any) -> None:
        super().__init__(value)
        self.value = value


class _Doubt(Exception):
    def __init__(self, reason: str, key: tuple[str, str]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key = key


class NotInLog(Exception):
    """The log cannot answer this request; fall back to blocking."""


class _Violation(Exception):
    def __init__(self, reason: str, driver: str, op: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.report = FailureReport(kind=FailureKind.MISBEHAVED, detail=reason, driver=driver,
                                    call=op)


# errors that say the driver ran out of what its domain may hold: a *resource* failure
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
MAX_LENIENT = 16  # exception types remembered per request kind
REVIVE_FIRST = 1.0  # seconds before a driver that could not be brought back is tried again
REVIVE_MAX = 60.0


class ClassSpec(Protocol):
    """What the engine needs to know about one driver class."""

    def strategy(self, op: str) -> Strategy: ...

    def translate(self, op: str, args: tuple[Any, ...], reissue: bool) -> tuple[Any, ...]:
        """Arguments as the current driver must see them (virtual → real handles);
        ``reissue`` when the request already failed the driver once."""

    def record(self, op: str, args: tuple[Any, ...], result: Any) -> Any:
        """Log the effect of a completed request; the result to give the caller."""

    def reinit(self, domain: Domain) -> None:
        """Bring a freshly constructed driver to its load-time state."""

    def replay(self, domain: Domain) -> int:
        """Re-establish the logged state in a fresh driver; how many requests it took."""

    def reissuable(self, op: str, args: tuple[Any, ...]) -> bool:
        """Whether a request that failed with the driver may be sent again; if not,
        it is answered by ``busy`` once the driver is back."""

    def reissued(self, op: str, args: tuple[Any, ...], error: BaseException) -> tuple[bool, Any]:
        """A re-issued request raised ``error``: (True, result) if it was already done."""

    def suspect(self, op: str, args: tuple[Any, ...], error: BaseException,
                domain: Domain) -> bool:
        """Whether an error the driver returned may be a sign that it is broken (an
        answer a correct driver gives rarely or never here): then a fresh driver is
        asked again before the caller sees it. May ask the driver (``domain``)."""

    def doubt(self, op: str, args: tuple[Any, ...], result: Any, domain: Domain) -> str | None:
        """Why a result the driver gave cannot be right (a postcondition that does not
        hold), or None; then a fresh driver is asked again. May ask the driver."""

    def answer(self, op: str, args: tuple[Any, ...]) -> Any:
        """Answer from the log while the driver is down, or raise NotInLog."""

    def busy(self, op: str) -> BaseException: ...

    def poison(self, op: str, report: FailureReport) -> BaseException: ...

    def dropped(self, op: str) -> Any: ...

    def handle_result(self, op: str) -> bool:
        """Whether the result of ``op`` names driver state (stale after a recovery)."""

    # -- hooks with defaults (a spec that subclasses ClassSpec inherits them) ------------

    def violation(self, op: str, args: tuple[Any, ...], result: Any) -> str | None:
        """Why ``result`` must not be passed on (it would harm the host, the kernel or
        an application: e.g. more bytes than asked), or None. Such a driver has
        misbehaved: it is recovered, the request re-issued, and after ``max_tries``
        the request fails alone."""
        return None

    def requester(self, op: str, args: tuple[Any, ...]) -> int | None:
        """The process (or thread) id that made the request, if the class knows it."""
        return None

    def answer_own(self, op: str, args: tuple[Any, ...]) -> Any:
        """Answer a request made by the driver being recovered (it must not wait for its
        own recovery), or raise NotInLog (then it gets ``busy``)."""
        raise NotInLog(op)

    def prepare_restart(self) -> None:
        """Called before each attempt to build a new driver (e.g. put stored state
        back as the replay expects it)."""
        return None


class Shadow:
    def __init__(self, domain: Domain, spec: ClassSpec, *, max_tries: int = 3,
                 block_timeout: float = 60.0, recovery_attempts: int = 3,
                 on_recovery: Callable[[Recovery], None] | None = None) -> None:
        self.domain = domain
        self.spec = spec
        self.max_tries = max_tries
        self.block_timeout = block_timeout
        self.recovery_attempts = recovery_attempts
        self.on_recovery = on_recovery
        self.recoveries: list[Recovery] = []
        self.poisoned = 0
        self.generation = 0
        self.dead: RecoveryFailed | None = None
        self._recover_lock = threading.Lock()
        self._suspects = threading.Lock()
        self._state = threading.Condition(threading.Lock())
        self._recovering = False
        # answers a fresh driver was asked about again (see ClassSpec.suspect, doubt)
        self.second_opinions_asked = 0
        self.trust_seconds = 10.0
        self._trusted: dict[tuple[str, str], float] = {}
        # per request kind, the exceptions a fresh driver raised too: answered as the
        # class's framework answers them from then on (see Interface.unexpected)
        self._lenient: dict[str, frozenset[str]] = {}
        self._revive_at = 0.0
        self._revive_pause = REVIVE_FIRST

    @property
    def mode(self) -> str:
        if self.dead is not None:
            return "dead"
        return "active" if self._recovering else "passive"

    def __repr__(self) -> str:
        return (f"<Shadow {self.domain.name} {self.mode} gen={self.generation} "
                f"recoveries={len(self.recoveries)} poisoned={self.poisoned}>")

    # -- requests ------------------------------------------------------------------------

    def call(self, op: str, *args: Any) -> Any:
        """Serve one request: from the driver, or by the class's strategy while it is down."""
        tries = 0
        last: FailureReport | None = None
        second_opinion: tuple[str, str] | None = None
        lenient = self._lenient.get(op, frozenset()) if self._lenient else frozenset()
        raised: str | None = None  # what the driver raised, re-issued leniently
        waited_until = 0.0  # set when it first has to wait for a recovery to begin or end
        while True:
            if self._recovering:
                # first: a request of the driver being rebuilt must never wait for it
                if self._from_recovering(op, args):
                    return self._answer_own(op, args)
                answered, value = self._spoof(op, args)
                if answered:
                    return value
            if self.dead is not None:
                if self._revive(last):
                    continue
                if self._recovering:
                    continue  # another request is bringing it back: wait for that
                report = self.dead.report or last
                if report is None:
                    report = FailureReport(kind=FailureKind.CRASHED, detail=str(self.dead),
                                           driver=self.domain.name, call=op)
                raise self.spec.poison(op, report)
            gen = self.generation
            suspect = self._suspects if tries else None
            if suspect is not None:
                suspect.acquire()
            try:
                result = self.domain.call(op, *self.spec.translate(op, args, tries > 0),
                                          lenient=lenient | {raised} if raised else lenient)
                self._check(op, args, result, tries, second_opinion)
            except Answered as a:
                return a.value
            except _Doubt as d:
                second_opinion = d.key
                tries += 1
                self._condemn(gen, f"{op}: {d.reason}; asking a fresh driver", op)
                continue
            except _Violation as v:
                tries += 1
                self._condemn(gen, f"{op}: {v.reason}", op)
                if tries >= self.max_tries:
                    raise self._poisoned(op, v.report) from None
                continue
            except DomainDown as e:
                # the driver had failed before this request was sent: not its fault
                self._recover(gen, e.report)
                continue
            except Restarting:
                # between two drivers: the recovery that replaces them is running (or
                # just failed); a request of the driver being built must not wait for it
                if self._from_recovering(op, args):
                    return self._answer_own(op, args)
                waited_until = waited_until or time.monotonic() + self.block_timeout
                self._pause(waited_until, op)
                continue
            except DomainFailed as e:
                last = e.report
                tries += 1
                self._recover(gen, e.report)
                if not self.spec.reissuable(op, args):
                    raise self.spec.busy(op) from e
                if tries >= self.max_tries:
                    raise self._poisoned(op, e.report) from e
                if e.report.exception is not None and self.domain.iface.unexpected is not None:
                    # the driver raised: a fresh one may not; if it raises too, it is
                    # answered as the driver's own framework answers it, not restarted
                    raised = e.report.exception
                continue
            except Exception as e:
                if tries:
                    done, value = self.spec.reissued(op, args, e)
                    if done:
                        return value
                    if second_opinion is not None:
                        # a fresh driver said the same: the error is the world's, not
                        # the driver's; trust it for a while rather than restart again
                        self._trusted[second_opinion] = time.monotonic() + self.trust_seconds
                    if raised is not None:
                        # the fresh driver raised as well: from now on, this request's
                        # exception is answered that way, without a restart
                        known = self._lenient.get(op, frozenset())
                        if len(known) < MAX_LENIENT:
                            self._lenient[op] = known | {raised}
                    raise
                try:
                    key = self._second_opinion(op, args, e)
                except (DomainFailed, DomainDown, Restarting):
                    key = None  # the driver failed while being asked: its error stands
                if key is None:
                    raise
                second_opinion = key
                tries += 1
                self._condemn(
                    gen, f"{op} answered {type(e).__name__}: {e}; asking a fresh driver", op,
                    FailureKind.RESOURCE if getattr(e, "errno", None) in OUT_OF_RESOURCES
                    else FailureKind.MISBEHAVED)
                continue
            finally:
                if suspect is not None:
                    suspect.release()
            if not self.spec.handle_result(op):
                return self.spec.record(op, args, result)
            with self._state:
                if gen == self.generation:
                    return self.spec.record(op, args, result)
            # a recovery happened while this request ran: its handle died with the
            # old driver, so ask the new one

    def _poisoned(self, op: str, report: FailureReport) -> BaseException:
        self.poisoned += 1
        log.warning("%s: %s failed the driver %d times; failing it alone",
                    self.domain.name, op, self.max_tries)
        return self.spec.poison(op, report)

    def _pause(self, until: float, op: str) -> None:
        """Wait a little for a recovery to begin or end (bounded by ``until``)."""
        with self._state:
            left = until - time.monotonic()
            if left <= 0:
                raise self.spec.busy(op)
            self._state.wait(min(left, 0.01))

    def _from_recovering(self, op: str, args: tuple[Any, ...]) -> bool:
        """Whether the request comes from the driver being recovered (its constructor
        looking at its own mountpoint, say): blocking it would deadlock the recovery."""
        pid = self.spec.requester(op, args)
        return pid is not None and self.domain.owns(pid)

    def _answer_own(self, op: str, args: tuple[Any, ...]) -> Any:
        try:
            return self.spec.answer_own(op, args)
        except NotInLog:
            raise self.spec.busy(op) from None

    def _revive(self, last: FailureReport | None) -> bool:
        """A driver that could not be brought back is tried again, after a pause that
        doubles each time (1 s to a minute); True if it is back."""
        dead = self.dead
        if dead is None:
            return True
        if time.monotonic() < self._revive_at:
            return False
        report = dead.report or last
        if report is None:
            return False
        self._recover(self.generation, report, revive=True)
        return self.dead is None

    def _condemn(self, gen: int, detail: str, op: str,
                 kind: FailureKind = FailureKind.MISBEHAVED) -> None:
        """Fail the driver of generation ``gen`` on the host's judgement and recover;
        if it has been replaced meanwhile, the answer came from a driver already
        gone, and the request is simply sent again."""
        with self._recover_lock:
            if self.generation != gen or self.dead is not None:
                return
            try:
                report = self.domain.condemn(detail, op, kind)
            except Closed:
                return  # between drivers already: the recovery is under way
        self._recover(gen, report)

    def _second_opinion(self, op: str, args: tuple[Any, ...],
                        error: Exception) -> tuple[str, str] | None:
        """The key under which to ask a fresh driver about ``error``, or None."""
        if not self.spec.reissuable(op, args):
            return None
        key = (op, str(getattr(error, "errno", type(error).__name__)))
        if self._trusted.get(key, 0.0) > time.monotonic():
            return None
        if not self.spec.suspect(op, args, error, self.domain):
            return None
        self.second_opinions_asked += 1
        return key

    def _check(self, op: str, args: tuple[Any, ...], result: Any, tries: int,
               asked: tuple[str, str] | None) -> None:
        """Raise _Violation if ``result`` would harm the host, the kernel or an
        application (never passed on); _Doubt if it cannot be right and a fresh driver
        should be asked (a fresh driver's answer that is doubted too is trusted for a
        while)."""
        bad = self.spec.violation(op, args, result)
        if bad is not None:
            raise _Violation(bad, self.domain.name, op)
        key = (op, "result")
        if self._trusted.get(key, 0.0) > time.monotonic():
            return
        if tries and asked != key:
            return
        if not self.spec.reissuable(op, args):
            return
        reason = self.spec.doubt(op, args, result, self.domain)
        if reason is None:
            return
        if tries:
            self._trusted[key] = time.monotonic() + self.trust_seconds
            return
        self.second_opinions_asked += 1
        raise _Doubt(reason, key)

    def _spoof(self, op: str, args: tuple[Any, ...]) -> tuple[bool, Any]:
        strategy = self.spec.strategy(op)
        if strategy is Strategy.FROM_LOG:
            try:
                return True, self.spec.answer(op, args)
            except NotInLog:
                strategy = Strategy.BLOCK
        if strategy is Strategy.BUSY:
            raise self.spec.busy(op)
        if strategy is Strategy.DROP:
            return True, self.spec.dropped(op)
        # BLOCK and QUEUE: wait for the driver, bounded
        deadline = time.monotonic() + self.block_timeout
        with self._state:
            while self._recovering:
                left = deadline - time.monotonic()
                if left <= 0 or not self._state.wait(left):
                    raise self.spec.busy(op)
        return False, None

    # -- recovery ------------------------------------------------------------------------

    def _recover(self, gen: int, report: FailureReport, revive: bool = False) -> None:
        """Recover from the failure seen at generation ``gen`` (once, whoever sees it);
        with ``revive``, again after a recovery that failed (unless another request is
        at it already: then it returns at once, and the caller waits as any request
        waits for a recovery)."""
        if revive:
            if not self._recover_lock.acquire(blocking=False):
                return
        else:
            self._recover_lock.acquire()
        try:
            if self.generation != gen or (self.dead is not None and not revive):
                return  # someone else recovered already
            if revive and (self.dead is None or time.monotonic() < self._revive_at):
                return
            with self._state:
                self._recovering = True
            t0 = time.monotonic()
            try:
                restart_ms, replayed = self._restart()
                ok = True
                self.dead = None
                self._revive_pause = REVIVE_FIRST
            except (DomainFailed, RecoveryFailed) as e:
                restart_ms, replayed, ok = 0.0, 0, False
                self.dead = e if isinstance(e, RecoveryFailed) else \
                    RecoveryFailed(str(e), e.report)
                self._revive_at = time.monotonic() + self._revive_pause
                self._revive_pause = min(self._revive_pause * 2, REVIVE_MAX)
                log.error("%s: recovery failed: %s (trying again in %.0f s)",
                          self.domain.name, e, self._revive_at - time.monotonic())
            rec = Recovery(kind=report.kind.value, detail=report.detail, call=report.call,
                           at=time.time(), duration_ms=(time.monotonic() - t0) * 1e3,
                           replayed=replayed, restart_ms=restart_ms, ok=ok)
            self.recoveries.append(rec)
            with self._state:
                self.generation += 1
                self._recovering = False
                self._state.notify_all()
            if self.on_recovery is not None:
                self.on_recovery(rec)
        finally:
            self._recover_lock.release()

    def _restart(self) -> tuple[float, int]:
        err: BaseException | None = None
        for _ in range(self.recovery_attempts):
            try:
                self.spec.prepare_restart()  # before the new driver is built
                r = self.domain.restart()
                self.spec.reinit(self.domain)
                replayed = self.spec.replay(self.domain)
                return r.constructed_ms, replayed
            except DomainFailed as e:
                err = e
                continue
        raise RecoveryFailed(f"{self.domain.name} could not be restarted: {err}",
                             err.report if isinstance(err, DomainFailed) else None)

    def inject(self, fault: str, *, wait: bool = True,
               recover: Callable[[FailureReport, int], None] | None = None) -> dict[str, Any]:
        """Make the driver fail now, in the named way, and recover it at once; what
        happened (``failure``, ``recovered``, ``recovery_ms``). NotTaken if nothing did.
        Without ``wait``, the fault is sent and meets whatever request comes next.
        ``recover(report, generation)`` recovers instead of ``recover_now`` (a host
        that must hold a lock of its own meanwhile)."""
        if not wait:
            with contextlib.suppress(DomainFailed, DomainDown, Closed, Restarting):
                self.domain.inject_later(fault)
            return {}
        gen, before = self.generation, len(self.recoveries)
        try:
            report = self.domain.inject(fault)
        except (Closed, Restarting, DomainDown) as e:
            raise NotTaken(f"the driver is not running ({e})") from None
        (recover or self.recover_now)(report, gen)  # at once, whoever else noticed
        rec = self.recoveries[before] if len(self.recoveries) > before else None
        return {"failure": {"kind": report.kind.value, "detail": report.detail},
                "recovered": None if rec is None else rec.ok,
                "recovery_ms": None if rec is None else rec.duration_ms}

    def recover_now(self, report: FailureReport, generation: int | None = None) -> None:
        """Recover proactively (e.g. the driver died while idle); ``generation`` is the
        one the failure was seen in (a later driver is left alone)."""
        self._recover(self.generation if generation is None else generation, report)
