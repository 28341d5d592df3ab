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
import pwd
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
from nooks.domain.cgroup import DomainCgroup
from nooks.domain.config import SOCKET_BUFFER, ChildConfig
from nooks.domain.monitor import monitor
from nooks.domain.spec import DriverSpec, ref
from nooks.domain.tracker import NotOwned, ObjectTracker
from nooks.errors import (
    Closed,
    DomainFailed,
    FailureKind,
    FailureReport,
    InterfaceError,
    LimitExceeded,
)
from nooks.wrappers import InterfaceSpec, declare
from nooks.xpc import messages as m
from nooks.xpc.arena import HostArena
from nooks.xpc.channel import CONTROL_ID, LISTEN, LISTEN_ID, Channel

log = logging.getLogger(__name__)

# kernel calls a domain may have waiting on the host, outside any call of the host's
MAX_PENDING_KERNEL_CALLS = 256


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
        self.cgroup: DomainCgroup | None = None
        self.forks_seen = 0  # forks its task limit had refused when last looked at
        self.constructed = False  # the driver is built (it has state worth ending in order)
        self.pending_kernel_calls = 0  # served in the executor, or waiting for it
        self._pending_lock = threading.Lock()

        host_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.karena = self.darena = None
        try:
            for s in (host_sock, child_sock):
                _grow_buffers(s)
            self.karena = HostArena(f"nooks-{self.name}-kernel", spec.slot_size, spec.slots,
                                    domain_writable=False)
            self.darena = HostArena(f"nooks-{self.name}-domain", spec.slot_size, spec.slots,
                                    domain_writable=True)
            self.cgroup = DomainCgroup.create(self.name, spec.limits.tasks)
            cfg = ChildConfig(
                name=self.name, target=spec.target, interface=ref(spec.interface),
                kernel=ref(spec.kernel) if spec.kernel else None,
                sock_fd=child_sock.fileno(), kernel_arena_fd=self.karena.fd,
                domain_arena_fd=self.darena.fd, arena_size=self.karena.size,
                inline_max=spec.inline_max, threads=spec.threads, call_style=spec.call_style,
                seccomp=list(spec.limits.seccomp) if spec.limits.seccomp is not None else None,
                preload=list(spec.preload), spin_us=spec.spin_us,
                busy_spin_us=spec.busy_spin_us,
                fault=spec.fault if with_fault else None,
                host_pid=os.getpid(), harden=spec.limits.harden,
                cgroup=self.cgroup.relative if self.cgroup is not None else None,
                hide=list(spec.hide), fd_floor=fd_floor(spec.limits.open_files),
                regions=[(r.name, r.fd, r.size) for r in spec.regions],
                descriptors=[(d.name, d.fd) for d in spec.descriptors], runs=spec.runs,
            )
            lim = spec.limits
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nooks.domain", msgspec.json.encode(cfg).decode()],
                pass_fds=(child_sock.fileno(), self.karena.fd, self.darena.fd,
                          *(r.fd for r in spec.regions), *(d.fd for d in spec.descriptors)),
                stdin=subprocess.DEVNULL, env=domain_environment(spec),
                user=lim.user, group=lim.group,
                extra_groups=[] if lim.user is not None or lim.group is not None else None,
                # its own session: a terminal's signals (Ctrl-C) reach the host only, and
                # the domain's process group is everything it started
                start_new_session=True,
            )
        except BaseException:
            host_sock.close()
            child_sock.close()
            self._close_arenas()
            self._end_cgroup()
            raise
        child_sock.close()
        self.pid = self.proc.pid
        if self.cgroup is not None:
            self.cgroup.add(self.pid)
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
        limits = [(resource.RLIMIT_AS, lim.address_space), (resource.RLIMIT_CPU, lim.cpu_seconds),
                  (resource.RLIMIT_NOFILE, lim.open_files)]
        if self.cgroup is None and lim.user not in (None, 0):
            # no pids cgroup: the per-user process count is the only bound there is
            limits.append((resource.RLIMIT_NPROC, lim.tasks))
        for res, value in limits:
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
        self.constructed = True

    def listen(self) -> None:
        """Read the channel even while no host call waits for an answer: the driver
        serves a kernel channel of its own (``DriverSpec.runs``) and makes kernel
        calls of its own accord. A failure the reader meets is reported as a failure
        while idle (``idle_hook``)."""
        threading.Thread(target=self._listen, name=f"nooks-listen-{self.name}",
                         daemon=True).start()

    def _listen(self) -> None:
        while not self.closed:
            try:
                w = self.channel.register(LISTEN_ID, time.monotonic() + LISTEN_WAIT, LISTEN,
                                          soft=True)
                self.channel.wait(w)
            except TimeoutError:
                continue
            except DomainFailed as e:
                hook = self.idle_hook
                if hook is not None and not self.closed:
                    hook(e.report)
                return
            except BaseException:
                return  # (closed)

    # -- failure -------------------------------------------------------------------------

    def _fail_now(self, kind: FailureKind, detail: str, call: str | None,
                  traceback: str | None = None) -> DomainFailed:
        exc = DomainFailed.of(detect.host_verdict(kind, detail, driver=self.name, pid=self.pid,
                                                  call=call, traceback=traceback))
        self.channel.fail(exc)
        assert self.channel.broken is not None
        return self.channel.broken  # type: ignore[return-value]

    def _current_call(self) -> str | None:
        calls = [c for c in self.channel.in_flight() if c != "start"]  # (nor LISTEN)
        if not calls and self.spec.serving is not None:
            return self.spec.serving()
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
                call=self._current_call(), exception=msg.exception))
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
        # what it started dies with it, and its cgroup goes (off this thread: the last
        # of them may take a moment to be reaped)
        if self.cgroup is not None:
            t = threading.Thread(target=self._end_cgroup, name=f"nooks-cgroup-{self.name}",
                                 daemon=True)
            with _ending_lock:  # started under the lock: no one joins it unstarted
                _ending.add(t)
                t.start()
        hook = self.idle_hook
        if before is None and self.report is not None and hook is not None and not self.closed:
            hook(self.report)

    # -- kernel calls --------------------------------------------------------------------

    def on_request(self, msg: m.Call) -> BaseException | None:
        with self._pending_lock:
            if self.pending_kernel_calls >= MAX_PENDING_KERNEL_CALLS:
                return self.on_flood(f"made more than {MAX_PENDING_KERNEL_CALLS} kernel "
                                     "calls at once")
            self.pending_kernel_calls += 1
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=2, thread_name_prefix=f"nooks-kernel-{self.name}")
        try:
            self._executor.submit(self._serve_queued, msg)
        except RuntimeError:  # shutting down
            self._queued_done()
        return None

    def _serve_queued(self, msg: m.Call) -> None:
        try:
            self.serve(msg)
        finally:
            self._queued_done()

    def _queued_done(self) -> None:
        with self._pending_lock:
            self.pending_kernel_calls -= 1

    def on_flood(self, detail: str) -> BaseException:
        return DomainFailed.of(detect.host_verdict(
            FailureKind.RESOURCE, detail, driver=self.name, pid=self.pid,
            call=self._current_call()))

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
            except m.UNDECODABLE as e:
                return self._fail_now(FailureKind.MISBEHAVED,
                                      f"kernel call {spec.name}: {spec.describe_error(e)}",
                                      self._current_call())
            if any(isinstance(args[i], m.ArenaRef) for i in spec.bulk_args):
                return self._fail_now(FailureKind.MISBEHAVED,
                                      f"kernel call {spec.name}: arena references are host-only",
                                      self._current_call())
            try:
                getattr(self.kernel_impl, spec.name)(*args)
            except LimitExceeded as e:
                return self._fail_now(FailureKind.RESOURCE, f"kernel call {spec.name}: {e}",
                                      self._current_call())
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
        except m.UNDECODABLE as e:
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
        except LimitExceeded as e:
            self._fail_now(FailureKind.RESOURCE, f"kernel call {spec.name}: {e}",
                           self._current_call())
            return
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
            release = getattr(self.kernel_impl, f"release_{kind}", None)
            try:
                result = self.tracker.add(kind, result, release)
            except LimitExceeded as e:
                if release is not None:
                    release(result)  # made for a domain that may not have it
                self._fail_now(FailureKind.RESOURCE, f"kernel call {spec.name}: {e}",
                               self._current_call())
                return
        self.channel.send(m.encode_reply(msg.id, result))

    # -- teardown ------------------------------------------------------------------------

    def shutdown(self, timeout: float) -> bool:
        """End a live driver in order: it is let go (its finalizers run) and the domain
        exits normally while the host still serves its kernel calls, within
        ``timeout`` seconds; then everything is released as by ``close``. True if it
        exited on its own with status 0; the host commits what it wrote last."""
        clean = False
        if not self.closed and self.channel.broken is None and self.constructed:
            self.closed = True  # an exit now is not a failure to recover from
            w = self.channel.register(CONTROL_ID, time.monotonic() + timeout, "exit",
                                      soft=True)
            try:
                self.channel.send(m.encode(m.Shutdown()))
                self.channel.wait(w)  # nothing answers it: it ends at the channel's end
            except DomainFailed as e:
                clean = e.report.exit_status == 0 and e.report.signal is None
            except (Closed, TimeoutError):
                pass
            if clean:
                done = self._call_done  # what the driver wrote as it exited is done too
                if done is not None:
                    done()
            self._teardown(wait=True)
            return clean
        self.close()
        return clean

    def close(self, wait: bool = True) -> None:
        """Kill the process and everything it started, and release all it held.

        With ``wait`` the process is reaped before returning; otherwise the
        monitor reaps it when it is gone.
        """
        if self.closed:
            return
        self.closed = True
        self._teardown(wait)

    def _teardown(self, wait: bool) -> None:
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

    def kill(self) -> None:
        """SIGKILL the domain and everything it started (its cgroup, its group)."""
        if self.cgroup is not None:
            self.cgroup.kill()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def reap(self, timeout: float = 10.0) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error("domain %s pid %d did not die", self.name, self.pid)
            return
        self._release_pidfd()
        self._end_cgroup()

    def _end_cgroup(self) -> None:
        try:
            with self._exit_lock:
                cg, self.cgroup = self.cgroup, None
            if cg is not None:
                cg.kill()
                if not cg.remove():
                    log.warning("the cgroup of domain %s is still busy: %s", self.name,
                                cg.path)
        finally:
            with _ending_lock:
                _ending.discard(threading.current_thread())

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

    def owns(self, pid: int) -> bool:
        """Whether process or thread ``pid`` is this domain or something it started."""
        if pid <= 0:
            return False
        if pid == self.pid:
            return True
        cg = self.cgroup
        if cg is not None:
            try:
                with open(f"/proc/{pid}/cgroup") as f:
                    return any(line.rstrip("\n") == "0::" + cg.relative for line in f)
            except OSError:
                return False
        return os.path.exists(f"/proc/{self.pid}/task/{pid}")

    @property
    def alive(self) -> bool:
        return not self.closed and self.channel.broken is None


LISTEN_WAIT = 1e6  # seconds a listening reader waits before it registers again


def _closed() -> BaseException:
    return Closed("the domain was closed")


# what a domain's environment keeps of the host's (besides PYTHON* settings)
KEPT_ENVIRONMENT = ("PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "FUSE_LIBRARY_NAME")


def domain_environment(spec: DriverSpec) -> dict[str, str]:
    """A minimal environment: the host's locale, search path and Python settings (no
    credentials, sockets or other secrets it may hold), the module path the spec
    fixed, a marker, and what the spec adds."""
    env = {k: v for k, v in os.environ.items()
           if k in KEPT_ENVIRONMENT or k.startswith("LC_")
           or (k.startswith("PYTHON") and k not in ("PYTHONPATH", "PYTHONSTARTUP"))}
    env.setdefault("PATH", os.defpath)
    home = "/"
    if spec.limits.user is not None:
        with contextlib.suppress(KeyError):
            home = pwd.getpwuid(spec.limits.user).pw_dir
    elif "HOME" in os.environ:
        home = os.environ["HOME"]
    env["HOME"] = home
    env["PYTHONPATH"] = os.pathsep.join(spec.path)
    env["NOOKS_DOMAIN"] = spec.label
    env.update(spec.limits.env)
    return env


def _grow_buffers(s: socket.socket) -> None:
    for opt, fallback in ((32, socket.SO_SNDBUF), (33, socket.SO_RCVBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)  # SO_*BUFFORCE
        except PermissionError:
            s.setsockopt(socket.SOL_SOCKET, fallback, SOCKET_BUFFER)


def fd_floor(open_files: int | None) -> int:
    """Where a domain's own descriptors go: near the top of what it may open (the
    driver's come from the bottom; without a limit, as if it were 1024)."""
    limit = open_files if open_files is not None else 1024
    return max(3, limit - RESERVED_FDS)


RESERVED_FDS = 8  # the domain's own descriptors, kept at the top of its range


# cgroups of domains that exited, being ended off the exit's thread
_ending: set[threading.Thread] = set()
_ending_lock = threading.Lock()


def wait_cgroups_ended(timeout: float = 5.0) -> None:
    """Wait until the cgroups of the domains that have exited are ended (each is
    killed and removed on a thread of its own, off the exit's path)."""
    end = time.monotonic() + timeout
    while True:
        with _ending_lock:
            left = list(_ending)
        if not left:
            return
        for t in left:
            t.join(max(0.0, end - time.monotonic()))
        if time.monotonic() >= end:
            return
