"""The object tracker: every host object a domain holds, behind opaque ids.

A driver never sees a host object, only an id from this table. Every use is
checked: the id must exist in *this* domain's table and be of the expected
kind; anything else is the driver's failure (``DomainMisbehaved``). When the
domain dies, ``release_all`` frees everything it held, newest first.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NewType

from nooks.errors import LimitExceeded

ObjectId = NewType("ObjectId", int)

log = logging.getLogger(__name__)


# host objects one domain may hold at once
MAX_OBJECTS = 1 << 16


class NotOwned(Exception):
    """An id that is not a live object of the expected kind in this table."""


@dataclass
class _Entry:
    kind: str
    obj: Any
    release: Callable[[Any], None] | None


class ObjectTracker:
    """Per-domain table of host objects. Thread-safe."""

    def __init__(self, owner: str = "", limit: int = MAX_OBJECTS) -> None:
        self.owner = owner
        self.limit = limit
        self._lock = threading.Lock()
        self._objects: dict[int, _Entry] = {}
        self._next = 1

    def add(self, kind: str, obj: Any, release: Callable[[Any], None] | None = None) -> ObjectId:
        """Record ``obj`` as held by the domain; ``release`` frees it if the domain dies.
        LimitExceeded if the domain holds ``limit`` objects already."""
        with self._lock:
            if len(self._objects) >= self.limit:
                raise LimitExceeded(f"holds {self.limit} host objects already")
            oid = self._next
            self._next += 1
            self._objects[oid] = _Entry(kind, obj, release)
        return ObjectId(oid)

    def get(self, oid: int, kind: str) -> Any:
        """The object behind ``oid``; NotOwned unless it is a live ``kind`` of this domain."""
        entry = self._objects.get(oid)
        if entry is None:
            raise NotOwned(f"{kind} id {oid} is not held by {self.owner or 'this domain'}")
        if entry.kind != kind:
            raise NotOwned(f"id {oid} is a {entry.kind}, not a {kind}")
        return entry.obj

    def remove(self, oid: int, kind: str) -> Any:
        """Forget ``oid`` without running its release; returns the object."""
        with self._lock:
            obj = self.get(oid, kind)
            del self._objects[oid]
        return obj

    def release(self, oid: int, kind: str) -> None:
        """Forget ``oid`` and run its release."""
        with self._lock:
            self.get(oid, kind)
            entry = self._objects.pop(oid)
        if entry.release is not None:
            entry.release(entry.obj)

    def release_all(self) -> int:
        """Free every object, newest first; returns how many there were.

        A release that raises is logged and does not stop the others.
        """
        with self._lock:
            entries = list(self._objects.items())
            self._objects.clear()
        for oid, entry in reversed(entries):
            if entry.release is None:
                continue
            try:
                entry.release(entry.obj)
            except Exception:
                log.exception("releasing %s %d of %s failed", entry.kind, oid, self.owner)
        return len(entries)

    def counts(self) -> dict[str, int]:
        with self._lock:
            out: dict[str, int] = {}
            for e in self._objects.values():
                out[e.kind] = out.get(e.kind, 0) + 1
            return out

    def __len__(self) -> int:
        return len(self._objects)

    def __repr__(self) -> str:
        return f"<ObjectTracker {self.owner} {self.counts()}>"
