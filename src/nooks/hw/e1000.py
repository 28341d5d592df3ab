"""An e1000-style card: descriptor rings in DMA memory, head and tail registers,
interrupt cause and mask registers, an address filter and a multicast table.

The programming model of Intel's 8254x (its software developer's manual's
register map and legacy descriptors, reduced to what a driver of it uses):

* **Registers** (shared memory the driver maps, at the chip's offsets): ``CTRL``
  (reset), ``STATUS`` (link up), ``ICR`` (interrupt causes; write 1 to clear),
  ``IMS``/``IMC`` (set and clear bits of the mask), ``RCTL`` (receiver enable,
  unicast and multicast promiscuous, broadcast accept), ``TCTL`` (transmitter
  enable), ``RDBAL``/``RDLEN``/``RDH``/``RDT`` and ``TDBAL``/``TDLEN``/``TDH``/``TDT``
  (the two rings: base, length in bytes, head — the card's — and tail — the
  driver's), ``MTA`` (128 words of multicast hash bits), ``RAL``/``RAH`` (the
  receive address, valid bit 31 of ``RAH``).
* **Descriptors** are 16 bytes in DMA memory. Transmit: buffer address, length,
  command (``EOP``, ``IFCS``, ``RS``), status (``DD`` once sent). Receive: buffer
  address, length and status (``DD``, ``EOP``) written by the card. Receive
  buffers are 2048 bytes.
* Doorbells: ``TDT`` (send what is between the head and the new tail), ``RDT``
  (buffers given back), ``ICR`` (clear), ``IMS``/``IMC``, ``CTRL`` (reset). The
  card's own registers (``STATUS``, ``ICR``, ``IMS``, ``RDH``, ``TDH``) live in the
  model and are published to the shared ones after each change.

What a driver writes is checked as the chip's DMA engine would fail it: a ring or
a buffer outside DMA memory, a ring length that is not a multiple of 128 bytes, a
frame longer than 16 KiB: the transmit ring stops (``TDH`` stays) or the frame
is missed. Nothing a driver writes can make the card raise or touch host memory.
"""

from __future__ import annotations

import struct

from nooks.hw.registers import CardModel

CTRL, STATUS, ICR, IMS, IMC = 0x0000, 0x0008, 0x00C0, 0x00D0, 0x00D8
RCTL, TCTL = 0x0100, 0x0400
RDBAL, RDBAH, RDLEN, RDH, RDT = 0x2800, 0x2804, 0x2808, 0x2810, 0x2818
TDBAL, TDBAH, TDLEN, TDH, TDT = 0x3800, 0x3804, 0x3808, 0x3810, 0x3818
MTA, RAL, RAH = 0x5200, 0x5400, 0x5404
REGS_SIZE = 0x6000
DOORBELLS = frozenset({CTRL, ICR, IMS, IMC, RDT, TDT})

CTRL_RST = 1 << 26
STATUS_LU = 1 << 1
ICR_TXDW, ICR_LSC, ICR_RXO, ICR_RXT0 = 0x01, 0x04, 0x40, 0x80
RCTL_EN, RCTL_UPE, RCTL_MPE, RCTL_BAM = 1 << 1, 1 << 3, 1 << 4, 1 << 15
TCTL_EN = 1 << 1
RAH_AV = 1 << 31
CMD_EOP, CMD_IFCS, CMD_RS = 0x01, 0x02, 0x08
STA_DD, STA_EOP = 0x01, 0x02
DESC = 16
RX_BUFFER = 2048
MIN_FRAME, MAX_FRAME = 14, 16 << 10
MAX_RX = 1522

_TX = struct.Struct("<QHBBBBH")  # addr, length, cso, cmd, status, css, special
_RX = struct.Struct("<QHHBBH")  # addr, length, checksum, status, errors, special


def mta_index(mac: bytes) -> int:
    """The multicast table bit a group address selects (filter type 0: bits 47:36)."""
    return ((mac[4] >> 4) | (mac[5] << 4)) & 0xFFF


class E1000(CardModel):
    """The card; ``send`` puts a frame on the wire, ``interrupt`` is called when the
    line rises (the host then looks at ``pending`` after each handler)."""

    REGS_SIZE = REGS_SIZE

    def _reset(self) -> None:
        self.regs[:REGS_SIZE] = bytes(REGS_SIZE)
        self._w32(RAL, int.from_bytes(self.mac[:4], "little"))
        self._w32(RAH, int.from_bytes(self.mac[4:], "little") | RAH_AV)
        self._icr = self._ims = 0
        self._rdh = self._tdh = 0
        self._publish()

    def _publish(self) -> None:
        self._w32(STATUS, STATUS_LU)
        self._w32(ICR, self._icr)
        self._w32(IMS, self._ims)
        self._w32(RDH, self._rdh)
        self._w32(TDH, self._tdh)

    def pending(self) -> bool:
        """Whether the line is up: ``ICR & IMS``, or descriptors filled and not given
        back while receive interrupts are on (the receive cause is level: a driver
        that acknowledged it, then read the ring before the last frame came, is
        asked again)."""
        with self.lock:
            if self._icr & self._ims:
                return True
            if not self._ims & ICR_RXT0 or not self._r32(RCTL) & RCTL_EN:
                return False
            ring = self._ring(RDBAL, RDLEN)
            if ring is None:
                return False
            tail = self._r32(RDT)
            return tail < ring[1] and self._rdh != (tail + 1) % ring[1]

    def _signal(self, bits: int) -> bool:
        before = self._icr
        self._icr |= bits
        return not before & self._ims and bool(self._icr & self._ims)

    def _ring(self, base: int, length: int) -> tuple[int, int] | None:
        """(base, descriptors) of a ring the driver set up, or None if it cannot be."""
        base = self._r32(base)
        size = self._r32(length)
        if size == 0 or size % 128 or base % 16 or base + size > len(self.dma):
            return None
        return base, size // DESC

    def write(self, off: int, value: int) -> None:
        """A doorbell: the driver wrote ``value`` to register ``off``."""
        value &= 0xFFFFFFFF
        raise_line = False
        with self.lock:
            if off == CTRL:
                if value & CTRL_RST:
                    self._reset()
                    return
            elif off == ICR:
                self._icr &= ~value
            elif off == IMS:
                before = self._icr & self._ims
                self._ims |= value
                raise_line = not before and bool(self._icr & self._ims)
            elif off == IMC:
                self._ims &= ~value
            elif off == TDT:
                self._w32(TDT, value)
                raise_line = self._transmit()
            elif off == RDT:
                self._w32(RDT, value)
            else:
                raise ValueError(f"register {off:#x} has no doorbell")
            self._publish()
        if raise_line:
            self._interrupt()

    # -- transmit --------------------------------------------------------------------

    def _transmit(self) -> bool:
        if not self._r32(TCTL) & TCTL_EN:
            return False
        ring = self._ring(TDBAL, TDLEN)
        if ring is None:
            self.counts["tx_aborted"] += 1
            return False
        base, count = ring
        tail = self._r32(TDT)
        if tail >= count or self._tdh >= count:  # (a head past a ring made shorter)
            self.counts["tx_aborted"] += 1
            return False
        frame = bytearray()
        done = False
        steps = 0
        while self._tdh != tail and steps < count:
            steps += 1
            at = base + self._tdh * DESC
            addr, length, _, cmd, _, _, _ = _TX.unpack_from(self.dma, at)
            if addr + length > len(self.dma) or len(frame) + length > MAX_FRAME:
                self.counts["tx_aborted"] += 1
                return done  # the ring stops here, as a DMA error stops the chip's
            frame += self.dma[addr:addr + length]
            if cmd & CMD_RS:
                self.dma[at + 12] |= STA_DD
            self._tdh = (self._tdh + 1) % count
            if cmd & CMD_EOP:
                try:
                    if len(frame) < MIN_FRAME:
                        raise ValueError("a runt")
                    self._send(bytes(frame))
                    self.counts["tx"] += 1
                except (OSError, ValueError):  # the wire refused it: lost, as on a wire
                    self.counts["tx_aborted"] += 1
                frame = bytearray()
                done = self._signal(ICR_TXDW) or done
        return done

    # -- receive ---------------------------------------------------------------------

    def _accepts(self, frame: bytes) -> bool:
        rctl = self._r32(RCTL)
        dest = frame[:6]
        if dest == b"\xff" * 6:
            return bool(rctl & RCTL_BAM or rctl & RCTL_UPE)
        if dest[0] & 1:
            if rctl & RCTL_MPE:
                return True
            bit = mta_index(dest)
            return bool(self._r32(MTA + 4 * (bit >> 5)) >> (bit & 31) & 1)
        if rctl & RCTL_UPE:
            return True
        rah = self._r32(RAH)
        own = self._r32(RAL).to_bytes(4, "little") + (rah & 0xFFFF).to_bytes(2, "little")
        return bool(rah & RAH_AV) and dest == own

    def receive(self, frame: bytes) -> bool:
        """A frame arrived from the wire; whether a descriptor took it."""
        raise_line = False
        with self.lock:
            taken, bits = self._fill(frame)
            if bits:
                raise_line = self._signal(bits)
                self._publish()
        if raise_line:
            self._interrupt()
        return taken

    def _fill(self, frame: bytes) -> tuple[bool, int]:
        if not self._r32(RCTL) & RCTL_EN or not MIN_FRAME <= len(frame) <= MAX_RX:
            return False, 0
        if not self._accepts(frame):
            self.counts["rx_filtered"] += 1
            return False, 0
        ring = self._ring(RDBAL, RDLEN)
        tail = self._r32(RDT)
        if ring is None or tail >= ring[1] or self._rdh >= ring[1] or self._rdh == tail:
            self.counts["rx_missed"] += 1  # no descriptor the driver gave
            return False, ICR_RXO
        base, count = ring
        at = base + self._rdh * DESC
        addr = _RX.unpack_from(self.dma, at)[0]
        if addr + RX_BUFFER > len(self.dma):
            self.counts["rx_missed"] += 1
            return False, ICR_RXO
        self.dma[addr:addr + len(frame)] = frame
        self.placed(addr, frame)
        _RX.pack_into(self.dma, at, addr, len(frame), 0, STA_DD | STA_EOP, 0, 0)
        self._rdh = (self._rdh + 1) % count
        self.counts["rx"] += 1
        return True, ICR_RXT0
