# mypy: disable-error-code="empty-body"
"""Consistency checkpoints in direct mode (``nooks.fs.consistency`` is what they
are; this is how direct mode takes them).

In the host-mediated mode every request passes through the host, which can
hold them while it checks the image. In direct mode the domain's server
answers the kernel itself, so the host has three things to arrange:

* **the journal since the checkpoint**: the server sends each request's
  state-changing driver calls to the host before it answers (``fs_journal``,
  as for a volatile driver), into a ``Journal(since_checkpoint=True)``; a
  handle opened before the checkpoint and written through after it is
  journaled as an open of its file by its current path, so that a rollback's
  replay can write through it too;
* **a quiet moment**: a check runs with no request half done. The host asks
  the server (``served_hold``); between requests the server is held at once
  (it is blocked reading ``/dev/fuse``, or will wait before its next request),
  and in the middle of one it finishes the request, then waits in a kernel
  call (``fs_pause``) until the host lets it go. The server's thread never
  waits on an upcall, nor an upcall on it: the domain's main thread carries
  the replies to the server's kernel calls;
* **the server's own trigger**: a file written since the checkpoint and
  closed that is opened to be read is checked before anyone reads it. Only the
  server sees the open; it asks for the checkpoint in ``fs_pause`` and waits
  there, quiet, until it is taken.

A rollback condemns the domain; the fresh one starts on the image as it was
at the checkpoint, is given the journal since, and the kernel sends it again
what the condemned one had read.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from nooks.domain.host import Domain
from nooks.errors import Closed, DomainDown, DomainFailed, Restarting
from nooks.fs.blockdev import BlockDeviceInterface, ImageDevice
from nooks.fs.journal import Journal, JournalInterface, JournalPort, Record
from nooks.fs.writes import Written, WrittenFiles

HOLD_WAIT = 30.0  # seconds a busy server may take to finish its request and pause
PAUSE_MAX = 120.0  # seconds a paused server waits for the host (a checker run: 60 s)
_GONE = (DomainFailed, DomainDown, Closed, Restarting)


class CheckedImageInterface(BlockDeviceInterface, JournalInterface):
    """The kernel calls of a domain that serves a checked image: the block device,
    the journal, and the pause."""

    def fs_pause(self, checkpoint: bool) -> bool: ...


class Pause:
    """The host's side of the quiet moment, one per mount (across incarnations)."""

    def __init__(self) -> None:
        self.domain: Domain | None = None
        self.wake: Callable[[], None] | None = None  # asks for a checkpoint (re-open)
        self.held = False  # a checkpoint holds the server (its requests' time is excused)
        self.taken = False  # a checkpoint was taken while it held
        self._holding = False  # a checkpoint is after a quiet moment
        self.off = False  # no checkpoint will be taken any more
        self._waiting: set[CheckedImagePort] = set()  # ports whose server waits
        self._cond = threading.Condition()

    # -- from the server (its port's kernel call) ---------------------------------------

    def paused(self, port: CheckedImagePort, checkpoint: bool) -> bool:
        """The server waits here between requests: until the host lets it go, or at
        once if nobody wants it to wait; whether a checkpoint was taken meanwhile."""
        with self._cond:
            if self.off or (not checkpoint and not self._holding):
                return False
            port.waiting, port.released, port.seen = True, None, False
            self._waiting.add(port)
            self._cond.notify_all()
        if checkpoint and self.wake is not None:
            self.wake()
        with self._cond:
            self._cond.wait_for(lambda: port.released is not None or port.closed,
                                timeout=PAUSE_MAX)
            port.waiting = False
            self._waiting.discard(port)
            return bool(port.released)

    def let_go_waiting(self, final: bool = False) -> None:
        """After a checkpoint (or none): let go a server that has waited since before
        the last one with nothing to hold it (it asked for one that was not taken; one
        that asked since is the next one's); ``final``: none will be taken any more."""
        with self._cond:
            self.off = self.off or final
            if self._holding:
                return
            for port in self._waiting:
                if port.released is None and (port.seen or self.off):
                    port.released = False
                port.seen = True
            self._cond.notify_all()

    def gone(self, port: CheckedImagePort) -> None:
        with self._cond:
            port.closed = True
            self._cond.notify_all()

    # -- from the checkpoints -----------------------------------------------------------

    def hold(self) -> Callable[[], None] | None:
        """Hold the current domain's server between requests; what lets it go, or
        None if it could not be held (it failed, or is being replaced)."""
        domain = self.domain
        inc = domain.current if domain is not None else None
        port = inc.kernel_impl if inc is not None else None
        if domain is None or not isinstance(port, CheckedImagePort):
            return None
        with self._cond:
            self._holding = True
            if port.waiting and port.released is None:  # (it asked: it waits already)
                return self._held(lambda taken: self._release(port, taken))
        try:
            with port.quiet():
                at_once = bool(domain.call("served_hold"))
        except _GONE:
            self._let_go()
            return None
        if at_once:
            with self._cond:
                if port.waiting and port.released is None:
                    # a pause asked for before (no one held it): it goes on, to wait
                    # for the lock this hold has taken
                    port.released = False
                    self._cond.notify_all()

            def resume(taken: bool) -> None:
                if domain.current is inc:
                    with contextlib.suppress(*_GONE), port.quiet():
                        domain.call("served_resume", taken)
            return self._held(resume)
        end = time.monotonic() + HOLD_WAIT
        with self._cond:  # (it finishes its request, then waits in fs_pause)
            while not (port.waiting and port.released is None):
                # (a driver that fails meanwhile -- found hung, say -- is not waited for)
                if port.closed or inc is None or not inc.alive or time.monotonic() > end:
                    self._holding = False
                    return None
                self._cond.wait(0.05)
            return self._held(lambda taken: self._release(port, taken))

    def _held(self, resume: Callable[[bool], None]) -> Callable[[], None]:
        self.held, self.taken = True, False

        def let_go() -> None:
            taken = self.taken
            self._let_go()
            resume(taken)
        return let_go

    def _let_go(self) -> None:
        with self._cond:
            self.held = self._holding = False

    def _release(self, port: CheckedImagePort, taken: bool) -> None:
        with self._cond:
            port.released = taken
            self._cond.notify_all()


class CheckedImagePort:
    """``CheckedImageInterface`` for one incarnation."""

    def __init__(self, device: ImageDevice, journal: JournalPort, pause: Pause) -> None:
        self.device, self.journal, self.pause = device, journal, pause
        self.waiting = False  # its server waits in fs_pause
        self.released: bool | None = None  # let go (and whether a checkpoint was taken)
        self.seen = False  # a checkpoint has ended since it began to wait
        self.closed = False
        self.bd_size, self.bd_path = device.bd_size, device.bd_path
        self.bd_read, self.bd_write = device.bd_read, device.bd_write
        self.bd_sync, self.bd_commit = device.bd_sync, device.bd_commit
        self._quiet = 0  # host calls under way that are not requests (hold, resume)
        self._quiet_lock = threading.Lock()

    def call_done(self) -> None:
        """A host call is answered: what the domain wrote in it is the image -- unless
        it was the pause's own (``served_hold`` is answered while the server may be
        half-way through a request: its writes are that request's, committed with it)."""
        if not self._quiet:
            self.device.call_done()

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        with self._quiet_lock:
            self._quiet += 1
        try:
            yield
        finally:
            with self._quiet_lock:
                self._quiet -= 1

    def fs_journal(self, records: list[Record]) -> None:
        self.journal.fs_journal(records)

    def fs_pause(self, checkpoint: bool) -> bool:
        return self.pause.paused(self, checkpoint)

    def close(self) -> None:
        self.pause.gone(self)
        self.journal.close()
        self.device.close()


class DirectJournal:
    """What ``Checkpoints`` keeps between checkpoints, in direct mode: the journal,
    what was written, and how a rollback's recovery is marked (``DirectSpec``)."""

    def __init__(self, journal: Journal, pause: Pause, rolling: Any) -> None:
        self.journal, self.pause, self._rolling = journal, pause, rolling

    @property
    def journal_bytes(self) -> int:
        return self.journal.bytes

    @property
    def written(self) -> WrittenFiles:
        return self.journal.written

    @property
    def replay_errors(self) -> int:
        return self.journal.replay_errors

    def written_files(self) -> list[tuple[str, Written]]:
        return self.journal.written_files()

    def journal_paths(self) -> list[str]:
        return self.journal.paths()

    def is_open(self, path: str) -> bool:
        return False  # (asked only of requests through the host: never in direct mode)

    def checkpoint(self) -> None:
        self.journal.checkpoint()
        self.pause.taken = True  # (the server forgets what it journaled since, too)

    def stop_journal(self) -> None:
        self.journal.stop()

    def rewinds_with(self, rewind: Callable[[], object]) -> None:
        self._rolling.rewinds_with(rewind)

    def rolling_back(self) -> Any:
        rolling: Callable[[], Iterator[None]] = self._rolling.rolling_back
        return rolling()
