"""A running web host: the listener, its connections, the extension's workers.

The host owns the listening socket and every connection; it parses HTTP
(``nooks.web.http``) and hands each whole request to an idle *worker*: one
domain running the extension (or, natively, the extension in this process).
Workers are a pool (``nooks.web.pool``): a request waits for an idle one
(bounded in time and in the number of waiters, then 503), so while one worker
recovers the others serve, and with a single worker requests queue until it
is back.

Connections are read by one epoll loop (``nooks.web.loop``) and only whole
requests reach a thread; large bodies are streamed (``nooks.web.streaming``)
a piece at a time as the client reads. Every limit that keeps a client from
growing the host is in ``HttpLimits``, plus ``max_connections``: the host
holds at most about ``max_connections`` × (16 KiB + ``max_body`` + 1.3 MiB).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import resource
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
    DomainFailed,
    FailureReport,
    InterfaceError,
)
from nooks.shadow.engine import Recovery, Shadow
from nooks.shadow.web import RETRY_AFTER, ExtensionFailed, ServiceBusy, WebShadow
from nooks.web import http
from nooks.web.apps import WebApp
from nooks.web.conn import Reply
from nooks.web.http import HttpLimits, Request
from nooks.web.interface import Head
from nooks.web.loop import ConnectionLoop
from nooks.web.pool import Worker, WorkerPool
from nooks.web.streaming import BodyStream

log = logging.getLogger(__name__)

# descriptors the host needs besides its connections: domains, arenas, control, logs
FDS_BESIDES_CONNECTIONS = 256


class _Stop(Exception):
    pass


class BadResponse(Exception):
    """The extension's response cannot be sent (502)."""


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
        _enough_descriptors(max_connections + FDS_BESIDES_CONNECTIONS)
        self._listener = socket.create_server(bind, backlog=1024)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self.name = name or f"{self.address[0]}:{self.address[1]}"
        self._lock = threading.Lock()
        self._inject_next = itertools.count()
        self.requests = 0
        self.events: collections.Counter[str] = collections.Counter()  # resumed, truncated...
        self.rejected = 0  # requests refused for breaking the protocol or a limit
        self.bad_responses = 0
        self.statuses: collections.Counter[int] = collections.Counter()
        self.start_failures: list[FailureReport] = []
        self.web_shadows: list[WebShadow] = []
        self.workers: list[Worker] = []
        self._stopping = False
        try:
            self.loop = ConnectionLoop(self._listener, self.limits, self.respond,
                                       max_connections=max_connections, name=self.name,
                                       note=self._note)
        except BaseException:
            self._listener.close()
            raise
        try:
            for i in range(workers):
                w = self._native_worker(i, retry_safe) if native else \
                    self._domain_worker(i, deadline, domain_limits or Limits(), retry_safe,
                                        max_tries, fault if i == 0 else None)
                self.workers.append(w)
            self.pool = WorkerPool(self.workers, queue_timeout=queue_timeout,
                                   max_queue=max_queue, name=self.name)
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

    # -- requests ------------------------------------------------------------------------

    def _note(self, what: str, status: int = 0) -> None:
        with self._lock:
            if what == "rejected":
                self.rejected += 1
                self.statuses[status] += 1
            else:
                self.events[what] += 1

    def respond(self, req: Request, client: tuple[str, int]) -> Reply:
        """What answers ``req``: the extension's response, or the host's error."""
        with self._lock:
            self.requests += 1
        stream: BodyStream | None = None
        try:
            head, stream = self._run(req, client)
        except ServiceBusy as e:
            return Reply(self._error(503, str(e), req, retry_after=RETRY_AFTER))
        except ExtensionFailed as e:
            return Reply(self._error(500, str(e), req))
        except BadResponse as e:
            with self._lock:
                self.bad_responses += 1
            log.warning("%s: bad response to %s %s: %s", self.name, req.method,
                        req.target[:200], e)
            return Reply(self._error(502, f"the application sent a response that cannot be "
                                     f"sent: {e}", req))
        except InterfaceError as e:
            return Reply(self._error(
                400, f"the request cannot be handed to the application: {e}", req))
        except Closed:
            return Reply(self._error(503, "the server is shutting down", req,
                                     retry_after=RETRY_AFTER))
        except Exception:
            log.exception("%s: %s %s", self.name, req.method, req.target[:200])
            return Reply(self._error(500, "the server failed to handle this request", req))
        with self._lock:
            self.statuses[head.status] += 1
        head_only = req.method == "HEAD"
        out = http.render_head(head.status, head.reason, head.headers, head.length,
                               keep_alive=req.keep_alive, head_only=head_only,
                               http10=req.http10)
        if head_only or head.status in (204, 304):
            if stream is not None:
                stream.drop()
            return Reply(out)
        return Reply(out + head.body, stream)

    def _error(self, status: int, message: str, req: Request,
               retry_after: int | None = None) -> bytes:
        with self._lock:
            self.statuses[status] += 1
        return http.error_response(status, message, retry_after=retry_after,
                                   keep_alive=req.keep_alive, head_only=req.method == "HEAD",
                                   http10=req.http10)

    def _run(self, req: Request, client: tuple[str, int]) -> tuple[Head, BodyStream | None]:
        """The extension's checked head, and a stream for the rest of its body if the
        body did not all come with it."""
        args = (req.method, req.target, req.headers, req.body, client, self.address)
        w = self.pool.acquire()
        try:
            head: Head = w.call("handle", *args)
            generation = w.generation
        finally:
            self.pool.release(w)
        problem = http.check_head(head.status, head.reason, head.headers)
        if problem is None and len(head.body) > head.length:
            problem = f"a body of {len(head.body)} bytes said to be {head.length} long"
        if problem is None and len(head.body) < head.length and not head.stream:
            problem = (f"a body of {head.length} bytes came with {len(head.body)} of them "
                       "and no stream for the rest")
        stream = None
        if head.stream and len(head.body) < head.length:
            stream = BodyStream(self.pool, w, generation, head, request=args,
                                resumable=self._retry_safe(w, req), max_tries=self.max_tries,
                                note=self._note)
        if problem is not None:
            if stream is not None:
                stream.drop()
            raise BadResponse(problem)
        return head, stream

    def _retry_safe(self, w: Worker, req: Request) -> bool:
        if w.shadow is None:
            return False
        return w.shadow.spec.safe_to_retry(req.method, req.target)  # type: ignore[attr-defined,no-any-return]

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
            "requests": self.requests,
            "rejected": self.rejected, "bad_responses": self.bad_responses,
            **self.loop.counts(),
            "resumed": self.events["resumed"], "truncated": self.events["truncated"],
            "send_timeouts": self.events["send_timeout"], "evicted": self.events["evicted"],
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
        assert w.shadow is not None
        return {**out, **w.shadow.inject(fault, wait=wait)}

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
            control = ControlServer(self.name, self._control,
                                    info={"class": "web", "driver": self.app.label,
                                          "bind": f"{self.address[0]}:{self.address[1]}"})
        except BaseException:
            self.close()
            raise
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_stop)
            signal.signal(signal.SIGINT, _raise_stop)
        try:
            if self.on_ready is not None:
                self.on_ready()
            self.loop.run()
        except _Stop:
            pass
        finally:
            self._stopping = True
            control.close()
            self.close()

    def close(self) -> None:
        self._stopping = True
        self.loop.close()
        with contextlib.suppress(OSError):
            self._listener.close()
        for w in self.workers:
            if w.domain is not None:
                w.domain.close()
            if w.native is not None:
                w.native.close()


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def _enough_descriptors(need: int) -> None:
    """Raise this process's soft limit on open files towards ``need`` (up to the hard
    limit): a host with many connections needs a descriptor for each."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < need:
        log.warning("only %d file descriptors may be open; --max-connections needs %d",
                    target, need)
