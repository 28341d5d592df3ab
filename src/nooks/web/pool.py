"""The web host's workers and the pool that lends them out.

A *worker* is one copy of the extension: a domain behind its shadow, or the
extension in this process (native). A worker runs one call at a time, so it
is lent to one thread at a time. Rules of the pool:

* ``acquire()`` lends any idle worker: at once if one is idle, else the first
  to come free within ``queue_timeout``; ``ServiceBusy`` (503) if none does,
  if ``max_queue`` threads wait already, or if no worker can be restarted;
* ``acquire(w)`` lends that worker: a streamed body's pieces come from the
  worker that holds the stream. Such a wait goes first: the worker, given
  back, is handed to it (or, taken by another request meanwhile, handed on);
* idle workers sit in a C-level queue that any thread may take from at once
  (no hand-off to a sleeping thread while one is running: on a busy host
  that is what keeps requests from queueing behind thread switches);
* a worker whose shadow could not restart it leaves the pool for good.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from nooks.shadow.supervised import Supervised
from nooks.web.spec import ServiceBusy

log = logging.getLogger(__name__)

HANDOFF_LOOK = 0.05  # seconds between looks for an idle worker a streamed body waits for


class Worker:
    """One copy of the extension as the pool lends it: a supervised driver (a domain
    behind its shadow, or native), or any callable (tests)."""

    def __init__(self, index: int, call: Callable[..., Any],
                 sup: Supervised[Any] | None = None) -> None:
        self.index = index
        self.call = call
        self.sup = sup
        self.wanted = 0  # streamed bodies waiting for this worker (the pool's lock)
        self.handoff: queue.SimpleQueue[Worker] = queue.SimpleQueue()

    @property
    def usable(self) -> bool:
        return self.sup is None or self.sup.usable

    @property
    def generation(self) -> int:
        """Which incarnation of the extension answers now (streams die with theirs)."""
        return self.sup.generation if self.sup is not None else 0

    def __repr__(self) -> str:
        return f"<Worker {self.index} wanted={self.wanted} {self.sup!r}>"


class WorkerPool:
    def __init__(self, workers: list[Worker], *, queue_timeout: float, max_queue: int,
                 name: str = "web") -> None:
        self.queue_timeout = queue_timeout
        self.max_queue = max_queue
        self.name = name
        self._lock = threading.Lock()
        # idle workers; a C-level queue, since every request takes one and gives it back
        self._idle: queue.SimpleQueue[Worker] = queue.SimpleQueue()
        for w in workers:
            self._idle.put(w)
        self._usable = list(workers)
        self._waiting = 0

    @property
    def usable(self) -> int:
        return len(self._usable)

    def __repr__(self) -> str:
        return (f"<WorkerPool {self.name} idle={self._idle.qsize()} usable={self.usable} "
                f"waiting={self._waiting}>")

    def acquire(self, want: Worker | None = None) -> Worker:
        """An idle worker (``want`` itself if given); ServiceBusy if none comes in time."""
        if want is not None:
            return self._acquire_this(want)
        try:
            w = self._idle.get_nowait()
        except queue.Empty:
            w = self._wait_any()
        while w.wanted:  # a streamed body waits for this one: it goes first
            self._give(w)
            w = self._wait_any()
        return w

    def _wait_any(self) -> Worker:
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

    def _acquire_this(self, w: Worker) -> Worker:
        with self._lock:
            w.wanted += 1
        got = False
        try:
            end = time.monotonic() + self.queue_timeout
            while True:
                if not w.usable:
                    raise ServiceBusy("the application cannot be restarted")
                if self._take_idle(w):
                    got = True
                    return w
                left = end - time.monotonic()
                if left <= 0:
                    raise ServiceBusy("no worker became free in time; try again")
                try:
                    # handed over on release; else (a release that just missed our mark)
                    # found idle on the next look
                    w.handoff.get(timeout=min(left, HANDOFF_LOOK))
                    got = True
                    return w
                except queue.Empty:
                    continue
        finally:
            with self._lock:
                w.wanted -= 1
                if not got and not w.wanted:
                    with contextlib.suppress(queue.Empty):  # handed over as we gave up
                        self._idle.put(w.handoff.get_nowait())

    def _take_idle(self, w: Worker) -> bool:
        """Take ``w`` from the idle workers if it is there."""
        found, others = False, []
        while True:
            try:
                x = self._idle.get_nowait()
            except queue.Empty:
                break
            if x is w:
                found = True
            else:
                others.append(x)
        for x in others:
            self._give(x)
        return found

    def release(self, w: Worker) -> None:
        """Give ``w`` back: to a streamed body waiting for it, else to the idle ones."""
        if not w.usable:
            with self._lock:
                self._usable = [x for x in self._usable if x is not w]
            log.error("%s: worker %d cannot be restarted; %d left", self.name, w.index,
                      len(self._usable))
            return
        self._give(w)

    def _give(self, w: Worker) -> None:
        if not w.wanted:
            self._idle.put(w)
            return
        with self._lock:
            if w.wanted:
                w.handoff.put(w)
                return
        self._idle.put(w)

    def call(self, op: str, *args: Any, want: Worker | None = None) -> tuple[Worker, Any]:
        """Run ``op`` on an idle worker (``want`` if given); the worker and the result."""
        w = self.acquire(want)
        try:
            return w, w.call(op, *args)
        finally:
            self.release(w)
