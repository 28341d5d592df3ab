"""Noticing dead domains while no call is in flight.

One daemon thread per host process waits, with epoll, on the pidfd of every
live domain; when one becomes readable the domain has exited and its callback
runs on this thread. A call in flight notices a death by itself (the channel
ends), so this is what catches a driver that dies while idle.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Monitor:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="nooks-monitor", daemon=True)
        self._thread.start()

    def watch(self, pidfd: int, on_exit: Callable[[], None]) -> None:
        with self._lock:
            self._callbacks[pidfd] = on_exit
            self._epoll.register(pidfd, select.EPOLLIN | select.EPOLLONESHOT)

    def unwatch(self, pidfd: int) -> None:
        with self._lock:
            if self._callbacks.pop(pidfd, None) is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._epoll.unregister(pidfd)

    def _run(self) -> None:
        while True:
            for fd, _ in self._epoll.poll():
                with self._lock:
                    cb = self._callbacks.pop(fd, None)
                    if cb is not None:
                        with contextlib.suppress(OSError, ValueError):
                            self._epoll.unregister(fd)
                if cb is None:
                    continue
                try:
                    cb()
                except Exception:
                    log.exception("handling the exit of a domain failed")


_monitor: Monitor | None = None
_monitor_lock = threading.Lock()


def monitor() -> Monitor:
    """The host process's monitor, started on first use."""
    global _monitor
    with _monitor_lock:
        if _monitor is None:
            _monitor = Monitor()
        return _monitor
