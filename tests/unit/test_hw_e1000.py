"""The e1000-style card's programming model, driven as a driver drives it: the
transmit ring sent up to the tail, the receive ring filled and given back, the
filter and the interrupt mask, and rings a driver gets wrong refused."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from nooks.hw import e1000 as e

MAC = bytes.fromhex("525400123456")
PEER = bytes.fromhex("525400abcdef")
TX_RING, RX_RING, BUFS = 0x1000, 0x2000, 0x4000


class Card:
    def __init__(self) -> None:
        self.regs = memoryview(bytearray(e.REGS_SIZE))
        self.dma = memoryview(bytearray(1 << 20))
        self.sent: list[bytes] = []
        self.irqs = 0
        self.card = e.E1000(self.regs, self.dma, MAC, self.sent.append, self._irq)

    def _irq(self) -> None:
        self.irqs += 1

    def w32(self, off: int, v: int) -> None:
        struct.pack_into("<I", self.regs, off, v)

    def r32(self, off: int) -> int:
        return int(struct.unpack_from("<I", self.regs, off)[0])

    def up(self, rctl: int = e.RCTL_EN | e.RCTL_BAM) -> None:
        self.w32(e.TDBAL, TX_RING)
        self.w32(e.TDLEN, 8 * 16)
        self.w32(e.RDBAL, RX_RING)
        self.w32(e.RDLEN, 8 * 16)
        for i in range(8):
            struct.pack_into("<QHHBBH", self.dma, RX_RING + 16 * i, BUFS + 2048 * i, 0, 0, 0,
                             0, 0)
        self.w32(e.RCTL, rctl)
        self.w32(e.TCTL, e.TCTL_EN)
        self.card.write(e.RDT, 7)
        self.card.write(e.IMS, e.ICR_TXDW | e.ICR_RXT0 | e.ICR_RXO)

    def queue(self, i: int, data: bytes, cmd: int = e.CMD_EOP | e.CMD_RS) -> None:
        buf = BUFS + 0x10000 + 2048 * i
        self.dma[buf:buf + len(data)] = data
        struct.pack_into("<QHBBBBH", self.dma, TX_RING + 16 * i, buf, len(data), 0, cmd, 0, 0,
                         0)


def frame(dest: bytes, n: int) -> bytes:
    return dest + PEER + b"\x08\x00" + bytes([n % 256]) * (60 + n)


def test_power_on_state() -> None:
    c = Card()
    assert c.r32(e.RAL).to_bytes(4, "little") + (c.r32(e.RAH) & 0xFFFF).to_bytes(2, "little") \
        == MAC
    assert c.r32(e.RAH) & e.RAH_AV and c.r32(e.STATUS) & e.STATUS_LU


def test_the_transmit_ring_is_sent_up_to_the_tail() -> None:
    c = Card()
    c.up()
    a, b = frame(PEER, 1), frame(PEER, 2)
    c.queue(0, a[:20], cmd=0)  # a frame in two descriptors
    c.queue(1, a[20:])
    c.queue(2, b)
    c.card.write(e.TDT, 3)
    assert c.sent == [a, b] and c.r32(e.TDH) == 3
    assert c.dma[TX_RING + 16 * 2 + 12] & e.STA_DD and c.irqs == 1
    c.card.write(e.ICR, e.ICR_TXDW)
    assert not c.card.pending()


def test_frames_fill_the_receive_ring_until_the_tail() -> None:
    c = Card()
    c.up()
    for n in range(7):
        assert c.card.receive(frame(MAC, n))
    assert not c.card.receive(frame(MAC, 99))  # the tail: no descriptor left
    assert c.card.counts["rx_missed"] == 1 and c.r32(e.ICR) & e.ICR_RXO
    addr, length, _, status, _, _ = struct.unpack_from("<QHHBBH", c.dma, RX_RING + 16 * 3)
    assert status & e.STA_DD and bytes(c.dma[addr:addr + length]) == frame(MAC, 3)


def test_the_filter() -> None:
    c = Card()
    c.up(rctl=e.RCTL_EN)  # no broadcast
    group = bytes.fromhex("01005e000001")
    assert not c.card.receive(frame(b"\xff" * 6, 1))
    assert not c.card.receive(frame(group, 2)) and not c.card.receive(frame(PEER, 3))
    bit = e.mta_index(group)
    c.w32(e.MTA + 4 * (bit >> 5), 1 << (bit & 31))
    assert c.card.receive(frame(group, 4)) and c.card.receive(frame(MAC, 5))
    c.w32(e.RCTL, e.RCTL_EN | e.RCTL_UPE)
    assert c.card.receive(frame(PEER, 6))


def test_rings_outside_dma_memory_are_refused() -> None:
    c = Card()
    c.up()
    c.w32(e.TDBAL, len(c.dma) - 64)
    c.card.write(e.TDT, 1)
    assert c.sent == [] and c.card.counts["tx_aborted"] == 1
    c.w32(e.RDLEN, 100)  # not a multiple of 128
    assert not c.card.receive(frame(MAC, 1))


_OPS = st.lists(st.one_of(
    st.tuples(st.just("doorbell"), st.sampled_from(sorted(e.DOORBELLS)),
              st.integers(0, (1 << 32) - 1)),
    st.tuples(st.just("poke"), st.sampled_from([e.TDBAL, e.TDLEN, e.RDBAL, e.RDLEN, e.RCTL,
                                                e.TCTL, e.RDH, e.TDH, e.ICR, e.MTA]),
              st.integers(0, (1 << 32) - 1)),
    st.tuples(st.just("desc"), st.integers(0, 15), st.integers(0, (1 << 32) - 1)),
    st.tuples(st.just("frame"), st.integers(0, 2000), st.integers(0, 255)),
), max_size=60)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_OPS)
def test_whatever_a_driver_writes_and_the_wire_brings_the_card_stays_sane(
        ops: list[tuple[str, int, int]]) -> None:
    c = Card()
    c.up(rctl=e.RCTL_EN | e.RCTL_UPE)
    for kind, a, b in ops:
        if kind == "doorbell":
            c.card.write(a, b)
        elif kind == "poke":
            c.w32(a, b)
        elif kind == "desc":  # a descriptor with a random buffer address and length
            struct.pack_into("<QHBBBBH", c.dma, TX_RING + 16 * (a % 8), b, b & 0xFFFF, 0,
                             e.CMD_EOP | e.CMD_RS, 0, 0, 0)
        else:
            c.card.receive((MAC + PEER + bytes([b]) * 2000)[:a])
    assert all(14 <= len(f) <= e.MAX_FRAME for f in c.sent)
    assert len(c.dma) == 1 << 20


def test_a_head_left_past_a_ring_made_shorter_is_not_followed() -> None:
    c = Card()
    c.up()
    c.w32(e.RDLEN, 64 * 16)  # a longer ring: the head moves past 8
    for i in range(64):
        struct.pack_into("<QHHBBH", c.dma, RX_RING + 16 * i, BUFS + 2048 * (i % 8), 0, 0, 0,
                         0, 0)
    c.card.write(e.RDT, 63)
    for n in range(20):
        assert c.card.receive(frame(MAC, n))
    c.w32(e.RDBAL, len(c.dma) - 128)  # then a short ring at the very end of DMA memory
    c.w32(e.RDLEN, 128)
    c.card.write(e.RDT, 7)
    assert not c.card.receive(frame(MAC, 99))  # missed, not read past the memory
    assert c.card.counts["rx_missed"] == 1
