"""Virtual handles: what a class's clients hold, mapped to what the current driver gave.

A driver's handles (file descriptors, stream ids, device handles) die with it;
its clients' must not. The shadow therefore hands out its own *virtual* handles
(from 1), each mapped to the current driver's *real* one, and after a recovery
re-opens every handle in the fresh driver and updates the map. Rules:

* a handle is opened by a call the interface declares ``@opens(kind)`` and
  closed by one declared ``@closes(kind)``; between the two it is in the table,
  with what re-opening it needs (its ``key``: a path, say, and ``flags``);
* ``reopen_all(opener)`` asks ``opener`` for a fresh real handle for each one;
  one that cannot be re-opened (``opener`` raises OSError: its file is gone) is
  *lost*: its uses fail, its close succeeds;
* ``moved(old, new)``: the keys of handles under ``old`` (a renamed directory's
  files) now read ``new``.

Not thread-safe: the class's spec holds its lock around every use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Handle:
    kind: str  # as the interface declares it ("file", "dir", "stream")
    key: str  # what re-opening it needs (a path)
    flags: int
    real: int  # the current driver's handle
    lost: bool = False

    @property
    def path(self) -> str:
        return self.key

    @path.setter
    def path(self, value: str) -> None:
        self.key = value


class HandleTable:
    def __init__(self) -> None:
        self._by_virtual: dict[int, Handle] = {}
        self._next = 1

    def open(self, kind: str, key: str, flags: int, real: int) -> int:
        """A new virtual handle for the driver's ``real`` one."""
        vfh = self._next
        self._next += 1
        self._by_virtual[vfh] = Handle(kind, key, flags, real)
        return vfh

    def get(self, vfh: Any) -> Handle | None:
        return self._by_virtual.get(vfh)

    def __getitem__(self, vfh: int) -> Handle:
        return self._by_virtual[vfh]

    def __contains__(self, vfh: object) -> bool:
        return vfh in self._by_virtual

    def __len__(self) -> int:
        return len(self._by_virtual)

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_virtual)

    def pop(self, vfh: int) -> Handle | None:
        return self._by_virtual.pop(vfh, None)

    def items(self) -> list[tuple[int, Handle]]:
        return list(self._by_virtual.items())

    def values(self) -> list[Handle]:
        return list(self._by_virtual.values())

    @property
    def lost(self) -> int:
        return sum(1 for h in self._by_virtual.values() if h.lost)

    def moved(self, old: str, new: str) -> None:
        """Keys under ``old`` now read ``new`` (a rename)."""
        for h in self._by_virtual.values():
            if h.key == old:
                h.key = new
            elif h.key.startswith(old + "/"):
                h.key = new + h.key[len(old):]

    @staticmethod
    def reopen(h: Handle, opener: Callable[[Handle], int]) -> bool:
        """Open ``h`` again in a fresh driver; whether it could be (else it is lost)."""
        try:
            h.real = opener(h)
        except OSError:
            h.lost = True
            return False
        h.lost = False
        return True

    def reopen_all(self, opener: Callable[[Handle], int]) -> int:
        """Re-open every handle that is not lost; how many were tried."""
        count = 0
        for h in self._by_virtual.values():
            if not h.lost:
                count += 1
                self.reopen(h, opener)
        return count

    def __repr__(self) -> str:
        return f"<HandleTable {len(self)} open, {self.lost} lost>"
