"""A device's registers as a driver in its domain reaches them.

Registers are shared memory (``nooks.domain.child.region``): reading one reads
what the card last put there; writing a plain register writes it in place, and
the card reads it when it acts. A register whose write makes the card act (a
*doorbell*: send this slot, clear these interrupt bits, reset) is not written
in place: the write goes to the card as a posted kernel call, ``mmio_write``,
which reaches the host with the next message the domain sends (its reply to the
request being served, at the latest) — batched, as the seed's deferred XPC.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet

from nooks.hw.registers import Window


class Registers:
    """Registers are read and written whole (``Window``): the card writes them while
    the driver reads."""

    def __init__(self, mem: memoryview, doorbells: AbstractSet[int],
                 ring: Callable[[int, int], None]) -> None:
        self.mem = mem
        self.window = Window(mem)
        self.doorbells = frozenset(doorbells)
        self._ring = ring
        self.r8 = self.window.r8
        self.r16 = self.window.r16
        self.r32 = self.window.r32

    def w8(self, off: int, value: int) -> None:
        if off in self.doorbells:
            self._ring(off, value & 0xFF)
        else:
            self.window.w8(off, value)

    def w16(self, off: int, value: int) -> None:
        if off in self.doorbells:
            self._ring(off, value & 0xFFFF)
        else:
            self.window.w16(off, value)

    def w32(self, off: int, value: int) -> None:
        if off in self.doorbells:
            self._ring(off, value & 0xFFFFFFFF)
        else:
            self.window.w32(off, value)

    def write_bytes(self, off: int, data: bytes) -> None:
        """Plain registers only (an address filter, a MAC address)."""
        if any(off <= d < off + len(data) for d in self.doorbells):
            raise ValueError("a doorbell cannot be written as bytes")
        self.mem[off:off + len(data)] = data

    def read_bytes(self, off: int, size: int) -> bytes:
        return bytes(self.mem[off:off + size])
