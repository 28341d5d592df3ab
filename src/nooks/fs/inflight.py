"""The record of the requests a FUSE server is serving, in shared memory the host
reads: which request (its id and opcode) each server thread took, and since
when — so that the host sees a hung server from the age of its oldest request,
and knows after a crash which requests it had taken.

One slot per serving thread, 24 bytes: a sequence word, the request id, the
opcode and when it was taken (milliseconds of ``time.monotonic``, wrapping at
32 bits); an id of 0 is an idle slot. The thread makes the sequence odd, writes
the slot and makes it even again; a reader takes a slot only as read between
two equal even sequence words (a seqlock), so it never sees half of one. A
server killed in the middle of writing a slot leaves it odd: that request is
not seen (the kernel resends it with the others all the same).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

SLOT = struct.Struct("<QQII")  # sequence, request id, opcode, start (ms, wrapping)
_SEQ = struct.Struct("<Q")
_BODY = struct.Struct("<QII")
READ_TRIES = 8  # re-reads of a slot that changed while it was read


class Taken(NamedTuple):
    slot: int
    unique: int
    opcode: int
    start_ms: int


def size_for(slots: int) -> int:
    return slots * SLOT.size


class InFlight:
    """Slots in ``mem`` (``size_for(n)`` bytes): slot ``i`` is thread ``i``'s."""

    def __init__(self, mem: memoryview) -> None:
        if not mem or len(mem) % SLOT.size:
            raise ValueError(f"{len(mem)} bytes are not a whole number of slots")
        self.mem = mem
        self.slots = len(mem) // SLOT.size

    # -- the server's side -------------------------------------------------------------

    def took(self, slot: int, unique: int, opcode: int, now_ms: int) -> None:
        at = slot * SLOT.size
        seq = _SEQ.unpack_from(self.mem, at)[0]
        _SEQ.pack_into(self.mem, at, seq | 1)  # (odd: being written)
        _BODY.pack_into(self.mem, at + 8, unique, opcode, now_ms & 0xFFFFFFFF)
        _SEQ.pack_into(self.mem, at, (seq | 1) + 1)

    def done(self, slot: int) -> None:
        at = slot * SLOT.size
        seq = _SEQ.unpack_from(self.mem, at)[0]
        _SEQ.pack_into(self.mem, at, seq | 1)
        _BODY.pack_into(self.mem, at + 8, 0, 0, 0)
        _SEQ.pack_into(self.mem, at, (seq | 1) + 1)

    # -- the host's side ---------------------------------------------------------------

    def taken(self) -> list[Taken]:
        """The requests being served, each read whole (a slot whose writer died while
        writing it, or that keeps changing, is left out)."""
        out = []
        for slot in range(self.slots):
            at = slot * SLOT.size
            for _ in range(READ_TRIES):
                seq, unique, opcode, start = SLOT.unpack_from(self.mem, at)
                if seq & 1:
                    continue  # (being written)
                if _SEQ.unpack_from(self.mem, at)[0] != seq:
                    continue  # (changed while read)
                if unique:
                    out.append(Taken(slot, unique, opcode, start))
                break
        return out

    def oldest_age_ms(self, now_ms: int) -> int | None:
        """How long the oldest request being served has been (None: none is)."""
        ages = [(now_ms - t.start_ms) & 0xFFFFFFFF for t in self.taken()]
        return max(ages) if ages else None
