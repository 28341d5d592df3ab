"""The domain runtime: what runs inside a protection domain (a child process).

Started by the host as ``python -m nooks.domain.child CONFIG``. It maps the
kernel arena read-only and the domain arena read-write, imports the driver's
module, says Hello and waits: that is a warm spare. On Construct it builds the
driver, unmodified, and serves calls until the host closes the channel.

Rules:

* The host is trusted; the driver is not. Anything the driver raises that its
  interface does not declare ordinary is reported as a Failure and the domain
  exits at once: a driver that raised has unknown state.
* MemoryError is reported with a message encoded at start-up, so reporting it
  needs no memory.
* With ``threads == 0`` calls run one at a time on the main thread, which also
  reads the channel; a kernel call made from that thread reads the channel
  itself until its reply comes, queueing calls that arrive meanwhile.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import fcntl
import gc
import importlib
import itertools
import os
import queue
import socket
import sys
import threading
import time
import traceback
from typing import Any, NoReturn

import msgspec

from nooks.domain import cgroup, harden
from nooks.domain.config import MAX_MESSAGE, SOCKET_BUFFER, ChildConfig, apply_seccomp
from nooks.domain.detect import EXIT_FAILURE_REPORTED, EXIT_RESOURCE
from nooks.errors import InterfaceError, OutOfTasks
from nooks.wrappers import InterfaceSpec, declare, load
from nooks.xpc import messages as m
from nooks.xpc.arena import map_readonly, map_writable
from nooks.xpc.poll import Poller

_runtime: Runtime | None = None


_native_kernel: Any = None
_host_fd = -1  # a pidfd of the host, watched (from the start, or once the driver is built)


def kernel() -> Any:
    """The kernel-call proxy of the domain this code runs in (for drivers that use it).

    In native mode, the host's kernel implementation itself.
    """
    if _runtime is not None and _runtime.kernel is not None:
        return _runtime.kernel
    if _native_kernel is not None:
        return _native_kernel
    raise RuntimeError("not running in a nooks domain with a kernel interface")


def forks_refused() -> int:
    """How many forks the task limit of the domain this code runs in has refused so
    far (its cgroup2 cgroup's ``pids.events``; 0 outside a domain, or without one)."""
    global _pids_events
    if _runtime is None or _runtime.cfg.cgroup is None:
        return 0
    if _pids_events is None:
        _pids_events = cgroup.own_events() or ""
    return cgroup.refused_in(_pids_events) if _pids_events else 0


_pids_events: str | None = None


def set_native_kernel(k: Any) -> None:
    global _native_kernel
    _native_kernel = k


_native_regions: dict[str, memoryview] = {}


def region(name: str) -> memoryview:
    """The shared memory named ``name`` (a device's registers, its DMA memory), mapped
    read-write in this domain; natively, the host's own mapping."""
    found = _runtime.regions.get(name) if _runtime is not None else _native_regions.get(name)
    if found is None:
        raise KeyError(f"no shared region {name!r} in this domain")
    return found


def set_native_regions(regions: dict[str, memoryview]) -> None:
    _native_regions.clear()
    _native_regions.update(regions)


def descriptor(name: str) -> int:
    """The kernel channel named ``name`` that the host handed this domain to serve."""
    found = _runtime.descriptors.get(name) if _runtime is not None else None
    if found is None:
        raise KeyError(f"no descriptor {name!r} in this domain")
    return found


def kernel_arena_address() -> int:
    """Address of the read-only kernel arena in this process."""
    if _runtime is None:
        raise RuntimeError("not running in a nooks domain")
    return _runtime.kernel_arena_address


class _Pending:
    __slots__ = ("event", "msg")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.msg: Any = None


# posted kernel calls are sent once this much data, or this many calls, are queued
POST_BYTES = 1 << 20
POST_CALLS = 256


class KernelProxy:
    """Makes kernel calls on behalf of the driver: ``kernel().call("name", args...)``."""

    def __init__(self, rt: Runtime, spec: InterfaceSpec) -> None:
        self._rt = rt
        self._spec = spec

    def call(self, name: str, *args: Any) -> Any:
        return self._rt.kernel_call(self._spec, name, args)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        self._spec.method(name)
        return lambda *args: self.call(name, *args)


class Runtime:
    def __init__(self, cfg: ChildConfig) -> None:
        self.cfg = cfg
        self.sock = socket.socket(fileno=cfg.sock_fd)
        for opt in (32, 33):  # SO_SNDBUFFORCE, SO_RCVBUFFORCE
            with contextlib.suppress(PermissionError):
                self.sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        self.kernel_arena_address, self.kernel_arena = map_readonly(
            cfg.kernel_arena_fd, cfg.arena_size)
        self.domain_arena = map_writable(cfg.domain_arena_fd, cfg.arena_size)
        os.close(cfg.kernel_arena_fd)
        os.close(cfg.domain_arena_fd)
        self.regions: dict[str, memoryview] = {}
        for name, fd, size in cfg.regions:
            self.regions[name] = map_writable(fd, size)
            os.close(fd)
        self.descriptors = {name: _above(fd, cfg.fd_floor) for name, fd in cfg.descriptors}
        self.iface = declare(load(cfg.interface))
        self.kernel: KernelProxy | None = None
        if cfg.kernel:
            self.kernel = KernelProxy(self, declare(load(cfg.kernel)))
        self.decoder = msgspec.msgpack.Decoder(m.ToDomain)
        self.any_decoder = msgspec.msgpack.Decoder()
        self.buf = bytearray(MAX_MESSAGE)
        self.poller = Poller(cfg.spin_us, cfg.busy_spin_us)
        self.view = memoryview(self.buf)
        self.send_lock = threading.Lock()
        self.posted: list[tuple[int, tuple[Any, ...]]] = []  # posted kernel calls not yet sent
        self.posted_bytes = 0
        self.exiting = False  # after Shutdown: posted calls go out as they are made
        self.backlog: collections.deque[Any] = collections.deque()
        self.pending: dict[int, _Pending] = {}
        self.ids = itertools.count(1 << 32)  # distinct from the host's ids
        self.local = threading.local()
        self.main_thread = threading.get_ident()
        self.methods: list[Any] = []
        self.driver: Any = None
        self.jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.oom_report = m.encode(
            m.Failure("resource", "MemoryError: the driver ran out of memory"))

    # -- channel -------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        with self.send_lock:
            if self.posted:
                self._send_posted()
            self._send(data)

    def _send(self, data: bytes) -> None:
        """One message: one datagram, or fragments of one if it is too large (under
        ``send_lock``, so that they follow each other)."""
        if len(data) <= MAX_MESSAGE:
            self.sock.send(data)
            return
        view = memoryview(data)
        for at in range(0, len(data), m.FRAGMENT_DATA):
            piece = view[at:at + m.FRAGMENT_DATA]
            self.sock.send(m.encode((m.TAG_FRAGMENT, at + len(piece) >= len(data), piece)))

    def post(self, index: int, args: tuple[Any, ...]) -> None:
        """Queue a posted kernel call; it goes out before whatever is sent next (at once
        while the domain is exiting: nothing may follow to carry it)."""
        with self.send_lock:
            self.posted.append((index, args))
            self.posted_bytes += sum(len(a) for a in args if isinstance(a, bytes))
            if self.exiting or self.posted_bytes >= POST_BYTES \
                    or len(self.posted) >= POST_CALLS:
                self._send_posted()

    def _send_posted(self) -> None:
        calls, self.posted, self.posted_bytes = self.posted, [], 0
        self._send(m.encode((m.TAG_POST, calls)))

    def recv(self) -> Any:
        n = self.poller.recv(self.sock, self.buf)
        if n == 0:
            os._exit(0)  # the host closed the channel: nothing more to do
        return self.decoder.decode(bytes(self.view[:n]))

    # -- failure -------------------------------------------------------------------------

    def fail(self, exc: BaseException) -> NoReturn:
        """Report a failure to the host and exit: the driver's state is unknown now."""
        if isinstance(exc, MemoryError):
            try:
                self.send(self.oom_report)
            finally:
                os._exit(EXIT_RESOURCE)
        try:
            kind = "misbehaved"
            detail = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, OutOfTasks) or (
                    isinstance(exc, OSError) and exc.errno in (24, 23, 12)):  # EMFILE ENFILE ENOMEM
                kind = "resource"
            tb = "".join(traceback.format_exception(exc))
            self.send(m.encode(m.Failure(kind, detail, tb,
                                         type(exc).__name__ if isinstance(exc, Exception)
                                         else "")))
        finally:
            os._exit(EXIT_FAILURE_REPORTED)

    # -- start-up ------------------------------------------------------------------------

    def start(self) -> None:
        target = load(self.cfg.target)  # imports the driver's module: the spare is warm now
        for module in self.cfg.preload:
            importlib.import_module(module)
        note = ""
        if self.cfg.fault is not None:
            from nooks.faults import loader

            site = loader.last_site()
            note = (f"{site.kind} at line {site.line} in {site.function}: {site.what}"
                    if site is not None else "the faulty module was not loaded")
        self.send(m.encode(m.Hello(os.getpid(), self.kernel_arena_address, note)))
        while True:
            msg = self.recv()
            if isinstance(msg, m.Construct):
                break
            if isinstance(msg, m.Shutdown):
                os._exit(0)  # a spare: nothing was built, nothing to end
            self.control(msg)
        try:
            args = self.any_decoder.decode(msg.args)
            kwargs = self.any_decoder.decode(msg.kwargs)
            with harden.beneath(self.cfg.hide):
                self.driver = target(*args, **kwargs)
            self.methods = [self._bind(spec.name) for spec in self.iface.methods]
            _built(self.cfg)
        except BaseException as e:
            self.fail(e)
        if self.cfg.seccomp is not None:
            apply_seccomp(self.cfg.seccomp)
        self.send(m.encode(m.Ready()))
        if self.cfg.runs is not None:
            threading.Thread(target=self._run_own, args=(getattr(self.driver, self.cfg.runs),),
                             name="nooks-runs", daemon=True).start()

    def _run_own(self, method: Any) -> None:
        """The driver serving its own channel: what escapes is a failure; a return (its
        channel closed) leaves the domain to wait for the host's Shutdown."""
        try:
            method()
        except BaseException as e:
            self.fail(e)

    def _bind(self, name: str) -> Any:
        if self.cfg.call_style == "__call__":
            call = self.driver.__call__
            return lambda *args: call(name, *args)
        return getattr(self.driver, name, None)

    # -- serving -------------------------------------------------------------------------

    def serve(self) -> NoReturn:
        if self.cfg.threads:
            for _ in range(self.cfg.threads):
                threading.Thread(target=self._worker, daemon=True).start()
        backlog = self.backlog
        while True:
            msg = backlog.popleft() if backlog else self.recv()
            if self.cfg.threads and isinstance(msg, (m.Call, m.Batch)):
                self.jobs.put(msg)
            elif isinstance(msg, m.Shutdown):
                self.shutdown()
            else:
                self.handle(msg)

    def shutdown(self) -> NoReturn:
        """Let the driver go, so that its finalizers run, and exit as a program does
        (atexit handlers, buffered files); the host still serves kernel calls meanwhile
        and kills the domain if this takes too long."""
        with self.send_lock:
            self.exiting = True  # what finalizers and atexit handlers write goes out too
            if self.posted:
                self._send_posted()
        self.methods = []
        # a target that serves a channel of its own holds its driver from that thread
        # too: it lets go here (nooks.fs.served)
        release = getattr(self.driver, "release_for_exit", None)
        if callable(release):
            release()
        self.driver = None
        gc.collect()
        sys.exit(0)

    def _worker(self) -> None:
        while True:
            self.handle(self.jobs.get())

    def handle(self, msg: Any) -> None:
        try:
            if isinstance(msg, m.Call):
                self.send(self.answer(msg))
            elif isinstance(msg, m.Batch):
                results = [self.run_call(m.Call(i, meth, args))
                           for i, (meth, args) in enumerate(msg.calls)]
                self.send(self.encode_answer("a deferred call",
                                             (m.TAG_BATCH_REPLY, msg.id, results)))
            elif isinstance(msg, (m.Reply, m.Raise, m.Reject)):
                self.deliver(msg)
            else:
                self.control(msg)
        except BaseException as e:
            self.fail(e)

    def control(self, msg: Any) -> None:
        """A message for the runtime itself: a fault to take, a ping."""
        if isinstance(msg, m.Ping):
            self.send(m.encode_reply(msg.id, None))
        elif isinstance(msg, m.Inject):
            if msg.expires and time.monotonic() > msg.expires:
                return  # read too late: the host has reported it as not taken
            if msg.id:
                self.send(m.encode_reply(msg.id, None))  # read: it happens now
            self.inject(msg.fault)

    def answer(self, msg: m.Call) -> bytes:
        """Run one driver call; its encoded answer."""
        answer = self.run_call(msg)
        try:
            return m.encode(answer)
        except (TypeError, OverflowError) as e:
            what = self.iface.methods[msg.method].name \
                if 0 <= msg.method < len(self.iface.methods) else "a call"
            raise TypeError(f"{what} returned a value that cannot cross: {e}") from None

    @staticmethod
    def encode_answer(what: str, answer: tuple[Any, ...]) -> bytes:
        try:
            return m.encode(answer)
        except (TypeError, OverflowError) as e:
            raise TypeError(f"{what} returned a value that cannot cross: {e}") from None

    def run_call(self, msg: m.Call) -> tuple[Any, ...]:
        """Run one driver call; its answer, a Reply, Raise or Reject in wire form."""
        cid = msg.id
        try:
            spec = self.iface.methods[msg.method]
            args = msgspec.structs.astuple(spec.args_decoder.decode(msg.args))
        except (IndexError, msgspec.ValidationError) as e:
            return (m.TAG_REJECT, cid, f"bad call from the host: {e}")
        if spec.bulk_args:
            args = self._resolve_bulk(args, spec.bulk_args)
        method = self.methods[msg.method]
        if method is None:
            return (m.TAG_REJECT, cid, f"the driver does not implement {spec.name}")
        local = self.local
        outer = getattr(local, "current", 0)
        local.current = cid
        try:
            result = method(*args)
        except BaseException as e:
            k = self.iface.ordinary_index(e)
            if k < 0:
                answer = self.iface.unexpected
                if answer is None or not isinstance(e, Exception) \
                        or isinstance(e, MemoryError) or type(e).__name__ not in msg.lenient:
                    raise
                e = answer(e)
                k = self.iface.ordinary_index(e)
                if k < 0:
                    raise TypeError(f"{self.iface.name}.unexpected gave {e!r}, which is "
                                    "not an ordinary error") from None
            return (m.TAG_RAISE, cid, k, getattr(e, self.iface.ordinary[k].attr, None))
        finally:
            local.current = outer
        if (spec.bulk_result and msg.out is not None
                and isinstance(result, (bytes, bytearray, memoryview))
                and self.cfg.inline_max < len(result) <= msg.out.length):
            n = len(result)
            self.domain_arena[msg.out.offset:msg.out.offset + n] = result
            result = m.ArenaRef(msg.out.offset, n)
        return (m.TAG_REPLY, cid, result)

    def _resolve_bulk(self, args: tuple[Any, ...], where: tuple[int, ...]) -> tuple[Any, ...]:
        out = list(args)
        for i in where:
            ref = out[i]
            if isinstance(ref, m.ArenaRef):
                out[i] = bytes(self.kernel_arena[ref.offset:ref.offset + ref.length])
        return tuple(out)

    # -- kernel calls --------------------------------------------------------------------

    def kernel_call(self, spec: InterfaceSpec, name: str, args: tuple[Any, ...]) -> Any:
        meth = spec.method(name)
        args = meth.bind(args, {})
        if meth.posted:
            self.post(meth.index, args)
            return None
        cid = next(self.ids)
        parent = getattr(self.local, "current", 0)
        p = _Pending()
        self.pending[cid] = p
        try:
            self.send(m.encode_call(cid, meth.index, args, parent))
            if threading.get_ident() == self.main_thread:
                self._pump(cid, p)
            else:
                p.event.wait()
        finally:
            self.pending.pop(cid, None)
        msg = p.msg
        if isinstance(msg, m.Reply):
            return meth.result_decoder.decode(msg.result)
        if isinstance(msg, m.Raise):
            o = spec.ordinary[msg.error]
            raise o.rebuild(spec.ordinary_decoders[msg.error].decode(msg.value))
        raise InterfaceError(f"kernel call {name} refused: {msg.message}")

    def _pump(self, cid: int, p: _Pending) -> None:
        """Read the channel on the main thread until call ``cid`` is answered."""
        while p.msg is None:
            msg = self.recv()
            if isinstance(msg, (m.Reply, m.Raise, m.Reject)):
                self.deliver(msg)
            elif isinstance(msg, m.Call) and msg.parent == cid:
                self.send(self.answer(msg))  # the host calls back into the driver
            elif isinstance(msg, (m.Ping, m.Inject)):
                self.control(msg)
            else:
                self.backlog.append(msg)

    def deliver(self, msg: m.Reply | m.Raise | m.Reject) -> None:
        p = self.pending.get(msg.id)
        if p is not None:
            p.msg = msg
            p.event.set()

    # -- fault injection -----------------------------------------------------------------

    def inject(self, fault: str) -> None:
        inject(fault)


def inject(fault: str) -> None:
    """Fail now, in the named way."""
    if fault == "segv":
        ctypes.string_at(0)
    elif fault == "abort":
        os.abort()
    elif fault == "exit":
        os._exit(0)
    elif fault == "exception":
        raise RuntimeError("injected exception")
    elif fault == "hang":
        while True:
            pass
    elif fault == "memory":
        hog = []
        while True:
            hog.append(bytearray(64 << 20))
    else:
        raise ValueError(f"unknown fault {fault!r}")




def _enter(cfg: ChildConfig) -> None:
    """Before anything of the driver's is loaded: be in the domain's cgroup, shed
    privileges (``nooks.domain.harden``), but for those building the driver beneath
    its mount needs (dropped once it is built: ``_built``)."""
    if cfg.cgroup is not None:
        _wait_for_cgroup(cfg.cgroup)
    global _host_fd
    if cfg.host_pid:
        _host_fd = _above(harden.open_host(cfg.host_pid), cfg.fd_floor)
        if not cfg.hide:  # (watched from now: a driver that hangs while it is built,
            harden.watch_host(_host_fd)  # its host gone, must not run on alone)
    if cfg.harden:
        harden.not_dumpable()
        keep = harden.KEEP_CAPABILITIES
        if cfg.hide:
            keep = keep | harden.NAMESPACE_CAPABILITIES
        harden.drop_capabilities(keep)
        harden.deny_syscalls(cfg.host_pid or os.getppid(), until_built=bool(cfg.hide))


def _built(cfg: ChildConfig) -> None:
    """The driver is built: drop what building it needed; watch the host if that
    could not be done before (a thread: none may run while a driver is built
    beneath its own mount, see ``harden.beneath``)."""
    if cfg.harden and cfg.hide:
        harden.built()
    if _host_fd >= 0 and cfg.hide:
        harden.watch_host(_host_fd)


def _above(fd: int, floor: int) -> int:
    """``fd`` moved to ``floor`` or above (closed where it was), or as it is."""
    if fd < 0 or floor <= fd:
        return fd
    try:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)
    except OSError:
        return fd  # no room up there: it stays where it is
    os.close(fd)
    return high


def _wait_for_cgroup(relative: str) -> None:
    """The host moves a new domain into its cgroup (``relative`` to the cgroup2 root)
    as it starts; wait (briefly) until that has happened, so that nothing the driver
    starts is outside it."""
    want = "0::" + relative
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        with contextlib.suppress(OSError), open("/proc/self/cgroup") as f:
            if any(line.rstrip("\n") == want for line in f):
                return
        time.sleep(0.001)


def main(argv: list[str]) -> NoReturn:
    global _runtime
    cfg = msgspec.json.decode(argv[1], type=ChildConfig)
    # the channel first, out of the way of the descriptors the driver will open
    cfg = msgspec.structs.replace(cfg, sock_fd=_above(cfg.sock_fd, cfg.fd_floor))
    try:
        _enter(cfg)
        if cfg.fault is not None:
            from nooks.faults import Fault, loader

            loader.install(cfg.fault.module, Fault(cfg.fault.kind, cfg.fault.seed),
                           set(cfg.fault.lines) if cfg.fault.lines is not None else None)
        rt = _runtime = Runtime(cfg)
    except BaseException as e:
        # hardening failed, or the driver's interface could not be loaded: say so
        s = socket.socket(fileno=cfg.sock_fd)
        s.send(m.encode(m.Failure("misbehaved", f"domain start-up failed: "
                                  f"{type(e).__name__}: {e}",
                                  "".join(traceback.format_exception(e)))))
        os._exit(EXIT_FAILURE_REPORTED)
    try:
        rt.start()
    except BaseException as e:
        rt.fail(e)
    rt.serve()


if __name__ == "__main__":
    main(sys.argv)
