"""The record of requests being served: what each thread took and since when, read
whole by the host or not at all."""

from __future__ import annotations

import pytest

from nooks.fs.inflight import SLOT, InFlight, Taken, size_for


def test_requests_taken_and_done_and_the_oldest_age() -> None:
    rec = InFlight(memoryview(bytearray(size_for(3))))
    assert rec.taken() == [] and rec.oldest_age_ms(100) is None
    rec.took(0, unique=10, opcode=15, now_ms=1000)
    rec.took(2, unique=12, opcode=3, now_ms=1500)
    assert rec.taken() == [Taken(0, 10, 15, 1000), Taken(2, 12, 3, 1500)]
    assert rec.oldest_age_ms(2000) == 1000
    rec.done(0)
    assert rec.taken() == [Taken(2, 12, 3, 1500)]
    rec.done(2)
    # the clock wraps at 32 bits: an age across the wrap is still its age
    rec.took(1, unique=14, opcode=1, now_ms=(1 << 32) - 10)
    assert rec.oldest_age_ms((1 << 32) + 5) == 15


def test_a_slot_left_half_written_is_not_read() -> None:
    mem = memoryview(bytearray(size_for(2)))
    rec = InFlight(mem)
    rec.took(0, unique=10, opcode=15, now_ms=1)
    rec.took(1, unique=11, opcode=16, now_ms=2)
    SLOT.pack_into(mem, SLOT.size, 7, 99, 16, 2)  # (a writer died with it odd)
    assert rec.taken() == [Taken(0, 10, 15, 1)]
    rec.done(1)  # (its next writer makes it whole again)
    rec.took(1, unique=12, opcode=16, now_ms=3)
    assert [t.unique for t in rec.taken()] == [10, 12]


def test_memory_that_is_not_whole_slots_is_refused() -> None:
    with pytest.raises(ValueError, match="slots"):
        InFlight(memoryview(bytearray(SLOT.size + 1)))
