"""The shadow-driver engine: class-generic logging, spoofing and recovery.

A ``Shadow`` stands between the host and a ``Domain``. Every request goes
through ``Shadow.call``. The engine itself knows no driver class: a
``ClassSpec`` per class (``nooks.shadow.spec``) says what to log, how to answer
while the driver is down, how to replay and which re-issued requests count as
done.

Modes and rules:

* *passive*: requests go to the driver; the spec records the state-changing
  ones in its log (compacted: a release cancels its open) and may rewrite the
  result (e.g. hand out stable virtual handles).
* *active* (recovering): each request is answered by the strategy its kind
  has in the spec: *answer from the log* (else block), *act busy* (the class's
  busy error at once), *block* (wait for the driver, at most
  ``block_timeout``), *queue* (held in arrival order, at most ``max_held`` of
  them: a request that finds the queue full is dropped; a caller the class
  releases at once with a ``queued`` answer has its request run by the
  recovery, in order, before any new request reaches the driver; a caller that
  waits is woken in its turn), *drop* (answered as dropped, counted).
* *recovery*: one thread recovers; the failed domain is released and replaced
  from the warm spare, the spec re-initialises the driver and replays its log,
  then the generation advances, held requests run and blocked callers go on.
  A driver that dies while idle is recovered at once by the engine's own
  recovery thread (``idle_guard`` is held meanwhile, if given).
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
* every recovery is recorded (``Recovery``, JSON-able with ``as_dict``).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

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
from nooks.shadow.spec import NOT_IN_LOG, Answer, ClassSpec, Strategy

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ClassSpec)


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
    held: int = 0  # requests held meanwhile (Strategy.QUEUE) and run after it

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


# errors that say the driver ran out of what its domain may hold: a *resource* failure
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
MAX_LENIENT = 16  # exception types remembered per request kind
REVIVE_FIRST = 1.0  # seconds before a driver that could not be brought back is tried again
REVIVE_MAX = 60.0
MAX_HELD = 1024  # requests held at once (Strategy.QUEUE)
CLOSE_WAIT = 60.0  # seconds ``close`` waits for a recovery under way
_UNSET = object()

# what ``_check`` finds wrong with a result
_VIOLATION, _DOUBT = "violation", "doubt"


class _Held:
    """One request held while the driver recovers: run by the recovery (``turn`` is
    None: its caller was released) or by its caller, woken in turn; the next is woken
    when the driver has answered it (``sent``), so they reach the driver in order."""

    __slots__ = ("args", "op", "sent", "turn")

    def __init__(self, op: str, args: tuple[Any, ...], turn: threading.Event | None) -> None:
        self.op = op
        self.args = args
        self.turn = turn
        self.sent = threading.Event() if turn is not None else None

    def answered(self) -> None:
        if self.sent is not None:
            self.sent.set()


class Shadow(Generic[S]):
    def __init__(self, domain: Domain, spec: S, *, max_tries: int = 3,
                 block_timeout: float = 60.0, recovery_attempts: int = 3,
                 max_held: int = MAX_HELD, revive_first: float = REVIVE_FIRST,
                 on_recovery: Callable[[Recovery], None] | None = None,
                 idle_guard: contextlib.AbstractContextManager[Any] | None = None) -> None:
        self.domain = domain
        self.spec: S = spec
        self.max_tries = max_tries
        self.block_timeout = block_timeout
        self.recovery_attempts = recovery_attempts
        self.max_held = max_held
        self.on_recovery = on_recovery
        # held while the engine recovers on its own (an idle driver died; an inject)
        self.idle_guard = idle_guard
        self.recoveries: list[Recovery] = []
        self.poisoned = 0
        self.dropped = 0  # requests answered as dropped (Strategy.DROP, a full queue)
        self.held_failed = 0  # held requests that failed when they ran after a recovery
        self.generation = 0
        self.dead: RecoveryFailed | None = None
        self._recover_lock = threading.Lock()
        self._suspects = threading.Lock()
        self._state = threading.Condition(threading.Lock())
        self._recovering = False
        self._held: collections.deque[_Held] = collections.deque()
        # answers a fresh driver was asked about again (see ClassSpec.suspect, doubt)
        self.second_opinions_asked = 0
        self.trust_seconds = 10.0
        self._trusted: dict[tuple[str, str], float] = {}
        self._confirmed: dict[tuple[str, str], int] = {}  # times a fresh driver said the same
        # per request kind, the exceptions a fresh driver raised too: answered as the
        # class's framework answers them from then on (see Interface.unexpected)
        self._lenient: dict[str, frozenset[str]] = {}
        self._revive_at = 0.0
        self._revive_first = revive_first  # seconds before the first revival
        self._revive_pause = revive_first
        self._idle: list[threading.Thread] = []  # recoveries of drivers that died idle
        self._closed = False
        domain.on_idle_failure = self._idle_failure

    @property
    def mode(self) -> str:
        if self.dead is not None:
            return "dead"
        return "active" if self._recovering else "passive"

    def __repr__(self) -> str:
        return (f"<Shadow {self.domain.name} {self.mode} gen={self.generation} "
                f"recoveries={len(self.recoveries)} poisoned={self.poisoned} "
                f"dropped={self.dropped} held={len(self._held)} {self.spec!r}>")

    def status(self) -> dict[str, Any]:
        """The engine's side of ``nooks status``: mode, recoveries, what it answered."""
        return {
            **self.spec.status(),
            "mode": self.mode, "generation": self.generation, "poisoned": self.poisoned,
            "second_opinions": self.second_opinions_asked, "dropped": self.dropped,
            "held": len(self._held), "held_failed": self.held_failed,
            "recoveries": [r.as_dict() for r in self.recoveries],
        }

    # -- requests ------------------------------------------------------------------------

    def call(self, op: str, *args: Any) -> Any:
        """Serve one request: from the driver, or by the class's strategy while it is down."""
        turn: list[_Held] = []  # a held request whose turn came: the next waits for it
        try:
            return self._serve(op, args, turn)
        finally:
            if turn:
                turn[0].answered()

    def _serve(self, op: str, args: tuple[Any, ...], turn: list[_Held]) -> Any:
        tries = 0
        last: FailureReport | None = None
        second_opinion: tuple[str, str] | None = None
        lenient = self._lenient.get(op, frozenset()) if self._lenient else frozenset()
        raised: str | None = None  # what the driver raised, re-issued leniently
        waited_until = 0.0  # set when it first has to wait for a recovery to begin or end
        again = False  # sent again because its answer named a driver now gone
        spec = self.spec
        while True:
            if self._recovering:
                # first: a request of the driver being rebuilt must never wait for it
                if self._from_recovering(op, args):
                    return self._answer_own(op, args)
                value = self._spoof(op, args)
                if isinstance(value, _Held):
                    turn.append(value)
                elif value is not _UNSET:
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
                raise spec.poison(op, report)
            gen = self.generation
            # what the spec raises here (a lost handle: EIO) is the caller's answer, and
            # never the driver's fault
            sent = spec.translate(op, args, tries > 0 or again)
            if isinstance(sent, Answer):
                return sent.value
            suspect = self._suspects if tries else None
            if suspect is not None:
                suspect.acquire()
            try:
                try:
                    result = self.domain.call(op, *sent,
                                              lenient=lenient | {raised} if raised else lenient)
                finally:
                    if turn:  # answered (or failed): the next held request may go
                        turn.pop().answered()
                wrong = self._check(op, args, result, tries, second_opinion)
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
                if not spec.reissuable(op, args):
                    raise spec.busy(op) from e
                if tries >= self.max_tries:
                    raise self._poisoned(op, e.report) from e
                if e.report.exception is not None and self.domain.iface.unexpected is not None:
                    # the driver raised: a fresh one may not; if it raises too, it is
                    # answered as the driver's own framework answers it, not restarted
                    raised = e.report.exception
                continue
            except Exception as e:
                if tries:
                    done, value = spec.reissued(op, args, e)
                    if done:
                        return value
                    if second_opinion is not None:
                        # a fresh driver said the same: the error is the world's, not
                        # the driver's; trust it for a while rather than restart again
                        self._trust(second_opinion)
                    if raised is not None:
                        # the fresh driver raised as well: from now on, this request's
                        # exception is answered that way, without a restart
                        known = self._lenient.get(op, frozenset())
                        if len(known) < MAX_LENIENT:
                            self._lenient[op] = known | {raised}
                    raise
                code = getattr(e, "errno", None)
                # EAGAIN after the domain's task limit refused a fork: out of processes
                limited = code == errno.EAGAIN and self.domain.forks_refused()
                try:
                    key = self._second_opinion(op, args, e, limited)
                except (DomainFailed, DomainDown, Restarting):
                    key = None  # the driver failed while being asked: its error stands
                if key is None:
                    if limited:  # not asked again, but the domain is out of processes
                        self._condemn(gen, f"{op} answered EAGAIN: the domain's task limit "
                                      "refused a fork", op, FailureKind.RESOURCE)
                    raise
                second_opinion = key
                tries += 1
                detail = (f"{op} answered EAGAIN: the domain's task limit refused a fork; "
                          "asking a fresh driver" if limited else
                          f"{op} answered {type(e).__name__}: {e}; asking a fresh driver")
                self._condemn(gen, detail, op, FailureKind.RESOURCE
                              if limited or code in OUT_OF_RESOURCES
                              else FailureKind.MISBEHAVED)
                continue
            finally:
                if suspect is not None:
                    suspect.release()
            if wrong is not None:
                what, reason, key = wrong
                tries += 1
                if what is _DOUBT:
                    second_opinion = key
                    self._condemn(gen, f"{op}: {reason}; asking a fresh driver", op)
                    continue
                self._condemn(gen, f"{op}: {reason}", op)
                if not spec.reissuable(op, args):
                    raise spec.busy(op)  # it may have done its work: not sent again
                if tries >= self.max_tries:
                    raise self._poisoned(op, FailureReport(
                        kind=FailureKind.MISBEHAVED, detail=reason, driver=self.domain.name,
                        call=op))
                continue
            if not spec.handle_result(op):
                return spec.record(op, args, result)
            with self._state:
                if gen == self.generation:
                    return spec.record(op, args, result)
            # a recovery happened while this request ran: its handle died with the
            # old driver, so ask the new one -- as a re-issue (the old one did the work:
            # a create must not meet its own file with O_EXCL)
            again = True

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
        value = self.spec.answer_own(op, args)
        if value is NOT_IN_LOG:
            raise self.spec.busy(op)
        return value

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
            except (Closed, Restarting):
                return  # between drivers already: the recovery is under way
        self._recover(gen, report)

    def _trust(self, key: tuple[str, str]) -> None:
        """A fresh driver confirmed an answer of this kind: trust such answers for a
        while (as long as the class says for this many confirmations)."""
        n = self._confirmed[key] = self._confirmed.get(key, 0) + 1
        seconds = self.spec.trust_for(n)
        self._trusted[key] = time.monotonic() + (self.trust_seconds if seconds is None
                                                 else seconds)

    def _second_opinion(self, op: str, args: tuple[Any, ...], error: Exception,
                        limited: bool = False) -> tuple[str, str] | None:
        """The key under which to ask a fresh driver about ``error`` (always, if the
        domain hit one of its limits making it), or None."""
        if not self.spec.reissuable(op, args):
            return None
        key = (op, str(getattr(error, "errno", type(error).__name__)))
        if self._trusted.get(key, 0.0) > time.monotonic():
            return None
        if not limited and not self.spec.suspect(op, args, error, self.domain):
            return None
        self.second_opinions_asked += 1
        return key

    def _check(self, op: str, args: tuple[Any, ...], result: Any, tries: int,
               asked: tuple[str, str] | None) -> tuple[str, str, tuple[str, str]] | None:
        """What is wrong with ``result``, or None: a *violation* (it would harm the
        host, the kernel or an application: never passed on) or a *doubt* (it cannot
        be right: a fresh driver is asked; a fresh driver's answer that is doubted
        too is trusted for a while)."""
        bad = self.spec.violation(op, args, result)
        if bad is not None:
            return _VIOLATION, bad, (op, "violation")
        key = (op, "result")
        if self._trusted.get(key, 0.0) > time.monotonic():
            return None
        if tries and asked != key:
            return None
        if not self.spec.reissuable(op, args):
            return None
        try:
            reason = self.spec.doubt(op, args, result, self.domain)
        except (DomainFailed, DomainDown, Restarting):
            # the driver failed after it answered, before its answer could be checked:
            # the answer stands (the request was done; sent again it would meet its own
            # effect), and the failure is the next request's to recover from
            return None
        if reason is None:
            return None
        if tries:
            self._trust(key)
            return None
        self.second_opinions_asked += 1
        return _DOUBT, reason, key

    def _spoof(self, op: str, args: tuple[Any, ...]) -> Any:
        """Answer a request while the driver recovers, by its kind's strategy; _UNSET if
        the request is to go to the driver after all (the recovery is over), its
        ``_Held`` if its turn in the queue has come."""
        strategy = self.spec.strategy(op)
        if strategy is Strategy.FROM_LOG:
            value = self.spec.answer(op, args)
            if value is not NOT_IN_LOG:
                return value
            strategy = Strategy.BLOCK
        if strategy is Strategy.BUSY:
            raise self.spec.busy(op)
        if strategy is Strategy.DROP:
            with self._state:
                self.dropped += 1
            return self.spec.dropped(op)
        if strategy is Strategy.QUEUE:
            return self._hold(op, args)
        # BLOCK: wait for the driver, bounded
        deadline = time.monotonic() + self.block_timeout
        with self._state:
            while self._recovering:
                left = deadline - time.monotonic()
                if left <= 0 or not self._state.wait(left):
                    raise self.spec.busy(op)
        return _UNSET

    def _hold(self, op: str, args: tuple[Any, ...]) -> Any:
        """Strategy.QUEUE: hold the request, in order, until the recovery runs it (its
        caller released with the class's ``queued`` answer) or wakes its caller."""
        with self._state:
            if not self._recovering:
                return _UNSET
            if len(self._held) >= self.max_held:
                self.dropped += 1
                return self.spec.dropped(op)
            value = self.spec.queued(op, args)
            if value is not NOT_IN_LOG:
                self._held.append(_Held(op, args, None))
                return value
            entry = _Held(op, args, threading.Event())
            self._held.append(entry)
        assert entry.turn is not None
        if entry.turn.wait(self.block_timeout):
            return entry
        with self._state:
            if entry not in self._held:
                return entry  # its turn came as it gave up
            self._held.remove(entry)
        raise self.spec.busy(op)  # gave up waiting, never run

    def _run_held(self) -> int:
        """After a recovery, in arrival order: run each released request, wake each
        waiting caller. How many there were."""
        count = 0
        while True:
            with self._state:
                if not self._held:
                    # the recovery ends here, in the same breath: nothing can be held
                    # after the last look and before requests go to the driver again
                    self._recovering = False
                    self._state.notify_all()
                    return count
                entry = self._held.popleft()
            count += 1
            if entry.turn is not None:
                entry.turn.set()
                assert entry.sent is not None
                if not entry.sent.wait(self.block_timeout):
                    log.warning("%s: %s held during a recovery was not answered in %.0f s",
                                self.domain.name, entry.op, self.block_timeout)
                continue
            try:
                sent = self.spec.translate(entry.op, entry.args, False)
                if not isinstance(sent, Answer):
                    self.spec.record(entry.op, entry.args,
                                     self.domain.call(entry.op, *sent))
            except Exception as e:
                self.held_failed += 1
                log.warning("%s: %s held during a recovery failed when it ran: %s",
                            self.domain.name, entry.op, e)

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
            try:
                self._recover_now(report, t0=time.monotonic())
            finally:
                with self._state:
                    if self._recovering:  # ended early by an error of the class's spec
                        self._drop_held_locked()
        finally:
            self._recover_lock.release()

    def _recover_now(self, report: FailureReport, t0: float) -> None:
        """Restart, re-initialise, replay; held requests run; the recovery recorded."""
        held = 0
        try:
            restart_ms, replayed = self._restart()
            ok = True
            self.dead = None
            self._revive_pause = self._revive_first
        except RecoveryFailed as e:
            restart_ms, replayed, ok = 0.0, 0, False
            self.dead = e
            self._revive_at = time.monotonic() + self._revive_pause
            self._revive_pause = min(max(self._revive_pause * 2, self._revive_first),
                                     REVIVE_MAX)
            log.error("%s: recovery failed: %s (trying again in %.0f s)",
                      self.domain.name, e, self._revive_at - time.monotonic())
        with self._state:
            self.generation += 1
        if ok:
            held = self._run_held()
        else:
            self._drop_held()
        rec = Recovery(kind=report.kind.value, detail=report.detail, call=report.call,
                       at=time.time(), duration_ms=(time.monotonic() - t0) * 1e3,
                       replayed=replayed, restart_ms=restart_ms, ok=ok, held=held)
        self.recoveries.append(rec)
        if self.on_recovery is not None:
            self.on_recovery(rec)

    def _drop_held_locked(self) -> None:
        """``_drop_held`` for a caller that holds ``_state``: released held requests are
        lost (counted as dropped), waiting callers woken, the recovery over."""
        held, self._held = self._held, collections.deque()
        self._recovering = False
        self._state.notify_all()
        for entry in held:
            if entry.turn is None:
                self.dropped += 1
            else:
                entry.turn.set()

    def _drop_held(self) -> None:
        """The driver could not be brought back: released held requests are lost
        (counted as dropped); waiting callers are woken to get the poison answer; the
        recovery is over."""
        with self._state:
            self._drop_held_locked()

    def _restart(self) -> tuple[float, int]:
        err: Exception | None = None
        for _ in range(self.recovery_attempts):
            try:
                self.spec.prepare_restart()  # before the new driver is built
                r = self.domain.restart()
                self.spec.reinit(self.domain)
                replayed = self.spec.replay(self.domain)
                return r.constructed_ms, replayed
            except DomainFailed as e:
                err = e
            except Closed:
                raise RecoveryFailed(f"{self.domain.name} was closed while it was being "
                                     "recovered") from None
            except Exception as e:  # the fresh driver refused its re-initialisation
                err = e
        report = err.report if isinstance(err, DomainFailed) else None
        raise RecoveryFailed(f"{self.domain.name} could not be restarted: {err}",
                             report) from err

    # -- supervision ---------------------------------------------------------------------

    def _idle_failure(self, report: FailureReport) -> None:
        """The driver died with nothing in flight (the domain's monitor saw it): recover
        now, on the engine's recovery thread, not at the next request."""
        gen = self.generation
        with self._state:
            if self._closed:
                return
            # one thread per failure (``_recover`` skips one already recovered): a
            # second driver that dies while the first recovery's thread still runs
            # (waiting for ``idle_guard``, say) is not left dead until a request comes
            self._idle = [t for t in self._idle if t.is_alive()]
            t = threading.Thread(target=self._recover_guarded, args=(report, gen),
                                 name=f"nooks-recover-{self.domain.name}", daemon=True)
            self._idle.append(t)
            t.start()

    def _recover_guarded(self, report: FailureReport, generation: int) -> None:
        with self.idle_guard if self.idle_guard is not None else contextlib.nullcontext():
            self._recover(generation, report)

    def inject(self, fault: str, *, wait: bool = True) -> dict[str, Any]:
        """Make the driver fail now, in the named way, and recover it at once; what
        happened (``failure``, ``recovered``, ``recovery_ms``). NotTaken if nothing did.
        Without ``wait``, the fault is sent and meets whatever request comes next."""
        if not wait:
            with contextlib.suppress(DomainFailed, DomainDown, Closed, Restarting):
                self.domain.inject_later(fault)
            return {}
        gen, before = self.generation, len(self.recoveries)
        try:
            report = self.domain.inject(fault)
        except (Closed, Restarting, DomainDown) as e:
            raise NotTaken(f"the driver is not running ({e})") from None
        self._recover_guarded(report, gen)  # at once, whoever else noticed
        rec = self.recoveries[before] if len(self.recoveries) > before else None
        return {"failure": {"kind": report.kind.value, "detail": report.detail},
                "recovered": None if rec is None else rec.ok,
                "recovery_ms": None if rec is None else rec.duration_ms}

    def revive(self, last: FailureReport | None) -> bool:
        """Try again to bring back a driver that could not be (once its pause is
        over); for a class whose requests do not pass through ``call`` (a driver that
        serves its own channel), whose engine would otherwise never try. True if it
        is back."""
        return self._revive(last)

    def recover_now(self, report: FailureReport, generation: int | None = None) -> None:
        """Recover proactively (e.g. a check found the driver's work wrong);
        ``generation`` is the one the failure was seen in (a later driver is left
        alone). The caller holds ``idle_guard`` if it needs to."""
        self._recover(self.generation if generation is None else generation, report)

    def stop(self) -> None:
        """No more recoveries of its own (before the domain is closed: a recovery under
        way then fails at once)."""
        with self._state:
            self._closed = True

    def close(self) -> None:
        """Stop; wait for a recovery under way (bounded: its domain should be closed
        first); release what the spec holds."""
        self.stop()
        with self._state:
            idle = list(self._idle)
        for t in idle:
            if t is not threading.current_thread():
                t.join(timeout=CLOSE_WAIT)
        self.spec.close()
