"""Direct mode inside the domain: the driver's adapter serving the host's FUSE
connection itself (``FsHost`` with ``mode="direct"``; the host's side is
``nooks.fs.direct``).

The domain is handed a duplicate of the host's ``/dev/fuse`` descriptor
(``fuse``) and three regions of the host's memory: the node table's log
(``nodes``), the handle table's log (``handles``) and the in-flight record
(``inflight``). Each domain rebuilds both tables from the logs, calls the
driver's ``init`` as mfusepy does when it mounts, and serves requests until the
mount goes away (``nooks.fs.serve``).
"""

from __future__ import annotations

import time
from typing import Any

from nooks.domain import child
from nooks.fs.adapter import FsAdapter
from nooks.fs.handles import Handles
from nooks.fs.inflight import InFlight
from nooks.fs.nodes import Nodes
from nooks.fs.serve import Server
from nooks.fs.statelog import StateLog

FUSE, NODES, HANDLES, INFLIGHT = "fuse", "nodes", "handles", "inflight"
# a byte the host sets once the mount is made and FUSE_INIT answered (before, the
# domain must not read: the kernel's INIT is the host's to answer); the next says
# whether the kernel sends again what a dead domain had read
STARTED, STARTED_SIZE = "started", 8
RAISED = "raised"  # the exceptions drivers raised (nooks.fs.serve.Server.lenient_after)
START_POLL = 0.001  # seconds between looks at it
INIT_CTX = (0, 0, 0)  # (as mfusepy's init: no caller)


class ServedFs(FsAdapter):
    """``FsAdapter`` that serves the mount itself: ``serve`` runs on a thread of its
    own once the driver is built (``DriverSpec.runs``)."""

    epoch_per_call = False  # (the server marks each request: Server.handle)

    def __init__(self, target: str, args: list[Any], kwargs: dict[str, Any], *,
                 attr_timeout: float = 1.0, entry_timeout: float = 1.0,
                 direct_io: bool = False, hard_remove: bool = False) -> None:
        """The driver as ``FsAdapter`` builds it; how long the kernel may cache
        attributes and names (libfuse's ``attr_timeout``, ``entry_timeout``), and
        whether files bypass its page cache (``direct_io``), and whether an open
        file that is unlinked goes at once (``hard_remove``)."""
        super().__init__(target, args, kwargs)
        self.attr_timeout, self.entry_timeout = attr_timeout, entry_timeout
        self.direct_io, self.hard_remove = direct_io, hard_remove

    def serve(self) -> None:
        started = child.region(STARTED)
        while not started[0]:  # (only the first domain waits, for a millisecond or so)
            time.sleep(START_POLL)
        server = Server(child.descriptor(FUSE), self, Nodes(StateLog(child.region(NODES))),
                        Handles(StateLog(child.region(HANDLES))),
                        inflight=InFlight(child.region(INFLIGHT)),
                        attr_timeout=self.attr_timeout, entry_timeout=self.entry_timeout,
                        direct_io=self.direct_io, hard_remove=self.hard_remove)
        server.lenient_after(StateLog(child.region(RAISED)))
        server.second_opinions = bool(started[1])
        self.init(INIT_CTX, "/")
        server.serve()
