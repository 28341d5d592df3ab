"""An NE2000-style card: a DP8390 core with paged registers, a ring buffer in the
card's own memory, and a remote-DMA data port through which the driver moves
every byte.

The programming model of the NE2000 (National Semiconductor's DP8390 datasheet
and the NE2000's memory map), on the host's side:

* **Card memory** (``MEMORY`` bytes, a shared region the driver's domain maps as
  the data port's far side): the station-address PROM at 0 (each byte twice, as
  a 16-bit card reads it, and ``'WW'`` at 28), 16 KiB of buffer RAM at pages
  ``0x40``–``0x7F`` (256 bytes a page). Transmit buffers and the receive ring
  are pages of it.
* **Registers**, paged as the chip's are (``CR``'s ``PS0``/``PS1`` select a page).
  The window the driver maps keeps each page at its own place: page 0 as read
  (``BNRY``, ``TSR``, ``ISR``, ``CRDA``, ``RSR``, counters) at ``PAGE0``, page 1
  (``PAR0-5``, ``CURR``, ``MAR0-7``) at ``PAGE1``, page 2 (page 0's registers as
  written — ``PSTART``, ``PSTOP``, ``TPSR``, ``RCR``, ``TCR``, ``DCR``, ``IMR`` — read
  back) at ``PAGE2``; ``nooks.hw.ports`` maps a driver's (page, register) there.
* **Doorbells**: ``CR`` (start, stop, transmit, the remote-DMA command), ``ISR``
  (write 1 to clear), ``IMR`` (unmasking a set cause raises the line),
  ``TPSR``/``TBCR0``/``TBCR1`` (latched in order: a transmit uses the values
  written before its ``CR``), ``CURR`` (the card's, set once by the driver), the
  reset port, and ``DMA_DONE`` (a remote-DMA
  transfer ended: ``RDC``). Other registers are written in place and read by the
  card when it acts.
* **Receive**: a frame the filter takes (``RCR``: promiscuous, broadcast,
  multicast by the ``MAR`` hash, or ``PAR``) is written at ``CURR`` with a 4-byte
  header (status, next page, count), wrapping from ``PSTOP`` to ``PSTART``;
  ``CURR`` moves to the next page. The ring is empty when ``BNRY == CURR``
  (``BNRY``: the next page the driver reads); a frame that would reach ``BNRY``
  is missed (``OVW``). The receive cause is level: while the ring holds frames
  the line stays up.
* **Transmit**: ``CR.TXP`` sends ``TBCR`` bytes of card memory from page ``TPSR``;
  ``TXP`` clears and ``PTX`` is set when it has gone.

What a driver writes is checked as the chip's engines would fail it: a
transmit outside buffer RAM or longer than 1536 bytes aborts (``TXE``), a ring
that does not lie in buffer RAM receives nothing. Nothing a driver writes can
make the card raise or touch host memory.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from nooks.hw.netdev import ether_crc
from nooks.hw.registers import CardModel

MEMORY = 0x10000  # the card's address space: the PROM at 0, buffer RAM from RAM_START
RAM_START, RAM_STOP = 0x4000, 0x8000  # pages 0x40 to 0x7F
PAGE = 256

# the window: each page at its own place
CR = 0x00
PAGE0, PAGE1, PAGE2 = 0x00, 0x10, 0x20
DMA_DONE, RESET = 0x30, 0x3F
REGS_SIZE = 0x40
# page 0 (read: PAGE0 + r; written: PAGE2 + r, or a doorbell)
PSTART, PSTOP, BNRY, TPSR, TBCR0, TBCR1, ISR = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
TSR = 0x04  # read
RSAR0, RSAR1, RBCR0, RBCR1, RCR, TCR, DCR, IMR = 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F
RSR = 0x0C  # read
# page 1
PAR, CURR, MAR = 0x01, 0x07, 0x08

DOORBELLS = frozenset({CR, PAGE2 + ISR, PAGE2 + IMR, PAGE2 + TPSR, PAGE2 + TBCR0,
                       PAGE2 + TBCR1, PAGE1 + CURR, DMA_DONE, RESET})

# CR bits
CR_STP, CR_STA, CR_TXP = 0x01, 0x02, 0x04
CR_RD0, CR_RD1, CR_RD2 = 0x08, 0x10, 0x20
CR_PAGE = 0xC0
# ISR/IMR bits
ISR_PRX, ISR_PTX, ISR_RXE, ISR_TXE, ISR_OVW, ISR_CNT, ISR_RDC, ISR_RST = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80)
# RCR bits
RCR_AB, RCR_AM, RCR_PRO, RCR_MON = 0x04, 0x08, 0x10, 0x20
# receive status (RSR and a packet's header)
RSR_PRX, RSR_PHY = 0x01, 0x20
TSR_PTX = 0x01

MIN_FRAME, MAX_TX = 14, 1536
MAX_RX = 1522


def mc_hash(mac: bytes) -> int:
    """The bit of ``MAR`` (0-63) a multicast address selects (the CRC's top 6 bits)."""
    return ether_crc(mac) >> 26


class Ne2000(CardModel):
    """The card. Its memory is ``self.dma`` (``MEMORY`` bytes); ``send`` puts a frame
    on the wire; ``interrupt`` is called when the line rises."""

    REGS_SIZE = REGS_SIZE
    RX_TAKEN = ISR_PRX

    def __init__(self, regs: memoryview, dma: memoryview, mac: bytes,
                 send: Callable[[bytes], None], interrupt: Callable[[], None]) -> None:
        if len(dma) < MEMORY:
            raise ValueError("the card's memory region is too small")
        super().__init__(regs, dma, mac, send, interrupt)

    def _reset(self) -> None:
        self.regs[:REGS_SIZE] = bytes(REGS_SIZE)
        prom = b"".join(bytes([b, b]) for b in self.mac) + bytes(16) + b"WWWW"
        self.dma[:32] = prom
        self._cr = CR_STP | CR_RD2
        self._isr = ISR_RST
        self._curr = 0x4C
        self._tsr = 0
        self._tpsr = 0x40
        self._tbcr = 0
        self._publish()

    def _publish(self) -> None:
        self._w8(CR, self._cr)
        self._w8(PAGE0 + ISR, self._isr)
        self._w8(PAGE0 + TSR, self._tsr)
        self._w8(PAGE1 + CURR, self._curr)
        self._w8(PAGE1 + CR, self._cr)
        self._w8(PAGE2 + CR, self._cr)
        self._w8(PAGE2 + TPSR, self._tpsr)

    # -- the driver's doorbells ------------------------------------------------------

    def write(self, off: int, value: int) -> None:
        value &= 0xFF
        raise_line = False
        with self.lock:
            if off == RESET:
                self._reset()
                return
            if off == CR:
                raise_line = self._command(value)
            elif off == PAGE2 + ISR:
                self._isr &= ~value & 0xFF
            elif off == PAGE2 + IMR:
                before = self._isr & self._r8(PAGE2 + IMR)
                self._w8(PAGE2 + IMR, value)
                raise_line = not before and bool(self._isr & value)
            elif off == PAGE1 + CURR:  # (set by the driver before it starts the card)
                self._curr = value
            elif off == PAGE2 + TPSR:
                self._tpsr = value
            elif off == PAGE2 + TBCR0:
                self._tbcr = (self._tbcr & 0xFF00) | value
            elif off == PAGE2 + TBCR1:
                self._tbcr = (self._tbcr & 0xFF) | value << 8
            elif off == DMA_DONE:
                raise_line = self._signal(ISR_RDC)
            else:
                raise ValueError(f"register {off:#x} has no doorbell")
            self._publish()
        if raise_line:
            self._interrupt()

    def _command(self, value: int) -> bool:
        if value & CR_STP:
            self._cr = (value & ~(CR_STA | CR_TXP)) | CR_STP
            return False
        self._cr = value & ~CR_TXP
        if value & CR_TXP and value & CR_STA:
            return self._transmit()
        return False

    def pending(self) -> bool:
        """Whether the line is up: ``ISR & IMR``, or frames in the ring while receive
        interrupts are on (level)."""
        with self.lock:
            imr = self._r8(PAGE2 + IMR)
            if self._isr & imr:
                return True
            return bool(imr & ISR_PRX and self._running() and self._ring() is not None
                        and self._curr != self._r8(PAGE0 + BNRY))

    def _signal(self, bits: int) -> bool:
        mask = self._r8(PAGE2 + IMR)
        before = self._isr
        self._isr = before | bits
        return not before & mask and bool(self._isr & mask)

    def _running(self) -> bool:
        return bool(self._cr & CR_STA) and not self._cr & CR_STP

    # -- transmit --------------------------------------------------------------------

    def _transmit(self) -> bool:
        at, size = self._tpsr * PAGE, self._tbcr
        if not (at >= RAM_START and at + size <= RAM_STOP and MIN_FRAME <= size <= MAX_TX):
            self.counts["tx_aborted"] += 1
            self._tsr = 0
            return self._signal(ISR_TXE)
        try:
            self._send(bytes(self.dma[at:at + size]))
        except (OSError, ValueError):
            self.counts["tx_aborted"] += 1
            self._tsr = 0
            return self._signal(ISR_TXE)
        self.counts["tx"] += 1
        self._tsr = TSR_PTX
        return self._signal(ISR_PTX)

    # -- receive ---------------------------------------------------------------------

    def _ring(self) -> tuple[int, int] | None:
        start, stop = self._r8(PAGE2 + PSTART), self._r8(PAGE2 + PSTOP)
        if not RAM_START // PAGE <= start < stop <= RAM_STOP // PAGE:
            return None
        return start, stop

    def _accepts(self, frame: bytes) -> bool:
        rcr = self._r8(PAGE2 + RCR)
        dest = frame[:6]
        if rcr & RCR_PRO:
            return True
        if dest == b"\xff" * 6:
            return bool(rcr & RCR_AB)
        if dest[0] & 1:
            bit = mc_hash(dest)
            return bool(rcr & RCR_AM and self.regs[PAGE1 + MAR + (bit >> 3)] >> (bit & 7) & 1)
        return dest == bytes(self.regs[PAGE1 + PAR:PAGE1 + PAR + 6])

    def _receive(self, frame: bytes) -> int | None:
        if not self._running() or not MIN_FRAME <= len(frame) <= MAX_RX:
            return None
        if self._r8(PAGE2 + RCR) & RCR_MON:
            return None
        if not self._accepts(frame):
            self.counts["rx_filtered"] += 1
            return None
        ring = self._ring()
        curr = self._curr
        if ring is None or not ring[0] <= curr < ring[1]:
            self.counts["rx_missed"] += 1
            return ISR_OVW
        start, stop = ring
        bnry = self._r8(PAGE0 + BNRY)
        total = 4 + len(frame)
        pages = (total + PAGE - 1) // PAGE
        size = stop - start
        free = (bnry - curr) % size if start <= bnry < stop else 0
        if free == 0 and bnry == curr:
            free = size  # empty
        if pages >= free:
            self.counts["rx_missed"] += 1
            return ISR_OVW
        nxt = curr + pages
        if nxt >= stop:
            nxt -= size
        status = RSR_PRX | (RSR_PHY if frame[0] & 1 else 0)
        packet = struct.pack("<BBH", status, nxt, total) + frame
        at = curr * PAGE
        first = min(len(packet), stop * PAGE - at)
        self.dma[at:at + first] = packet[:first]
        if first < len(packet):  # wraps to the ring's start
            rest = len(packet) - first
            self.dma[start * PAGE:start * PAGE + rest] = packet[first:]
        self._curr = nxt
        self.regs[PAGE0 + RSR] = status
        self.counts["rx"] += 1
        return ISR_PRX
