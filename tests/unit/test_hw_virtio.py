"""The virtio-net-style device's programming model, driven as a driver drives it:
features negotiated, frames sent from and received into split virtqueues with
their headers, the filter set through the control queue, the event-index
interrupt rule, and what a driver gets wrong answered as a device must."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from nooks.hw import virtio as v

MAC = bytes.fromhex("525400123456")
PEER = bytes.fromhex("525400abcdef")
SIZE = 8
RING = {v.RXQ: 0x1000, v.TXQ: 0x2000, v.CTRLQ: 0x3000}  # desc; avail +0x400; used +0x800
BUF = 0x10000  # buffers: 128 KiB apart per queue, 16 KiB each
HDR0 = bytes(v.HDR_SIZE)


def frame(dest: bytes, n: int) -> bytes:
    return dest + PEER + b"\x08\x00" + bytes([n % 256]) * (60 + n)


class Dev:
    def __init__(self) -> None:
        self.regs = memoryview(bytearray(v.REGS_SIZE))
        self.dma = memoryview(bytearray(1 << 20))
        self.sent: list[bytes] = []
        self.irqs = 0
        self.dev = v.VirtioNet(self.regs, self.dma, MAC, self.sent.append, self._irq)
        self.avail_idx = {q: 0 for q in RING}
        self.last_used = {q: 0 for q in RING}

    def _irq(self) -> None:
        self.irqs += 1

    def r32(self, off: int) -> int:
        return int(struct.unpack_from("<I", self.regs, off)[0])

    def w16(self, off: int, val: int) -> None:
        struct.pack_into("<H", self.regs, off, val)

    def w32(self, off: int, val: int) -> None:
        struct.pack_into("<I", self.regs, off, val)

    def negotiate(self, features: int = v.FEATURES) -> bool:
        self.dev.write(v.STATUS, v.S_ACKNOWLEDGE | v.S_DRIVER)
        self.w32(v.DRIVER_FEATURES, features & 0xFFFFFFFF)
        self.w32(v.DRIVER_FEATURES + 4, features >> 32)
        self.dev.write(v.STATUS, v.S_ACKNOWLEDGE | v.S_DRIVER | v.S_FEATURES_OK)
        return bool(self.regs[v.STATUS] & v.S_FEATURES_OK)

    def up(self, features: int = v.FEATURES) -> None:
        assert self.negotiate(features)
        for q, desc in RING.items():
            base = v.QUEUE + v.QUEUE_STRIDE * q
            self.w16(base + v.Q_SIZE, SIZE)
            self.w32(base + v.Q_DESC, desc)
            self.w32(base + v.Q_AVAIL, desc + 0x400)
            self.w32(base + v.Q_USED, desc + 0x800)
            self.w16(base + v.Q_READY, 1)
        self.dev.write(v.STATUS, v.S_ACKNOWLEDGE | v.S_DRIVER | v.S_FEATURES_OK | v.S_DRIVER_OK)

    def buf(self, q: int, i: int) -> int:
        return BUF + q * 0x20000 + i * 0x4000

    def offer(self, q: int, chain: list[tuple[int, int, int]]) -> None:
        """Make a chain of (descriptor, length, flags) available."""
        desc = RING[q]
        for n, (i, length, flags) in enumerate(chain):
            nxt = chain[n + 1][0] if n + 1 < len(chain) else 0
            struct.pack_into("<QIHH", self.dma, desc + 16 * i, self.buf(q, i), length,
                             flags | (v.D_NEXT if n + 1 < len(chain) else 0), nxt)
        avail = desc + 0x400
        struct.pack_into("<H", self.dma, avail + 4 + 2 * (self.avail_idx[q] % SIZE), chain[0][0])
        self.avail_idx[q] += 1
        struct.pack_into("<H", self.dma, avail + 2, self.avail_idx[q])

    def used(self, q: int) -> list[tuple[int, int]]:
        used = RING[q] + 0x800
        end = struct.unpack_from("<H", self.dma, used + 2)[0]
        out = []
        while self.last_used[q] != end:
            at = used + 4 + 8 * (self.last_used[q] % SIZE)
            out.append(struct.unpack_from("<II", self.dma, at))
            self.last_used[q] += 1
        return out

    def seen(self, q: int) -> None:
        struct.pack_into("<H", self.dma, RING[q] + 0x400 + 4 + 2 * SIZE, self.last_used[q])

    def notify(self, q: int) -> None:
        self.dev.write(v.QUEUE + v.QUEUE_STRIDE * q + v.Q_NOTIFY, q)

    def command(self, cls: int, cmd: int, data: bytes) -> int:
        payload = bytes([cls, cmd]) + data
        self.dma[self.buf(v.CTRLQ, 0):self.buf(v.CTRLQ, 0) + len(payload)] = payload
        self.offer(v.CTRLQ, [(0, len(payload), 0), (1, 1, v.D_WRITE)])
        self.notify(v.CTRLQ)
        assert self.used(v.CTRLQ) == [(0, 1)]
        return int(self.dma[self.buf(v.CTRLQ, 1)])


def test_features_beyond_the_devices_are_not_accepted() -> None:
    d = Dev()
    assert d.r32(v.DEVICE_FEATURES + 4) & 1  # VERSION_1
    assert not d.negotiate(v.FEATURES | 1 << 40)
    d.dev.write(v.STATUS, 0)
    assert d.negotiate(v.FEATURES) and d.dev.features == v.FEATURES


def test_a_frame_with_its_header_is_sent_from_a_chain_and_given_back() -> None:
    d = Dev()
    d.up()
    data = HDR0 + frame(PEER, 1)
    d.dma[d.buf(v.TXQ, 2):d.buf(v.TXQ, 2) + 20] = data[:20]
    d.dma[d.buf(v.TXQ, 5):d.buf(v.TXQ, 5) + len(data) - 20] = data[20:]
    d.offer(v.TXQ, [(2, 20, 0), (5, len(data) - 20, 0)])
    d.notify(v.TXQ)
    assert d.sent == [data] and d.used(v.TXQ) == [(2, 0)]


def test_frames_fill_receive_buffers_and_the_line_follows_used_event() -> None:
    d = Dev()
    d.up()
    for i in range(2):
        d.offer(v.RXQ, [(i, 0x4000, v.D_WRITE)])
    d.seen(v.RXQ)
    first = HDR0 + frame(MAC, 1)
    assert d.dev.receive(first) and d.irqs == 1 and d.dev.pending()
    assert d.dev.receive(HDR0 + frame(MAC, 2)) and d.irqs == 1  # the line stays up: one edge
    assert d.used(v.RXQ) == [(0, len(first)), (1, len(first) + 1)]
    assert bytes(d.dma[d.buf(v.RXQ, 0):d.buf(v.RXQ, 0) + len(first)]) == first
    assert d.dev.pending()  # until the driver says how far it has read
    d.seen(v.RXQ)
    assert not d.dev.pending()
    assert not d.dev.receive(HDR0 + frame(MAC, 3))  # no buffer left: missed
    assert d.dev.counts["rx_missed"] == 1


def test_the_filter_is_what_the_control_queue_said() -> None:
    d = Dev()
    d.up()
    for i in range(SIZE):
        d.offer(v.RXQ, [(i, 0x4000, v.D_WRITE)])
    group = bytes.fromhex("01005e000001")
    assert not d.dev.receive(HDR0 + frame(PEER, 1))  # another's address
    assert not d.dev.receive(HDR0 + frame(group, 2))
    table = struct.pack("<I", 0) + struct.pack("<I", 1) + group
    assert d.command(v.CTRL_MAC, v.MAC_TABLE_SET, table) == v.ACK_OK
    assert d.dev.receive(HDR0 + frame(group, 3))
    assert d.command(v.CTRL_RX, v.RX_PROMISC, b"\x01") == v.ACK_OK
    assert d.dev.receive(HDR0 + frame(PEER, 4))
    assert d.command(v.CTRL_MAC, v.MAC_ADDR_SET, PEER) == v.ACK_OK
    assert bytes(d.regs[v.CFG_MAC:v.CFG_MAC + 6]) == PEER
    assert d.command(v.CTRL_MAC, v.MAC_TABLE_SET, b"\xff" * 9) == v.ACK_ERR  # malformed
    assert d.command(7, 7, b"") == v.ACK_ERR


def test_offloads_the_driver_did_not_ask_for_are_not_used() -> None:
    d = Dev()
    plain = v.FEATURES & ~(1 << v.F_HOST_TSO4 | 1 << v.F_GUEST_TSO4 | 1 << v.F_GUEST_TSO6)
    d.up(plain)
    d.offer(v.RXQ, [(0, 0x4000, v.D_WRITE)])
    segment = struct.pack("<BBHHHHH", 0, v.GSO_TCPV4, 54, 1448, 0, 0, 1) + frame(MAC, 1)
    assert not d.dev.receive(segment)  # a segment for a driver without guest offloads
    d.dma[d.buf(v.TXQ, 0):d.buf(v.TXQ, 0) + len(segment)] = segment
    d.offer(v.TXQ, [(0, len(segment), 0)])
    d.notify(v.TXQ)
    assert d.sent == [] and d.dev.counts["tx_aborted"] == 1 and d.used(v.TXQ) == [(0, 0)]


def test_malformed_chains_are_given_back_not_followed() -> None:
    d = Dev()
    d.up()
    struct.pack_into("<QIHH", d.dma, RING[v.TXQ], len(d.dma) - 4, 100, 0, 0)  # outside DMA
    struct.pack_into("<H", d.dma, RING[v.TXQ] + 0x400 + 4, 0)
    struct.pack_into("<QIHH", d.dma, RING[v.TXQ] + 16, d.buf(v.TXQ, 1), 64, v.D_NEXT, 1)  # a loop
    struct.pack_into("<H", d.dma, RING[v.TXQ] + 0x400 + 6, 1)
    struct.pack_into("<H", d.dma, RING[v.TXQ] + 0x400 + 2, 2)
    d.notify(v.TXQ)
    assert d.sent == [] and d.dev.counts["bad_chains"] == 2
    assert d.used(v.TXQ) == [(0, 0), (1, 0)]


_OPS = st.lists(st.one_of(
    st.tuples(st.just("doorbell"), st.sampled_from(sorted(v.DOORBELLS)), st.integers(0, 255)),
    st.tuples(st.just("poke"), st.integers(0, v.REGS_SIZE - 4), st.integers(0, (1 << 32) - 1)),
    st.tuples(st.just("dma"), st.integers(0, 0x4000 - 4), st.integers(0, (1 << 32) - 1)),
    st.tuples(st.just("frame"), st.integers(0, 3000), st.integers(0, 255)),
), max_size=60)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_OPS)
def test_whatever_a_driver_writes_and_the_wire_brings_the_device_stays_sane(
        ops: list[tuple[str, int, int]]) -> None:
    d = Dev()
    d.up()
    for kind, a, b in ops:
        if kind == "doorbell":
            d.dev.write(a, b)
        elif kind == "poke":
            struct.pack_into("<I", d.regs, a, b)
        elif kind == "dma":
            struct.pack_into("<I", d.dma, a, b)
        else:
            d.dev.receive(bytes([b]) * v.HDR_SIZE + frame(MAC, a)[:14 + a])
        d.dev.pending()
    assert all(len(f) >= v.HDR_SIZE + v.MIN_FRAME for f in d.sent)
    assert all(0 <= q.used_idx <= 0xFFFF for q in d.dev.queues)


def test_a_ring_index_beyond_the_queue_stops_the_device_until_reset() -> None:
    d = Dev()
    d.up()
    struct.pack_into("<H", d.dma, RING[v.TXQ] + 0x400 + 2, 4000)  # 4000 entries in 8
    d.notify(v.TXQ)
    assert d.sent == [] and d.regs[v.STATUS] & v.S_NEEDS_RESET
    assert not d.regs[v.STATUS] & v.S_DRIVER_OK and d.dev.counts["needs_reset"] == 1
    assert not d.dev.receive(HDR0 + frame(MAC, 1))  # stopped
    d.dev.write(v.STATUS, 0)
    assert not d.regs[v.STATUS] & v.S_NEEDS_RESET


def test_a_control_command_is_read_bounded() -> None:
    d = Dev()
    d.up()
    chain = [(i, 0x4000, 0) for i in range(SIZE - 1)] + [(SIZE - 1, 1, v.D_WRITE)]
    d.offer(v.CTRLQ, chain)  # seven 16 KiB buffers: more than a command may be
    d.notify(v.CTRLQ)
    assert d.used(v.CTRLQ) == [(0, 1)] and d.dev.counts["ctrl_refused"] == 1
