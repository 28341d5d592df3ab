"""One process of a domain: spawned, watched, served and torn down.

An incarnation owns everything the host holds for one domain process: the
process and its pidfd, the channel, both arenas and the object tracker. When
the process dies, ``close`` releases all of it; nothing outlives it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from nooks.domain import detect
from nooks.domain.config import SOCKET_BUFFER, ChildConfig
from nooks.domain.monitor import monitor
from nooks.domain.spec import DriverSpec, ref
from nooks.domain.tracker import NotOwned, ObjectTracker
from nooks.errors import Closed, DomainFailed, FailureKind, FailureReport, InterfaceError
from nooks.wrappers import InterfaceSpec, declare
from nooks.xpc import messages as m
from nooks.xpc.arena import HostArena
from nooks.xpc.channel import CONTROL_ID, Channel

log = logging.getLogger(__name__)


class KernelContext:
    """What a kernel-call implementation knows about the domain it serves."""

    def __init__(self, name: str, tracker: ObjectTracker) -> None:
        self.name = name
        self.tracker = tracker


class Incarnation:
    def __init__(self, spec: DriverSpec, *, with_fault: bool = False) -> None:
        self.spec = spec
        self.name = spec.label
        self.iface: InterfaceSpec = declare(spec.interface)
        self.kiface: InterfaceSpec | None = declare(spec.kernel) if spec.kernel else None
        self.tracker = ObjectTracker(self.name)
        self.kernel_impl: Any = None
        self._call_done: Any = None
        # called (on the monitor thread) when the domain dies with no call in flight
        self.idle_hook: Callable[[FailureReport], None] | None = None
        self.report: FailureReport | None = None
        self.closed = False
        self.failed = threading.Event()  # set once the channel has failed
        self.hello: m.Hello | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._exit_lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.pidfd = -1

        host_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.karena = self.darena = None
        try:
            for s in (host_sock, child_sock):
                _grow_buffers(s)
            self.karena = HostArena(f"nooks-{self.name}-kernel", spec.slot_size, spec.slots,
                                    domain_writable=False)
            self.darena = HostArena(f"nooks-{self.name}-domain", spec.slot_size, spec.slots,
                                    domain_writable=True)
            cfg = ChildConfig(
                name=self.name, target=spec.target, interface=ref(spec.interface),
                kernel=ref(spec.kernel) if spec.kernel else None,
                sock_fd=child_sock.fileno(), kernel_arena_fd=self.karena.fd,
                domain_arena_fd=self.darena.fd, arena_size=self.karena.size,
                inline_max=spec.inline_max, threads=spec.threads, call_style=spec.call_style,
                seccomp=list(spec.limits.seccomp) if spec.limits.seccomp is not None else None,
                preload=list(spec.preload), spin_us=spec.spin_us,
                fault=spec.fault if with_fault else None,
            )
            env = dict(os.environ)
            paths = [os.getcwd(), *(p for p in sys.path if p and os.path.isdir(p))]
            env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nooks.domain", msgspec.json.encode(cfg).decode()],
                pass_fds=(child_sock.fileno(), self.karena.fd, self.darena.fd),
                stdin=subprocess.DEVNULL, env=env, user=spec.limits.user,
            )
        except BaseException:
            host_sock.close()
            child_sock.close()
            self._close_arenas()
            raise
        child_sock.close()
        self.pid = self.proc.pid
        self._apply_limits()
        self.sock = host_sock
        self.channel = Channel(host_sock, self, spin_us=spec.spin_us if spec.host_spin_us is None
                               else spec.host_spin_us)
        self._control = self.channel.register(CONTROL_ID, time.monotonic() + spec.start_deadline,
                                              "start")
        self.pidfd = os.pidfd_open(self.pid)
        monitor().watch(self.pidfd, self._on_exit)

    def _apply_limits(self) -> None:
        lim = self.spec.limits
        for res, value in ((resource.RLIMIT_AS, lim.address_space),
                           (resource.RLIMIT_CPU, lim.cpu_seconds),
                           (resource.RLIMIT_NOFILE, lim.open_files)):
            if value is not None:
                with contextlib.suppress(ProcessLookupError):
                    resource.prlimit(self.pid, res, (value, value))

    # -- start-up ------------------------------------------------------------------------

    def wait_hello(self) -> m.Hello:
        """Wait until the domain is up with the driver module imported."""
        if self.hello is None:
            msg = self.channel.wait(self._control)
            if not isinstance(msg, m.Hello):
                raise self._fail_now(FailureKind.MISBEHAVED, f"sent {msg!r} instead of Hello",
                                     "start")
            self.hello = msg
        return self.hello

    def construct(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Build the driver inside the domain; raises DomainFailed if it cannot."""
        self.wait_hello()
        if self.spec.kernel_impl is not None:
            self.kernel_impl = self.spec.kernel_impl(KernelContext(self.name, self.tracker))
            self._call_done = getattr(self.kernel_impl, "call_done", None)
        w = self.channel.register(CONTROL_ID, time.monotonic() + self.spec.start_deadline,
                                  "construct")
        try:
            data = m.encode(m.Construct(msgspec.Raw(m.encode(list(args))),
                                        msgspec.Raw(m.encode(kwargs))))
        except TypeError as e:
            self.channel.forget(CONTROL_ID)
            raise InterfaceError(f"driver arguments cannot cross: {e}") from None
        self.channel.send(data)
        msg = self.channel.wait(w)
        if not isinstance(msg, m.Ready):
            raise self._fail_now(FailureKind.MISBEHAVED, f"sent {msg!r} instead of Ready",
                                 "construct")

    # -- failure -------------------------------------------------------------------------

    def _fail_now(self, kind: FailureKind, detail: str, call: str | None,
                  traceback: str | None = None) -> DomainFailed:
        exc = DomainFailed.of(detect.host_verdict(kind, detail, driver=self.name, pid=self.pid,
                                                  call=call, traceback=traceback))
        self.channel.fail(exc)
        assert self.channel.broken is not None
        return self.channel.broken  # type: ignore[return-value]

    def _current_call(self) -> str | None:
        calls = [c for c in self.channel.in_flight() if c != "start"]
        return ", ".join(calls) if calls else None

    def on_broken(self, exc: BaseException) -> None:
        if isinstance(exc, DomainFailed):
            self.report = exc.report
        self.kill()
        self.failed.set()

    def on_eof(self) -> BaseException:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            return DomainFailed.of(detect.host_verdict(
                FailureKind.MISBEHAVED, "closed its channel but kept running",
                driver=self.name, pid=self.pid, call=self._current_call()))
        return DomainFailed.of(detect.classify_exit(rc, driver=self.name, pid=self.pid,
                                                    call=self._current_call()))

    def on_garbage(self, detail: str) -> BaseException:
        return DomainFailed.of(detect.host_verdict(
            FailureKind.MISBEHAVED, detail, driver=self.name, pid=self.pid,
            call=self._current_call()))

    def on_deadline(self, call: str) -> BaseException:
        return DomainFailed.of(detect.host_verdict(
            FailureKind.HUNG, f"no answer within the deadline ({self.spec.deadline:g} s)"
            if call not in ("start", "construct") else "did not start within the deadline",
            driver=self.name, pid=self.pid, call=call))

    def on_control(self, msg: Any) -> BaseException | None:
        if isinstance(msg, m.Failure):
            return DomainFailed.of(detect.from_domain(
                msg.kind, msg.detail, msg.traceback, driver=self.name, pid=self.pid,
                call=self._current_call()))
        return None

    def on_reply(self) -> None:
        done = self._call_done
        if done is not None:
            done()

    def _on_exit(self) -> None:
        """Monitor thread: the process has exited."""
        assert self.proc is not None
        self.proc.wait()
        before = self.channel.broken
        self.channel.drain()
        self._release_pidfd()
        hook = self.idle_hook
        if before is None and self.report is not None and hook is not None and not self.closed:
            hook(self.report)

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    # -- kernel calls --------------------------------------------------------------------

    def on_request(self, msg: m.Call) -> None:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=2, thread_name_prefix=f"nooks-kernel-{self.name}")
        with contextlib.suppress(RuntimeError):  # shutting down
            self._executor.submit(self.serve, msg)

    def on_post(self, msg: m.Post) -> BaseException | None:
        """Run posted kernel calls in order; one that is malformed or fails fails the driver
        (it was told nothing, so it carries on as if the call had worked)."""
        kiface = self.kiface
        for method, raw in msg.calls:
            if kiface is None or not 0 <= method < len(kiface.methods) \
                    or not kiface.methods[method].posted:
                return self._fail_now(FailureKind.MISBEHAVED,
                                      f"posted kernel call #{method}, which is not posted",
                                      self._current_call())
            spec = kiface.methods[method]
            try:
                args = msgspec.structs.astuple(spec.args_decoder.decode(raw))
            except msgspec.ValidationError as e:
                return self._fail_now(FailureKind.MISBEHAVED,
                                      f"kernel call {spec.name}: {spec.describe_error(e)}",
                                      self._current_call())
            if any(isinstance(args[i], m.ArenaRef) for i in spec.bulk_args):
                return self._fail_now(FailureKind.MISBEHAVED,
                                      f"kernel call {spec.name}: arena references are host-only",
                                      self._current_call())
            try:
                getattr(self.kernel_impl, spec.name)(*args)
            except Exception as e:
                return self._fail_now(FailureKind.MISBEHAVED,
                                      f"posted kernel call {spec.name} failed: "
                                      f"{type(e).__name__}: {e}", self._current_call())
        return None

    def serve(self, msg: m.Call) -> None:
        """Check and run one kernel call from the driver, and send its reply."""
        kiface = self.kiface
        if kiface is None or not 0 <= msg.method < len(kiface.methods):
            self._fail_now(FailureKind.MISBEHAVED, f"made unknown kernel call #{msg.method}",
                           self._current_call())
            return
        spec = kiface.methods[msg.method]
        if spec.posted:
            self._fail_now(FailureKind.MISBEHAVED, f"waited for posted kernel call {spec.name}",
                           self._current_call())
            return
        try:
            args = list(msgspec.structs.astuple(spec.args_decoder.decode(msg.args)))
            for i, tracked in spec.tracked_args:
                obj = self.tracker.get(args[i], tracked.kind)
                if tracked.role == "release":
                    self.tracker.remove(args[i], tracked.kind)
                args[i] = obj
        except msgspec.ValidationError as e:
            self._fail_now(FailureKind.MISBEHAVED,
                           f"kernel call {spec.name}: {spec.describe_error(e)}",
                           self._current_call())
            return
        except NotOwned as e:
            self._fail_now(FailureKind.MISBEHAVED, f"kernel call {spec.name}: {e}",
                           self._current_call())
            return
        for i in spec.bulk_args:
            if isinstance(args[i], m.ArenaRef):
                self._fail_now(FailureKind.MISBEHAVED,
                               f"kernel call {spec.name}: arena references are host-only",
                               self._current_call())
                return
        try:
            result = getattr(self.kernel_impl, spec.name)(*args)
        except BaseException as e:
            k = kiface.ordinary_index(e)
            if k >= 0:
                self.channel.send(m.encode_raise(msg.id, k, getattr(e, kiface.ordinary[k].attr)))
            else:
                log.exception("kernel call %s of %s failed on the host", spec.name, self.name)
                self.channel.send(m.encode(m.Reject(msg.id, f"{type(e).__name__}: {e}")))
            return
        if spec.tracked_result is not None:
            kind = spec.tracked_result.kind
            result = self.tracker.add(kind, result, getattr(self.kernel_impl, f"release_{kind}",
                                                            None))
        self.channel.send(m.encode_reply(msg.id, result))

    # -- teardown ------------------------------------------------------------------------

    def close(self, wait: bool = True) -> None:
        """Kill the process and release everything it held.

        With ``wait`` the process is reaped before returning; otherwise the
        monitor reaps it when it is gone.
        """
        if self.closed:
            return
        self.closed = True
        if self.channel.broken is None:
            self.channel.fail(_closed())
        self.kill()
        if wait:
            self.reap()
        self.tracker.release_all()
        close = getattr(self.kernel_impl, "close", None)
        if close is not None:
            close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self.sock.close()
        self._close_arenas()

    def reap(self, timeout: float = 10.0) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error("domain %s pid %d did not die", self.name, self.pid)
            return
        self._release_pidfd()

    def _release_pidfd(self) -> None:
        with self._exit_lock:
            if self.pidfd >= 0:
                monitor().unwatch(self.pidfd)
                os.close(self.pidfd)
                self.pidfd = -1

    def _close_arenas(self) -> None:
        for a in (self.karena, self.darena):
            if a is not None:
                a.close()

    @property
    def alive(self) -> bool:
        return not self.closed and self.channel.broken is None


def _closed() -> BaseException:
    return Closed("the domain was closed")


def _grow_buffers(s: socket.socket) -> None:
    for opt, fallback in ((32, socket.SO_SNDBUF), (33, socket.SO_RCVBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)  # SO_*BUFFORCE
        except PermissionError:
            s.setsockopt(socket.SOL_SOCKET, fallback, SOCKET_BUFFER)
