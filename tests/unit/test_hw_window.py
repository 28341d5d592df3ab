"""A register is read and written whole: a driver in another process reading a
pointer the card is moving never sees half of the old value and half of the new
(a receive pointer read torn sent a driver into stale ring memory)."""

from __future__ import annotations

import mmap
import os

from nooks.hw.mmio import Registers
from nooks.hw.registers import Window

OLD16, NEW16 = 0x00FF, 0xFF00  # every byte differs: a torn value is neither
OLD32, NEW32 = 0x0000FFFF, 0xFFFF0000


def test_registers_are_never_seen_torn_by_another_process() -> None:
    mem = mmap.mmap(-1, 4096)
    card = Window(memoryview(mem))
    card.w16(0x3A, OLD16)
    card.w32(0x40, OLD32)
    child = os.fork()
    if child == 0:  # the card: moves both registers back and forth, then stops
        try:
            for i in range(200_000):
                card.w16(0x3A, NEW16 if i & 1 else OLD16)
                card.w32(0x40, NEW32 if i & 1 else OLD32)
            card.w8(0x100, 1)
        finally:
            os._exit(0)
    driver = Registers(memoryview(mem), frozenset(), lambda off, value: None)
    seen16: set[int] = set()
    seen32: set[int] = set()
    while not driver.r8(0x100):
        seen16.add(driver.r16(0x3A))
        seen32.add(driver.r32(0x40))
    os.waitpid(child, 0)
    assert seen16 <= {OLD16, NEW16}, [hex(v) for v in seen16]
    assert seen32 <= {OLD32, NEW32}, [hex(v) for v in seen32]
    assert len(seen16) == 2  # (the reader did see the register move)
