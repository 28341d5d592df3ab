"""Threads that wait in epoll and do the work the events they get lead to.

Leader/followers: every thread of the pool waits in ``epoll_wait`` for one
event; the kernel gives each event to one of them (the loop arms every
descriptor one-shot, so an event also disarms it), and that thread handles it
itself, with no hand-off to another. Rules:

* before a thread blocks on a long task (``ensure_waiter``), it makes sure
  another thread is left waiting, starting one if none is: events are never
  left without a thread to take them, however many tasks block;
* a thread that waited ``THREAD_IDLE`` seconds without an event ends, unless
  it is the last one waiting: the pool shrinks back after a burst;
* the thread that calls ``run`` takes no events: it calls ``tick`` every
  ``period`` seconds (deadlines), and a signal it receives ends ``run``.
"""

from __future__ import annotations

import logging
import select
import threading
import time

log = logging.getLogger(__name__)

THREAD_IDLE = 60.0


class EventThreads:
    def __init__(self, name: str, period: float) -> None:
        self.name = name
        self.period = period
        self.stopping = False
        self.threads = 0
        # one entry per thread waiting in epoll or on its way there: appending and
        # popping are atomic, so every event costs no lock (a shared lock here would
        # make busy threads queue on it)
        self._polling: list[None] = []
        self._lock = threading.Lock()
        self._ep = select.epoll()

    def run(self) -> None:
        """Serve until ``stopping`` is set (or an exception, e.g. from a signal); this
        thread keeps time."""
        self._spawn()
        while not self.stopping:
            time.sleep(self.period)
            self._tick(time.monotonic())

    def _event(self, fd: int) -> None:
        raise NotImplementedError

    def _tick(self, now: float) -> None:
        raise NotImplementedError

    def _spawn(self) -> None:
        self._polling.append(None)
        with self._lock:
            self.threads += 1
        try:
            threading.Thread(target=self._wait, name=f"{self.name}-http", daemon=True).start()
        except RuntimeError as e:  # no thread to be had: those there will do
            log.warning("%s: cannot start a thread: %s", self.name, e)
            self._polling.pop()
            with self._lock:
                self.threads -= 1

    def _ensure_waiter(self) -> None:
        """Before this thread blocks on a task: someone else must wait in epoll. (Two
        threads that look at once may both start one: a spare thread, no harm.)"""
        if not self._polling:
            self._spawn()

    def _wait(self) -> None:
        poll = self._ep.poll
        polling = self._polling
        try:
            while not self.stopping:
                events = poll(THREAD_IDLE, 1)
                polling.pop()
                if not events and polling:
                    with self._lock:
                        self.threads -= 1
                    return  # idle for long, and not the last one waiting
                for fd, _ in events:
                    self._event(fd)
                polling.append(None)
        except (OSError, ValueError):
            pass  # epoll closed: the host is stopping
