"""An NE2000's I/O ports as a driver in its domain reaches them (``inb``/``outb``
on the DP8390's paged registers, ``insw``/``outsw`` on the data port).

The register page is the one the driver last selected in ``CR`` (``PS0``/``PS1``),
as on the chip; each (page, register) is a place in the card's register window
(``nooks.hw.ne2000``), written in place or, for a doorbell, posted to the card
(``nooks.hw.mmio.Registers``).

The data port's remote DMA runs here, beside the driver: the card's memory is
mapped into the domain, and a transfer of ``RBCR`` bytes from or to ``RSAR``
(wrapping from ``PSTOP`` to ``PSTART``, as the chip's remote DMA does) reads or
writes it directly, then leaves ``RSAR``/``CRDA`` advanced and ``RBCR`` at zero and
tells the card it ended (the ``DMA_DONE`` doorbell: ``ISR.RDC``). A byte moved
through the port costs no crossing; a driver that reads or writes past what it
asked only reaches the card's memory, whose frames the host checks.
"""

from __future__ import annotations

from collections.abc import Callable

from nooks.hw import ne2000 as n
from nooks.hw.mmio import Registers

DATA, RESET = 0x10, 0x1F  # the data and reset ports (after the 8390's sixteen registers)


class Ports:
    def __init__(self, regs: memoryview, memory: memoryview,
                 ring: Callable[[int, int], None]) -> None:
        self.regs = Registers(regs, n.DOORBELLS, ring)
        self.mem = memory
        self.page = 0

    def _place(self, reg: int, writing: bool) -> int:
        if not 0 <= reg < 16:
            raise ValueError(f"no register {reg:#x}")
        if reg == n.CR:
            return n.CR
        if self.page == 1:
            return n.PAGE1 + reg
        if self.page == 0 and (not writing or reg == n.BNRY):
            return n.PAGE0 + reg  # (BNRY is read and written in one place)
        return n.PAGE2 + reg  # page 0 as written; page 2 reads it back

    def outb(self, reg: int, value: int) -> None:
        if reg == RESET:
            self.regs.w8(n.RESET, 0)
            return
        if reg == n.CR:
            self.page = (value & n.CR_PAGE) >> 6
        self.regs.w8(self._place(reg, True), value)

    def inb(self, reg: int) -> int:
        return self.regs.r8(self._place(reg, False))

    # -- remote DMA ----------------------------------------------------------------

    def _transfer(self) -> tuple[int, int, int, int]:
        """(address, count, ring start, ring stop) of the transfer set up."""
        r = self.regs
        addr = r.r8(n.PAGE2 + n.RSAR0) | r.r8(n.PAGE2 + n.RSAR1) << 8
        count = r.r8(n.PAGE2 + n.RBCR0) | r.r8(n.PAGE2 + n.RBCR1) << 8
        start, stop = r.r8(n.PAGE2 + n.PSTART) * n.PAGE, r.r8(n.PAGE2 + n.PSTOP) * n.PAGE
        return addr, count, start, stop

    def _spans(self, addr: int, count: int, start: int,
               stop: int) -> tuple[list[tuple[int, int]], int]:
        """The pieces of card memory a transfer covers (wrapping at the ring's end if
        it starts inside the ring), and the address after it."""
        ring = start < stop and start <= addr < stop
        out: list[tuple[int, int]] = []
        for _ in range(count // n.PAGE + 2):  # (a ring is at least a page)
            end = stop if ring else len(self.mem)
            piece = min(count, end - addr)
            if piece <= 0:
                break
            out.append((addr, piece))
            addr += piece
            count -= piece
            if ring and addr == stop:
                addr = start
        return out, addr

    def _done(self, addr: int) -> None:
        r = self.regs
        for base in (n.PAGE2 + n.RSAR0, n.PAGE0 + 0x08):  # RSAR, and CRDA as read
            r.w8(base, addr & 0xFF)
            r.w8(base + 1, addr >> 8 & 0xFF)
        r.w8(n.PAGE2 + n.RBCR0, 0)
        r.w8(n.PAGE2 + n.RBCR1, 0)
        r.w8(n.DMA_DONE, 0)

    def insw(self) -> bytes:
        """Read the remote-DMA transfer set up (``RBCR`` bytes from ``RSAR``)."""
        spans, end = self._spans(*self._transfer())
        data = b"".join(bytes(self.mem[a:a + k]) for a, k in spans)
        self._done(end)
        return data

    def outsw(self, data: bytes) -> None:
        """Write ``data`` by remote DMA (``RBCR`` bytes to ``RSAR``)."""
        addr, count, start, stop = self._transfer()
        spans, end = self._spans(addr, min(count, len(data)), start, stop)
        at = 0
        for a, k in spans:
            self.mem[a:a + k] = data[at:at + k]
            at += k
        self._done(end)
