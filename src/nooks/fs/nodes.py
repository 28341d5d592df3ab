"""The node table a FUSE server keeps for the kernel, kept in a ``StateLog`` so
that a fresh server rebuilds it after its predecessor died.

The kernel names files by node id: each LOOKUP (and each create, mkdir, mknod,
symlink or link) that answers a node adds one to its *lookup count*; FORGET
takes counts away, and a node whose count reaches 0 is gone. A path-based
driver (an mfusepy ``Operations``) needs each id's path: a node is its parent
and its name. A rename moves a name; an unlink or rmdir takes the name away
while the node may live on until the kernel forgets it.

Every change is appended to the log before the kernel hears of it (the reply
is written after), so the table a successor rebuilds holds at least every node
the kernel may name. A log that fills is compacted to one record per node.
"""

from __future__ import annotations

import struct

from nooks.fs.kernelproto import ROOT_ID
from nooks.fs.statelog import COMPACT_SLACK, Full, StateLog

_LOOKUP = struct.Struct("<BQQQ")  # kind, node, parent, count added; then the name
_FORGET = struct.Struct("<BQQ")  # kind, node, count taken
_MOVE = struct.Struct("<BQQ")  # kind, node, new parent; then the new name
_DROP = struct.Struct("<BQ")  # kind, node (its name is gone)
_NEXT = struct.Struct("<BQ")  # kind, the next id to hand out (a compacted log's first)
_HIDE = struct.Struct("<BQ")  # kind, node (an open file unlinked: renamed out of sight)
LOOKUP, FORGET, MOVE, DROP, NEXT, HIDE = 1, 2, 3, 4, 5, 6


class Node:
    __slots__ = ("count", "hidden", "name", "parent")

    def __init__(self, parent: int, name: bytes, count: int) -> None:
        self.parent, self.name, self.count = parent, name, count
        self.hidden = False  # renamed to a hidden name because it was unlinked open


class Nodes:
    """The table, rebuilt from ``log`` (empty: the root only)."""

    def __init__(self, log: StateLog) -> None:
        self.log = log
        self.nodes: dict[int, Node] = {ROOT_ID: Node(ROOT_ID, b"", 1)}
        self.by_name: dict[tuple[int, bytes], int] = {}
        self.next_id = ROOT_ID + 1
        self.records = 0  # in the log (what a successor reads back)
        for record in log.records():
            self._apply(record)
            self.records += 1

    # -- what the kernel is told -----------------------------------------------------

    def lookup(self, parent: int, name: bytes) -> int:
        """The node named ``name`` in ``parent``, its count raised by one (a new node
        if it has none)."""
        node = self.by_name.get((parent, name))
        if node is None:
            node = self.next_id
        n = self.nodes.get(node)
        if n is None:
            self._log(_LOOKUP.pack(LOOKUP, node, parent, 1) + name)
        else:  # (as _apply would: one more; the hot path of every lookup)
            self._append(_LOOKUP.pack(LOOKUP, node, parent, 1) + name)
            n.count += 1
        return node

    def forget(self, node: int, count: int) -> None:
        if node in self.nodes and node != ROOT_ID:
            self._log(_FORGET.pack(FORGET, node, count))

    def moved(self, parent: int, name: bytes, new_parent: int, new_name: bytes) -> None:
        """A rename: the node named ``name`` in ``parent`` is now ``new_name`` in
        ``new_parent`` (one there before loses its name)."""
        node = self.by_name.get((parent, name))
        if node is not None:
            self._log(_MOVE.pack(MOVE, node, new_parent) + new_name)

    def removed(self, parent: int, name: bytes) -> None:
        """An unlink or rmdir: the name is gone (the node lives until forgotten)."""
        node = self.by_name.get((parent, name))
        if node is not None:
            self._log(_DROP.pack(DROP, node))

    def hide(self, node: int) -> None:
        """The node was renamed to a hidden name because it was unlinked while open: its
        last release removes it (and only then: a file merely named so is not)."""
        if node in self.nodes:
            self._log(_HIDE.pack(HIDE, node))

    def path(self, node: int) -> bytes | None:
        """The node's path from the root (``b"/"`` for it), or None if it has no name
        any more (or no such node is known)."""
        parts = []
        seen = 0
        while node != ROOT_ID:
            n = self.nodes.get(node)
            if n is None or not n.name or seen > len(self.nodes):
                return None
            parts.append(n.name)
            node = n.parent
            seen += 1
        return b"/" + b"/".join(reversed(parts))

    # -- the log ---------------------------------------------------------------------

    def _log(self, record: bytes) -> None:
        self._append(record)
        self._apply(record)

    def _append(self, record: bytes) -> None:
        if self.records > COMPACT_SLACK + 2 * len(self.nodes):
            self._compact()  # (a successor reads back what the table is, not its past)
        try:
            self.log.append(record)
        except Full:
            self._compact()
            self.log.append(record)
        self.records += 1

    def _compact(self) -> None:
        snapshot = self._snapshot()
        self.log.compact(snapshot)
        self.records = len(snapshot)

    def _snapshot(self) -> list[bytes]:
        out = [_NEXT.pack(NEXT, self.next_id)]  # (an id handed out is not handed out again)
        for node, n in self.nodes.items():
            if node == ROOT_ID:
                continue
            out.append(_LOOKUP.pack(LOOKUP, node, n.parent, n.count) + n.name)
            if n.hidden:
                out.append(_HIDE.pack(HIDE, node))
        return out

    def _apply(self, record: bytes) -> None:
        kind = record[0]
        if kind == LOOKUP:
            _, node, parent, count = _LOOKUP.unpack_from(record)
            name = record[_LOOKUP.size:]
            n = self.nodes.get(node)
            if n is None:
                self._name(node, parent, name)
                self.nodes[node] = Node(parent, name, count)
            else:
                n.count += count
            self.next_id = max(self.next_id, node + 1)
        elif kind == FORGET:
            _, node, count = _FORGET.unpack_from(record)
            n = self.nodes.get(node)
            if n is not None:
                n.count -= count
                if n.count <= 0:
                    self._unname(node)
                    del self.nodes[node]
        elif kind == MOVE:
            _, node, parent = _MOVE.unpack_from(record)
            name = record[_MOVE.size:]
            n = self.nodes.get(node)
            if n is not None:
                self._unname(node)
                there = self.by_name.get((parent, name))
                if there is not None:
                    self._unname(there)
                n.parent, n.name = parent, name
                self._name(node, parent, name)
        elif kind == DROP:
            (_, node) = _DROP.unpack_from(record)
            self._unname(node)
        elif kind == NEXT:
            self.next_id = max(self.next_id, _NEXT.unpack_from(record)[1])
        elif kind == HIDE:
            n = self.nodes.get(_HIDE.unpack_from(record)[1])
            if n is not None:
                n.hidden = True

    def _name(self, node: int, parent: int, name: bytes) -> None:
        if name:
            self.by_name[(parent, name)] = node

    def _unname(self, node: int) -> None:
        n = self.nodes.get(node)
        if n is not None and n.name:
            if self.by_name.get((n.parent, n.name)) == node:
                del self.by_name[(n.parent, n.name)]
            n.name = b""
