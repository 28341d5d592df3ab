"""The NE2000-style card's programming model, driven through its ports as a driver
drives it: the PROM read by remote DMA, pages selected in CR, frames sent from
card memory and received into its ring (wrapping, overflowing), the filter, and
what a driver gets wrong answered as the chip answers it."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from nooks.hw import ne2000 as n
from nooks.hw.ports import Ports

MAC = bytes.fromhex("525400123456")
PEER = bytes.fromhex("525400abcdef")
RX_START, RX_STOP = 0x4C, 0x80


def frame(dest: bytes, size: int) -> bytes:
    return dest + PEER + b"\x08\x00" + bytes([size % 256]) * (size - 14)


class Nic:
    def __init__(self) -> None:
        self.regs = memoryview(bytearray(n.REGS_SIZE))
        self.mem = memoryview(bytearray(n.MEMORY))
        self.sent: list[bytes] = []
        self.irqs = 0
        self.card = n.Ne2000(self.regs, self.mem, MAC, self.sent.append, self._irq)
        self.io = Ports(self.regs, self.mem, self.card.write)  # doorbells at once

    def _irq(self) -> None:
        self.irqs += 1

    def remote(self, addr: int, count: int, write: bool) -> None:
        for reg, val in ((0x0A, count & 0xFF), (0x0B, count >> 8), (0x08, addr & 0xFF),
                         (0x09, addr >> 8)):
            self.io.outb(reg, val)
        self.io.outb(n.CR, (n.CR_RD1 if write else n.CR_RD0) | n.CR_STA)

    def up(self, rcr: int = n.RCR_AB) -> None:
        io = self.io
        io.outb(n.CR, n.CR_STP | n.CR_RD2)
        io.outb(n.PSTART, RX_START)
        io.outb(n.PSTOP, RX_STOP)
        io.outb(n.BNRY, RX_START)
        io.outb(n.CR, 0x40 | n.CR_STP | n.CR_RD2)  # page 1
        for i, b in enumerate(MAC):
            io.outb(n.PAR + i, b)
        io.outb(n.CURR, RX_START)
        io.outb(n.CR, n.CR_STP | n.CR_RD2)
        io.outb(n.IMR, n.ISR_PRX | n.ISR_PTX | n.ISR_OVW)
        io.outb(n.CR, n.CR_STA | n.CR_RD2)
        io.outb(n.RCR, rcr)

    def curr(self) -> int:
        self.io.outb(n.CR, 0x40 | n.CR_STA | n.CR_RD2)
        value = self.io.inb(n.CURR)
        self.io.outb(n.CR, n.CR_STA | n.CR_RD2)
        return value


def test_the_prom_holds_the_address_each_byte_twice() -> None:
    c = Nic()
    c.remote(0, 32, False)
    prom = c.io.insw()
    assert prom[0:12:2] == MAC and prom[28:32] == b"WWWW"
    assert c.card.counts["tx"] == 0 and c.regs[n.PAGE0 + n.ISR] & n.ISR_RDC


def test_a_frame_written_by_remote_dma_is_sent_from_card_memory() -> None:
    c = Nic()
    c.up()
    data = frame(PEER, 100)
    c.remote(0x4000, len(data), True)
    c.io.outsw(data)
    c.io.outb(n.TPSR, 0x40)
    c.io.outb(n.TBCR0, len(data))
    c.io.outb(n.TBCR1, 0)
    c.io.outb(n.CR, n.CR_STA | n.CR_TXP | n.CR_RD2)
    assert c.sent == [data] and c.io.inb(n.ISR) & n.ISR_PTX and c.irqs == 1
    assert not c.io.inb(n.CR) & n.CR_TXP  # gone: the transmitter is free again
    c.io.outb(n.TBCR0, 0)
    c.io.outb(n.TBCR1, 0x10)  # 4096 bytes: more than a frame
    c.io.outb(n.CR, n.CR_STA | n.CR_TXP | n.CR_RD2)
    assert len(c.sent) == 1 and c.io.inb(n.ISR) & n.ISR_TXE


def test_frames_fill_the_ring_wrap_and_overflow() -> None:
    c = Nic()
    c.up()
    got = []
    size = 1000  # four pages with its header
    while c.card.receive(frame(MAC, size)):
        got.append(c.curr())
    assert len(got) == (RX_STOP - RX_START - 1) // 4  # never up to BNRY
    assert c.card.counts["rx_missed"] == 1 and c.io.inb(n.ISR) & n.ISR_OVW
    assert c.card.pending()
    # the driver reads each: header, frame, BNRY moved on
    page = RX_START
    for _ in got:
        c.remote(page << 8, 4, False)
        status, nxt, count = struct.unpack("<BBH", c.io.insw())
        assert status & 0x01 and count == 4 + size
        c.remote((page << 8) + 4, count - 4, False)
        assert c.io.insw() == frame(MAC, size)
        page = nxt
        c.io.outb(n.BNRY, page)
    c.io.outb(n.ISR, 0xFF)
    assert not c.card.pending()
    assert c.card.receive(frame(MAC, size))  # room again, and this one wraps
    c.remote(page << 8, 4, False)
    _, nxt, count = struct.unpack("<BBH", c.io.insw())
    c.remote((page << 8) + 4, count - 4, False)
    assert c.io.insw() == frame(MAC, size) and nxt < page  # read across the wrap


def test_the_filter() -> None:
    c = Nic()
    c.up(rcr=0)
    group = bytes.fromhex("01005e000001")
    assert not c.card.receive(frame(b"\xff" * 6, 64)) and not c.card.receive(frame(group, 64))
    assert not c.card.receive(frame(PEER, 64)) and c.card.receive(frame(MAC, 64))
    bit = n.mc_hash(group)
    c.io.outb(n.CR, 0x40 | n.CR_STA)
    c.io.outb(n.MAR + (bit >> 3), 1 << (bit & 7))
    c.io.outb(n.CR, n.CR_STA)
    c.io.outb(n.RCR, n.RCR_AM)
    assert c.card.receive(frame(group, 64))
    c.io.outb(n.RCR, n.RCR_PRO)
    assert c.card.receive(frame(PEER, 64))


_OPS = st.lists(st.one_of(
    st.tuples(st.just("doorbell"), st.sampled_from(sorted(n.DOORBELLS)), st.integers(0, 255)),
    st.tuples(st.just("poke"), st.integers(0, n.REGS_SIZE - 1), st.integers(0, 255)),
    st.tuples(st.just("frame"), st.integers(0, 2000), st.integers(0, 255)),
), max_size=60)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_OPS)
def test_whatever_a_driver_writes_and_the_wire_brings_the_card_stays_sane(
        ops: list[tuple[str, int, int]]) -> None:
    c = Nic()
    c.up()
    for kind, a, b in ops:
        if kind == "doorbell":
            c.card.write(a, b)
        elif kind == "poke":
            c.regs[a] = b
        else:
            c.card.receive(frame(MAC, max(14, a)))
        c.card.pending()
    assert all(n.MIN_FRAME <= len(f) <= n.MAX_TX for f in c.sent)
    assert 0 <= c.card._curr <= 0xFF
