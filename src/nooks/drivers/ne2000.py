"""A driver for the NE2000-style card (``nooks.hw.ne2000``), after Linux's ne and
8390 drivers.

It reaches the card through its I/O ports (``nooks.hw.ports``): the DP8390's
paged registers and the data port, through which every byte of a frame moves by
remote DMA. The card's 16 KiB of buffer memory holds two transmit buffers of
six pages and the receive ring. Transmit: a frame written into a free buffer
through the data port (short ones padded to 60 bytes), then ``TPSR``/``TBCR`` and
``CR.TXP``; at most two frames a call. Receive: from the driver's next page to
the card's ``CURR``, each packet's 4-byte header read, then its frame, passed
up; ``BNRY`` moved on. One interrupt call does all the work pending. It keeps
the chip's register numbers and pages (the datasheet's, not the model's code).
"""

from __future__ import annotations

import errno
import struct

from nooks.domain.child import kernel, region
from nooks.hw.netdev import Info, ether_crc
from nooks.hw.ports import RESET, Ports

# the DP8390's registers, by page
CR = 0x00
PSTART, PSTOP, BNRY, TPSR, TBCR0, TBCR1, ISR = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
RSAR0, RSAR1, RBCR0, RBCR1, RCR, TCR, DCR, IMR = 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F
PAR0, CURR, MAR0 = 0x01, 0x07, 0x08  # page 1
CR_STP, CR_STA, CR_TXP, CR_RD0, CR_RD1, CR_RD2 = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
CR_PAGE0, CR_PAGE1 = 0x00, 0x40
ISR_PRX, ISR_PTX, ISR_RXE, ISR_TXE, ISR_OVW, ISR_CNT, ISR_RDC = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40)
RCR_AB, RCR_AM, RCR_PRO, RCR_MON = 0x04, 0x08, 0x10, 0x20
TCR_LOOPBACK = 0x02
DCR_WORD = 0x49  # word-wide, normal operation, FIFO threshold 8 bytes
TX_START, TX_PAGES, NUM_TX = 0x40, 6, 2
RX_START, RX_STOP = TX_START + TX_PAGES * NUM_TX, 0x80
ETH_ZLEN, MAX_MTU = 60, 1500
INTERRUPTS = ISR_PRX | ISR_RXE | ISR_OVW | ISR_TXE


class Ne2000:
    def __init__(self) -> None:
        self.k = kernel()
        self.io = Ports(region("regs"), region("dma"), self.k.mmio_write)
        self.mac = b"\x00" * 6
        self.rcr = RCR_AB | RCR_AM
        self.mar = b"\x00" * 8
        self.next = RX_START  # the next page of the ring to read
        self.up = False
        self.counts = {"tx_packets": 0, "tx_bytes": 0, "tx_errors": 0, "rx_packets": 0,
                       "rx_bytes": 0, "rx_errors": 0, "rx_missed": 0}

    # -- remote DMA --------------------------------------------------------------------

    def _setup(self, addr: int, count: int) -> None:
        io = self.io
        io.outb(RBCR0, count & 0xFF)
        io.outb(RBCR1, count >> 8)
        io.outb(RSAR0, addr & 0xFF)
        io.outb(RSAR1, addr >> 8)

    def _read(self, addr: int, count: int) -> bytes:
        self._setup(addr, count)
        self.io.outb(CR, CR_RD0 | CR_STA)
        return self.io.insw()

    def _write(self, addr: int, data: bytes) -> None:
        self._setup(addr, len(data))
        self.io.outb(CR, CR_RD1 | CR_STA)
        self.io.outsw(data)

    # -- the card ----------------------------------------------------------------------

    def probe(self) -> Info:
        io = self.io
        io.outb(RESET, 0)
        self.k.mmio_sync()
        io.outb(CR, CR_PAGE0 | CR_STP | CR_RD2)
        io.outb(DCR, DCR_WORD)
        io.outb(RCR, RCR_MON)
        io.outb(TCR, TCR_LOOPBACK)
        prom = self._read(0, 32)  # the station address PROM: each byte twice
        io.outb(ISR, 0xFF)
        self.mac = bytes(prom[0:12:2])
        return Info(mac=self.mac, max_mtu=MAX_MTU)

    def open(self) -> None:
        io = self.io
        io.outb(CR, CR_PAGE0 | CR_STP | CR_RD2)
        io.outb(DCR, DCR_WORD)
        io.outb(RBCR0, 0)
        io.outb(RBCR1, 0)
        io.outb(RCR, RCR_MON)
        io.outb(TCR, TCR_LOOPBACK)
        io.outb(TPSR, TX_START)
        io.outb(PSTART, RX_START)
        io.outb(PSTOP, RX_STOP)
        io.outb(BNRY, RX_START)
        io.outb(ISR, 0xFF)
        io.outb(IMR, 0)
        io.outb(CR, CR_PAGE1 | CR_STP | CR_RD2)
        for i, b in enumerate(self.mac):
            io.outb(PAR0 + i, b)
        for i, b in enumerate(self.mar):
            io.outb(MAR0 + i, b)
        io.outb(CURR, RX_START)
        io.outb(CR, CR_PAGE0 | CR_STP | CR_RD2)
        self.next = RX_START
        io.outb(IMR, INTERRUPTS)
        io.outb(CR, CR_PAGE0 | CR_STA | CR_RD2)
        io.outb(TCR, 0)
        io.outb(RCR, self.rcr)
        self.k.mmio_sync()
        self.up = True
        self.k.carrier(True)

    def stop(self) -> None:
        self.io.outb(IMR, 0)
        self.io.outb(CR, CR_PAGE0 | CR_STP | CR_RD2)
        self.k.mmio_sync()
        self.up = False
        self.k.carrier(False)

    def xmit(self, frames: list[bytes]) -> int:
        io = self.io
        if not self.up or io.inb(CR) & CR_TXP:
            return 0
        taken = 0
        for slot, frame in enumerate(frames[:NUM_TX]):
            page = TX_START + slot * TX_PAGES
            data = frame if len(frame) >= ETH_ZLEN else frame + bytes(ETH_ZLEN - len(frame))
            self._write(page << 8, data)
            io.outb(TPSR, page)
            io.outb(TBCR0, len(data) & 0xFF)
            io.outb(TBCR1, len(data) >> 8)
            io.outb(CR, CR_PAGE0 | CR_STA | CR_TXP | CR_RD2)
            self.counts["tx_packets"] += 1
            self.counts["tx_bytes"] += len(frame)
            taken += 1
        return taken

    def set_mac(self, mac: bytes) -> None:
        self.mac = bytes(mac)
        self._page1(PAR0, self.mac)

    def set_rx_mode(self, promisc: bool, allmulti: bool, groups: list[bytes]) -> None:
        self.rcr = RCR_AB | RCR_AM | (RCR_PRO if promisc else 0)
        if promisc or allmulti:
            self.mar = b"\xff" * 8
        else:
            bits = 0
            for g in groups:
                bits |= 1 << (ether_crc(g) >> 26)
            self.mar = bits.to_bytes(8, "little")
        self._page1(MAR0, self.mar)
        self.io.outb(RCR, self.rcr)

    def _page1(self, reg: int, data: bytes) -> None:
        io = self.io
        io.outb(CR, CR_PAGE1 | (CR_STA if self.up else CR_STP) | CR_RD2)
        for i, b in enumerate(data):
            io.outb(reg + i, b)
        io.outb(CR, CR_PAGE0 | (CR_STA if self.up else CR_STP) | CR_RD2)

    def change_mtu(self, mtu: int) -> None:
        if mtu > MAX_MTU:
            raise OSError(errno.EINVAL, f"MTU {mtu} is more than this card takes")

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    def interrupt(self) -> None:
        io = self.io
        status = io.inb(ISR)
        if status:
            io.outb(ISR, status)  # acknowledged (the receive cause is level: see the card)
        if status & ISR_OVW:
            self.counts["rx_missed"] += 1
        if status & ISR_TXE:
            self.counts["tx_errors"] += 1
        self._rx()

    def _rx(self) -> None:
        io = self.io
        io.outb(CR, CR_PAGE1 | CR_STA | CR_RD2)
        curr = io.inb(CURR)
        io.outb(CR, CR_PAGE0 | CR_STA | CR_RD2)
        for _ in range(RX_STOP - RX_START):
            if self.next == curr:
                break
            _, nxt, count = struct.unpack("<BBH", self._read(self.next << 8, 4))
            if not RX_START <= nxt < RX_STOP or not 4 + 14 <= count <= 4 + 1522:
                self.counts["rx_errors"] += 1  # what cannot be read is skipped, as 8390.c
                self.next = curr
                break
            frame = self._read((self.next << 8) + 4, count - 4)
            self.k.netif_rx(frame)
            self.counts["rx_packets"] += 1
            self.counts["rx_bytes"] += len(frame)
            self.next = nxt
        io.outb(BNRY, self.next)
