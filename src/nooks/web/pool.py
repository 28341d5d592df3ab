"""The web host's workers and the pool that lends them out.

A *worker* is one copy of the extension: a domain behind its shadow, or the
extension in this process (native). A worker runs one call at a time, so it
is lent to one thread at a time. Rules of the pool:

* ``acquire()`` lends any idle worker: at once if one is idle, else the first
  to come free within ``queue_timeout``; ``ServiceBusy`` (503) if none does,
  if ``max_queue`` threads wait already, or if no worker can be restarted;
* ``acquire(w)`` lends that worker: a streamed body's pieces come from the
  worker that holds the stream. It waits like any other, so pieces share a
  worker fairly with new requests;
* a worker given back goes to the longest waiting thread that can take it
  (first come, first served), without waking the others;
* a worker whose shadow could not restart it leaves the pool for good.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

from nooks.domain.host import Domain
from nooks.domain.native import NativeDomain
from nooks.shadow.engine import Shadow
from nooks.shadow.web import ServiceBusy

log = logging.getLogger(__name__)


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

    @property
    def generation(self) -> int:
        """Which incarnation of the extension answers now (streams die with theirs)."""
        return self.shadow.generation if self.shadow is not None else 0

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


class _Waiter:
    __slots__ = ("got", "ready", "wants")

    def __init__(self, wants: Worker | None) -> None:
        self.wants = wants
        self.got: Worker | None = None
        self.ready = threading.Lock()
        self.ready.acquire()


class WorkerPool:
    def __init__(self, workers: list[Worker], *, queue_timeout: float, max_queue: int,
                 name: str = "web") -> None:
        self.queue_timeout = queue_timeout
        self.max_queue = max_queue
        self.name = name
        self._lock = threading.Lock()
        self._idle: collections.deque[Worker] = collections.deque(workers)
        self._usable = list(workers)
        self._waiters: collections.deque[_Waiter] = collections.deque()

    @property
    def usable(self) -> int:
        return len(self._usable)

    def acquire(self, want: Worker | None = None) -> Worker:
        """An idle worker (``want`` itself if given); ServiceBusy if none comes in time."""
        with self._lock:
            if want is None:
                if self._idle:
                    return self._idle.popleft()
            elif want in self._idle:
                self._idle.remove(want)
                return want
            if not self._usable or (want is not None and want not in self._usable):
                raise ServiceBusy("the application cannot be restarted")
            if len(self._waiters) >= self.max_queue:
                raise ServiceBusy("too many requests are waiting; try again")
            waiter = _Waiter(want)
            self._waiters.append(waiter)
        waiter.ready.acquire(timeout=self.queue_timeout)
        with self._lock:
            if waiter.got is None:
                self._waiters.remove(waiter)
        if waiter.got is None:
            raise ServiceBusy("no worker became free in time; try again")
        return waiter.got

    def release(self, w: Worker) -> None:
        """Give ``w`` back: to the first thread waiting that can take it, else idle."""
        with self._lock:
            if not w.usable:
                self._usable = [x for x in self._usable if x is not w]
                self._fail_waiters(w)
                log.error("%s: worker %d cannot be restarted; %d left", self.name, w.index,
                          len(self._usable))
                return
            for waiter in self._waiters:
                if waiter.wants is None or waiter.wants is w:
                    self._waiters.remove(waiter)
                    waiter.got = w
                    waiter.ready.release()
                    return
            self._idle.append(w)

    def _fail_waiters(self, gone: Worker) -> None:
        """Wake the threads that can now never be served (they answer 503)."""
        for waiter in list(self._waiters):
            if waiter.wants is gone or not self._usable:
                self._waiters.remove(waiter)
                waiter.ready.release()

    def call(self, op: str, *args: Any, want: Worker | None = None) -> tuple[Worker, Any]:
        """Run ``op`` on an idle worker (``want`` if given); the worker and the result."""
        w = self.acquire(want)
        try:
            return w, w.call(op, *args)
        finally:
            self.release(w)
