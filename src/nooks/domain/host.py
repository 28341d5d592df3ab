"""Domains: a driver in its own protection domain, as the host uses it.

``Domain`` runs a driver in a child process (an ``Incarnation``), makes calls
to it through XPC and wrappers, and restarts it from a warm spare after a
failure. It does not decide *when* to restart or what to replay: that is the
shadow driver's job. What it guarantees:

* every reply is checked against the interface declaration before it is
  returned; a reply that breaks it fails the domain (``DomainMisbehaved``);
* every failure raises a ``DomainFailed`` whose ``report`` says the kind, the
  call in flight and, when there is one, the driver's traceback;
* after ``close`` no process, fd, arena or tracked object is left behind.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import msgspec

from nooks.domain import detect
from nooks.domain.config import FAULTS, MAX_MESSAGE
from nooks.domain.incarnation import Incarnation, wait_cgroups_ended
from nooks.domain.spec import DriverSpec
from nooks.errors import (
    Closed,
    DomainDown,
    DomainFailed,
    FailureKind,
    FailureReport,
    InterfaceError,
    NotTaken,
    Restarting,
)
from nooks.wrappers import InterfaceSpec, MethodSpec, declare
from nooks.xpc import messages as m

log = logging.getLogger(__name__)

REFILL_WAIT = 1.0  # seconds a restart waits for a warm spare being started


@dataclass(frozen=True)
class Restart:
    """Timing of one restart: failure seen → spare ready, and → driver constructed."""

    ready_ms: float
    constructed_ms: float


class Deferred:
    """The result of a deferred call, available once its batch is flushed."""

    __slots__ = ("_domain", "_done", "_error", "_value")

    def __init__(self, domain: Domain) -> None:
        self._domain = domain
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None

    def _set(self, value: Any = None, error: BaseException | None = None) -> None:
        self._value, self._error, self._done = value, error, True

    def result(self) -> Any:
        if not self._done:
            self._domain.flush()
        if self._error is not None:
            raise self._error
        return self._value


class Domain:
    def __init__(self, spec: DriverSpec, *, warm_spare: bool = True, batch_size: int = 64,
                 start: bool = True) -> None:
        self.spec = spec
        self.name = spec.label
        self.iface: InterfaceSpec = declare(spec.interface)
        self.warm_spare = warm_spare
        self.batch_size = batch_size
        self.calls = 0
        self.failures: list[FailureReport] = []
        self.restarts: list[Restart] = []
        self._ids = itertools.count(1)
        self._inc: Incarnation | None = None
        self._spare: Incarnation | None = None
        # the next spare is started in the background, off the recovery's path
        self._spare_cv = threading.Condition(threading.Lock())
        self._refilling = False
        self._building: Incarnation | None = None  # taken from the spare, being constructed
        self._retired: list[Incarnation] = []
        self._fault_pending = spec.fault is not None
        self.fault_site: str | None = None  # where the injected fault went, if any
        self._closed = False
        self._batch: list[tuple[MethodSpec, tuple[Any, ...], Deferred]] = []
        self._batch_lock = threading.Lock()
        self._lifecycle = threading.Lock()
        # called when the current domain dies while no call is in flight
        self.on_idle_failure: Callable[[FailureReport], None] | None = None
        if start:
            self.start()

    # -- lifecycle -----------------------------------------------------------------------

    def _take_spare(self) -> Incarnation:
        with self._spare_cv:
            # being started: it will be ready sooner than a new one (unless its start is
            # stuck: then this restart starts one of its own)
            self._spare_cv.wait_for(lambda: not self._refilling, REFILL_WAIT)
            inc, self._spare = self._spare, None
        if inc is None or not inc.alive:
            if inc is not None:
                self._retire(inc)
            inc = Incarnation(self.spec, with_fault=self._fault_pending)
            self._fault_pending = False
        try:
            inc.wait_hello()
        except DomainFailed as e:
            self.failures.append(e.report)
            self._retire(inc, wait=True)
            raise
        return inc

    def _refill_spare(self) -> None:
        """Start the next warm spare, in a thread of its own: spawning a domain (its
        process, arenas, cgroup) takes milliseconds a recovery need not wait for."""
        with self._spare_cv:
            if not self.warm_spare or self._spare is not None or self._closed \
                    or self._refilling:
                return
            self._refilling = True
        threading.Thread(target=self._make_spare, name=f"nooks-spare-{self.name}",
                         daemon=True).start()

    def _make_spare(self) -> None:
        try:
            inc: Incarnation | None = None
            try:
                inc = Incarnation(self.spec)
            except Exception:
                log.exception("%s: a warm spare could not be started", self.name)
            with self._spare_cv:
                keep = inc is not None and not self._closed and self._spare is None
                if keep:
                    self._spare = inc
            if inc is not None and not keep:
                inc.close()  # before ``close`` of the domain returns: nothing left behind
        finally:
            with self._spare_cv:
                self._refilling = False
                self._spare_cv.notify_all()

    def start(self) -> None:
        """Start the driver: spare (or new) domain, then construct it."""
        with self._lifecycle:
            if self._closed:
                raise Closed(f"domain {self.name} is closed")
            inc = self._take_spare()
            if self.spec.fault is not None and inc.hello is not None:
                self.fault_site = inc.hello.note
            self._building = inc
            try:
                inc.construct(self.spec.args, self.spec.kwargs)
            except DomainFailed as e:
                self.failures.append(e.report)
                self._retire(inc, wait=True)  # nothing will close this domain later
                raise
            finally:
                self._building = None
            self._refill_spare()
            self._make_current(inc)

    def _make_current(self, inc: Incarnation) -> None:
        inc.idle_hook = lambda report: self._idle_failure(inc, report)
        self._inc = inc
        if self.spec.runs is not None:
            inc.listen()

    def _idle_failure(self, inc: Incarnation, report: FailureReport) -> None:
        if self._inc is not inc:
            return  # already replaced: whoever replaced it knew it had failed
        self._record(report)
        hook = self.on_idle_failure
        if hook is not None:
            hook(report)

    def wait_failed(self, timeout: float) -> FailureReport | None:
        """Wait until the current domain fails (even while idle); its report, or None."""
        inc = self._inc
        if inc is None or not inc.failed.wait(timeout):
            return None
        return inc.report

    def wait_spare(self) -> None:
        """Wait until the warm spare is up (no-op without one)."""
        with self._spare_cv:
            self._spare_cv.wait_for(lambda: not self._refilling, self.spec.start_deadline)
            spare = self._spare
        if spare is not None and spare.alive:
            with contextlib.suppress(DomainFailed):
                spare.wait_hello()

    def restart(self) -> Restart:
        """Replace a failed (or live) domain by a new one with a freshly constructed driver.

        Releases everything the old domain held. Raises DomainFailed if the new
        driver fails while being constructed.
        """
        with self._lifecycle:
            if self._closed:
                raise Closed(f"domain {self.name} is closed")
            t0 = time.monotonic()
            old, self._inc = self._inc, None
            if old is not None:
                self._retire(old)
            inc = self._take_spare()
            ready = time.monotonic()
            self._building = inc
            try:
                inc.construct(self.spec.args, self.spec.kwargs)
            except DomainFailed as e:
                self.failures.append(e.report)
                self._retire(inc, wait=True)  # nothing will close this domain later
                raise
            finally:
                self._building = None
                # the next spare starts after the driver is built, not competing with it
                self._refill_spare()
            self._make_current(inc)
            r = Restart((ready - t0) * 1e3, (time.monotonic() - t0) * 1e3)
            self.restarts.append(r)
            return r

    def _retire(self, inc: Incarnation, wait: bool = False) -> None:
        inc.close(wait=wait)
        self._retired = [i for i in self._retired if i.pidfd >= 0]
        self._retired.append(inc)

    def close(self) -> None:
        """Stop the domain and its spare; reap them; release all they held.

        A live driver is ended in order first (``Incarnation.shutdown``: its
        finalizers and the interpreter's exit run, within ``spec.exit_timeout``)."""
        with self._lifecycle:
            with self._spare_cv:
                self._closed = True
                while self._refilling:  # a spare being started is closed with the rest
                    self._spare_cv.wait()
            current = self._inc
            if current is not None and current.alive \
                    and not current.shutdown(self.spec.exit_timeout):
                log.warning("%s: the driver did not exit cleanly when closed", self.name)
            for inc in (self._inc, self._spare, *self._retired):
                if inc is not None:
                    inc.close(wait=False)
            for inc in (self._inc, self._spare, *self._retired):
                if inc is not None:
                    inc.reap()
            # the cgroups of incarnations whose exit was seen earlier are being ended on
            # threads of their own: not left behind when the host exits next
            wait_cgroups_ended()
            self._inc = self._spare = None
            self._retired = []

    def __enter__(self) -> Domain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state ---------------------------------------------------------------------------

    def forks_refused(self) -> bool:
        """Whether the domain's task limit has refused a fork since this was last
        asked (a driver that forks past it gets EAGAIN)."""
        inc = self._inc
        cg = inc.cgroup if inc is not None else None
        if inc is None or cg is None:
            return False
        n = cg.forks_refused()
        seen, inc.forks_seen = inc.forks_seen, n
        return n > seen

    @property
    def pid(self) -> int | None:
        return self._inc.pid if self._inc is not None else None

    @property
    def state(self) -> str:
        if self._closed:
            return "closed"
        inc = self._inc
        if inc is None:
            return "down"
        return "live" if inc.alive else "failed"

    @property
    def report(self) -> FailureReport | None:
        """The failure of the current domain, if it has failed."""
        inc = self._inc
        return inc.report if inc is not None else None

    def owns(self, pid: int) -> bool:
        """Whether process (or thread) ``pid`` belongs to the current driver's domain or
        to the one being built, or was started by them."""
        return any(inc is not None and inc.owns(pid) for inc in (self._inc, self._building))

    @property
    def current(self) -> Incarnation | None:
        """The current domain process, if there is one (None while it is replaced)."""
        return self._inc

    @property
    def incarnation(self) -> Incarnation:
        inc = self._inc
        if inc is None:
            raise self._gone()
        return inc

    def _gone(self) -> Closed | Restarting:
        """Why there is no driver to call: closed by its owner, or being replaced."""
        if self._closed:
            return Closed(f"domain {self.name} is closed")
        return Restarting(f"domain {self.name} is being restarted")

    def __repr__(self) -> str:
        return (f"<Domain {self.name} pid={self.pid} {self.state} calls={self.calls} "
                f"recoveries={len(self.restarts)}>")

    # -- calls ---------------------------------------------------------------------------

    def call(self, name: str, *args: Any, deadline: float | None = None,
             lenient: Collection[str] = (), **kwargs: Any) -> Any:
        """Call the driver's ``name`` and return its checked result.

        Raises what the interface declares ordinary (rebuilt on this side),
        InterfaceError if the call itself breaks the declaration, and
        DomainFailed if the driver fails; Restarting while it is being replaced.
        An exception of a type named in ``lenient`` that the driver raises is answered
        as the interface's ``unexpected`` says rather than failing it.
        """
        inc = self._inc
        if inc is None:
            raise self._gone()
        if inc.report is not None:
            raise DomainDown(inc.report)
        try:
            spec = self.iface.by_name[name]
        except KeyError:
            raise InterfaceError(f"{self.iface.name} declares no method {name!r}") from None
        vals = spec.bind(args, kwargs)
        self.calls += 1
        held: list[tuple[Any, int]] = []
        try:
            out = None
            if spec.bulk_args:
                vals = self._stage(inc, spec, vals, held)
            if spec.bulk_result:
                slot = inc.darena.slots.acquire(self.spec.deadline)  # type: ignore[union-attr]
                if slot is not None:
                    held.append((inc.darena, slot))
                    out = m.ArenaRef(inc.darena.offset(slot), inc.darena.slot_size)  # type: ignore[union-attr]
            cid = next(self._ids)
            ch = inc.channel
            w = ch.register(cid, time.monotonic() + (deadline or self.spec.deadline), name)
            try:
                data = m.encode_call(cid, spec.index, vals, 0, out, lenient=lenient)
            except (TypeError, OverflowError) as e:
                ch.forget(cid)
                raise InterfaceError(f"{name}: arguments cannot cross: {e}") from None
            if len(data) > MAX_MESSAGE:
                ch.forget(cid)
                raise InterfaceError(f"{name}: {len(data)} bytes of arguments exceed the "
                                     f"{MAX_MESSAGE}-byte message limit")
            ch.send(data)
            msg = ch.wait(w)
            return self._result(inc, spec, msg, out)
        except DomainFailed as e:
            self._note(e)
            raise
        finally:
            for arena, slot in held:
                arena.slots.release(slot)

    def _stage(self, inc: Incarnation, spec: MethodSpec, vals: tuple[Any, ...],
               held: list[tuple[Any, int]]) -> tuple[Any, ...]:
        """Move large bytes arguments into the kernel arena."""
        arena = inc.karena
        assert arena is not None
        out = list(vals)
        for i in spec.bulk_args:
            v = out[i]
            if isinstance(v, (bytes, bytearray, memoryview)) and \
                    self.spec.inline_max < len(v) <= arena.slot_size:
                slot = arena.slots.acquire(self.spec.deadline)
                if slot is None:
                    continue  # every slot busy: send it inline
                held.append((arena, slot))
                off = arena.offset(slot)
                arena.map[off:off + len(v)] = v
                out[i] = m.ArenaRef(off, len(v))
        return tuple(out)

    def _result(self, inc: Incarnation, spec: MethodSpec, msg: Any, out: m.ArenaRef | None) -> Any:
        if type(msg) is m.Reply:
            try:
                value = spec.result_decoder.decode(msg.result)
            except m.UNDECODABLE as e:
                raise self._misbehaved(inc, f"{spec.name} returned a bad result: {e}",
                                       spec.name) from None
            if type(value) is m.ArenaRef:
                value = self._copy_out(inc, spec, value, out)
            return value
        if type(msg) is m.Raise:
            iface = self.iface
            if not 0 <= msg.error < len(iface.ordinary):
                raise self._misbehaved(inc, f"{spec.name} raised unknown error #{msg.error}",
                                       spec.name)
            try:
                value = iface.ordinary_decoders[msg.error].decode(msg.value)
            except m.UNDECODABLE as e:
                raise self._misbehaved(inc, f"{spec.name} raised a bad "
                                       f"{iface.ordinary[msg.error].exc_type.__name__}: {e}",
                                       spec.name) from None
            raise iface.ordinary[msg.error].rebuild(value)
        if type(msg) is m.Reject:
            raise InterfaceError(f"{spec.name}: {msg.message}")
        raise self._misbehaved(inc, f"answered {spec.name} with {type(msg).__name__}", spec.name)

    def _copy_out(self, inc: Incarnation, spec: MethodSpec, ref: m.ArenaRef,
                  out: m.ArenaRef | None) -> Any:
        if out is None or ref.offset != out.offset or not 0 <= ref.length <= out.length:
            raise self._misbehaved(inc, f"{spec.name} returned {ref}, outside the slot it was "
                                   f"given ({out})", spec.name)
        arena = inc.darena
        assert arena is not None
        data = bytes(arena.map[ref.offset:ref.offset + ref.length])
        try:
            return msgspec.convert(data, spec.result)
        except msgspec.ValidationError as e:
            raise self._misbehaved(inc, f"{spec.name} returned a bad result: {e}",
                                   spec.name) from None

    def condemn(self, detail: str, call: str,
                kind: FailureKind = FailureKind.MISBEHAVED) -> FailureReport:
        """Declare the current driver failed on the host's judgement (e.g. an answer a
        correct driver cannot give: *misbehaved*; a driver out of descriptors:
        *resource*); it is killed like any failed driver."""
        inc = self._inc
        if inc is None:
            raise self._gone()
        exc = self._misbehaved(inc, detail, call, kind)
        self._note(exc)
        return exc.report

    def _misbehaved(self, inc: Incarnation, detail: str, call: str,
                    kind: FailureKind = FailureKind.MISBEHAVED) -> DomainFailed:
        exc = DomainFailed.of(detect.host_verdict(kind, detail,
                                                  driver=self.name, pid=inc.pid, call=call))
        inc.channel.fail(exc)
        broken = inc.channel.broken
        return broken if isinstance(broken, DomainFailed) else exc

    def _note(self, e: DomainFailed) -> None:
        self._record(e.report)

    def _record(self, report: FailureReport) -> None:
        with self._batch_lock:
            if not any(r is report for r in self.failures[-2:]):
                self.failures.append(report)

    # -- deferred calls ------------------------------------------------------------------

    def defer(self, name: str, *args: Any) -> Deferred:
        """Queue a call to be delivered with others in one crossing."""
        spec = self.iface.method(name)
        vals = spec.bind(args, {})
        d = Deferred(self)
        with self._batch_lock:
            self._batch.append((spec, vals, d))
            full = len(self._batch) >= self.batch_size
        if full:
            self.flush()
        return d

    def flush(self) -> None:
        """Deliver every deferred call now and settle their results."""
        with self._batch_lock:
            batch, self._batch = self._batch, []
        if not batch:
            return
        try:
            self._flush(batch)
        except DomainFailed as e:
            self._note(e)
            for _, _, d in batch:
                if not d._done:
                    d._set(error=e)
            raise

    def _flush(self, batch: list[tuple[MethodSpec, tuple[Any, ...], Deferred]]) -> None:
        inc = self._inc
        if inc is None:
            raise self._gone()
        cid = next(self._ids)
        w = inc.channel.register(cid, time.monotonic() + self.spec.deadline, "batch")
        inc.channel.send(m.encode((m.TAG_BATCH, cid, [(s.index, v) for s, v, _ in batch])))
        msg = inc.channel.wait(w)
        self.calls += len(batch)
        if type(msg) is not m.BatchReply or len(msg.results) != len(batch):
            raise self._misbehaved(inc, "answered a batch of deferred calls wrongly", "batch")
        for (spec, _, d), item in zip(batch, msg.results, strict=True):
            try:
                d._set(self._result(inc, spec, item, None))
            except DomainFailed:
                raise
            except Exception as e:
                d._set(error=e)

    # -- faults --------------------------------------------------------------------------

    def inject(self, fault: str, timeout: float = 5.0) -> FailureReport:
        """Make the driver fail now, in the named way (see ``nooks.domain.child.FAULTS``),
        and return its failure once the host has seen it.

        Raises NotTaken if the domain does not read the fault within ``timeout``
        seconds (the thread that reads its channel is busy, e.g. stuck in a call) or
        does not fail after it: nothing happened. A hang is seen as a ping the
        domain does not answer within the call deadline."""
        inc = self._arm(fault)
        if inc.report is not None:
            raise NotTaken(f"the driver has failed already: {inc.report}")
        ch = inc.channel
        cid = next(self._ids)
        expires = time.monotonic() + timeout
        w = ch.register(cid, expires, f"inject {fault}", soft=True, control=True)
        try:
            ch.send(m.encode(m.Inject(fault, cid, expires)))
            ch.wait(w)
        except TimeoutError:
            raise NotTaken(f"the driver did not read the fault within {timeout:g} s "
                           "(busy or stuck in a call)") from None
        except DomainFailed as e:
            return self._noted(e)
        if inc.failed.wait(timeout):
            assert inc.report is not None
            self._record(inc.report)
            return inc.report
        # taken, and no failure yet: a hang shows as a ping nobody answers
        cid = next(self._ids)
        w = ch.register(cid, time.monotonic() + self.spec.deadline, "ping", control=True)
        try:
            ch.send(m.encode(m.Ping(cid)))
            ch.wait(w)
        except DomainFailed as e:
            return self._noted(e)
        raise NotTaken(f"the driver took the fault ({fault}) and is still answering")

    def inject_later(self, fault: str) -> None:
        """Send the fault and return at once: the driver takes it when it next reads its
        channel, and the failure is seen by whatever comes next (for tests that make a
        fault meet a request)."""
        self._arm(fault).channel.send(m.encode(m.Inject(fault)))

    def _arm(self, fault: str) -> Incarnation:
        if fault not in FAULTS:
            raise InterfaceError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        return self.incarnation

    def _noted(self, e: DomainFailed) -> FailureReport:
        self._note(e)
        return e.report
