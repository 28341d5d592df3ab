"""An RTL8139 driver gone bad: its interrupt handler writes random values over the
card's registers, rings random doorbells, and passes up a frame the wire never
brought (which the host refuses: the driver misbehaved)."""

from __future__ import annotations

import random

from nooks.drivers.rtl8139 import DOORBELLS, Rtl8139


class Scribbler(Rtl8139):
    def __init__(self) -> None:
        super().__init__()
        self.rng = random.Random(7)

    def interrupt(self) -> None:
        for _ in range(50):
            off = self.rng.randrange(0, 0x100 - 4)
            if off not in DOORBELLS:
                self.regs.w32(off, self.rng.getrandbits(32))
        for off in sorted(DOORBELLS):
            self.regs.w32(off, self.rng.getrandbits(32))
        super().interrupt()
        self.k.netif_rx(b"\x02" * 6 + self.rng.randbytes(54))
