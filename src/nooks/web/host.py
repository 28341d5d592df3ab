"""A running web host: the listener, its connections, the extension's workers.

The host owns the listening socket and every connection; it parses HTTP
(``nooks.web.http``) and hands each whole request to an idle *worker*: one
domain running the extension (or, natively, the extension in this process).
Workers are a pool: a request waits for an idle one (bounded in time and in
the number of waiters, then 503), so while one worker recovers the others
serve, and with a single worker requests queue until it is back.

Connections are served by one thread each, at most ``max_connections`` at a
time (beyond that the listener's backlog holds them). Every limit that keeps
a client from growing the host is in ``HttpLimits``.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import itertools
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from nooks.control import ControlServer
from nooks.domain.config import FAULTS, FaultPlan
from nooks.domain.host import Domain
from nooks.domain.native import NativeDomain
from nooks.domain.spec import Limits
from nooks.errors import (
    Closed,
    DomainDown,
    DomainFailed,
    FailureReport,
    InterfaceError,
    NotTaken,
    Restarting,
)
from nooks.shadow.engine import Recovery, Shadow
from nooks.shadow.web import RETRY_AFTER, ExtensionFailed, ServiceBusy, WebShadow
from nooks.web import http
from nooks.web.apps import WebApp
from nooks.web.http import HttpLimits, ProtocolError, Request
from nooks.web.interface import Head

log = logging.getLogger(__name__)

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LINGER_SECONDS = 2.0  # after refusing a request: how long to drain what still comes
LINGER_BYTES = 4 << 20


class _Stop(Exception):
    pass


class BadResponse(Exception):
    """The extension's response cannot be sent (502)."""


class Worker:
    """One copy of the extension: a domain behind its shadow, or native."""

    def __init__(self, index: int, call: Callable[..., Any], domain: Domain | None = None,
                 shadow: Shadow | None = None, native: NativeDomain | None = None) -> None:
        self.index = index
        self.call = call
        self.domain = domain
        self.shadow = shadow
        self.native = native
        self.pending_fault: str | None = None

    @property
    def usable(self) -> bool:
        return self.shadow is None or self.shadow.dead is None

    def status(self) -> dict[str, Any]:
        if self.native is not None:
            return {"worker": self.index, "state": "live", "mode": "native", "domain_pid": None,
                    "calls": self.native.calls, "recoveries": [], "poisoned": 0}
        assert self.domain is not None and self.shadow is not None
        return {
            "worker": self.index, "state": self.domain.state, "mode": self.shadow.mode,
            "domain_pid": self.domain.pid, "calls": self.domain.calls,
            "poisoned": self.shadow.poisoned, "generation": self.shadow.generation,
            "recoveries": [{"worker": self.index, "kind": r.kind, "detail": r.detail,
                            "call": r.call, "at": r.at, "duration_ms": r.duration_ms,
                            "restart_ms": r.restart_ms, "replayed": r.replayed, "ok": r.ok}
                           for r in self.shadow.recoveries],
        }


class WebHost:
    def __init__(self, app: WebApp, bind: tuple[str, int], *, workers: int = 2,
                 native: bool = False, name: str | None = None, deadline: float = 30.0,
                 queue_timeout: float = 10.0, max_queue: int = 1024,
                 max_connections: int = 512, limits: HttpLimits | None = None,
                 domain_limits: Limits | None = None, retry_safe: tuple[str, ...] = (),
                 max_tries: int = 3, fault: FaultPlan | None = None,
                 on_ready: Callable[[], None] | None = None) -> None:
        if workers < 1:
            raise ValueError("a web host needs at least one worker")
        self.app = app
        self.native = native
        self.limits = limits or HttpLimits()
        self.queue_timeout = queue_timeout
        self.max_queue = max_queue
        self.max_tries = max_tries
        self.on_ready = on_ready
        self.started = time.time()
        self._listener = socket.create_server(bind, backlog=1024)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self.name = name or f"{self.address[0]}:{self.address[1]}"
        self._conn_slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        # idle workers; a C-level queue, since every request takes one and gives it back
        self._idle: queue.SimpleQueue[Worker] = queue.SimpleQueue()
        self._waiting = 0
        self._inject_next = itertools.count()
        self.connections = 0
        self.requests = 0
        self.rejected = 0  # requests refused for breaking the protocol or a limit
        self.bad_responses = 0
        self.statuses: collections.Counter[int] = collections.Counter()
        self.start_failures: list[FailureReport] = []
        self.web_shadows: list[WebShadow] = []
        self.workers: list[Worker] = []
        self._stopping = False
        try:
            for i in range(workers):
                w = self._native_worker(i, retry_safe) if native else \
                    self._domain_worker(i, deadline, domain_limits or Limits(), retry_safe,
                                        max_tries, fault if i == 0 else None)
                self.workers.append(w)
            self._usable = list(self.workers)
            for w in self.workers:
                self._idle.put(w)
            marked = self.workers[0].call("retry_safe")
            for s in self.web_shadows:
                s.mark_retry_safe(marked)
            self._marked = list(marked)
        except BaseException:
            self.close()
            raise

    # -- workers -------------------------------------------------------------------------

    def _native_worker(self, index: int, retry_safe: tuple[str, ...]) -> Worker:
        nat = NativeDomain(self.app.native_spec(name=f"{self._label}-{index}",
                                                retry_safe=retry_safe))
        w = Worker(index, lambda op, *a: self._native_call(w, op, *a), native=nat)
        return w

    @property
    def _label(self) -> str:
        return self.app.target.rpartition(":")[2].rstrip("()").lower() or "web"

    def _native_call(self, w: Worker, op: str, *args: Any) -> Any:
        fault, w.pending_fault = w.pending_fault, None
        if fault is not None:
            from nooks.domain.child import inject

            inject(fault)
        assert w.native is not None
        return w.native.call(op, *args)

    def _domain_worker(self, index: int, deadline: float, limits: Limits,  # noqa: PLR0917
                       retry_safe: tuple[str, ...], max_tries: int,
                       fault: FaultPlan | None) -> Worker:
        spec = self.app.spec(name=f"{self._label}-{index}", deadline=deadline, limits=limits,
                             max_body=self.limits.max_body, retry_safe=retry_safe, fault=fault)
        domain = Domain(spec, start=False)
        for attempt in range(max_tries):
            try:
                domain.start()
                break
            except DomainFailed as e:
                self.start_failures.append(e.report)
                log.warning("%s: worker %d failed while starting (%s)", self.name, index,
                            e.report)
                if attempt == max_tries - 1:
                    domain.close()
                    raise
        spec_web = WebShadow(retry_safe)
        self.web_shadows.append(spec_web)
        shadow = Shadow(domain, spec_web, max_tries=max_tries,
                        block_timeout=self.queue_timeout, on_recovery=self._recovered)

        def idle_failure(report: FailureReport) -> None:
            threading.Thread(target=shadow.recover_now, args=(report, shadow.generation),
                             daemon=True).start()

        domain.on_idle_failure = idle_failure
        return Worker(index, shadow.call, domain=domain, shadow=shadow)

    def _recovered(self, rec: Recovery) -> None:
        log.warning("%s: extension %s (%s) during %s; recovered in %.1f ms", self.name,
                    rec.kind, rec.detail, rec.call, rec.duration_ms)

    def _acquire(self) -> Worker:
        """An idle worker: at once if there is one, else the first to come free within
        ``queue_timeout`` (ServiceBusy if none does, or too many wait already)."""
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        if not self._usable:
            raise ServiceBusy("the application cannot be restarted")
        with self._lock:
            if self._waiting >= self.max_queue:
                raise ServiceBusy("too many requests are waiting; try again")
            self._waiting += 1
        try:
            return self._idle.get(timeout=self.queue_timeout)
        except queue.Empty:
            raise ServiceBusy("no worker became free in time; try again") from None
        finally:
            with self._lock:
                self._waiting -= 1

    def _release(self, w: Worker) -> None:
        if w.usable:
            self._idle.put(w)
            return
        with self._lock:
            self._usable = [x for x in self._usable if x is not w]
        log.error("%s: worker %d cannot be restarted; %d left", self.name, w.index,
                  len(self._usable))

    # -- requests ------------------------------------------------------------------------

    def respond(self, req: Request, client: tuple[str, int]) -> bytes:
        """The bytes that answer ``req``: the extension's response, or the host's error."""
        with self._lock:
            self.requests += 1
        try:
            head, body = self._run(req, client)
            problem = http.check_head(head.status, head.reason, head.headers)
            if problem is not None:
                raise BadResponse(problem)
        except ServiceBusy as e:
            return self._error(503, str(e), req, retry_after=RETRY_AFTER)
        except ExtensionFailed as e:
            return self._error(500, str(e), req)
        except BadResponse as e:
            with self._lock:
                self.bad_responses += 1
            log.warning("%s: bad response to %s %s: %s", self.name, req.method,
                        req.target[:200], e)
            return self._error(502, f"the application sent a response that cannot be "
                               f"sent: {e}", req)
        except InterfaceError as e:
            return self._error(400, f"the request cannot be handed to the application: {e}",
                               req)
        except Closed:
            return self._error(503, "the server is shutting down", req, retry_after=RETRY_AFTER)
        except Exception:
            log.exception("%s: %s %s", self.name, req.method, req.target[:200])
            return self._error(500, "the server failed to handle this request", req)
        with self._lock:
            self.statuses[head.status] += 1
        head_only = req.method == "HEAD"
        out = http.render_head(head.status, head.reason, head.headers, len(body),
                               keep_alive=req.keep_alive, head_only=head_only,
                               http10=req.http10)
        return out if head_only or head.status in (204, 304) else out + body

    def _error(self, status: int, message: str, req: Request,
               retry_after: int | None = None) -> bytes:
        with self._lock:
            self.statuses[status] += 1
        return http.error_response(status, message, retry_after=retry_after,
                                   keep_alive=req.keep_alive, head_only=req.method == "HEAD",
                                   http10=req.http10)

    def _run(self, req: Request, client: tuple[str, int]) -> tuple[Head, bytes]:
        w = self._acquire()
        try:
            for _ in range(self.max_tries):
                head: Head = w.call("handle", req.method, req.target, req.headers, req.body,
                                    client, self.address)
                if len(head.body) > head.length:
                    raise BadResponse(f"a body of {len(head.body)} bytes said to be "
                                      f"{head.length} long")
                if len(head.body) == head.length:
                    return head, head.body
                try:
                    return head, self._rest(w, head)
                except ServiceBusy:
                    # the extension failed while handing over a large body: the whole
                    # request runs again if that is safe
                    if not self._retry_safe(w, req):
                        raise
            raise ExtensionFailed("the application failed every time it sent this response")
        finally:
            self._release(w)

    def _retry_safe(self, w: Worker, req: Request) -> bool:
        if w.shadow is None:
            return False
        return w.shadow.spec.safe_to_retry(req.method, req.target)  # type: ignore[attr-defined,no-any-return]

    @staticmethod
    def _rest(w: Worker, head: Head) -> bytes:
        parts = [head.body]
        got = len(head.body)
        while got < head.length:
            chunk: bytes = w.call("more", got)
            if not chunk or got + len(chunk) > head.length:
                raise BadResponse(f"the body ended at {got + len(chunk)} bytes of "
                                  f"{head.length}")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    # -- connections ---------------------------------------------------------------------

    def _connection(self, sock: socket.socket, client: tuple[str, int]) -> None:
        try:
            self._serve_connection(sock, client)
        except OSError:
            pass  # the client went away
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            with self._lock:
                self.connections -= 1
            self._conn_slots.release()

    def _serve_connection(self, sock: socket.socket, client: tuple[str, int]) -> None:
        lim = self.limits
        parser = http.RequestParser(lim)
        pending: collections.deque[Request] = collections.deque()
        deadline: float | None = None  # for the request being read
        continued = False
        while not self._stopping:
            if pending:
                req = pending.popleft()
                out = self.respond(req, client)
                sock.settimeout(lim.send_timeout)
                sock.sendall(out)
                if not req.keep_alive:
                    return
                if deadline is not None:
                    # the next request's clock starts now, not while we served this one
                    deadline = time.monotonic() + lim.request_timeout
                continue
            now = time.monotonic()
            left = lim.idle_timeout if deadline is None else deadline - now
            if left <= 0:
                self._refuse(sock, 408, "the request took too long to arrive")
                return
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                if deadline is not None:
                    self._refuse(sock, 408, "the request took too long to arrive")
                return
            if not data:
                return
            if deadline is None:
                deadline = now + lim.request_timeout
            try:
                pending.extend(parser.feed(data))
            except ProtocolError as e:
                self._refuse(sock, e.status, e.message)
                return
            if not parser.in_request:
                deadline, continued = None, False
            elif parser.expect_continue and not continued:
                continued = True
                sock.sendall(CONTINUE)

    def _refuse(self, sock: socket.socket, status: int, message: str) -> None:
        """Answer a request that will not be served, then close gently: what the
        client is still sending is read and dropped for a moment (bounded), so that
        closing does not reset the connection before the client reads the answer."""
        with self._lock:
            self.rejected += 1
            self.statuses[status] += 1
        with contextlib.suppress(OSError):
            sock.settimeout(1.0)
            sock.sendall(http.error_response(status, message))
            sock.shutdown(socket.SHUT_WR)
            end = time.monotonic() + LINGER_SECONDS
            drained = 0
            while drained < LINGER_BYTES and (left := end - time.monotonic()) > 0:
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)

    # -- control -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        workers = [w.status() for w in self.workers]
        recoveries = sorted((r for w in workers for r in w["recoveries"]),
                            key=lambda r: r["at"])
        states = {w["state"] for w in workers}
        return {
            "name": self.name, "class": "web", "driver": self.app.label,
            "bind": f"{self.address[0]}:{self.address[1]}", "native": self.native,
            "host_pid": os.getpid(), "started": self.started,
            "state": states.pop() if len(states) == 1 else "mixed",
            "mode": "native" if self.native else
            ("passive" if all(w["mode"] == "passive" for w in workers) else "active"),
            "domain_pid": workers[0]["domain_pid"],
            "calls": sum(w["calls"] for w in workers),
            "poisoned": sum(w["poisoned"] for w in workers),
            "recoveries": recoveries, "workers": workers,
            "connections": self.connections, "requests": self.requests,
            "rejected": self.rejected, "bad_responses": self.bad_responses,
            "responses": {str(k): v for k, v in sorted(self.statuses.items())},
            "retry_safe": [f"{m} {p}" for s in self.web_shadows[:1] for m, p in s.retry_safe],
            "start_failures": [{"kind": r.kind.value, "detail": r.detail}
                               for r in self.start_failures],
        }

    def inject(self, fault: str, worker: int | None = None,
               wait: bool = True) -> dict[str, Any]:
        """Make a worker fail now (round robin unless ``worker`` is given); what happened
        (its failure and recovery), or NotTaken. Without ``wait``, the fault is sent and
        meets whatever request comes next."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        if worker is None:
            worker = next(self._inject_next) % len(self.workers)
        if not 0 <= worker < len(self.workers):
            raise ValueError(f"no worker {worker}: there are {len(self.workers)}")
        w = self.workers[worker]
        out: dict[str, Any] = {"injected": fault, "worker": worker}
        if w.native is not None:
            w.pending_fault = fault
            return {**out, "armed": True}
        assert w.domain is not None and w.shadow is not None
        if not wait:
            with contextlib.suppress(DomainFailed, DomainDown, Closed, Restarting):
                w.domain.inject_later(fault)
            return out
        shadow = w.shadow
        gen, before = shadow.generation, len(shadow.recoveries)
        try:
            report = w.domain.inject(fault)
        except (Closed, Restarting, DomainDown) as e:
            raise NotTaken(f"the worker is not running ({e})") from None
        shadow.recover_now(report, gen)
        rec = shadow.recoveries[before] if len(shadow.recoveries) > before else None
        return {**out, "failure": {"kind": report.kind.value, "detail": report.detail},
                "recovered": None if rec is None else rec.ok,
                "recovery_ms": None if rec is None else rec.duration_ms}

    def _control(self, req: dict[str, Any]) -> Any:
        cmd = req["cmd"]
        if cmd == "status":
            return self.status()
        if cmd == "settle":
            for w in self.workers:
                if w.domain is not None:
                    w.domain.wait_spare()
            return {"settled": True}
        if cmd == "inject":
            fault, worker = req.get("fault"), req.get("worker")
            if not isinstance(fault, str) or not (worker is None or isinstance(worker, int)):
                raise ValueError("inject needs a string 'fault' (and an integer 'worker')")
            return self.inject(fault, worker, wait=req.get("wait", True) is not False)
        raise ValueError(f"unknown command {cmd!r}")

    # -- running -------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM."""
        try:
            control = ControlServer(self.name, self._control)
        except BaseException:
            self.close()
            raise
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_stop)
            signal.signal(signal.SIGINT, _raise_stop)
        try:
            if self.on_ready is not None:
                self.on_ready()
            while not self._stopping:
                self._conn_slots.acquire()
                try:
                    sock, addr = self._listener.accept()
                except OSError as e:
                    self._conn_slots.release()
                    if self._stopping:
                        break
                    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        log.warning("%s: cannot accept: %s", self.name, e)
                        time.sleep(0.1)  # out of descriptors: let connections finish
                    continue
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    with self._lock:
                        self.connections += 1
                    threading.Thread(target=self._connection, args=(sock, addr[:2]),
                                     name="nooks-http", daemon=True).start()
                except (OSError, RuntimeError) as e:  # the peer is gone; no thread to be had
                    log.warning("%s: connection from %s dropped: %s", self.name, addr, e)
                    with self._lock:
                        self.connections -= 1
                    sock.close()
                    self._conn_slots.release()
        except _Stop:
            pass
        finally:
            self._stopping = True
            control.close()
            self.close()

    def close(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._listener.close()
        for w in self.workers:
            if w.domain is not None:
                w.domain.close()
            if w.native is not None:
                w.native.close()


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop
