"""The file handles a FUSE server gives the kernel, kept in a ``StateLog`` so that
a fresh server — whose driver knows none of its predecessor's handles — can
honour them.

The kernel holds *virtual* handles: numbers this table hands out at open,
create and opendir, each logged with the node and the open flags. The driver's
own handle behind each lives only in the server that opened it. A fresh server
rebuilds the table from the log with no driver handles; the first request on a
handle re-opens it by its node's path and flags, without ``O_CREAT``,
``O_EXCL`` and ``O_TRUNC`` (the file exists, and its data stays), as the
shadow does for the host-mediated mode.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from nooks.fs.statelog import COMPACT_SLACK, Full, StateLog

_OPEN = struct.Struct("<BQQIB")  # kind, handle, node, flags, is a directory
_CLOSE = struct.Struct("<BQ")  # kind, handle
OPEN, CLOSE = 1, 2
REOPEN_STRIP = os.O_CREAT | os.O_EXCL | os.O_TRUNC


@dataclass
class Handle:
    node: int
    flags: int
    directory: bool
    driver: int | None = None  # the driver's handle, in this server (None: not yet)


class Handles:
    def __init__(self, log: StateLog) -> None:
        self.log = log
        self.handles: dict[int, Handle] = {}
        self.next = 1
        self.records = 0  # in the log (what a successor reads back)
        for record in log.records():
            self._apply(record)
            self.records += 1

    def opened(self, node: int, flags: int, driver: int, *, directory: bool = False) -> int:
        """A handle for what the driver opened as ``driver``."""
        handle = self.next
        self._log(_OPEN.pack(OPEN, handle, node, flags, directory))
        self.handles[handle].driver = driver
        return handle

    def closed(self, handle: int) -> None:
        if handle in self.handles:
            self._log(_CLOSE.pack(CLOSE, handle))

    def _log(self, record: bytes) -> None:
        if self.records > COMPACT_SLACK + 2 * len(self.handles):
            self._compact()  # (a successor reads back what the table is, not its past)
        try:
            self.log.append(record)
        except Full:
            self._compact()
            self.log.append(record)
        self.records += 1
        self._apply(record)

    def _compact(self) -> None:
        snapshot = [_OPEN.pack(OPEN, k, h.node, h.flags, h.directory)
                    for k, h in self.handles.items()]
        self.log.compact(snapshot)
        self.records = len(snapshot)

    def _apply(self, record: bytes) -> None:
        if record[0] == OPEN:
            _, handle, node, flags, directory = _OPEN.unpack_from(record)
            self.handles[handle] = Handle(node, flags, bool(directory))
            self.next = max(self.next, handle + 1)
        elif record[0] == CLOSE:
            self.handles.pop(_CLOSE.unpack_from(record)[1], None)
