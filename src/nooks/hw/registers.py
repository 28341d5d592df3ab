"""What every card model shares: access to its register window (little-endian, as
the chips' are) and the parts it is built from.

A register is read and written whole (``Window``): another process reads the
window while the card writes it, and a 16-bit pointer written a byte at a time
(as ``struct`` packs little-endian fields) can be seen half old, half new — a
driver that read such a receive pointer followed it into stale ring memory.
Aligned registers go through typed views of the window (one load or store);
misaligned ones, which no chip here has, byte by byte.
"""

from __future__ import annotations

import struct
import sys
import threading
from collections.abc import Callable
from typing import ClassVar

# the typed views are the machine's byte order; the chips' registers are little-endian
assert sys.byteorder == "little", "register windows assume a little-endian machine"

_U16, _U32 = struct.Struct("<H"), struct.Struct("<I")


class Window:
    """A register window read and written a whole register at a time."""

    def __init__(self, mem: memoryview) -> None:
        self.mem = mem
        self._h = mem[:len(mem) & ~1].cast("B").cast("H")
        self._i = mem[:len(mem) & ~3].cast("B").cast("I")

    def r8(self, off: int) -> int:
        return self.mem[off]

    def r16(self, off: int) -> int:
        if off & 1:
            return int(_U16.unpack_from(self.mem, off)[0])
        return int(self._h[off >> 1])

    def r32(self, off: int) -> int:
        if off & 3:
            return int(_U32.unpack_from(self.mem, off)[0])
        return int(self._i[off >> 2])

    def w8(self, off: int, v: int) -> None:
        self.mem[off] = v & 0xFF

    def w16(self, off: int, v: int) -> None:
        if off & 1:
            _U16.pack_into(self.mem, off, v & 0xFFFF)
        else:
            self._h[off >> 1] = v & 0xFFFF

    def w32(self, off: int, v: int) -> None:
        if off & 3:
            _U32.pack_into(self.mem, off, v & 0xFFFFFFFF)
        else:
            self._i[off >> 2] = v & 0xFFFFFFFF

    def release(self) -> None:
        self._h.release()
        self._i.release()


class RegisterFile:
    """Mixed into a card model whose registers are ``self.regs`` (``self.window``
    reads and writes them whole)."""

    regs: memoryview
    window: Window

    def _r8(self, off: int) -> int:
        return self.regs[off]

    def _r16(self, off: int) -> int:
        return self.window.r16(off)

    def _r32(self, off: int) -> int:
        return self.window.r32(off)

    def _w8(self, off: int, v: int) -> None:
        self.regs[off] = v & 0xFF

    def _w16(self, off: int, v: int) -> None:
        self.window.w16(off, v)

    def _w32(self, off: int, v: int) -> None:
        self.window.w32(off, v)


class CardModel(RegisterFile):
    """A card: ``regs`` and ``dma`` are the shared regions, ``send`` puts a frame on the
    wire, ``interrupt`` is called when the line rises (the host then looks at
    ``pending`` after each handler). A family gives ``REGS_SIZE`` and ``_reset``."""

    REGS_SIZE: ClassVar[int]
    RX_TAKEN: ClassVar[int] = 0  # the cause ``_receive`` returns for a frame taken

    def __init__(self, regs: memoryview, dma: memoryview, mac: bytes,
                 send: Callable[[bytes], None], interrupt: Callable[[], None]) -> None:
        if len(regs) < self.REGS_SIZE:
            raise ValueError("the register region is too small")
        if len(mac) != 6:
            raise ValueError("a MAC address is 6 bytes")
        self.regs = regs
        self.window = Window(regs)
        self.dma = dma
        self.mac = mac
        self._send = send
        self._interrupt = interrupt
        # told, under ``lock``, where in DMA memory a frame taken from the wire begins
        # (the driver may pass it up by that place); the host sets it
        self.placed: Callable[[int, bytes], None] = _nowhere
        self.lock = threading.Lock()
        self.counts = {"tx": 0, "tx_aborted": 0, "rx": 0, "rx_missed": 0, "rx_filtered": 0}
        self.reset()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.mac.hex(':')} {self.counts}>"

    def release(self) -> None:
        """Let go of the views of the shared regions (before they are unmapped)."""
        self.window.release()

    def reset(self) -> None:
        """Power-on state (the family's ``_reset``)."""
        with self.lock:
            self._reset()

    def _reset(self) -> None:
        raise NotImplementedError

    def _signal(self, bits: int) -> bool:
        raise NotImplementedError

    def _publish(self) -> None:
        raise NotImplementedError

    def _receive(self, frame: bytes) -> int | None:
        """Take ``frame`` into the card's memory if it can: the interrupt cause to
        raise (``RX_TAKEN`` if taken, another if missed), or None for none."""
        raise NotImplementedError

    def receive(self, frame: bytes) -> bool:
        """A frame arrived from the wire; whether the card took it (for families whose
        ``_receive`` says so with a cause)."""
        raise_line = False
        with self.lock:
            taken = self._receive(frame)
            if taken is not None:
                raise_line = self._signal(taken)
                self._publish()
        if raise_line:
            self._interrupt()
        return taken == self.RX_TAKEN


def _nowhere(address: int, frame: bytes) -> None:
    return None
