"""An RTL8139-style card: four transmit slots and one contiguous receive ring.

The programming model of the Realtek 8139 (its datasheet's register map, reduced
to what a driver of it uses), on the host's side:

* **Registers** (``REGS_SIZE`` bytes, shared memory the driver maps): ``IDR``
  (the MAC address), ``MAR`` (the multicast hash filter), ``TSD0..3`` (transmit
  status of each slot: size, ``OWN`` when the slot is the driver's again, ``TOK``
  when it went out), ``TSAD0..3`` (each slot's buffer address), ``RBSTART`` (the
  receive ring's address), ``CR`` (reset, receiver and transmitter enable, ``BUFE``
  when the ring is empty), ``CAPR`` (where the driver has read the ring to, less
  16, as on the chip), ``CBR`` (where the card writes next), ``IMR``/``ISR``
  (interrupt mask and status), ``RCR`` (receive filter: all, own address,
  multicast, broadcast; the ring's length, 8 to 64 KiB), ``MSR`` (link).
* **DMA memory** (another shared region): buffers at addresses the driver was
  given (``nooks.hw.dma``), read by the card for transmits and written for
  receives.
* Writes with side effects reach the card as *doorbells* (``write``): ``TSD``
  (send the slot), ``CR`` (reset, enable), ``IMR`` (unmasking a cause that is
  set raises the line), ``ISR`` (write 1 to clear), ``CAPR`` (frees ring
  space). The receive cause is level (``pending``): while the ring holds
  frames, the line stays up. Other registers the driver writes in place, and the card
  reads them when it acts.
* Receive: a frame the filter accepts is written at ``CBR`` as the chip writes
  it — a 4-byte header (status, length including a 4-byte CRC), the frame, the
  CRC — contiguously (the driver's buffer has room past the ring's end, as with
  the chip's ``WRAP`` bit), and ``CBR`` moves on, 4-aligned, modulo the ring's
  length. No room: the frame is missed (``RXOVW``).

The card's own state (``CR``, ``CBR``, ``ISR``, each slot's ``TSD``) lives in the
model and is *published* to the shared registers after each change: a driver
that scribbles over them changes nothing the card believes (its next publish
puts them back), as writes to a chip's read-only registers do nothing. What a
driver tells the card is checked as hardware would check it, never trusted: a
slot's address and size must lie inside DMA memory (else the slot ends aborted,
``TABT``), a ring must fit, a frame sent must be 14 to 1792 bytes and one
received at most 1522. Nothing a driver writes can make the card raise or
touch host memory.
"""

from __future__ import annotations

import struct
import zlib

from nooks.hw.netdev import ether_crc
from nooks.hw.registers import CardModel

# register offsets
IDR, MAR = 0x00, 0x08
TSD, TSAD = 0x10, 0x20  # four of each, 4 bytes apart
RBSTART, CR, CAPR, CBR = 0x30, 0x37, 0x38, 0x3A
IMR, ISR, TCR, RCR, MSR = 0x3C, 0x3E, 0x40, 0x44, 0x58
REGS_SIZE = 0x100

# CR bits
CR_RST, CR_RE, CR_TE, CR_BUFE = 0x10, 0x08, 0x04, 0x01
# ISR/IMR bits
INT_ROK, INT_RER, INT_TOK, INT_TER, INT_RXOVW = 0x01, 0x02, 0x04, 0x08, 0x10
# TSD bits
TSD_SIZE, TSD_OWN, TSD_TUN, TSD_TOK, TSD_TABT = 0x1FFF, 0x2000, 0x4000, 0x8000, 0x40000000
# RCR bits
RCR_AAP, RCR_APM, RCR_AM, RCR_AB = 0x01, 0x02, 0x04, 0x08
# receive status bits in a packet's header
RX_ROK, RX_BAR, RX_PAM, RX_MAR = 0x0001, 0x2000, 0x4000, 0x8000
MSR_LINKB = 0x04  # set: link down

RING = 8192  # the receive ring with RBLEN 0 (RCR bits 11-12: 8, 16, 32 or 64 KiB)
RCR_RBLEN_SHIFT = 11
RING_SLACK = 16 + 1536  # the buffer runs this far past the ring's end (WRAP 0)
MIN_FRAME, MAX_TX = 14, 1792
MAX_RX = 1522  # the largest frame taken from the wire (1500 bytes, a header, a VLAN tag)
DOORBELLS = frozenset({TSD, TSD + 4, TSD + 8, TSD + 12, CR, IMR, ISR, CAPR})


def mc_hash(mac: bytes) -> int:
    """The bit of ``MAR`` a multicast address selects (the CRC's top 6 bits)."""
    return ether_crc(mac) >> 26


class Rtl8139(CardModel):
    """The card. ``send`` puts a frame on the wire; ``interrupt`` is called when
    ``ISR & IMR`` becomes non-zero (the line rises; the host delivers it, and after
    each handler looks at ``pending``: the line is level, not an edge)."""

    REGS_SIZE = REGS_SIZE
    RX_TAKEN = INT_ROK

    def _reset(self) -> None:
        """Power-on state: registers cleared, the MAC address in ``IDR``, every slot the
        driver's, receiver and transmitter off, link up."""
        self.regs[:REGS_SIZE] = bytes(REGS_SIZE)
        self.regs[IDR:IDR + 6] = self.mac
        self._tsd = [TSD_OWN] * 4
        self._cr = CR_BUFE
        self._cbr = 0
        self._isr = 0
        self._rx_read = 0  # where the driver has read the ring to (CAPR + 16)
        self._publish()

    def _publish(self) -> None:
        """The card's own state, where the driver reads it."""
        for i, v in enumerate(self._tsd):
            self._w32(TSD + 4 * i, v)
        self._w8(CR, self._cr)
        self._w16(CBR, self._cbr)
        self._w16(ISR, self._isr)
        self._w8(MSR, 0)

    def write(self, off: int, value: int) -> None:
        """A doorbell: the driver wrote ``value`` to register ``off``."""
        raise_line = False
        with self.lock:
            if off in (TSD, TSD + 4, TSD + 8, TSD + 12):
                raise_line = self._transmit((off - TSD) // 4, value)
            elif off == CR:
                if value & CR_RST:
                    self._reset()
                    return
                self._cr = (value & (CR_RE | CR_TE)) | (self._cr & CR_BUFE)
            elif off == IMR:  # unmasking a cause that is set raises the line
                before = self._isr & self._r16(IMR)
                self._w16(IMR, value)
                raise_line = not before and bool(self._isr & value)
            elif off == ISR:
                self._isr &= ~value & 0xFFFF
            elif off == CAPR:
                self._w16(CAPR, value)
                self._rx_read = (value + 16) % self._ring_len()
                self._update_bufe()
            else:
                raise ValueError(f"register {off:#x} has no doorbell")
            self._publish()
        if raise_line:
            self._interrupt()

    def pending(self) -> bool:
        """Whether the interrupt line is up: ``ISR & IMR``, or frames in the ring while
        receive interrupts are on (the receive cause is level: a driver that
        acknowledged it, then read the ring before the last frame came, is asked
        again)."""
        with self.lock:
            imr = self._r16(IMR)
            return bool(self._isr & imr) or bool(imr & INT_ROK and self._cr & CR_RE
                                                 and self._cbr != self._rx_read)

    def _signal(self, bits: int) -> bool:
        """Set ``bits`` in ISR; whether that raised the line (it was down): the host
        is told once per rise, and looks at ``pending`` after each handler."""
        mask = self._r16(IMR)
        before = self._isr
        self._isr = before | bits
        return not before & mask and bool(self._isr & mask)

    # -- transmit --------------------------------------------------------------------

    def _transmit(self, slot: int, value: int) -> bool:
        size = value & TSD_SIZE
        if not self._cr & CR_TE:
            self._tsd[slot] = size | TSD_OWN | TSD_TABT
            return self._signal(INT_TER)
        addr = self._r32(TSAD + 4 * slot)
        if not MIN_FRAME <= size <= MAX_TX or addr + size > len(self.dma):
            self.counts["tx_aborted"] += 1
            self._tsd[slot] = size | TSD_OWN | TSD_TABT
            return self._signal(INT_TER)
        frame = bytes(self.dma[addr:addr + size])
        try:
            self._send(frame)
        except (OSError, ValueError):
            self.counts["tx_aborted"] += 1
            self._tsd[slot] = size | TSD_OWN | TSD_TABT
            return self._signal(INT_TER)
        self.counts["tx"] += 1
        self._tsd[slot] = size | TSD_OWN | TSD_TOK
        return self._signal(INT_TOK)

    # -- receive ---------------------------------------------------------------------

    def _accepts(self, frame: bytes) -> int:
        """The header's address bits if the filter takes ``frame``, else 0."""
        rcr = self._r32(RCR)
        dest = frame[:6]
        if dest == b"\xff" * 6:
            return RX_BAR if rcr & (RCR_AB | RCR_AAP) else 0
        if dest[0] & 1:
            bit = mc_hash(dest)
            mar = int.from_bytes(self.regs[MAR:MAR + 8], "little")
            if rcr & RCR_AAP or (rcr & RCR_AM and mar >> bit & 1):
                return RX_MAR
            return 0
        if dest == bytes(self.regs[IDR:IDR + 6]):
            return RX_PAM if rcr & (RCR_APM | RCR_AAP) else 0
        return RX_PAM if rcr & RCR_AAP else 0

    def _ring_len(self) -> int:
        return RING << (self._r32(RCR) >> RCR_RBLEN_SHIFT & 3)

    def _update_bufe(self) -> None:
        empty = self._cbr == self._rx_read
        self._cr = (self._cr & ~CR_BUFE) | (CR_BUFE if empty else 0)

    def _receive(self, frame: bytes) -> int | None:
        if not self._cr & CR_RE or not MIN_FRAME <= len(frame) <= MAX_RX:
            return None
        bits = self._accepts(frame)
        if not bits:
            self.counts["rx_filtered"] += 1
            return None
        start = self._r32(RBSTART)
        ring = self._ring_len()
        if start + ring + RING_SLACK > len(self.dma):
            self.counts["rx_missed"] += 1
            return INT_RXOVW  # no usable ring: as if it were full
        length = len(frame) + 4  # with the CRC
        need = (4 + length + 3) & ~3
        head = self._cbr % ring  # (the ring may have been made shorter)
        used = (head - self._rx_read) % ring
        if used + need >= ring:
            self.counts["rx_missed"] += 1
            return INT_RXOVW
        crc = struct.pack("<I", zlib.crc32(frame))
        packet = struct.pack("<HH", RX_ROK | bits, length) + frame + crc
        at = start + head  # (within the buffer: head < ring, a packet < RING_SLACK)
        self.dma[at:at + len(packet)] = packet  # contiguous: the buffer runs past the ring
        self.placed(at + 4, frame)
        self._cbr = (head + need) % ring
        self._update_bufe()
        self.counts["rx"] += 1
        return INT_ROK
