"""A driver for the e1000-style card (``nooks.hw.e1000``), after Linux's e1000.

Two rings of legacy descriptors in DMA memory. Transmit: the frame copied into
the buffer of the descriptor at the tail, the descriptor filled (``EOP``,
``IFCS``, ``RS``), the tail moved on (a doorbell); descriptors the card has
marked done are reclaimed in the interrupt handler. Receive: every descriptor
of the ring has a 2048-byte buffer; the handler passes up each frame the card
marked done, in order, and gives the descriptors back by moving the tail. It
keeps the chip's register map (the manual's, not the card model's code).
"""

from __future__ import annotations

import errno
import struct

from nooks.domain.child import kernel, region
from nooks.hw.mmio import Registers
from nooks.hw.netdev import Info

CTRL, ICR, IMS, IMC = 0x0000, 0x00C0, 0x00D0, 0x00D8
RCTL, TCTL = 0x0100, 0x0400
RDBAL, RDBAH, RDLEN, RDH, RDT = 0x2800, 0x2804, 0x2808, 0x2810, 0x2818
TDBAL, TDBAH, TDLEN, TDH, TDT = 0x3800, 0x3804, 0x3808, 0x3810, 0x3818
MTA, RAL, RAH = 0x5200, 0x5400, 0x5404
DOORBELLS = frozenset({CTRL, ICR, IMS, IMC, RDT, TDT})
CTRL_RST = 1 << 26
ICR_TXDW, ICR_LSC, ICR_RXO, ICR_RXT0 = 0x01, 0x04, 0x40, 0x80
RCTL_EN, RCTL_UPE, RCTL_MPE, RCTL_BAM = 1 << 1, 1 << 3, 1 << 4, 1 << 15
TCTL_EN = 1 << 1
RAH_AV = 1 << 31
CMD_EOP, CMD_IFCS, CMD_RS = 0x01, 0x02, 0x08
STA_DD = 0x01
TX_DESCS = RX_DESCS = 64
BUFFER = 2048
MAX_MTU = 1500
_TX = struct.Struct("<QHBBBBH")
_RX = struct.Struct("<QHHBBH")


class E1000:
    def __init__(self) -> None:
        self.k = kernel()
        self.dma = region("dma")
        self.regs = Registers(region("regs"), DOORBELLS, self.k.mmio_write)
        self.tx_ring = self.rx_ring = -1
        self.tx_bufs: list[int] = []
        self.rx_bufs: list[int] = []
        self.next_tx = self.clean_tx = self.next_rx = 0
        self.rctl = RCTL_EN | RCTL_BAM
        self.mta = [0] * 128
        self.up = False
        self.counts = {"tx_packets": 0, "tx_bytes": 0, "rx_packets": 0, "rx_bytes": 0,
                       "rx_missed": 0}

    def probe(self) -> Info:
        self.regs.w32(CTRL, CTRL_RST)
        self.k.mmio_sync()
        low, high = self.regs.r32(RAL), self.regs.r32(RAH)
        mac = low.to_bytes(4, "little") + (high & 0xFFFF).to_bytes(2, "little")
        return Info(mac=mac, max_mtu=MAX_MTU)

    def open(self) -> None:
        if self.tx_ring < 0:
            self.tx_ring = self.k.dma_alloc(TX_DESCS * 16, 128)
            self.rx_ring = self.k.dma_alloc(RX_DESCS * 16, 128)
            self.tx_bufs = [self.k.dma_alloc(BUFFER, 16) for _ in range(TX_DESCS)]
            self.rx_bufs = [self.k.dma_alloc(BUFFER, 16) for _ in range(RX_DESCS)]
        for i in range(TX_DESCS):
            _TX.pack_into(self.dma, self.tx_ring + 16 * i, self.tx_bufs[i], 0, 0, 0, STA_DD,
                          0, 0)
        for i in range(RX_DESCS):
            _RX.pack_into(self.dma, self.rx_ring + 16 * i, self.rx_bufs[i], 0, 0, 0, 0, 0)
        self.next_tx = self.clean_tx = self.next_rx = 0
        self.regs.w32(TDBAL, self.tx_ring)
        self.regs.w32(TDBAH, 0)
        self.regs.w32(TDLEN, TX_DESCS * 16)
        self.regs.w32(RDBAL, self.rx_ring)
        self.regs.w32(RDBAH, 0)
        self.regs.w32(RDLEN, RX_DESCS * 16)
        self._write_filter()
        self.regs.w32(TCTL, TCTL_EN)
        self.regs.w32(RDT, RX_DESCS - 1)  # every buffer but one is the card's
        self.regs.w32(IMS, ICR_RXT0 | ICR_RXO | ICR_LSC)  # ICR_TXDW when the ring is full
        self.k.mmio_sync()
        self.up = True
        self.k.carrier(True)

    def stop(self) -> None:
        self.regs.w32(IMC, 0xFFFFFFFF)
        self.regs.w32(RCTL, 0)
        self.regs.w32(TCTL, 0)
        self.k.mmio_sync()
        self.up = False
        self.k.carrier(False)

    def xmit(self, frames: list[bytes]) -> int:
        """As many of ``frames`` as the ring has room for, then one tail write (the
        system offers the rest again at once); the transmit interrupt is asked for
        only when there was no room at all (done descriptors are reclaimed here
        otherwise)."""
        if not self.up:
            return 0
        self._tx_clean()
        taken = 0
        for frame in frames:
            nxt = (self.next_tx + 1) % TX_DESCS
            if nxt == self.clean_tx:  # the ring is full
                if not taken:  # tell me when it is not (offered the rest at once otherwise)
                    self.regs.w32(IMS, ICR_TXDW)
                break
            i = self.next_tx
            buf = self.tx_bufs[i]
            self.dma[buf:buf + len(frame)] = frame
            _TX.pack_into(self.dma, self.tx_ring + 16 * i, buf, len(frame), 0,
                          CMD_EOP | CMD_IFCS | CMD_RS, 0, 0, 0)
            self.next_tx = nxt
            self.counts["tx_bytes"] += len(frame)
            taken += 1
        if taken:
            self.regs.w32(TDT, self.next_tx)
        return taken

    def set_mac(self, mac: bytes) -> None:
        self.regs.w32(RAL, int.from_bytes(mac[:4], "little"))
        self.regs.w32(RAH, int.from_bytes(mac[4:], "little") | RAH_AV)

    def set_rx_mode(self, promisc: bool, allmulti: bool, groups: list[bytes]) -> None:
        self.rctl = RCTL_EN | RCTL_BAM
        if promisc:
            self.rctl |= RCTL_UPE | RCTL_MPE
        elif allmulti:
            self.rctl |= RCTL_MPE
        self.mta = [0] * 128
        for g in groups:
            bit = ((g[4] >> 4) | (g[5] << 4)) & 0xFFF
            self.mta[bit >> 5] |= 1 << (bit & 31)
        self._write_filter()

    def _write_filter(self) -> None:
        for i, word in enumerate(self.mta):
            self.regs.w32(MTA + 4 * i, word)
        self.regs.w32(RCTL, self.rctl)

    def change_mtu(self, mtu: int) -> None:
        if mtu > MAX_MTU:
            raise OSError(errno.EINVAL, f"MTU {mtu} is more than this card takes")

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    def interrupt(self) -> None:
        """NAPI-style: acknowledge what the card says, then poll the receive ring
        whatever it said (an acknowledgement is posted: a frame that came after the
        driver read the cause has its bit cleared with the others, and the card asks
        again only because its ring is not empty) and reclaim what was sent."""
        icr = self.regs.r32(ICR)
        if icr:
            self.regs.w32(ICR, icr)  # write 1 to clear
        if icr & ICR_RXO:
            self.counts["rx_missed"] += 1
        self._rx()
        if icr & ICR_TXDW:
            self._tx_clean()

    def _rx(self) -> None:
        last = -1
        for _ in range(RX_DESCS):
            at = self.rx_ring + 16 * self.next_rx
            if not self.dma[at + 12] & STA_DD:  # the status first: the card writes it last
                break
            length = _RX.unpack_from(self.dma, at)[1]
            buf = self.rx_bufs[self.next_rx]
            if 14 <= length <= BUFFER:
                self.k.netif_rx_at(buf, length)
                self.counts["rx_packets"] += 1
                self.counts["rx_bytes"] += length
            _RX.pack_into(self.dma, at, buf, 0, 0, 0, 0, 0)  # given back, clean
            last = self.next_rx
            self.next_rx = (self.next_rx + 1) % RX_DESCS
        if last >= 0:
            self.regs.w32(RDT, last)  # the card may fill up to (not including) it

    def _tx_clean(self) -> None:
        was_full = (self.next_tx + 1) % TX_DESCS == self.clean_tx
        while self.clean_tx != self.next_tx:
            at = self.tx_ring + 16 * self.clean_tx
            if not self.dma[at + 12] & STA_DD:
                break
            self.counts["tx_packets"] += 1
            self.clean_tx = (self.clean_tx + 1) % TX_DESCS
        if was_full and (self.next_tx + 1) % TX_DESCS != self.clean_tx:
            self.regs.w32(IMC, ICR_TXDW)
            self.k.tx_wake()
