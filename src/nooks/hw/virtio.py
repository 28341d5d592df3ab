"""A virtio-net-style device: split virtqueues in DMA memory, a virtio-net header
before every frame, checksum and segmentation offloads, a control queue for the
receive filter.

The programming model of virtio 1.x (its specification's split virtqueues and
virtio-net device, with a register window of its own instead of PCI
capabilities), on the host's side:

* **Registers** (shared memory the driver maps): ``DEVICE_FEATURES`` (64 bits,
  the device's), ``DRIVER_FEATURES`` (64 bits, the driver's choice),
  ``STATUS`` (a doorbell: ``ACKNOWLEDGE``, ``DRIVER``, ``FEATURES_OK`` — cleared
  again by the device if the choice is not a subset of its features —,
  ``DRIVER_OK``; 0 resets the device), ``ISR`` (bit 0: a queue has work, bit 1:
  the configuration changed; write 1 to clear, a doorbell), and for each queue
  (0 receive, 1 transmit, 2 control) a block at ``QUEUE + 0x20 * q``: ``SIZE``
  (a power of two up to ``QUEUE_MAX``, published as ``SIZE_MAX``), ``READY``,
  ``DESC``/``AVAIL``/``USED`` (the three parts' DMA addresses) and ``NOTIFY``
  (a doorbell: the queue has new buffers). The device configuration at
  ``CONFIG``: the MAC address, the link status, the largest MTU.
* **Virtqueues**: a descriptor table (16 bytes each: address, length, flags
  ``NEXT``/``WRITE``, next), the available ring the driver fills (flags, index,
  entries, and ``used_event``), the used ring the device fills (flags, index,
  entries of id and length). ``VIRTIO_RING_F_EVENT_IDX`` is the interrupt rule:
  a queue's line is up while its used index differs from the ``used_event`` the
  driver wrote (level, and race-free: the driver writes it in place, not through
  a doorbell), unless the driver set ``NO_INTERRUPT`` in its available flags.
* **Frames** cross with a 12-byte ``virtio_net_hdr_v1`` (flags, GSO type, header
  length, GSO size, checksum start and offset, buffers): with ``HOST_TSO4/6``
  and ``CSUM`` a transmitted frame may be a 64 KiB segment with a partial
  checksum, which the wire finishes (``PACKET_VNET_HDR``); with ``GUEST_TSO4/6``
  and ``GUEST_CSUM`` received frames may be too. A receive buffer must hold a
  header and the largest frame the driver asked for (``BIG_RX`` with guest
  offloads), or the frame is missed.
* **Control queue** (``CTRL_VQ``, ``CTRL_RX``, ``CTRL_MAC_ADDR``): a command is a
  class and command byte and its data, in readable buffers, then a writable byte
  the device answers (0 ok, 1 error): ``RX_PROMISC``, ``RX_ALLMULTI``,
  ``MAC_TABLE_SET`` (unicast and multicast address tables), ``MAC_ADDR_SET``.

What a driver writes is checked as a device must: a queue whose parts lie
outside DMA memory or whose size is not a power of two is not used, a chain
longer than its queue or with buffers outside DMA memory is dropped (and given
back, so the driver can reclaim it), a transmitted frame shorter than a header
or longer than the negotiated bound is dropped, counted. Nothing a driver
writes can make the device raise or touch host memory.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

from nooks.hw.registers import CardModel, Window

# registers
DEVICE_FEATURES, DRIVER_FEATURES, STATUS, ISR = 0x00, 0x08, 0x10, 0x14
QUEUE, QUEUE_STRIDE = 0x40, 0x20
Q_SIZE, Q_SIZE_MAX, Q_READY, Q_DESC, Q_AVAIL, Q_USED, Q_NOTIFY = 0, 2, 4, 8, 12, 16, 20
CONFIG = 0x100
CFG_MAC, CFG_STATUS, CFG_MTU = 0x100, 0x106, 0x10A
REGS_SIZE = 0x200
RXQ, TXQ, CTRLQ = 0, 1, 2
QUEUES = 3
DOORBELLS = frozenset({STATUS, ISR} | {QUEUE + QUEUE_STRIDE * q + Q_NOTIFY
                                        for q in range(QUEUES)})

# status bits
S_ACKNOWLEDGE, S_DRIVER, S_DRIVER_OK, S_FEATURES_OK, S_NEEDS_RESET = 1, 2, 4, 8, 64
ISR_QUEUE, ISR_CONFIG = 1, 2
LINK_UP = 1

# feature bits
F_CSUM, F_GUEST_CSUM, F_MTU, F_MAC = 0, 1, 3, 5
F_GUEST_TSO4, F_GUEST_TSO6, F_HOST_TSO4, F_HOST_TSO6 = 7, 8, 11, 12
F_STATUS, F_CTRL_VQ, F_CTRL_RX, F_CTRL_MAC_ADDR = 16, 17, 18, 23
F_EVENT_IDX, F_VERSION_1 = 29, 32
FEATURES = sum(1 << b for b in (F_CSUM, F_GUEST_CSUM, F_MTU, F_MAC, F_GUEST_TSO4,
                                F_GUEST_TSO6, F_HOST_TSO4, F_HOST_TSO6, F_STATUS,
                                F_CTRL_VQ, F_CTRL_RX, F_CTRL_MAC_ADDR, F_EVENT_IDX,
                                F_VERSION_1))
GUEST_OFFLOADS = (1 << F_GUEST_TSO4) | (1 << F_GUEST_TSO6)

# virtqueues
QUEUE_MAX = 256
D_NEXT, D_WRITE = 1, 2
AVAIL_NO_INTERRUPT = 1
_DESC = struct.Struct("<QIHH")
_USED = struct.Struct("<II")

# the header
HDR = struct.Struct("<BBHHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_off, n
HDR_SIZE = HDR.size  # 12
HDR_F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_ECN = 0, 1, 3, 4, 0x80
MIN_FRAME = 14
MAX_MTU = 9000
GSO_FRAME = 65550  # the largest segment (and its Ethernet header) the device takes
BIG_RX = HDR_SIZE + GSO_FRAME

# the control queue
CTRL_RX, CTRL_MAC = 0, 1
RX_PROMISC, RX_ALLMULTI = 0, 1
MAC_TABLE_SET, MAC_ADDR_SET = 0, 1
ACK_OK, ACK_ERR = 0, 1
MAX_TABLE = 64  # addresses in a filter table
MAX_CTRL = 4096  # bytes of one command


class Virtqueue:
    """One split virtqueue as the device walks it (its parts are re-read from the
    registers each time: the driver may set them up again)."""

    def __init__(self, dev: VirtioNet, index: int) -> None:
        self.dev = dev
        self.base = QUEUE + QUEUE_STRIDE * index
        self.last_avail = 0  # the next available entry the device takes
        self.used_idx = 0

    def reset(self) -> None:
        self.last_avail = self.used_idx = 0

    def layout(self) -> tuple[int, int, int, int] | None:
        """(size, desc, avail, used) if the queue is ready and fits DMA memory."""
        d = self.dev
        if not d._r16(self.base + Q_READY):
            return None
        size = d._r16(self.base + Q_SIZE)
        if not 0 < size <= QUEUE_MAX or size & (size - 1):
            return None
        desc, avail, used = (d._r32(self.base + off) for off in (Q_DESC, Q_AVAIL, Q_USED))
        n = len(d.dma)
        if (desc % 16 or desc + 16 * size > n or avail % 2 or avail + 6 + 2 * size > n
                or used % 4 or used + 6 + 8 * size > n):
            return None
        return size, desc, avail, used

    def avail_idx(self, avail: int) -> int:
        return self.dev.ring.r16(avail + 2)  # (whole: the driver writes it meanwhile)

    def pop(self) -> tuple[int, list[tuple[int, int, bool]]] | None:
        """The next available chain: (head, [(addr, len, writable)]); None if there is
        none; a chain that is malformed is given back at once (used, length 0) and
        counted, and the next one is tried."""
        lay = self.layout()
        if lay is None:
            return None
        size, desc, avail, _ = lay
        if (self.avail_idx(avail) - self.last_avail) & 0xFFFF > size:
            # more entries than the queue holds: the driver broke the ring (a device
            # stops using it and says it needs a reset)
            self.dev.broken()
            return None
        while self.last_avail != self.avail_idx(avail):
            head = self.dev.ring.r16(avail + 4 + 2 * (self.last_avail % size))
            self.last_avail = (self.last_avail + 1) & 0xFFFF
            chain = self._chain(head, size, desc)
            if chain is None:
                self.dev.counts["bad_chains"] += 1
                self.push(head % size, 0)
                continue
            return head, chain
        return None

    def _chain(self, head: int, size: int, desc: int) -> list[tuple[int, int, bool]] | None:
        if head >= size:
            return None
        out: list[tuple[int, int, bool]] = []
        i = head
        for _ in range(size):  # a chain longer than the queue loops
            addr, length, flags, nxt = _DESC.unpack_from(self.dev.dma, desc + 16 * i)
            if addr + length > len(self.dev.dma):
                return None
            out.append((addr, length, bool(flags & D_WRITE)))
            if not flags & D_NEXT:
                return out
            if nxt >= size:
                return None
            i = nxt
        return None

    def chains(self) -> Iterator[tuple[int, list[tuple[int, int, bool]]]]:
        """The available chains, in order (at most a queue's worth at a time)."""
        for _ in range(QUEUE_MAX):
            got = self.pop()
            if got is None:
                return
            yield got

    def push(self, head: int, written: int) -> None:
        """Give chain ``head`` back (``written`` bytes written into it)."""
        lay = self.layout()
        if lay is None:
            return
        size, _, _, used = lay
        _USED.pack_into(self.dev.dma, used + 4 + 8 * (self.used_idx % size), head, written)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self.dev.ring.w16(used + 2, self.used_idx)  # whole: the driver reads it meanwhile

    def wants_interrupt(self) -> bool:
        """Whether this queue's line is up: used entries past the driver's
        ``used_event``, interrupts not suppressed."""
        lay = self.layout()
        if lay is None:
            return False
        size, _, avail, _ = lay
        if self.dev.ring.r16(avail) & AVAIL_NO_INTERRUPT:
            return False
        return self.used_idx != self.dev.ring.r16(avail + 4 + 2 * size)


class VirtioNet(CardModel):
    """The device. ``send`` puts a frame (its 12-byte header first) on the wire;
    ``interrupt`` is called when the line rises (the host then looks at
    ``pending`` after each handler)."""

    REGS_SIZE = REGS_SIZE

    def __init__(self, regs: memoryview, dma: memoryview, mac: bytes,
                 send: Callable[[bytes], None], interrupt: Callable[[], None]) -> None:
        self.queues = [Virtqueue(self, q) for q in range(QUEUES)]
        self.ring = Window(dma)  # the rings' indexes, read and written whole
        super().__init__(regs, dma, mac, send, interrupt)
        self.counts.update({"bad_chains": 0, "ctrl": 0, "ctrl_refused": 0, "needs_reset": 0})

    def release(self) -> None:
        self.ring.release()
        super().release()

    def _reset(self) -> None:
        self.regs[:REGS_SIZE] = bytes(REGS_SIZE)
        self._w32(DEVICE_FEATURES, FEATURES & 0xFFFFFFFF)
        self._w32(DEVICE_FEATURES + 4, FEATURES >> 32)
        for q in self.queues:
            q.reset()
            self._w16(q.base + Q_SIZE_MAX, QUEUE_MAX)
        self.regs[CFG_MAC:CFG_MAC + 6] = self.mac
        self._w16(CFG_STATUS, LINK_UP)
        self._w16(CFG_MTU, MAX_MTU)
        self._status = 0
        self._isr = 0
        self.features = 0
        self.addr = self.mac
        self.promisc = self.allmulti = False
        self.unicast: list[bytes] = []
        self.multicast: list[bytes] = []
        self._publish()

    def _publish(self) -> None:
        self.regs[STATUS] = self._status
        self.regs[ISR] = self._isr

    def broken(self) -> None:
        """The driver set up something the device cannot use: it stops (every queue)
        until reset, and says so (``NEEDS_RESET``)."""
        self._status |= S_NEEDS_RESET
        self._status &= ~S_DRIVER_OK
        self.counts["needs_reset"] += 1

    def _has(self, bit: int) -> bool:
        return bool(self.features >> bit & 1)

    # -- the driver's doorbells ------------------------------------------------------

    def write(self, off: int, value: int) -> None:
        raise_line = False
        with self.lock:
            if off == STATUS:
                if value & 0xFF == 0:
                    self._reset()
                    return
                self._set_status(value & 0xFF)
            elif off == ISR:
                self._isr &= ~value & 0xFF
            elif off in DOORBELLS:
                q = (off - QUEUE) // QUEUE_STRIDE
                if self._status & S_DRIVER_OK:
                    vq = self.queues[q]
                    before = vq.wants_interrupt()
                    if q == TXQ:
                        self._transmit()
                    elif q == CTRLQ:
                        self._control()
                    raise_line = not before and vq.wants_interrupt()
            else:
                raise ValueError(f"register {off:#x} has no doorbell")
            self._publish()
        if raise_line:
            self._interrupt()

    def _set_status(self, value: int) -> None:
        if value & S_FEATURES_OK and not self._status & S_FEATURES_OK:
            wanted = self._r32(DRIVER_FEATURES) | self._r32(DRIVER_FEATURES + 4) << 32
            if wanted & ~FEATURES or not wanted >> F_VERSION_1 & 1:
                value &= ~S_FEATURES_OK  # the driver reads it back: not accepted
            else:
                self.features = wanted
        if value & S_DRIVER_OK and not value & S_FEATURES_OK:
            value &= ~S_DRIVER_OK
        self._status = value | (self._status & S_NEEDS_RESET)

    def _line(self) -> bool:
        return any(q.wants_interrupt() for q in self.queues)

    def pending(self) -> bool:
        """Whether the line is up: a queue with used entries the driver has not said
        it has seen (``used_event``), its interrupts not suppressed."""
        with self.lock:
            return bool(self._status & S_DRIVER_OK) and self._line()

    # -- transmit --------------------------------------------------------------------

    def _gather(self, chain: list[tuple[int, int, bool]]) -> bytes | None:
        """The readable part of a chain (None if it has writable buffers first or is
        too long)."""
        data = bytearray()
        for addr, length, writable in chain:
            if writable:
                return None
            if len(data) + length > HDR_SIZE + GSO_FRAME:
                return None
            data += self.dma[addr:addr + length]
        return bytes(data)

    def _tx_bound(self, hdr: tuple[int, ...]) -> int:
        """The largest frame the header may announce (what was negotiated)."""
        gso = hdr[1] & ~GSO_ECN
        if gso == GSO_NONE:
            return MAX_MTU + 18
        allowed = {GSO_TCPV4: F_HOST_TSO4, GSO_TCPV6: F_HOST_TSO6}.get(gso)
        return GSO_FRAME if allowed is not None and self._has(allowed) else -1

    def _transmit(self) -> None:
        q = self.queues[TXQ]
        for head, chain in q.chains():
            data = self._gather(chain)
            if data is not None and len(data) >= HDR_SIZE + MIN_FRAME:
                hdr = HDR.unpack_from(data)
                csum_ok = not hdr[0] & HDR_F_NEEDS_CSUM or self._has(F_CSUM)
                if csum_ok and len(data) - HDR_SIZE <= self._tx_bound(hdr):
                    try:
                        self._send(data)
                        self.counts["tx"] += 1
                    except (OSError, ValueError):
                        self.counts["tx_aborted"] += 1
                else:
                    self.counts["tx_aborted"] += 1
            else:
                self.counts["tx_aborted"] += 1
            q.push(head, 0)

    # -- receive ---------------------------------------------------------------------

    def _accepts(self, frame: bytes) -> bool:
        dest = frame[:6]
        if self.promisc or not self._has(F_CTRL_RX):
            return True
        if dest == b"\xff" * 6:
            return True
        if dest[0] & 1:
            return self.allmulti or dest in self.multicast
        return dest == self.addr or dest in self.unicast

    def receive(self, frame: bytes) -> bool:
        """A frame (its 12-byte header first) arrived from the wire; whether a receive
        buffer took it."""
        raise_line = False
        with self.lock:
            if not self._status & S_DRIVER_OK or len(frame) < HDR_SIZE + MIN_FRAME:
                return False
            hdr = HDR.unpack_from(frame)
            if not self._accepts(frame[HDR_SIZE:HDR_SIZE + 6]):
                self.counts["rx_filtered"] += 1
                return False
            if ((hdr[1] & ~GSO_ECN) != GSO_NONE and not self.features & GUEST_OFFLOADS) or \
                    (hdr[0] & HDR_F_NEEDS_CSUM and not self._has(F_GUEST_CSUM)):
                self.counts["rx_missed"] += 1  # offloads the driver did not ask for
                return False
            q = self.queues[RXQ]
            before = q.wants_interrupt()
            got = q.pop()
            if got is None:
                self.counts["rx_missed"] += 1
                return False
            head, chain = got
            room = sum(length for _, length, w in chain if w)
            if room < len(frame) or not all(w for _, _, w in chain):
                self.counts["rx_missed"] += 1
                q.push(head, 0)  # too small for it: given back empty
                raise_line = not before and q.wants_interrupt()
                taken = False
            else:
                self.placed(chain[0][0], frame)
                at = 0
                view = memoryview(frame)
                for addr, length, _ in chain:
                    part = view[at:at + length]
                    self.dma[addr:addr + len(part)] = part
                    at += len(part)
                    if at >= len(frame):
                        break
                q.push(head, len(frame))
                self.counts["rx"] += 1
                raise_line = not before and q.wants_interrupt()
                taken = True
            self._isr |= ISR_QUEUE if raise_line else 0
            self._publish()
        if raise_line:
            self._interrupt()
        return taken

    # -- the control queue -----------------------------------------------------------

    def _control(self) -> None:
        q = self.queues[CTRLQ]
        for head, chain in q.chains():
            writable = [(a, n) for a, n, w in chain if w]
            data = bytearray()
            for a, n, w in chain:  # (bounded as it is read: a chain may name 16 MiB each)
                if not w and len(data) <= MAX_CTRL:
                    data += self.dma[a:a + min(n, MAX_CTRL + 1 - len(data))]
            ack = ACK_ERR
            if writable and writable[0][1] >= 1 and 2 <= len(data) <= MAX_CTRL:
                ack = ACK_OK if self._command(data[0], data[1], bytes(data[2:])) else ACK_ERR
            self.counts["ctrl" if ack == ACK_OK else "ctrl_refused"] += 1
            if writable and writable[0][1] >= 1:
                self.dma[writable[0][0]] = ack
                q.push(head, 1)
            else:
                q.push(head, 0)

    def _command(self, cls: int, cmd: int, data: bytes) -> bool:
        if cls == CTRL_RX and cmd in (RX_PROMISC, RX_ALLMULTI) and len(data) == 1 \
                and self._has(F_CTRL_RX):
            if cmd == RX_PROMISC:
                self.promisc = bool(data[0])
            else:
                self.allmulti = bool(data[0])
            return True
        if cls == CTRL_MAC and cmd == MAC_ADDR_SET and len(data) == 6 \
                and self._has(F_CTRL_MAC_ADDR):
            self.addr = bytes(data)
            self.regs[CFG_MAC:CFG_MAC + 6] = self.addr
            return True
        if cls == CTRL_MAC and cmd == MAC_TABLE_SET and self._has(F_CTRL_RX):
            tables = _tables(data)
            if tables is None:
                return False
            self.unicast, self.multicast = tables
            return True
        return False


def _tables(data: bytes) -> tuple[list[bytes], list[bytes]] | None:
    """The unicast and multicast tables of a ``MAC_TABLE_SET`` (each a 32-bit count and
    that many addresses), or None if malformed."""
    out: list[list[bytes]] = []
    at = 0
    for _ in range(2):
        if at + 4 > len(data):
            return None
        n = int.from_bytes(data[at:at + 4], "little")
        at += 4
        if n > MAX_TABLE or at + 6 * n > len(data):
            return None
        out.append([bytes(data[at + 6 * i:at + 6 * i + 6]) for i in range(n)])
        at += 6 * n
    if at != len(data):
        return None
    return out[0], out[1]
