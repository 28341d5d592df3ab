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
import importlib.util
import json
import logging
import os
import resource
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from nooks.domain.config import FaultPlan
from nooks.domain.spec import Limits
from nooks.errors import (
    BadAnswer,
    Closed,
    InterfaceError,
)
from nooks.faults import LineRecorder
from nooks.shadow.supervised import Supervised, SupervisedHost
from nooks.web import http
from nooks.web.apps import WebApp
from nooks.web.conn import Reply
from nooks.web.http import HttpLimits, Request
from nooks.web.interface import Head
from nooks.web.loop import ConnectionLoop
from nooks.web.pool import Worker, WorkerPool
from nooks.web.spec import RETRY_AFTER, ExtensionFailed, ServiceBusy, WebShadow, head_problem
from nooks.web.streaming import BodyStream

log = logging.getLogger(__name__)

# descriptors the host needs besides its connections: domains, arenas, control, logs
FDS_BESIDES_CONNECTIONS = 256


class _Stop(Exception):
    pass


class BadResponse(BadAnswer):
    """The extension's response cannot be sent (502; natively only: under nooks the
    shadow never passes such a response on)."""


class WebHost(SupervisedHost):
    kind = "web"
    numbered = True

    def __init__(self, app: WebApp, bind: tuple[str, int], *, workers: int = 2,
                 native: bool = False, name: str | None = None, deadline: float = 30.0,
                 queue_timeout: float = 10.0, max_queue: int = 1024,
                 max_connections: int = 512, limits: HttpLimits | None = None,
                 domain_limits: Limits | None = None, retry_safe: tuple[str, ...] = (),
                 max_tries: int = 3, fault: FaultPlan | None = None,
                 on_ready: Callable[[], None] | None = None,
                 record_lines: str | None = None) -> None:
        if workers < 1:
            raise ValueError("a web host needs at least one worker")
        if record_lines is not None and not native:
            raise ValueError("lines are recorded natively only")
        self._record_lines = record_lines
        self._recorder = LineRecorder(_source(app.module)) if record_lines else None
        self.app = app
        self.native = native
        self.limits = limits or HttpLimits()
        self.queue_timeout = queue_timeout
        self.max_queue = max_queue
        self.max_tries = max_tries
        self.on_ready = on_ready
        _enough_descriptors(max_connections + FDS_BESIDES_CONNECTIONS)
        self._listener = socket.create_server(bind, backlog=1024)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        super().__init__(name or f"{self.address[0]}:{self.address[1]}")
        self._lock = threading.Lock()
        self.requests = 0
        self.events: collections.Counter[str] = collections.Counter()  # resumed, truncated...
        self.rejected = 0  # requests refused for breaking the protocol or a limit
        self.bad_responses = 0
        self.statuses: collections.Counter[int] = collections.Counter()
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
                sup = self._worker(i, deadline, domain_limits or Limits(), retry_safe,
                                   fault if i == 0 else None)
                self.supervised.append(sup)
                self.workers.append(Worker(i, sup.call, sup))
            self.pool = WorkerPool(self.workers, queue_timeout=queue_timeout,
                                   max_queue=max_queue, name=self.name)
            for sup in self.supervised:
                # each worker's shadow logs what its application marks safe to re-issue
                sup.spec.mark_retry_safe(sup.call("retry_safe"))
        except BaseException:
            self.close()
            raise

    # -- workers -------------------------------------------------------------------------

    @property
    def _label(self) -> str:
        return self.app.target.rpartition(":")[2].rstrip("()").lower() or "web"

    def _worker(self, index: int, deadline: float, limits: Limits,
                retry_safe: tuple[str, ...], fault: FaultPlan | None) -> Supervised[WebShadow]:
        name = f"{self._label}-{index}"
        spec = self.app.native_spec(name=name, retry_safe=retry_safe) if self.native else \
            self.app.spec(name=name, deadline=deadline, limits=limits,
                          max_body=self.limits.max_body, retry_safe=retry_safe, fault=fault)
        return Supervised(spec, WebShadow(retry_safe), native=self.native,
                          fault=fault if self.native else None, start_tries=self.max_tries,
                          max_tries=self.max_tries, block_timeout=self.queue_timeout,
                          max_held=self.max_queue, what=f"worker {index}", host=self.name)

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
        # under nooks the shadow has checked it (and recovered an extension that sent
        # what cannot be sent); natively it is checked here
        problem = head_problem(head) if w.sup is None or w.sup.native else None
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
        if w.sup is None or w.sup.native:
            return False
        spec: WebShadow = w.sup.spec
        return spec.safe_to_retry(req.method, req.target)

    # -- control -------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {"driver": self.app.label, "bind": f"{self.address[0]}:{self.address[1]}"}

    def status(self) -> dict[str, Any]:
        out = self.base_status()
        return {
            **out, "driver": self.app.label,
            "bind": f"{self.address[0]}:{self.address[1]}",
            "requests": self.requests,
            "rejected": self.rejected, "bad_responses": self.bad_responses,
            **self.loop.counts(),
            "resumed": self.events["resumed"], "truncated": self.events["truncated"],
            "send_timeouts": self.events["send_timeout"], "evicted": self.events["evicted"],
            "responses": {str(k): v for k, v in sorted(self.statuses.items())},
            "retry_safe": out["workers"][0].get("retry_safe", []) if out["workers"] else [],
        }

    # -- running -------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM."""
        try:
            self.open_control()
        except BaseException:
            self.close()
            raise
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_stop)
            signal.signal(signal.SIGINT, _raise_stop)
        if self._recorder is not None:
            self._recorder.start()  # before the loop's threads: they are traced too
        try:
            if self.on_ready is not None:
                self.on_ready()
            self.loop.run()
        except _Stop:
            pass
        finally:
            self._stopping = True
            self.close()
            if self._recorder is not None:
                self._recorder.stop()
                with open(self._record_lines or os.devnull, "w") as f:
                    json.dump(sorted(self._recorder.lines), f)

    def close(self) -> None:
        self._stopping = True
        self.loop.close()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.close_supervised()


def _source(module: str) -> str:
    found = importlib.util.find_spec(module)
    if found is None or found.origin is None:
        raise ValueError(f"cannot find the source of {module}")
    return found.origin


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
