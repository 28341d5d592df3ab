"""The RTL8139-style card's programming model, driven as a driver drives it: slots
sent and given back, the receive ring filled and read, the filter, interrupts, and
what a driver gets wrong answered as the chip answers it."""

from __future__ import annotations

import struct
import zlib

from nooks.hw import rtl8139 as r

MAC = bytes.fromhex("525400123456")
PEER = bytes.fromhex("525400abcdef")


class Card:
    def __init__(self) -> None:
        self.regs = memoryview(bytearray(r.REGS_SIZE))
        self.dma = memoryview(bytearray(64 << 10))
        self.sent: list[bytes] = []
        self.irqs = 0
        self.card = r.Rtl8139(self.regs, self.dma, MAC, self.sent.append, self._irq)

    def _irq(self) -> None:
        self.irqs += 1

    def w16(self, off: int, v: int) -> None:
        struct.pack_into("<H", self.regs, off, v)

    def w32(self, off: int, v: int) -> None:
        struct.pack_into("<I", self.regs, off, v)

    def r16(self, off: int) -> int:
        return int(struct.unpack_from("<H", self.regs, off)[0])

    def r32(self, off: int) -> int:
        return int(struct.unpack_from("<I", self.regs, off)[0])

    def up(self, rcr: int = r.RCR_APM | r.RCR_AB) -> None:
        self.w32(r.RBSTART, 0x8000)
        self.w32(r.RCR, rcr)
        self.w16(r.IMR, r.INT_ROK | r.INT_TOK | r.INT_TER | r.INT_RXOVW)
        self.card.write(r.CR, r.CR_RE | r.CR_TE)


def frame(dest: bytes, n: int) -> bytes:
    return dest + PEER + b"\x08\x00" + bytes([n % 256]) * (60 + n)


def test_registers_the_card_owns_cannot_be_written_over() -> None:
    c = Card()
    c.up()
    c.w16(r.CBR, 0x1234)  # a driver scribbling on a read-only register
    c.w16(r.ISR, 0xFFFF)
    assert c.card.receive(frame(MAC, 1))
    assert c.r16(r.CBR) != 0x1234 and c.r16(r.ISR) == r.INT_ROK  # put back by the card


def test_power_on_state() -> None:
    c = Card()
    assert bytes(c.regs[r.IDR:r.IDR + 6]) == MAC
    assert all(c.r32(r.TSD + 4 * i) & r.TSD_OWN for i in range(4))
    assert c.regs[r.CR] & r.CR_BUFE and not c.card.pending()


def test_a_slot_is_sent_and_given_back_with_an_interrupt() -> None:
    c = Card()
    c.up()
    data = frame(PEER, 1)
    c.dma[0x100:0x100 + len(data)] = data
    c.w32(r.TSAD + 4, 0x100)
    c.card.write(r.TSD + 4, len(data))
    assert c.sent == [data]
    tsd = c.r32(r.TSD + 4)
    assert tsd & r.TSD_OWN and tsd & r.TSD_TOK and tsd & r.TSD_SIZE == len(data)
    assert c.r16(r.ISR) & r.INT_TOK and c.irqs == 1
    c.card.write(r.ISR, r.INT_TOK)  # write 1 to clear
    assert c.r16(r.ISR) == 0 and not c.card.pending()


def test_a_slot_outside_dma_memory_is_aborted_not_read() -> None:
    c = Card()
    c.up()
    c.w32(r.TSAD, len(c.dma) - 10)
    c.card.write(r.TSD, 100)
    assert c.sent == [] and c.r32(r.TSD) & r.TSD_TABT
    assert c.r16(r.ISR) & r.INT_TER and c.card.counts["tx_aborted"] == 1
    c.w32(r.TSAD, 0)
    c.card.write(r.TSD, 5)  # shorter than an Ethernet header
    assert c.sent == [] and c.card.counts["tx_aborted"] == 2


def test_frames_are_written_into_the_ring_as_the_chip_writes_them() -> None:
    c = Card()
    c.up()
    first, second = frame(MAC, 1), frame(b"\xff" * 6, 2)
    assert c.card.receive(first) and c.card.receive(second)
    assert not c.regs[r.CR] & r.CR_BUFE and c.irqs == 1  # the line stays up: one edge
    at = 0x8000
    status, length = struct.unpack_from("<HH", c.dma, at)
    assert status & r.RX_ROK and status & r.RX_PAM and length == len(first) + 4
    assert bytes(c.dma[at + 4:at + 4 + len(first)]) == first
    crc = bytes(c.dma[at + 4 + len(first):at + 8 + len(first)])
    assert crc == struct.pack("<I", zlib.crc32(first))
    nxt = (4 + length + 3) & ~3
    status, length = struct.unpack_from("<HH", c.dma, at + nxt)
    assert status & r.RX_BAR and bytes(c.dma[at + nxt + 4:at + nxt + 4 + len(second)]) == second
    # the driver reads both and says so: the ring is empty again
    end = nxt + ((4 + length + 3) & ~3)
    c.card.write(r.CAPR, end - 16)
    assert c.regs[r.CR] & r.CR_BUFE


def test_the_filter_takes_what_rcr_and_mar_say() -> None:
    c = Card()
    c.up(rcr=r.RCR_APM)  # own address only
    group = bytes.fromhex("01005e000001")
    assert c.card.receive(frame(MAC, 1))
    assert not c.card.receive(frame(b"\xff" * 6, 2))
    assert not c.card.receive(frame(group, 3))
    assert not c.card.receive(frame(PEER, 4))
    c.w32(r.RCR, r.RCR_APM | r.RCR_AM)
    bit = r.mc_hash(group)
    mar = 1 << bit
    c.regs[r.MAR:r.MAR + 8] = mar.to_bytes(8, "little")
    assert c.card.receive(frame(group, 5))
    assert not c.card.receive(frame(bytes.fromhex("01005e000002"), 6)) or \
        r.mc_hash(bytes.fromhex("01005e000002")) == bit
    c.w32(r.RCR, r.RCR_AAP)  # promiscuous
    assert c.card.receive(frame(PEER, 7))
    assert c.card.counts["rx_filtered"] >= 3


def test_a_full_ring_misses_frames_and_says_so() -> None:
    c = Card()
    c.up()
    taken = 0
    while c.card.receive(frame(MAC, 1000)):
        taken += 1
    assert 0 < taken < r.RING // 1000
    assert c.r16(r.ISR) & r.INT_RXOVW and c.card.counts["rx_missed"] == 1


def test_nothing_moves_until_enabled_and_reset_forgets_everything() -> None:
    c = Card()
    c.w32(r.RBSTART, 0x8000)
    c.w32(r.RCR, r.RCR_AAP)
    assert not c.card.receive(frame(MAC, 1))  # receiver off
    c.w32(r.TSAD, 0)
    c.card.write(r.TSD, 60)
    assert c.sent == [] and c.r32(r.TSD) & r.TSD_TABT  # transmitter off
    c.up()
    c.card.receive(frame(MAC, 2))
    c.card.write(r.CR, r.CR_RST)
    assert c.r16(r.CBR) == 0 and c.regs[r.CR] & r.CR_BUFE and c.r16(r.ISR) == 0
    assert bytes(c.regs[r.IDR:r.IDR + 6]) == MAC


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_OPS = st.lists(st.one_of(
    st.tuples(st.just("doorbell"), st.sampled_from(sorted(r.DOORBELLS)),
              st.integers(0, (1 << 32) - 1)),
    st.tuples(st.just("poke"), st.integers(0, r.REGS_SIZE - 4), st.integers(0, (1 << 32) - 1)),
    st.tuples(st.just("frame"), st.integers(0, 2000), st.integers(0, 255)),
), max_size=60)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_OPS)
def test_whatever_a_driver_writes_and_the_wire_brings_the_card_stays_sane(
        ops: list[tuple[str, int, int]]) -> None:
    c = Card()
    c.up(rcr=r.RCR_AAP)
    for kind, a, b in ops:
        if kind == "doorbell":
            c.card.write(a, b)
        elif kind == "poke":
            c.w32(a, b)
        else:
            dest = MAC if b % 3 else bytes([b]) * 6
            c.card.receive((dest + PEER + bytes([b]) * 2000)[:a])
        # the card's own state is its own, whatever was written over its registers
        assert 0 <= c.card._cbr < r.RING and c.card._isr <= 0xFFFF
        assert len(c.dma) == 64 << 10 and len(c.regs) == r.REGS_SIZE
    assert all(isinstance(f, bytes) and 14 <= len(f) <= r.MAX_TX for f in c.sent)
