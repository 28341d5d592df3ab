"""A driver for the virtio-net-style device (``nooks.hw.virtio``), after Linux's
virtio_net.

It negotiates the device's offloads (checksum and TCP segmentation both ways)
and the event-index interrupt rule, and keeps three split virtqueues in DMA
memory, each buffer at a fixed place. Transmit: a frame (its virtio-net header
first, as the system gives it) copied into a free buffer, its descriptor made
available, the queue notified once per burst; used buffers are reclaimed in
``xmit`` (transmit interrupts stay off unless the queue is full). Receive:
every receive buffer holds a header and a 64 KiB segment; the handler passes up
each used buffer, gives it back, and writes ``used_event`` (in place) to say
how far it has read. The receive filter goes through the control queue, one
command at a time (the driver waits for the device's answer). It keeps the
device's register map (the specification's, not the model's code).
"""

from __future__ import annotations

import errno
import struct

from nooks.domain.child import kernel, region
from nooks.hw.mmio import Registers
from nooks.hw.netdev import Info
from nooks.hw.registers import Window

DEVICE_FEATURES, DRIVER_FEATURES, STATUS, ISR = 0x00, 0x08, 0x10, 0x14
QUEUE, QUEUE_STRIDE = 0x40, 0x20
Q_SIZE, Q_SIZE_MAX, Q_READY, Q_DESC, Q_AVAIL, Q_USED, Q_NOTIFY = 0, 2, 4, 8, 12, 16, 20
CFG_MAC, CFG_STATUS, CFG_MTU = 0x100, 0x106, 0x10A
DOORBELLS = frozenset({STATUS, ISR} | {QUEUE + QUEUE_STRIDE * q + Q_NOTIFY for q in range(3)})
ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK = 1, 2, 4, 8
RXQ, TXQ, CTRLQ = 0, 1, 2
WANTED = sum(1 << b for b in (0, 1, 3, 5, 7, 8, 11, 12, 16, 17, 18, 23, 29, 32))
D_NEXT, D_WRITE = 1, 2
NO_INTERRUPT = 1
HDR_SIZE = 12
BUFFER = HDR_SIZE + 65550
RX_SIZE = TX_SIZE = 64
CTRL_SIZE = 4
CTRL_BUF = 4096
CTRL_RX, CTRL_MAC = 0, 1
RX_PROMISC, RX_ALLMULTI = 0, 1
MAC_TABLE_SET, MAC_ADDR_SET = 0, 1
_DESC = struct.Struct("<QIHH")
_USED = struct.Struct("<II")


class Queue:
    """One split virtqueue as the driver keeps it."""

    def __init__(self, drv: VirtioNet, index: int, size: int, buffer: int) -> None:
        k = drv.k
        self.drv = drv
        self.index = index
        self.size = size
        self.desc = k.dma_alloc(16 * size, 16)
        self.avail = k.dma_alloc(6 + 2 * size, 2)
        self.used = k.dma_alloc(6 + 8 * size, 4)
        stride = (buffer + 15) & ~15
        base = k.dma_alloc(stride * size, 16)
        self.bufs = [base + stride * i for i in range(size)]
        self.buffer = buffer
        self.reset()

    def reset(self) -> None:
        dma = self.drv.dma
        dma[self.desc:self.desc + 16 * self.size] = bytes(16 * self.size)
        dma[self.avail:self.avail + 6 + 2 * self.size] = bytes(6 + 2 * self.size)
        dma[self.used:self.used + 6 + 8 * self.size] = bytes(6 + 8 * self.size)
        self.avail_idx = 0
        self.last_used = 0
        self.free = list(range(self.size))

    def program(self) -> None:
        regs, base = self.drv.regs, QUEUE + QUEUE_STRIDE * self.index
        regs.w16(base + Q_SIZE, self.size)
        regs.w32(base + Q_DESC, self.desc)
        regs.w32(base + Q_AVAIL, self.avail)
        regs.w32(base + Q_USED, self.used)
        regs.w16(base + Q_READY, 1)

    def offer(self, i: int, length: int, writable: bool) -> None:
        """Make buffer ``i`` (its first ``length`` bytes) available."""
        _DESC.pack_into(self.drv.dma, self.desc + 16 * i, self.bufs[i], length,
                        D_WRITE if writable else 0, 0)
        ring = self.drv.ring
        ring.w16(self.avail + 4 + 2 * (self.avail_idx % self.size), i)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF

    def publish(self) -> None:
        """The entries offered become the device's (one whole store of the index)."""
        self.drv.ring.w16(self.avail + 2, self.avail_idx)

    def notify(self) -> None:
        self.drv.regs.w16(QUEUE + QUEUE_STRIDE * self.index + Q_NOTIFY, self.index)

    def used_entries(self) -> list[tuple[int, int]]:
        """(buffer, length) of each entry the device has used since last asked."""
        out = []
        end = self.drv.ring.r16(self.used + 2)
        for _ in range(self.size):
            if self.last_used == end:
                break
            slot = self.used + 4 + 8 * (self.last_used % self.size)
            i, length = _USED.unpack_from(self.drv.dma, slot)
            out.append((i, length))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out

    def seen(self) -> None:
        """Tell the device how far the used ring has been read (``used_event``)."""
        self.drv.ring.w16(self.avail + 4 + 2 * self.size, self.last_used)

    def interrupts(self, on: bool) -> None:
        self.drv.ring.w16(self.avail, 0 if on else NO_INTERRUPT)


class VirtioNet:
    def __init__(self) -> None:
        self.k = kernel()
        self.dma = region("dma")
        self.ring = Window(self.dma)
        self.regs = Registers(region("regs"), DOORBELLS, self.k.mmio_write)
        self.queues: list[Queue] = []
        self.up = False
        self.mac: bytes | None = None  # set while down: told to the device at open
        self.mode: tuple[bool, bool, list[bytes]] | None = None
        self.max_mtu = 1500
        self.counts = {"tx_packets": 0, "tx_bytes": 0, "rx_packets": 0, "rx_bytes": 0,
                       "rx_errors": 0}

    def probe(self) -> Info:
        r = self.regs
        r.w8(STATUS, 0)  # reset; done once the device says so (it clears what was set)
        self.k.mmio_sync()
        r.w8(STATUS, ACKNOWLEDGE | DRIVER)
        offered = r.r32(DEVICE_FEATURES) | r.r32(DEVICE_FEATURES + 4) << 32
        chosen = offered & WANTED
        r.w32(DRIVER_FEATURES, chosen & 0xFFFFFFFF)
        r.w32(DRIVER_FEATURES + 4, chosen >> 32)
        r.w8(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK)
        self.k.mmio_sync()
        if not r.r8(STATUS) & FEATURES_OK:
            raise OSError(errno.ENODEV, "the device did not accept the features chosen")
        self.max_mtu = r.r16(CFG_MTU) or 1500
        return Info(mac=r.read_bytes(CFG_MAC, 6), max_mtu=min(self.max_mtu, 9000))

    def open(self) -> None:
        if not self.queues:
            self.queues = [Queue(self, RXQ, RX_SIZE, BUFFER), Queue(self, TXQ, TX_SIZE, BUFFER),
                           Queue(self, CTRLQ, CTRL_SIZE, CTRL_BUF)]
        for q in self.queues:
            q.reset()
            q.program()
        rx, tx, ctrl = self.queues
        for i in rx.free:
            rx.offer(i, BUFFER, True)
        rx.free = []
        rx.publish()
        rx.seen()
        tx.interrupts(False)
        ctrl.interrupts(False)
        self.regs.w8(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)
        rx.notify()
        self.k.mmio_sync()
        self.up = True
        if self.mac is not None:
            self._command(CTRL_MAC, MAC_ADDR_SET, self.mac)
        if self.mode is not None:
            self._write_rx_mode(*self.mode)
        self.k.carrier(True)

    def stop(self) -> None:
        self.regs.w8(STATUS, 0)  # a reset stops every queue
        self.k.mmio_sync()
        self.up = False
        self.k.carrier(False)
        self.probe()  # ready to be opened again

    def xmit(self, frames: list[bytes]) -> int:
        if not self.up:
            return 0
        tx = self.queues[TXQ]
        self._tx_reclaim()
        taken = 0
        for frame in frames:
            if not tx.free:
                if not taken:  # tell me when there is room (offered the rest at once else)
                    tx.seen()
                    tx.interrupts(True)
                break
            i = tx.free.pop()
            buf = tx.bufs[i]
            self.dma[buf:buf + len(frame)] = frame
            tx.offer(i, len(frame), False)
            self.counts["tx_bytes"] += len(frame) - HDR_SIZE
            taken += 1
        if taken:
            tx.publish()
            tx.notify()
        return taken

    def _tx_reclaim(self) -> None:
        tx = self.queues[TXQ]
        was_full = not tx.free
        for i, _ in tx.used_entries():
            if 0 <= i < tx.size:
                tx.free.append(i)
                self.counts["tx_packets"] += 1
        if was_full and tx.free:
            tx.interrupts(False)
            self.k.tx_wake()

    def interrupt(self) -> None:
        isr = self.regs.r8(ISR)
        if isr:
            self.regs.w8(ISR, isr)  # (the line itself is the queues' used_event)
        rx = self.queues[RXQ]
        given = 0
        for i, length in rx.used_entries():
            if not 0 <= i < rx.size:
                self.counts["rx_errors"] += 1
                continue
            if HDR_SIZE + 14 <= length <= BUFFER:
                buf = rx.bufs[i]
                self.k.netif_rx_at(buf, length)
                self.counts["rx_packets"] += 1
                self.counts["rx_bytes"] += length - HDR_SIZE
            else:
                self.counts["rx_errors"] += 1
            rx.offer(i, BUFFER, True)
            given += 1
        if given:
            rx.publish()
        rx.seen()
        if given:
            rx.notify()
        self._tx_reclaim()

    # -- configuration, through the control queue -------------------------------------

    def _command(self, cls: int, cmd: int, data: bytes) -> None:
        ctrl = self.queues[CTRLQ]
        out, ack = ctrl.free[0], ctrl.free[1]
        command = bytes([cls, cmd]) + data
        self.dma[ctrl.bufs[out]:ctrl.bufs[out] + len(command)] = command
        self.dma[ctrl.bufs[ack]] = 0xFF
        _DESC.pack_into(self.dma, ctrl.desc + 16 * out, ctrl.bufs[out], len(command),
                        D_NEXT, ack)
        _DESC.pack_into(self.dma, ctrl.desc + 16 * ack, ctrl.bufs[ack], 1, D_WRITE, 0)
        self.ring.w16(ctrl.avail + 4 + 2 * (ctrl.avail_idx % ctrl.size), out)
        ctrl.avail_idx = (ctrl.avail_idx + 1) & 0xFFFF
        ctrl.publish()
        ctrl.notify()
        self.k.mmio_sync()  # the device has answered
        ctrl.used_entries()
        if self.dma[ctrl.bufs[ack]] != 0:
            raise OSError(errno.EINVAL, f"the device refused control command {cls}.{cmd}")

    def set_mac(self, mac: bytes) -> None:
        self.mac = bytes(mac)
        if self.up:
            self._command(CTRL_MAC, MAC_ADDR_SET, self.mac)

    def set_rx_mode(self, promisc: bool, allmulti: bool, groups: list[bytes]) -> None:
        self.mode = (promisc, allmulti, list(groups))
        if self.up:
            self._write_rx_mode(promisc, allmulti, groups)

    def _write_rx_mode(self, promisc: bool, allmulti: bool, groups: list[bytes]) -> None:
        self._command(CTRL_RX, RX_PROMISC, bytes([promisc]))
        self._command(CTRL_RX, RX_ALLMULTI, bytes([allmulti or len(groups) > 64]))
        table = (struct.pack("<I", 0) + struct.pack("<I", min(len(groups), 64))
                 + b"".join(bytes(g) for g in groups[:64]))
        self._command(CTRL_MAC, MAC_TABLE_SET, table)

    def change_mtu(self, mtu: int) -> None:
        if mtu > self.max_mtu:
            raise OSError(errno.EINVAL, f"MTU {mtu} is more than this device takes")

    def stats(self) -> dict[str, int]:
        return dict(self.counts)
