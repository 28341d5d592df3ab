"""Line coverage of one source file, for a dry run before a fault campaign.

:class:`LineRecorder` owns a ``sys.settrace``/``threading.settrace`` hook while it is active
and records the line numbers executed in one given file; the set feeds ``lines=`` of
:func:`nooks.faults.mutate.sites` so faults land only on code that actually runs.

Rules:

- Only frames whose code comes from that file get a local tracer; the global tracer returns
  ``None`` for every other file (the answer is cached per ``co_filename``), so other code
  pays one dict lookup per call.
- Frames already running when recording starts are not traced; nor are threads that were
  running before it started.  Threads started while it is active are.
- ``stop()`` (or leaving the ``with`` block) restores the tracers that were installed before
  ``start()``; threads still holding this recorder's tracer stop recording at once.
- Files are compared by ``os.path.realpath``.
"""

from __future__ import annotations

import os
import sys
import threading
from types import FrameType, TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import TraceFunction


class LineRecorder:
    """Records the lines executed in ``filename`` between :meth:`start` and :meth:`stop`."""

    def __init__(self, filename: str | os.PathLike[str]) -> None:
        self.filename = os.fspath(filename)
        self._real = os.path.realpath(self.filename)
        self._lines: set[int] = set()
        self._match: dict[str, bool] = {}
        self._active = False
        self._previous: tuple[TraceFunction | None, TraceFunction | None] = (None, None)

    @property
    def lines(self) -> set[int]:
        """The line numbers executed so far (a copy)."""
        return set(self._lines)

    @property
    def active(self) -> bool:
        return self._active

    def start(self) -> None:
        if self._active:
            raise RuntimeError("LineRecorder already started")
        self._previous = (sys.gettrace(), threading.gettrace())
        self._active = True
        threading.settrace(self._global)
        sys.settrace(self._global)

    def stop(self) -> None:
        if not self._active:
            return
        self._active = False
        previous_sys, previous_threads = self._previous
        sys.settrace(previous_sys)
        threading.settrace(previous_threads)
        self._previous = (None, None)

    def __enter__(self) -> LineRecorder:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _is_target(self, co_filename: str) -> bool:
        hit = self._match.get(co_filename)
        if hit is None:
            hit = os.path.realpath(co_filename) == self._real
            self._match[co_filename] = hit
        return hit

    def _global(self, frame: FrameType, event: str, arg: object) -> TraceFunction | None:
        if not self._active or not self._is_target(frame.f_code.co_filename):
            return None
        return self._local

    def _local(self, frame: FrameType, event: str, arg: object) -> TraceFunction | None:
        if not self._active:
            return None
        if event == "line":
            self._lines.add(frame.f_lineno)
        return self._local
