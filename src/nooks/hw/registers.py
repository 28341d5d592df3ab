"""A card model's access to its own register window (little-endian, as the
chips' are)."""

from __future__ import annotations

import struct

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
