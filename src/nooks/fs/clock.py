"""The wall clock a journaled call sees, the same when it is made again.

A volatile driver stamps its files with the time (``time.time``,
``time.time_ns``): a fresh driver given the journal after a failure would stamp
them with the time of the replay, and an application that compares times
(tar's "file changed as we read it") would see the recovery. So while a
journaled call runs (``nooks.fs.serve``) and while it is made again
(``FsAdapter.replay``), the ``time`` module's clock, in the thread that makes the
call, starts at the time the call was first made and moves one nanosecond a
reading: the same readings both times. It covers ``time.time`` and
``time.time_ns`` looked up on the module; a driver that imported them by name,
or reads ``datetime.now()``, sees the real clock, and one that waits inside a
call for the wall clock to move would wait long (each reading moves it 1 ns).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator

_REAL_TIME, _REAL_TIME_NS = time.time, time.time_ns
_local = threading.local()  # this thread's ticks while a journaled call runs in it


def _time_ns() -> int:
    ticks = getattr(_local, "ticks", None)
    return next(ticks) if ticks is not None else _REAL_TIME_NS()


def _time() -> float:
    ticks = getattr(_local, "ticks", None)
    return next(ticks) / 1e9 if ticks is not None else _REAL_TIME()


@contextlib.contextmanager
def wall_clock_at(ns: int) -> Iterator[None]:
    """In this thread, ``time.time`` and ``time.time_ns`` read ``ns``, ``ns + 1``, ...
    meanwhile (other threads read the real clock); nested, the inner one counts."""
    if time.time_ns is not _time_ns:  # (installed once: every caller of the module's)
        setattr(time, "time_ns", _time_ns)  # noqa: B010
        setattr(time, "time", _time)  # noqa: B010
    before = getattr(_local, "ticks", None)
    _local.ticks = itertools.count(ns)
    try:
        yield
    finally:
        _local.ticks = before
