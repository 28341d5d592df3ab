"""A driver for the RTL8139-style card (``nooks.hw.rtl8139``), after Linux's 8139too.

It reaches the card only through its mapped registers, its DMA memory and kernel
calls (``nooks.net.interface.NetKernelInterface``), and keeps the chip's own
register map (the datasheet's, not the card model's code). Transmit: four slots
used round-robin, a frame copied into the slot's buffer (short ones padded to
60 bytes) and its size written to the slot's status register. Receive: frames
read from the ring from where the driver last was to the card's write pointer
(``CBR``), each passed up, ``CAPR`` moved on. One interrupt call does all the work
pending.
"""

from __future__ import annotations

import errno
import struct

from nooks.domain.child import kernel, region
from nooks.hw.mmio import Registers
from nooks.hw.netdev import Info, ether_crc

# the chip's registers
IDR0, MAR0 = 0x00, 0x08
TX_STATUS0, TX_ADDR0 = 0x10, 0x20
RX_BUF, CHIP_CMD, RX_BUF_PTR, RX_BUF_ADDR = 0x30, 0x37, 0x38, 0x3A
INTR_MASK, INTR_STATUS, RX_CONFIG = 0x3C, 0x3E, 0x44
CMD_RESET, CMD_RX_ENB, CMD_TX_ENB = 0x10, 0x08, 0x04
RX_OK, RX_ERR, TX_OK, TX_ERR, RX_OVERFLOW = 0x01, 0x02, 0x04, 0x08, 0x10
TX_HOST_OWNS, TX_STAT_OK = 0x2000, 0x8000
ACCEPT_ALL, ACCEPT_MY_PHYS, ACCEPT_MULTICAST, ACCEPT_BROADCAST = 0x01, 0x02, 0x04, 0x08
RX_STATUS_OK = 0x0001
DOORBELLS = frozenset({TX_STATUS0, TX_STATUS0 + 4, TX_STATUS0 + 8, TX_STATUS0 + 12,
                       CHIP_CMD, INTR_MASK, INTR_STATUS, RX_BUF_PTR})

NUM_TX, TX_BUF_SIZE = 4, 1536
RX_BUF_IDX = 2  # a 32 KiB ring (8139too's default)
RX_BUF_LEN = 8192 << RX_BUF_IDX
RX_BUF_TOTAL = RX_BUF_LEN + 16 + 1536  # room past the ring's end (the chip's WRAP)
RX_CFG_RBLEN_SHIFT = 11
ETH_ZLEN, MAX_MTU = 60, 1500
INTERRUPTS = RX_OK | RX_ERR | RX_OVERFLOW  # and TX_OK | TX_ERR while the slots are full


class Rtl8139:
    def __init__(self) -> None:
        self.k = kernel()
        self.dma = region("dma")
        self.regs = Registers(region("regs"), DOORBELLS, self.k.mmio_write)
        self.rx_addr = 0
        self.tx_addrs: list[int] = []
        self.cur_tx = self.dirty_tx = self.cur_rx = 0
        self.rx_config = ACCEPT_MY_PHYS | ACCEPT_BROADCAST
        self.mar = b"\x00" * 8
        self.up = False
        self.counts = {"tx_packets": 0, "tx_bytes": 0, "tx_errors": 0, "rx_packets": 0,
                       "rx_bytes": 0, "rx_errors": 0, "rx_missed": 0}

    def probe(self) -> Info:
        self.regs.w8(CHIP_CMD, CMD_RESET)
        self.k.mmio_sync()
        return Info(mac=self.regs.read_bytes(IDR0, 6), max_mtu=MAX_MTU)

    def open(self) -> None:
        if not self.tx_addrs:
            self.rx_addr = self.k.dma_alloc(RX_BUF_TOTAL, 16)
            self.tx_addrs = [self.k.dma_alloc(TX_BUF_SIZE, 16) for _ in range(NUM_TX)]
        self.cur_tx = self.dirty_tx = self.cur_rx = 0
        self.regs.w32(RX_BUF, self.rx_addr)
        for i, addr in enumerate(self.tx_addrs):
            self.regs.w32(TX_ADDR0 + 4 * i, addr)
        self._write_rx_mode()
        self.regs.w16(INTR_MASK, INTERRUPTS)
        self.regs.w8(CHIP_CMD, CMD_RX_ENB | CMD_TX_ENB)
        self.k.mmio_sync()
        self.up = True
        self.k.carrier(True)

    def stop(self) -> None:
        self.regs.w16(INTR_MASK, 0)
        self.regs.w8(CHIP_CMD, 0)
        self.k.mmio_sync()
        self.up = False
        self.k.carrier(False)

    def xmit(self, frames: list[bytes]) -> int:
        """As many of ``frames`` as there are free slots (the system offers the rest
        again at once); the transmit interrupt is asked for only when no slot was
        free (slots are reclaimed here otherwise)."""
        if not self.up:
            return 0
        self._tx_reclaim()
        taken = 0
        for frame in frames:
            if self.cur_tx - self.dirty_tx >= NUM_TX:
                if not taken:  # (offered the rest at once otherwise)
                    self.regs.w16(INTR_MASK, INTERRUPTS | TX_OK | TX_ERR)  # tell me when
                break
            slot = self.cur_tx % NUM_TX
            addr = self.tx_addrs[slot]
            size = max(len(frame), ETH_ZLEN)
            self.dma[addr:addr + len(frame)] = frame
            if len(frame) < ETH_ZLEN:
                self.dma[addr + len(frame):addr + ETH_ZLEN] = bytes(ETH_ZLEN - len(frame))
            self.regs.w32(TX_STATUS0 + 4 * slot, size)
            self.cur_tx += 1
            self.counts["tx_bytes"] += len(frame)
            taken += 1
        return taken

    def set_mac(self, mac: bytes) -> None:
        self.regs.write_bytes(IDR0, mac)

    def set_rx_mode(self, promisc: bool, allmulti: bool, groups: list[bytes]) -> None:
        self.rx_config = ACCEPT_MY_PHYS | ACCEPT_BROADCAST
        if promisc:
            self.rx_config |= ACCEPT_ALL | ACCEPT_MULTICAST
            self.mar = b"\xff" * 8
        elif allmulti:
            self.rx_config |= ACCEPT_MULTICAST
            self.mar = b"\xff" * 8
        else:
            bits = 0
            for g in groups:
                bits |= 1 << (ether_crc(g) >> 26)
            self.rx_config |= ACCEPT_MULTICAST
            self.mar = bits.to_bytes(8, "little")
        self._write_rx_mode()

    def _write_rx_mode(self) -> None:
        self.regs.write_bytes(MAR0, self.mar)
        self.regs.w32(RX_CONFIG, self.rx_config | RX_BUF_IDX << RX_CFG_RBLEN_SHIFT)

    def change_mtu(self, mtu: int) -> None:
        if mtu > MAX_MTU:
            raise OSError(errno.EINVAL, f"MTU {mtu} is more than this card takes")

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    def interrupt(self) -> None:
        """NAPI-style: acknowledge what the card says, then poll the receive ring
        whatever it said (an acknowledgement is posted: a frame that came after the
        driver read the status has its bit cleared with the others, and the card asks
        again only because its ring is not empty) and reclaim the slots sent."""
        status = self.regs.r16(INTR_STATUS)
        if status:
            self.regs.w16(INTR_STATUS, status)  # write 1 to clear
        if status & RX_OVERFLOW:
            self.counts["rx_missed"] += 1
        self._rx()
        if status & (TX_OK | TX_ERR):
            self._tx_reclaim()

    def _rx(self) -> None:
        head = self.regs.r16(RX_BUF_ADDR)
        while self.cur_rx % RX_BUF_LEN != head:
            at = self.rx_addr + self.cur_rx % RX_BUF_LEN
            status, length = struct.unpack_from("<HH", self.dma, at)
            if not status & RX_STATUS_OK or not 18 <= length <= 1792 + 4:
                self.counts["rx_errors"] += 1
                self.cur_rx = head  # skip what cannot be read (8139too resets the receiver)
                break
            self.k.netif_rx_at(at + 4, length - 4)  # less the CRC
            self.counts["rx_packets"] += 1
            self.counts["rx_bytes"] += length - 4
            self.cur_rx = (self.cur_rx + length + 4 + 3) & ~3
        self.regs.w16(RX_BUF_PTR, (self.cur_rx % RX_BUF_LEN - 16) & 0xFFFF)

    def _tx_reclaim(self) -> None:
        was_full = self.cur_tx - self.dirty_tx >= NUM_TX
        while self.dirty_tx < self.cur_tx:
            slot = self.dirty_tx % NUM_TX
            status = self.regs.r32(TX_STATUS0 + 4 * slot)
            if not status & TX_HOST_OWNS:
                break
            if status & TX_STAT_OK:
                self.counts["tx_packets"] += 1
            else:
                self.counts["tx_errors"] += 1
            self.dirty_tx += 1
        if was_full and self.cur_tx - self.dirty_tx < NUM_TX:
            self.regs.w16(INTR_MASK, INTERRUPTS)
            self.k.tx_wake()
