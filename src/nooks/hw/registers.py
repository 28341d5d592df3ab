"""What every card model shares: access to its register window (little-endian, as
the chips' are) and the parts it is built from."""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import ClassVar

_U16, _U32 = struct.Struct("<H"), struct.Struct("<I")


class RegisterFile:
    """Mixed into a card model whose registers are ``self.regs``."""

    regs: memoryview

    def _r8(self, off: int) -> int:
        return self.regs[off]

    def _r16(self, off: int) -> int:
        return int(_U16.unpack_from(self.regs, off)[0])

    def _r32(self, off: int) -> int:
        return int(_U32.unpack_from(self.regs, off)[0])

    def _w8(self, off: int, v: int) -> None:
        self.regs[off] = v & 0xFF

    def _w16(self, off: int, v: int) -> None:
        _U16.pack_into(self.regs, off, v & 0xFFFF)

    def _w32(self, off: int, v: int) -> None:
        _U32.pack_into(self.regs, off, v & 0xFFFFFFFF)


class CardModel(RegisterFile):
    """A card: ``regs`` and ``dma`` are the shared regions, ``send`` puts a frame on the
    wire, ``interrupt`` is called when the line rises (the host then looks at
    ``pending`` after each handler). A family gives ``REGS_SIZE`` and ``_reset``."""

    REGS_SIZE: ClassVar[int]

    def __init__(self, regs: memoryview, dma: memoryview, mac: bytes,
                 send: Callable[[bytes], None], interrupt: Callable[[], None]) -> None:
        if len(regs) < self.REGS_SIZE:
            raise ValueError("the register region is too small")
        if len(mac) != 6:
            raise ValueError("a MAC address is 6 bytes")
        self.regs = regs
        self.dma = dma
        self.mac = mac
        self._send = send
        self._interrupt = interrupt
        self.lock = threading.Lock()
        self.counts = {"tx": 0, "tx_aborted": 0, "rx": 0, "rx_missed": 0, "rx_filtered": 0}
        self.reset()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.mac.hex(':')} {self.counts}>"

    def reset(self) -> None:
        """Power-on state (the family's ``_reset``)."""
        with self.lock:
            self._reset()

    def _reset(self) -> None:
        raise NotImplementedError
