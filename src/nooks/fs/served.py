"""Direct mode inside the domain: the driver's adapter serving the host's FUSE
connection itself (``FsHost`` with ``mode="direct"``; the host's side is
``nooks.fs.direct``).

The domain is handed a duplicate of the host's ``/dev/fuse`` descriptor
(``fuse``) and regions of the host's memory: the node table's log
(``nodes``), the handle table's log (``handles``), the in-flight record
(``inflight``) and what drivers raised (``raised``). Once the driver is built,
``serve`` waits for the host's word (``served_go``: the host has answered
FUSE_INIT, called the driver's ``init`` as mfusepy does when it mounts, and,
for a volatile driver, redone its journal), rebuilds both tables from the logs
and serves requests until the mount goes away (``nooks.fs.serve``).
"""

from __future__ import annotations

import threading
from typing import Any

from nooks.domain import child
from nooks.fs.adapter import FsAdapter
from nooks.fs.handles import Handles
from nooks.fs.inflight import InFlight
from nooks.fs.nodes import Nodes
from nooks.fs.serve import Server
from nooks.fs.statelog import StateLog

FUSE, NODES, HANDLES, INFLIGHT = "fuse", "nodes", "handles", "inflight"
RAISED = "raised"  # the exceptions drivers raised (nooks.fs.serve.Server.lenient_after)


class ServedFs(FsAdapter):
    """``FsAdapter`` that serves the mount itself: ``serve`` runs on a thread of its
    own once the driver is built (``DriverSpec.runs``)."""

    epoch_per_call = False  # (the server marks each request: Server.handle)

    def __init__(self, target: str, args: list[Any], kwargs: dict[str, Any], *,
                 attr_timeout: float = 1.0, entry_timeout: float = 1.0,
                 direct_io: bool = False, hard_remove: bool = False,
                 journaled: bool = False, checkpointed: bool = False) -> None:
        """The driver as ``FsAdapter`` builds it; how long the kernel may cache
        attributes and names (libfuse's ``attr_timeout``, ``entry_timeout``), and
        whether files bypass its page cache (``direct_io``), and whether an open
        file that is unlinked goes at once (``hard_remove``); ``journaled``: each
        request's state-changing calls go to the host's journal (a volatile
        driver's, ``nooks.fs.journal``); ``checkpointed``: the journal is the one
        since the host's last checkpoint of the image, and the server pauses for
        checkpoints (``nooks.fs.checkpointed``)."""
        super().__init__(target, args, kwargs)
        self.attr_timeout, self.entry_timeout = attr_timeout, entry_timeout
        self.direct_io, self.hard_remove = direct_io, hard_remove
        self.journaled = journaled
        self.checkpointed = checkpointed
        self._held = False  # the host holds the server (served_hold)
        self._hold_first = False  # held before it serves: from its first request
        self._go = threading.Event()
        self._server: Server | None = None

    def served_go(self, can_resend: bool, handles: dict[int, int],
                  journaled: list[int], written: list[str]) -> None:
        """Serve now (``ServedInterface``): whether the kernel sends again what a
        dead domain had read, the driver's handles behind virtual ones (re-made
        from the journal), the virtual handles whose open is journaled, and the
        files written since the image's last checkpoint (checked before they are
        read: ``nooks.fs.checkpointed``). The
        tables are rebuilt here, before the reply: were the serving thread to
        rebuild them, the reply would wait for the interpreter lock (up to its 5 ms
        switch interval) and the recovery with it."""
        if self._go.is_set():
            return  # (once: a second word changes nothing)
        server = Server(child.descriptor(FUSE), self, Nodes(StateLog(child.region(NODES))),
                        Handles(StateLog(child.region(HANDLES))),
                        inflight=InFlight(child.region(INFLIGHT)),
                        attr_timeout=self.attr_timeout, entry_timeout=self.entry_timeout,
                        direct_io=self.direct_io, hard_remove=self.hard_remove)
        server.lenient_after(StateLog(child.region(RAISED)))
        server.second_opinions = can_resend
        server.adopt(handles, journaled)
        server.written = set(written)
        if self.journaled:
            server.journal = child.kernel().fs_journal
        if self.checkpointed:
            server.pause = child.kernel().fs_pause
        if self._hold_first:  # (a checkpoint holds it: it serves once let go)
            self._hold_first = False
            server.hold.acquire()
            self._held = True
        self._server = server
        self._go.set()

    def served_hold(self) -> bool:
        """Hold the server between requests (``ServedInterface``): at once if it is
        between two (True), else it pauses after the one it serves (False)."""
        server = self._server
        if server is None:
            self._hold_first = True  # (not serving yet: served_go takes the lock)
            return True
        if server.hold.acquire(blocking=False):
            self._held = True
            return True
        server.pause_wanted.set()
        return False

    def served_resume(self, checkpoint: bool) -> None:
        """Let the held server go on; ``checkpoint``: one was taken (what was
        journaled since the last is forgotten)."""
        server = self._server
        if server is None:
            self._hold_first = False
            return
        if checkpoint:
            server.checkpointed()
        if self._held:
            self._held = False
            server.hold.release()

    def release_for_exit(self) -> None:
        """The domain exits (``nooks.domain.child``): let go of the driver, from the
        serving thread too, so that what it does when it ends (``__del__``, its
        buffered files) happens, as when mfusepy lets it go."""
        if self._server is not None and not self._server.detach():
            return  # (a request is under way: the driver stays, as it is using it)
        self._server = None
        self.driver = None
        self._ops.clear()

    def serve(self) -> None:
        self._go.wait()  # (the host's word)
        assert self._server is not None
        self._server.serve()
