"""A log of records in shared memory that survives its writer's death at any
instruction: what a domain that serves ``/dev/fuse`` itself keeps of its
session (node ids, lookup counts, handles) lives in one, in memory the host
owns, so that a fresh domain — or the host — rebuilds it after a crash.

Layout: a 64-byte header, then two buffers of equal size, one of them *active*.
The header holds one 64-bit word: the active buffer's number and how many bytes
of it are committed. A record is its length (4 bytes), a CRC-32 of its payload (4 bytes)
and the payload, padded to 8 bytes. ``append`` writes the record past the
committed end first and then moves the committed length, one aligned 8-byte
store: a writer killed in between leaves a record no reader sees. ``compact``
writes a fresh set of records into the other buffer and then switches the
active number and the committed length, again in one 8-byte store, so a reader
sees the old log or the new one, never a mixture. A reader trusts nothing it
reads: a length past the committed end or a CRC that does not match ends the
log there (``torn``).
"""

from __future__ import annotations

import ctypes
import struct
import zlib
from collections.abc import Iterable, Iterator

MAGIC = b"nookslog"
HEADER = 64
_RECORD = struct.Struct("<II")  # payload length, CRC-32 of the payload
STATE_AT = 8  # the state word: committed bytes << 32 | the active buffer
MAX_RECORD = 1 << 16  # bytes of payload in one record
# records a table's log (nodes, handles) may hold beyond twice the table's entries
# before the table compacts it: what a successor reads back at a takeover (about a
# microsecond a record, while requests wait) stays in proportion to the table, not
# to the requests served since (each lookup of a name is a record)
COMPACT_SLACK = 1024


class Full(Exception):
    """The active buffer has no room left: compact, or give the log more memory."""


def size_for(buffer: int) -> int:
    """The bytes of shared memory a log with two ``buffer``-byte buffers takes."""
    return HEADER + 2 * buffer


def _padded(n: int) -> int:
    return (n + 7) & ~7


class StateLog:
    """A log in ``mem`` (``size_for(buffer)`` bytes of shared memory, zeros or a log
    written before). One process writes it (its place is kept here, not read back
    for each record); any may read it."""

    def __init__(self, mem: memoryview) -> None:
        if len(mem) <= HEADER or (len(mem) - HEADER) % 16:
            raise ValueError(f"{len(mem)} bytes cannot hold a log (see size_for)")
        self.mem = mem
        self.buffer = (len(mem) - HEADER) // 2
        if bytes(mem[:8]) != MAGIC:
            mem[:HEADER] = bytes(HEADER)
            mem[:8] = MAGIC
        self.torn = False  # whether the last read of the log met a record it refused
        # the state word, stored with one 64-bit write (a ctypes assignment)
        self._word = ctypes.c_uint64.from_buffer(mem, STATE_AT)
        self._active, self._committed = self._state()

    def _state(self) -> tuple[int, int]:
        word = self._word.value
        return word & 1, min(word >> 32, self.buffer)

    def _commit(self, active: int, committed: int) -> None:
        self._word.value = committed << 32 | active
        self._active, self._committed = active, committed

    def _base(self, active: int) -> int:
        return HEADER + active * self.buffer

    def _put(self, at: int, payload: bytes) -> int:
        """Write a record at ``at`` (absolute); where the next one goes."""
        end = at + _RECORD.size + _padded(len(payload))
        _RECORD.pack_into(self.mem, at, len(payload), zlib.crc32(payload))
        self.mem[at + _RECORD.size:at + _RECORD.size + len(payload)] = payload
        return end

    @property
    def used(self) -> int:
        """Committed bytes of the active buffer."""
        return self._state()[1]

    def append(self, payload: bytes) -> None:
        """Add a record; Full if the active buffer has no room for it."""
        if len(payload) > MAX_RECORD:
            raise ValueError(f"a record of {len(payload)} bytes (at most {MAX_RECORD})")
        active, committed = self._active, self._committed
        need = _RECORD.size + ((len(payload) + 7) & ~7)
        if committed + need > self.buffer:
            raise Full(f"{committed} of {self.buffer} bytes used, {need} more needed")
        at = HEADER + active * self.buffer + committed
        _RECORD.pack_into(self.mem, at, len(payload), zlib.crc32(payload))
        self.mem[at + _RECORD.size:at + _RECORD.size + len(payload)] = payload
        self._commit(active, committed + need)  # (then the commit: one 8-byte store)

    def compact(self, payloads: Iterable[bytes]) -> None:
        """Replace the log with ``payloads`` (what the records come to), written into
        the other buffer and switched to at once."""
        other = 1 - self._active
        base = at = self._base(other)
        for payload in payloads:
            if len(payload) > MAX_RECORD:
                raise ValueError(f"a record of {len(payload)} bytes (at most {MAX_RECORD})")
            if at - base + _RECORD.size + _padded(len(payload)) > self.buffer:
                raise Full(f"the compacted log does not fit in {self.buffer} bytes")
            at = self._put(at, payload)
        self._commit(other, at - base)

    def records(self) -> Iterator[bytes]:
        """The committed records, oldest first; ``torn`` is set if one was refused
        (the log is read up to it)."""
        self.torn = False
        active, committed = self._state()
        base = self._base(active)
        at = 0
        while at < committed:
            if committed - at < _RECORD.size:
                self.torn = True
                return
            length, crc = _RECORD.unpack_from(self.mem, base + at)
            start = base + at + _RECORD.size
            if length > MAX_RECORD or at + _RECORD.size + length > committed:
                self.torn = True
                return
            payload = bytes(self.mem[start:start + length])
            if zlib.crc32(payload) != crc:
                self.torn = True
                return
            yield payload
            at += _RECORD.size + _padded(length)

    def close(self) -> None:
        """Let go of the memory (its mapping may be closed after)."""
        del self._word
